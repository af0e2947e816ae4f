"""Synthetic screens: real layouts (compared with the real BBBC021/RxRx1 headers), bit depths,
MOA separability, batch effects, determinism, and the deliberately broken demo inputs."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cytodata.errors import ImageReadError, RecipeError
from cytodata.synthetic import (
    RXRX1_COLUMNS,
    SyntheticScreen,
    make_cells,
    shot_noise,
    write_bbbc021_layout,
    write_demo_sources,
    write_folder_layout,
    write_rxrx1_layout,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TINY = SyntheticScreen(
    n_batches=3, plates_per_batch=2, wells_per_plate=12, dmso_wells_per_plate=2,
    sites_per_well=2, image_size=64, seed=3,
    moas=("Actin disruptors", "Microtubule destabilizers", "DNA damage",
          "Aurora kinase inhibitors"),
    rxrx_experiments=("HEPG2-01", "U2OS-01"), rxrx_test_experiments=("U2OS-01",),
    rxrx_sirna_groups=2, rxrx_sirnas=4, folder_images_per_class=3,
    folder_image_size=32,
)


@pytest.fixture(scope="module")
def bbbc(tmp_path_factory) -> dict:
    return write_bbbc021_layout(tmp_path_factory.mktemp("bbbc021"), TINY)


@pytest.fixture(scope="module")
def rxrx(tmp_path_factory) -> dict:
    return write_rxrx1_layout(tmp_path_factory.mktemp("rxrx1"), TINY)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- make_cells ------------------------------------------------------------------------------

def test_make_cells_dtype_range_and_bit_depth():
    img = make_cells(np.random.default_rng(0), (3, 64, 80), "DMSO")
    assert img.dtype == np.uint16 and img.shape == (3, 64, 80)
    # background ~500 counts, objects in the thousands, far from saturation
    assert 400 < np.median(img[0]) < 700
    assert 5_000 < img[0].max() < 40_000
    twelve = make_cells(np.random.default_rng(0), (1, 64, 64), "mitotic", peak=20_000, bit_depth=12)
    assert twelve.max() == 4095  # clipped to the 12-bit camera range


def test_make_cells_kinds_must_match_channels():
    with pytest.raises(ValueError, match="one compartment name per channel"):
        make_cells(np.random.default_rng(0), (2, 32, 32), "DMSO", kinds=("nuclei",))


def test_shot_noise_mean_and_variance_follow_poisson():
    rng = np.random.default_rng(0)
    for lam in (5.0, 2_000.0):  # exact draws below 30, normal approximation above
        x = shot_noise(rng, np.full((200, 200), lam))
        assert abs(x.mean() - lam) < 0.02 * lam
        assert abs(x.var() / lam - 1) < 0.05
        assert np.all(x == np.rint(x)) and x.min() >= 0


def test_config_errors_name_the_problem():
    with pytest.raises(RecipeError, match="single_batch_moa 'nope'"):
        SyntheticScreen(single_batch_moa="nope")
    with pytest.raises(RecipeError, match="dmso_wells_per_plate"):
        SyntheticScreen(wells_per_plate=4, dmso_wells_per_plate=4)
    with pytest.raises(RecipeError, match="12-bit maximum 4095"):
        SyntheticScreen(bit_depth=12)
    SyntheticScreen(bit_depth=12, background=120, peak=3000)
    with pytest.raises(RecipeError, match="'HEPG2_01'"):
        SyntheticScreen(rxrx_experiments=("HEPG2_01",), rxrx_test_experiments=())


# --- BBBC021 layout --------------------------------------------------------------------------

def test_bbbc021_headers_equal_the_real_ones(bbbc):
    real = SHARED_DATA / "bbbc021"
    for name in ("BBBC021_v1_image.csv", "BBBC021_v1_moa.csv"):
        with open(real / name, encoding="utf-8") as fh:
            real_header = fh.readline()
        with open(bbbc["root"] / name, encoding="utf-8") as fh:
            ours = fh.readline()
        assert ours == real_header


def test_bbbc021_rows_formats_and_files(bbbc):
    root = bbbc["root"]
    table = pd.read_csv(bbbc["image_csv"], dtype=str)
    real = pd.read_csv(SHARED_DATA / "bbbc021" / "BBBC021_v1_image.csv", dtype=str, nrows=5)
    assert list(table.columns) == list(real.columns)
    n_sites = TINY.n_batches * TINY.plates_per_batch * TINY.wells_per_plate * TINY.sites_per_well
    assert len(table) == n_sites == len(bbbc["images"])
    assert table["Image_Metadata_Plate_DAPI"].str.fullmatch(r"Week\d+_\d{5}").all()
    assert (table["Image_PathName_DAPI"]
            == table["Image_Metadata_Plate_DAPI"].str.split("_").str[0] + "/"
            + table["Image_Metadata_Plate_DAPI"]).all()
    assert table["Image_Metadata_Concentration"].str.fullmatch(r"\d+\.\d{6}").all()
    assert set(table.loc[table["Image_Metadata_Compound"] == "DMSO",
                         "Image_Metadata_Concentration"]) == {"0.000000"}
    # ImageNumber counts 1.. per TableNumber, like the real file
    for _, g in table.groupby("TableNumber"):
        assert sorted(g["ImageNumber"].astype(int)) == list(range(1, len(g) + 1))
    for channel, w in (("DAPI", 1), ("Tubulin", 2), ("Actin", 4)):
        names = table[f"Image_FileName_{channel}"]
        pattern = (r"[B-O]\d{2}_s\d+_w" + str(w)
                   + r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\.tif")
        assert names.str.fullmatch(pattern).all()
        assert (names.str.split("_").str[0] == table["Image_Metadata_Well_DAPI"]).all()
    row = table.iloc[5]
    img = tifffile.imread(root / row["Image_PathName_Actin"] / row["Image_FileName_Actin"])
    assert img.dtype == np.uint16 and img.shape == (TINY.image_size, TINY.image_size)
    for paths in bbbc["images"]["paths"]:
        assert all(Path(p).is_file() for p in paths)


def test_bbbc021_moa_table_covers_the_annotated_treatments(bbbc):
    moa = pd.read_csv(bbbc["moa_csv"])
    assert list(moa.columns) == ["compound", "concentration", "moa"]
    dmso = moa.loc[moa["compound"] == "DMSO", ["concentration", "moa"]]
    assert dmso.values.tolist() == [[0.0, "DMSO"]]
    images = pd.read_csv(bbbc["image_csv"])
    merged = images.merge(moa, left_on=["Image_Metadata_Compound", "Image_Metadata_Concentration"],
                          right_on=["compound", "concentration"], how="left")
    # only the unannotated compound (as in the real BBBC021) lacks an MOA
    assert set(merged.loc[merged["moa"].isna(), "Image_Metadata_Compound"]) == {"unannotated-1"}
    assert set(moa["moa"]) == set(TINY.moas) | {"DMSO"}


def test_compounds_live_in_one_week_and_one_moa_in_one_week_only(bbbc):
    images = bbbc["images"]
    # as in the real BBBC021: every compound in one week, MOAs spread by different compounds
    weeks_per_compound = images[images["compound"] != "DMSO"].groupby("compound")["batch"].nunique()
    assert (weeks_per_compound == 1).all()
    assert images.loc[images["compound"] == "DMSO", "batch"].nunique() == TINY.n_batches
    batches = images.dropna(subset=["moa"]).groupby("moa")["batch"].nunique()
    assert batches[TINY.single_batch_moa] == 1
    others = batches.drop([TINY.single_batch_moa, "DMSO"])
    assert len(others) == len(TINY.moas) - 1 and (others >= 2).all()


def _features(paths: list[str]) -> list[float]:
    """Simple per-image features: nucleus/cell area ratio, cell coverage, object brightness and
    edge density per channel (thresholds relative to the image background)."""
    a = np.stack([tifffile.imread(p).astype(float) for p in paths])
    bg = np.percentile(a.reshape(3, -1), 5, axis=1)
    nuc = a[0] > 2 * bg[0]
    cell = (a[1] > 1.6 * bg[1]) | (a[2] > 1.6 * bg[2])
    out = [nuc.sum() / max(cell.sum(), 1), np.log(cell.mean() + 1e-3)]
    for c in range(3):
        fg = cell if c else nuc
        if not fg.any():
            out += [0.0, 0.0]
            continue
        gy, gx = np.gradient(a[c])
        mean = a[c][fg].mean()
        out += [np.log(mean / bg[c]), np.log(np.hypot(gy, gx)[fg].mean() / mean)]
    return out


def test_moas_are_separable_by_simple_features(bbbc):
    images = bbbc["images"].dropna(subset=["moa"])
    images = images[images["moa"] != "DMSO"].reset_index(drop=True)
    x = np.array([_features(p) for p in images["paths"]])
    x = (x - x.mean(0)) / x.std(0)
    y = images["moa"].to_numpy()
    correct = 0
    for i in range(len(x)):  # leave-one-out nearest centroid
        others = np.arange(len(x)) != i
        labels = sorted(set(y[others]))
        centroids = np.stack([x[others & (y == k)].mean(0) for k in labels])
        correct += labels[int(np.argmin(np.linalg.norm(centroids - x[i], axis=1)))] == y[i]
    assert correct / len(x) > 0.8
    # between-MOA centroid distances exceed the within-MOA spread
    cents = {k: x[y == k].mean(0) for k in set(y)}
    spread = np.mean([np.linalg.norm(x[y == k] - cents[k], axis=1).mean() for k in cents])
    gaps = [np.linalg.norm(cents[a] - cents[b]) for a in cents for b in cents if a < b]
    assert min(gaps) > 0.5 * spread and np.median(gaps) > spread


def _dmso_background_by_batch(result: dict) -> pd.DataFrame:
    dmso = result["images"][result["images"]["compound"] == "DMSO"]
    rows = [{"batch": b, **{c: np.percentile(tifffile.imread(p), 10) for c, p in enumerate(paths)}}
            for b, paths in zip(dmso["batch"], dmso["paths"], strict=True)]
    return pd.DataFrame(rows)


def test_batch_effect_shifts_the_same_treatment(bbbc, tmp_path):
    bg = _dmso_background_by_batch(bbbc)
    medians = bg.groupby("batch").median()
    ratio = medians.max() / medians.min()
    assert (ratio > 1.1).all()                      # exp(2 * 0.15) gain spread + offsets
    within = bg.groupby("batch").std() / medians
    assert (within.max() < 0.08).all()              # plates/sites of one batch agree
    flat = write_bbbc021_layout(tmp_path, TINY.replace(batch_effect=0.0, plate_effect=0.0,
                                                       offset_effect=0.0))
    flat_medians = _dmso_background_by_batch(flat).groupby("batch").median()
    assert ((flat_medians.max() / flat_medians.min()) < 1.05).all()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = TINY.replace(n_batches=2, plates_per_batch=1, wells_per_plate=4, sites_per_well=1,
                       image_size=32)
    a = _tree_digest(write_bbbc021_layout(tmp_path / "a", cfg)["root"])
    b = _tree_digest(write_bbbc021_layout(tmp_path / "b", cfg)["root"])
    c = _tree_digest(write_bbbc021_layout(tmp_path / "c", cfg.replace(seed=cfg.seed + 1))["root"])
    assert a == b and len(a) == 2 * 4 * 3 + 3   # TIFFs + image, MOA and cell-location CSVs
    assert a["BBBC021_v1_moa.csv"] == c["BBBC021_v1_moa.csv"]
    tiffs_a = {v for k, v in a.items() if k.endswith(".tif")}
    tiffs_c = {v for k, v in c.items() if k.endswith(".tif")}
    assert not tiffs_a & tiffs_c


# --- RxRx1 and folder layouts ----------------------------------------------------------------

def test_rxrx1_metadata_and_pngs(rxrx):
    root = rxrx["root"]
    with open(rxrx["metadata_csv"], encoding="utf-8") as fh:
        assert fh.readline().rstrip("\n") == ",".join(RXRX1_COLUMNS)
    meta = pd.read_csv(rxrx["metadata_csv"], keep_default_na=False)
    # 2 experiments x 2 plates (one per siRNA group) x (2 siRNAs + 1 positive + EMPTY) x 2 sites
    assert len(meta) == 2 * 2 * 4 * 2
    assert (meta["well_id"] == meta["experiment"] + "_" + meta["plate"].astype(str) + "_"
            + meta["well"]).all()
    assert (meta["site_id"] == meta["well_id"] + "_" + meta["site"].astype(str)).all()
    assert (meta["cell_type"] == meta["experiment"].str.split("-").str[0]).all()
    assert dict(meta.groupby("experiment")["dataset"].first()) == {"HEPG2-01": "train",
                                                                   "U2OS-01": "test"}
    neg = meta[meta["well_type"] == "negative_control"]
    assert set(neg["sirna"]) == {"EMPTY"} and set(neg["sirna_id"]) == {1138}
    pos = meta[meta["well_type"] == "positive_control"]
    assert len(pos) and pos["sirna_id"].between(1108, 1137).all()
    trt = meta[meta["well_type"] == "treatment"]
    assert trt["sirna"].str.fullmatch(r"s\d{5}").all() and trt["sirna_id"].between(0, 1107).all()
    for row in meta.itertuples():
        for w in range(1, 7):
            assert (root / "images" / row.experiment / f"Plate{row.plate}"
                    / f"{row.well}_s{row.site}_w{w}.png").is_file()
    with Image.open(rxrx["sites"]["paths"].iloc[0][0]) as im:
        assert im.mode == "L" and im.size == (TINY.image_size, TINY.image_size)
        arr = np.asarray(im)
    assert arr.dtype == np.uint8 and arr.max() > 3 * np.median(arr)


def test_rxrx1_plates_follow_the_real_group_structure(rxrx):
    sites = rxrx["sites"]
    trt = sites[sites["well_type"] == "treatment"]
    # each siRNA in exactly one well of every experiment, always in the same (fixed) group
    wells = trt.groupby(["experiment", "sirna"])["well_id"].nunique()
    assert (wells == 1).all() and len(wells) == 2 * TINY.rxrx_sirnas
    assert (trt.groupby("sirna")["group"].nunique() == 1).all()
    assert sorted(trt.groupby("group")["sirna"].nunique()) == [2, 2]
    # one group per plate, every group on one plate of every experiment, controls on all plates
    assert (trt.groupby(["experiment", "plate"])["group"].nunique() == 1).all()
    assert (trt.groupby(["experiment", "group"])["plate"].nunique() == 1).all()
    plates_by_group = trt.groupby(["group", "experiment"])["plate"].first().unstack()
    assert (plates_by_group["HEPG2-01"] != plates_by_group["U2OS-01"]).all()   # rotated
    controls = sites[sites["well_type"] != "treatment"]
    assert (controls.groupby(["experiment", "plate"])["sirna"].nunique() == 2).all()
    assert set(sites["site"]) == {1, 2} and (sites.groupby("well_id").size() == 2).all()
    assert set(sites["cell_type"]) == {"HEPG2", "U2OS"}


def test_rxrx1_group_sizes_must_divide():
    with pytest.raises(RecipeError, match=r"rxrx_sirnas \(10\) must be a positive multiple of "
                                          r"rxrx_sirna_groups \(4\)"):
        SyntheticScreen(rxrx_sirnas=10, rxrx_sirna_groups=4)
    with pytest.raises(RecipeError, match="384-well"):
        SyntheticScreen(rxrx_sirnas=4 * 307, rxrx_sirna_groups=4)


def test_folder_layout_classes_and_formats(tmp_path):
    out = write_folder_layout(tmp_path / "png", TINY)
    for label in TINY.folder_classes:
        files = sorted((out["root"] / label).glob("*.png"))
        assert len(files) == TINY.folder_images_per_class
        with Image.open(files[0]) as im:
            assert im.mode == "L" and np.asarray(im).dtype == np.uint8
    tif = write_folder_layout(tmp_path / "tif", TINY.replace(folder_format="tif"))
    first = tifffile.imread(tif["images"]["path"].iloc[0])
    assert first.dtype == np.uint16 and first.shape == (32, 32)
    # condensed mitotic nuclei are about twice as bright as interphase ones
    brightest = {label: np.mean([np.percentile(np.asarray(Image.open(p)), 99) for p in g["path"]])
                 for label, g in out["images"].groupby("class")}
    assert brightest["mitotic"] > 1.25 * brightest["interphase"]


# --- the demo --------------------------------------------------------------------------------

def test_demo_sources_with_documented_broken_inputs(tmp_path):
    from cytodata.images.io import read_image

    cfg = TINY.replace(image_size=32, plates_per_batch=1, wells_per_plate=6, sites_per_well=1,
                       rxrx_sirna_groups=1, rxrx_sirnas=1,
                       folder_images_per_class=2)
    out = write_demo_sources(tmp_path, seed=5, config=cfg)
    assert {k: out[k] for k in ("bbbc021", "rxrx1", "folder")} == {
        k: tmp_path.resolve() / k for k in ("bbbc021", "rxrx1", "folder")}
    assert (out["bbbc021"] / "BBBC021_v1_image.csv").is_file()
    assert (out["rxrx1"] / "metadata.csv").is_file()
    listed = (out["bbbc021"] / "BBBC021_v1_image.csv").read_text()
    assert out["missing"].name in listed and out["truncated"].name in listed
    assert not out["missing"].exists() and "w4" in out["missing"].name
    with pytest.raises(ImageReadError) as err:
        read_image([out["truncated"]])
    assert err.value.reason == "truncated"


# --- the source adapters read what we write -------------------------------------------------

def _has_source(name: str) -> bool:
    return importlib.util.find_spec(f"cytodata.sources.{name}") is not None


@pytest.mark.skipif(not _has_source("bbbc021"), reason="cytodata.sources.bbbc021 not written yet")
def test_bbbc021_adapter_reads_the_layout(bbbc):
    from cytodata import sources

    table = sources.read("bbbc021", root=str(bbbc["root"]))
    truth = bbbc["images"]
    assert len(table) == len(truth)
    got = table.set_index(table["plate"] + "_" + table["well"] + "_s" + table["site"].astype(str))
    want = truth.set_index(truth["plate"] + "_" + truth["well"] + "_s" + truth["site"].astype(str))
    got = got.loc[want.index]
    assert (got["batch"] == want["batch"]).all()
    assert (got["compound"].str.casefold() == want["compound"].str.casefold()).all()
    assert (got["moa"].fillna("?") == want["moa"].fillna("?")).all()
    assert ((got["control_type"] == "negcon") == (want["compound"] == "DMSO")).all()
    assert [list(p) for p in got["channel_paths"]] == [list(p) for p in want["paths"]]
    assert all(Path(p).is_file() for paths in table["channel_paths"] for p in paths)


@pytest.mark.skipif(not _has_source("rxrx1"), reason="cytodata.sources.rxrx1 not written yet")
def test_rxrx1_adapter_reads_the_layout(rxrx):
    from cytodata import sources

    table = sources.read("rxrx1", root=str(rxrx["root"]), image_root=str(rxrx["image_root"]))
    truth = rxrx["sites"].set_index("site_id")
    assert sorted(table["image_id"]) == sorted(truth.index)
    got = table.set_index("image_id").loc[truth.index]
    assert [list(p) for p in got["channel_paths"]] == [list(p) for p in truth["paths"]]
    kinds = {"negative_control": "negcon", "positive_control": "poscon", "treatment": "trt"}
    assert (got["control_type"] == truth["well_type"].map(kinds)).all()
    assert (got["batch"] == truth["experiment"]).all()


@pytest.mark.skipif(not _has_source("folder"), reason="cytodata.sources.folder not written yet")
def test_folder_adapter_reads_the_layout(tmp_path):
    from cytodata import sources

    out = write_folder_layout(tmp_path, TINY)
    table = sources.read("folder", root=str(out["root"]), label_column="phenotype")
    assert len(table) == len(out["images"])
    by_path = dict(zip(out["images"]["path"], out["images"]["class"], strict=True))
    assert [by_path[p[0]] for p in table["channel_paths"]] == list(table["phenotype"])
    assert set(table["phenotype"]) == set(TINY.folder_classes)


# --- cell locations (single-cell mode) ---------------------------------------------------------

#: sha256 over (relative path, bytes) of every TIFF of CELLS_SCREEN, from the code before the
#: locations table existed: writing the centres must not change a single random draw
CELLS_SCREEN = SyntheticScreen(n_batches=2, plates_per_batch=1, wells_per_plate=6,
                               dmso_wells_per_plate=2, sites_per_well=1, image_size=48, seed=5,
                               moas=("Actin disruptors", "DNA damage"), single_batch_moa=None)
CELLS_SCREEN_TIFFS_SHA256 = "752f8ac0f2cdefd191a32a14cc55324e205264fb76a5b0ac1edac8a405c4b2e3"


def test_locations_leave_the_images_bit_identical(tmp_path):
    result = write_bbbc021_layout(tmp_path, CELLS_SCREEN)
    h = hashlib.sha256()
    tiffs = sorted(tmp_path.rglob("*.tif"))
    for p in tiffs:
        h.update(p.relative_to(tmp_path).as_posix().encode())
        h.update(p.read_bytes())
    assert len(tiffs) == 36 and h.hexdigest() == CELLS_SCREEN_TIFFS_SHA256
    assert result["locations_csv"].name == "BBBC021_cell_locations.csv"


def test_make_cells_centres_do_not_change_the_image():
    a = make_cells(np.random.default_rng(4), (3, 64, 64), "DNA damage")
    b, centres = make_cells(np.random.default_rng(4), (3, 64, 64), "DNA damage",
                            return_centres=True)
    assert np.array_equal(a, b)
    assert centres.ndim == 2 and centres.shape[1] == 2 and len(centres) >= 1
    assert (centres >= 0).all() and (centres <= 63).all()


def test_locations_table_marks_bright_nuclei(bbbc):
    from cytodata.synthetic import BBBC021_LOCATION_COLUMNS

    locs = pd.read_csv(bbbc["root"] / "BBBC021_cell_locations.csv")
    assert tuple(locs.columns) == BBBC021_LOCATION_COLUMNS
    images = bbbc["images"]
    # every listed cell belongs to a written field, and object numbers count 1.. per field
    fields = set(zip(images["plate"], images["well"], images["site"], strict=True))
    located = zip(locs["Metadata_Plate"], locs["Metadata_Well"], locs["Metadata_Site"], strict=True)
    assert set(located) <= fields
    for _, group in locs.groupby(["Metadata_Plate", "Metadata_Well", "Metadata_Site"]):
        assert group["ObjectNumber"].tolist() == list(range(1, len(group) + 1))
    # the DAPI signal at a listed centre is far above the field's background
    hits, total = 0, 0
    for row in images.itertuples(index=False):
        dapi = tifffile.imread(row.paths[0]).astype(float)
        here = locs[(locs["Metadata_Plate"] == row.plate) & (locs["Metadata_Well"] == row.well)
                    & (locs["Metadata_Site"] == row.site)]
        assert (here["Image_FileName_DAPI"] == Path(row.paths[0]).name).all()
        background = np.percentile(dapi, 20)
        ys = here["Nuclei_Location_Center_Y"].round().astype(int).to_numpy()
        xs = here["Nuclei_Location_Center_X"].round().astype(int).to_numpy()
        hits += int((dapi[ys, xs] > background + 0.25 * (dapi.max() - background)).sum())
        total += len(here)
    assert total > 50 and hits / total > 0.9
