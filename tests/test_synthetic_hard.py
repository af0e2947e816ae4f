"""The hard synthetic screen: intensity and size matched across MOAs (the easy screen is not),
each planted batch effect measurable, ground truth round-trips, bad parameters named, and the
targets at a small size (loose bounds; the full measurement is benchmarks/scoreboard.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile

from cytodata.errors import RecipeError
from cytodata.synthetic import (
    SyntheticScreen,
    make_cells,
    read_ground_truth,
    write_bbbc021_layout,
    write_rxrx1_layout,
)
from cytodata.synthetic.hard_cells import gaussian_blur, render_hard_field
from cytodata.synthetic.morphology import MOA_STATES, draw_cell_states
from cytodata.synthetic.truth import oracle_columns, oracle_table

#: the stated tolerance (docs/synthetic.md): foreground-pixel percentiles 10-99 of every channel
#: within 10% of DMSO's dynamic range, mean true cell area within 15%, with every cell of the
#: MOA responding at full strength (the worst case), 16 fields of 96 px per MOA
INTENSITY_TOLERANCE = 0.10
AREA_TOLERANCE = 0.15
PERCENTILES = [10, 25, 50, 75, 90, 99]
BACKGROUND, PEAK, INTENSITIES = 500.0, 20000.0, (0.5, 0.4, 0.4)

SMALL = SyntheticScreen(
    difficulty="hard", n_batches=3, plates_per_batch=2, wells_per_plate=12,
    dmso_wells_per_plate=4, sites_per_well=2, image_size=64, seed=1,
    moas=("Actin disruptors", "Microtubule destabilizers", "DNA damage", "Protein synthesis"),
    single_batch_moa=None, unannotated_compounds=0, focus_blur=2.0, background_gradient=0.4,
    illumination=0.3, response_fraction=0.6)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    return write_bbbc021_layout(tmp_path_factory.mktemp("hard"), SMALL)


def _fields(moa: str, hard: bool, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """n fields (n, 3, 96, 96) of ``moa`` with every cell responding, and the true cell areas."""
    images, areas = [], []
    states = MOA_STATES.get(moa, {})
    for k in range(n):
        rng = np.random.default_rng([11, len(moa), k])   # other draws for every MOA
        if hard:
            image, cells = render_hard_field(
                rng, 3, (96, 96), lambda r, m: draw_cell_states(r, m, states, float(bool(states)),
                                                                1.0, 0.0),
                background=BACKGROUND, peak=PEAK, bit_depth=16, plate=None,
                intensities=INTENSITIES)
            areas.extend(cells["area"])
        else:
            image = make_cells(rng, (3, 96, 96), moa, background=BACKGROUND, peak=PEAK)
        images.append(image)
    return np.stack(images).astype(float), np.asarray(areas, dtype=float)


def _foreground_percentiles(images: np.ndarray) -> np.ndarray:
    """(3, 6) percentiles of the pixels above 6% of each channel's peak (cell pixels)."""
    out = []
    for c in range(3):
        values = images[:, c]
        threshold = BACKGROUND + 0.06 * PEAK * INTENSITIES[c]
        out.append(np.percentile(values[values > threshold], PERCENTILES))
    return np.asarray(out)


def _worst_deviation(hard: bool) -> tuple[float, float]:
    ref_images, ref_areas = _fields("DMSO", hard)
    ref = _foreground_percentiles(ref_images)
    scale = ref[:, -1:] - BACKGROUND
    worst_intensity, worst_area = 0.0, 0.0
    for moa in list(MOA_STATES)[:8]:
        images, areas = _fields(moa, hard)
        dev = np.abs(_foreground_percentiles(images) - ref) / scale
        worst_intensity = max(worst_intensity, float(dev.max()))
        if hard:
            worst_area = max(worst_area, abs(areas.mean() / ref_areas.mean() - 1))
    return worst_intensity, worst_area


def test_intensity_histograms_and_cell_sizes_match_across_moas():
    intensity, area = _worst_deviation(hard=True)
    assert intensity <= INTENSITY_TOLERANCE and area <= AREA_TOLERANCE
    # the same measurement on the easy screen, whose MOAs differ in brightness and size
    easy, _ = _worst_deviation(hard=False)
    assert easy > 5 * INTENSITY_TOLERANCE


def test_morphology_differs_where_intensity_does_not():
    """Same draws, DMSO vs microtubule destabilizers: histograms equal, pixels rearranged."""
    def field(states):
        rng = np.random.default_rng(5)
        image, _ = render_hard_field(
            rng, 3, (96, 96), lambda r, m: draw_cell_states(r, m, states, 1.0, 1.0, 0.0),
            background=BACKGROUND, peak=PEAK, bit_depth=16, plate=None, intensities=INTENSITIES)
        return image.astype(float)

    dmso, punctate = field({}), field({"microtubules": "punctate"})
    tub_a, tub_b = dmso[1], punctate[1]
    assert abs(np.percentile(tub_a, 95) / np.percentile(tub_b, 95) - 1) < 0.03
    changed = np.abs(tub_a - tub_b) > 0.1 * PEAK * INTENSITIES[1]
    assert changed.mean() > 0.03                    # the bright pixels moved


def _dmso(small: dict) -> pd.DataFrame:
    images = small["images"]
    return images[images["compound"] == "DMSO"]


def _stack(paths_list, channel: int) -> np.ndarray:
    return np.stack([tifffile.imread(p[channel]).astype(float) for p in paths_list])


def test_week_gains_and_offsets_shift_the_background(small):
    dmso = _dmso(small)
    low = pd.DataFrame([{"batch": b, **{c: np.percentile(tifffile.imread(p[c]), 50)
                                        for c in range(3)}}
                        for b, p in zip(dmso["batch"], dmso["paths"], strict=True)])
    medians = low.groupby("batch").median()
    assert ((medians.max() / medians.min()) > 1.1).all()
    plates = small["ground_truth"]["plates"]
    # the planted per-week gain and offset are what shifts them
    for c in range(3):
        planted = (BACKGROUND * plates[f"gain_{c}"] + plates[f"offset_{c}"]).groupby(
            plates["batch"]).mean()
        assert np.corrcoef(planted.loc[medians.index], medians[c])[0, 1] > 0.8


def _background_maps(small: dict) -> dict[str, np.ndarray]:
    """Per plate, the pixel-wise median of its DMSO fields' Tubulin channel (cells are sparse)."""
    dmso = _dmso(small)
    return {plate: np.median(_stack(group["paths"], 1), axis=0)
            for plate, group in dmso.groupby("plate")}


def test_vignette_and_background_gradient_are_measurable(small):
    plates = small["ground_truth"]["plates"].set_index("plate")
    size = SMALL.image_size
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    for plate, bg in _background_maps(small).items():
        corners = np.mean([bg[:8, :8].mean(), bg[:8, -8:].mean(), bg[-8:, :8].mean(),
                           bg[-8:, -8:].mean()])
        centre = bg[size // 2 - 8:size // 2 + 8, size // 2 - 8:size // 2 + 8].mean()
        assert corners < 0.97 * centre, plate                    # vignette: dim corners
        angle = plates.loc[plate, "gradient_angle"]
        ramp = xx * np.cos(angle) + yy * np.sin(angle)
        slope = np.polyfit(ramp.ravel(), bg.ravel(), 1)[0] / bg.mean()
        # planted: background * (1 + 2 g ramp); the signal on top dilutes it, never reverses it
        assert slope > 0.5 * plates.loc[plate, "gradient"], plate


def test_focus_blur_by_plate_is_measurable(small):
    dmso = _dmso(small)
    plates = small["ground_truth"]["plates"].set_index("plate")
    sharpness = {}
    for plate, group in dmso.groupby("plate"):
        stack = _stack(group["paths"], 1)
        detail = stack - gaussian_blur(stack.astype(np.float32), 1.0)
        sharpness[plate] = float((detail**2).mean() / stack.var())
    planted = plates.loc[list(sharpness), "blur"]
    rho = pd.Series(sharpness).rank().corr(planted.rank())
    assert rho < -0.7                                          # more blur, less fine detail


def test_compounds_are_confounded_with_weeks(small):
    images = small["images"]
    treated = images[images["compound"] != "DMSO"]
    assert (treated.groupby("compound")["batch"].nunique() == 1).all()
    assert (treated.groupby("moa")["batch"].nunique() >= 2).all()


def test_ground_truth_round_trips(small):
    back = read_ground_truth(small["root"])
    for name, table in small["ground_truth"].items():
        pd.testing.assert_frame_equal(back[name], table, check_dtype=False)
    cells = back["cells"]
    locations = pd.read_csv(small["locations_csv"])
    assert len(locations) == len(cells)
    np.testing.assert_allclose(locations["Nuclei_Location_Center_X"], cells["x"], atol=1e-3)
    assert (locations["ObjectNumber"].to_numpy() == cells["object_number"].to_numpy()).all()
    fields = back["fields"]
    assert len(fields) == len(small["images"])
    again = oracle_table(cells).set_index(["plate", "well", "site"])
    got = fields.set_index(["plate", "well", "site"]).loc[again.index, oracle_columns()]
    np.testing.assert_allclose(got.to_numpy(), again.to_numpy())
    # planted: DMSO cells respond never; treated ones in the planted share (loosely)
    trt = back["treatments"].set_index(["compound", "concentration"])
    per_well = cells.merge(small["images"][["plate", "well", "compound", "concentration"]]
                           .drop_duplicates(), on=["plate", "well"])
    assert not per_well.loc[per_well["compound"] == "DMSO", "responding"].any()
    treated = per_well[per_well["compound"] != "DMSO"]
    shares = treated.groupby(["compound", "concentration"])["responding"].mean()
    planted = trt.loc[shares.index, "response"]
    assert abs(shares.mean() - planted.mean()) < 0.1


def test_rxrx1_hard_writes_its_ground_truth(tmp_path):
    cfg = SyntheticScreen(difficulty="hard", image_size=48, rxrx_experiments=("HEPG2-01",),
                          rxrx_test_experiments=(), rxrx_sirnas=4, rxrx_sirna_groups=2)
    out = write_rxrx1_layout(tmp_path, cfg)
    back = read_ground_truth(tmp_path)
    assert len(back["fields"]) == len(out["sites"]) == 1 * 2 * 4 * 2
    assert set(back["plates"]["plate"]) == {"HEPG2-01_1", "HEPG2-01_2"}
    assert (back["treatments"].loc[back["treatments"]["sirna"] == "EMPTY", "response"] == 0).all()


@pytest.mark.parametrize(("change", "named"), [
    ({"response_fraction": 0.0}, "response_fraction=0.0"),
    ({"compounds_per_moa": 1}, "compounds_per_moa=1"),
    ({"moas": ("Eg5 inhibitors",)}, "moas="),
    ({"moas": ("Eg5 inhibitors", "moa-17")}, "'moa-17' and 'Eg5 inhibitors' have the same"),
    ({"focus_blur": 3.0}, "focus_blur=3.0"),
    ({"image_size": 32}, "image_size=32"),
    ({"difficulty": "medium"}, "difficulty must be 'easy' or 'hard'"),
])
def test_bad_parameters_are_named(change, named):
    base = {"difficulty": "hard", "single_batch_moa": None, **change}
    with pytest.raises(RecipeError, match=named.replace("(", r"\(").replace(")", r"\)")):
        SyntheticScreen(**base)


def _nsc(small: dict, features: np.ndarray) -> float:
    from cytodata.evaluate import run_protocol

    images = small["images"]
    table = pd.DataFrame({"compound": images["compound"].str.lower(),
                          "concentration": images["concentration"],
                          "moa": images["moa"].str.lower(), "batch": images["batch"],
                          "plate": images["plate"], "well": images["well"],
                          "image": images["paths"].str[0]})
    cols = [f"f{i}" for i in range(features.shape[1])]
    table = pd.concat([table, pd.DataFrame(features, columns=cols)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # TVN on few DMSO fields warns; not the point here
        result = run_protocol("bbbc021-ws-dino", table, table, features=cols, id_column="image")
    return float(result["metrics"]["nsc"].accuracy)


def test_targets_at_a_small_size(small):
    """Whole-image intensity statistics near chance, the oracle near perfect (loose bounds)."""
    def stats_of(plane: np.ndarray) -> list[float]:
        return [*np.percentile(plane, [1, 5, 25, 50, 75, 95, 99]), plane.mean(), plane.std()]

    stats = np.array([np.concatenate([stats_of(tifffile.imread(p).astype(float)) for p in paths])
                      for paths in small["images"]["paths"]])
    fields = small["ground_truth"]["fields"].set_index(["plate", "well", "site"])
    keys = list(zip(small["images"]["plate"], small["images"]["well"], small["images"]["site"],
                    strict=True))
    oracle = fields.loc[keys, oracle_columns()].to_numpy(float)
    assert _nsc(small, stats) <= 0.5
    assert _nsc(small, oracle) >= 0.9
