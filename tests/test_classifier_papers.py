"""The paper recipes hold the values of the authors' code: each config against a table
transcribed from the sources (so a drift fails), the -tiny variants against their full recipe,
`cytodata train --list/--show`, and the layer embedding against a forward hook."""

from __future__ import annotations

import pytest
import torch

from cytodata.baselines import load_config
from cytodata.baselines.config import CONFIG_DIR, config_names
from cytodata.baselines.describe import list_configs, show_config, yaml_comments
from cytodata.baselines.models import create
from cytodata.errors import TrainingError

# key: (value, the source the config's comment must cite), transcribed from
# broadinstitute/DeepProfilerExperiments@bf5eaa0 resources/config/cell_painting_cnn_training.json
# (DPE) and cytomining/DeepProfiler@bed9d6a (DP); qubvel/efficientnet@f7f3e73 model.py (QE)
CELLPAINTING_CNN = {
    "model": ("tf_efficientnet_b0", "DPE:65"),                 # "conv_blocks": 0 -> EfficientNetB0
    "init": ("pretrained", "DPE:60"),                          # "initialization": "ImageNet"
    "first_conv": ("tile", "efficientnet.py:148-162"),         # new_weights[:, :, i] = w[:, :, i % 3]
    "label_smoothing": (0.0, "DPE:62"),
    "batch_size": (32, "DPE:64"),
    "epochs": (30, "DPE:82"),                                  # checkpoint_0030.hdf5
    "embed_layer": ("blocks.5.0.bn2", "DPE:81"),               # block6a_activation
    "embed_view": ("crops", "profiling.py:98-102"),
    "drop_rate": (0.0, "efficientnet.py:104-108"),
    "drop_path_rate": (0.2, "QE:252"),
    "model_kwargs.bn_momentum": (0.01, "momentum 0.99"),
    "data.crop": (128, "DPE:22"),                              # box_size
    "data.normalize": ("crop_minmax", "cropping.py:31-33"),
    "data.merge": ("none", "DPE:8-14"),
    "data.balanced": (True, "sampled_crop_generator.py:50"),
    "data.balance": ("median", "sampled_crop_generator.py:61-73"),
    "augment.scale_p": (0.5, "augmentations.py:48"),
    "augment.scale_min": (0.8, "augmentations.py:49-51"),
    "augment.flips": (True, "augmentations.py:34"),
    "augment.rot90": (True, "augmentations.py:37-38"),
    "augment.rotate": (0.0, "DP: no"),
    "augment.brightness": (0.1, "augmentations.py:20-21"),
    "augment.contrast": (0.2, "augmentations.py:22-23"),
    "augment.intensity": (0.0, "DP: no"),
    "augment.shift": (0.0, "DP:"),
    "optim.name": ("sgd", "efficientnet.py:83"),
    "optim.lr": (0.005, "DPE:63"),
    "optim.momentum": (0.9, "efficientnet.py:84"),
    "optim.nesterov": (True, "efficientnet.py:84"),
    "optim.schedule": ("constant", "model.py:196-218"),
    "optim.warmup_steps": (0, "DP:"),
    "optim.weight_decay": (1e-5, "efficientnet.py:116"),
    "optim.weight_decay_mode": ("keras_l2", "efficientnet.py:117-119"),
    "optim.clip_grad": (None, "DP:"),
}

# stan-hua/CytoImageNet@03f096d scripts/model_pretraining.py (MP), model_evaluation.py (ME),
# data_processing/preprocessor.py (PP); Keras EfficientNetB0 defaults as qubvel model.py
CYTOIMAGENET = {
    "model": ("tf_efficientnet_b0", "MP:5,198-200"),
    "init": ("random", "MP:259"),                              # weights = None
    "drop_rate": (0.2, "model.py:251"),
    "drop_path_rate": (0.2, "model.py:252"),
    "model_kwargs.bn_momentum": (0.01, "momentum 0.99"),
    "label_smoothing": (0.0, "MP:282"),
    "batch_size": (64, "MP:256"),
    "epochs": (24, "ME:71"),                                   # efficientnetb0_from_random-epoch_24.h5
    "embed_layer": (None, "ME:107-110"),                       # include_top=False, pooling="avg"
    "embed_view": ("native", "ME:109,122"),
    "data.crop": (224, "MP:109"),
    "data.resize": (224, "MP:109-110"),                        # target_size=(224, 224), bilinear
    "data.normalize": ("image_percentile", "PP:52-78"),
    "data.percentiles": ([0.1, 99.9], "PP:63-64"),
    "data.merge": ("gray_rgb", "PP:101-105"),
    "data.balanced": (False, "MP:112"),
    "augment.rotate": (360.0, "MP:101-102"),                   # rotation_range=360, reflect
    "augment.flips": (False, "MP:100-102"),
    "augment.rot90": (False, ""),
    "augment.scale_p": (0.0, ""),
    "augment.brightness": (0.0, ""),
    "augment.contrast": (0.0, ""),
    "augment.intensity": (0.0, ""),
    "augment.shift": (0.0, ""),
    "optim.name": ("adam", "MP:272"),
    "optim.lr": (1e-3, "MP:258"),
    "optim.betas": ([0.9, 0.999], "Keras Adam defaults"),
    "optim.eps": (1e-7, "Keras Adam default epsilon"),
    "optim.schedule": ("constant", "MP:296-301"),
    "optim.warmup_steps": (0, ""),
    "optim.weight_decay": (0.0, "MP: no"),
    "optim.clip_grad": (None, "MP: no"),
}

PAPERS = {"cellpainting-cnn": CELLPAINTING_CNN, "cytoimagenet": CYTOIMAGENET}
#: what a -tiny variant may change: size, length, architecture (and what follows from it:
#: the layer's counterpart, BN eps of the tf_ port, start weights), CPU runtime settings
TINY_MAY_CHANGE = {"model", "model_kwargs.bn_eps", "init", "pretrained", "embed_layer", "epochs",
                   "data.crop", "data.resize", "device", "precision", "channels_last", "log_every",
                   "data.threads", "description"}


def _resolved(name: str) -> dict:
    rows = show_config(name)
    return {r["key"]: r for r in rows}


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_paper_recipe_matches_the_transcribed_source(name):
    rows = _resolved(name)
    assert load_config(name).kind == "paper"
    for key, (value, source) in PAPERS[name].items():
        assert key in rows, key
        got = rows[key]["value"]
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, (key, got, value)
        assert rows[key]["set"], f"{name}: {key} is left at the default; the recipe must state it"
        assert source in rows[key]["source"], f"{name}: {key}'s comment does not cite {source!r}"


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_tiny_variant_changes_only_size_length_and_architecture(name):
    full, tiny = _resolved(name), _resolved(f"{name}-tiny")
    changed = {k for k in full if full[k]["value"] != tiny[k]["value"]}
    assert changed <= TINY_MAY_CHANGE, changed - TINY_MAY_CHANGE
    assert {"model", "epochs"} <= changed and tiny["kind"]["value"] == "paper"


def test_list_covers_every_config_and_tells_paper_from_ours(capsys):
    from cytodata.cli import main

    rows = {r["name"]: r for r in list_configs()}
    assert set(rows) == set(config_names()) == {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert all(r["description"] for r in rows.values())
    assert {n: rows[n]["kind"] for n in ("cellpainting-cnn", "cytoimagenet", "classifier")} == {
        "cellpainting-cnn": "paper", "cytoimagenet": "paper", "classifier": "ours"}
    assert main(["train", "--list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert set(lines) == set(rows)
    assert lines["cytoimagenet"].split()[1] == "paper" and lines["classifier"].split()[1] == "ours"
    assert main(["train", "--show", "cellpainting-cnn"]) == 0
    show = capsys.readouterr().out
    assert "* optim.lr" in show and "= 0.005  [default 0.001]  # DPE:63" in show
    assert "  keep_checkpoints" in show                         # defaults listed too, unmarked


def test_yaml_comments_follow_nesting():
    text = "a: 1  # one\nb:\n  c: x   # two '#' here\n  d: 2\ne: {f: 1}  # flow\n"
    assert yaml_comments(text) == {"a": "one", "b.c": "two '#' here", "e": "flow"}


def test_block6a_is_blocks_5_0_bn2_and_the_layer_embedding_is_its_spatial_mean():
    from cytodata.baselines.embedding import LayerMean

    torch.manual_seed(0)
    model = create("tf_efficientnet_b0", in_chans=5, num_classes=3).eval()
    x = torch.rand(2, 5, 64, 64)
    seen = {}
    model.blocks[5][0].bn2.register_forward_hook(lambda m, i, o: seen.setdefault("out", o.clone()))
    with torch.no_grad():
        emb = LayerMean(model, "blocks.5.0.bn2")(x)
    out = seen["out"]
    # Keras block6a: 112 -> 672 expansion, depthwise 5x5 stride 2: 672 channels at 1/32 size
    assert out.shape == (2, 672, 2, 2) and model.blocks[5][0].conv_dw.stride == (2, 2)
    assert torch.allclose(emb, out.mean((-2, -1)))
    with pytest.raises(TrainingError, match=r"nearest: blocks\.5\.0\.bn2"):
        LayerMean(model, "blocks.5.0.bn22")


def test_init_pretrained_without_a_file_says_how_to_fix_it(tmp_path):
    from cytodata.baselines import train
    from cytodata.loaders.demo import write_demo_shards

    write_demo_shards(tmp_path / "s", n=8, shape=(2, 16, 16))
    with pytest.raises(TrainingError, match="--set pretrained=PATH"):
        train("cellpainting-cnn", tmp_path / "run", **{"data.train": str(tmp_path / "s"), "device": "cpu",
              "data.train_split": None, "data.val_split": None, "progress": False})


def test_trained_tiny_recipe_embeds_its_layer(tmp_path, capsys):
    """cellpainting-cnn-tiny end to end: 3 steps, then `cytodata embed` reads blocks.4.0.bn2 (its
    embed_layer) as the spatial mean a forward hook sees on the crop-min-max-normalised cells."""
    import pandas as pd

    from cytodata.baselines import train
    from cytodata.baselines.data import crop_minmax, to_device_float
    from cytodata.baselines.embedding import load_method
    from cytodata.cli import main
    from cytodata.loaders import StreamingDataset
    from cytodata.loaders.demo import write_demo_shards

    shards = tmp_path / "s"
    write_demo_shards(shards, n=16, shape=(3, 32, 32))
    run = train("cellpainting-cnn-tiny", tmp_path / "run", **{
        "data.train": str(shards), "data.train_split": None, "data.val_split": None, "epochs": None,
        "steps": 3, "batch_size": 8, "progress": False})
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(run), str(shards), "-o", str(out), "-q"]) == 0
    emb = pd.read_parquet(out).set_index("key")
    cols = [c for c in emb.columns if c.startswith("emb_")]
    assert len(cols) == 192                                    # test_efficientnet blocks.4 width
    method, _, _ = load_method(run, torch.device("cpu"))
    seen = {}
    method.model.blocks[4][0].bn2.register_forward_hook(lambda m, i, o: seen.setdefault("o", o.clone()))
    ds = StreamingDataset(shards, shuffle=False)
    sample = next(iter(ds))
    with torch.no_grad():
        method.model(crop_minmax(to_device_float(sample["image"][None], torch.device("cpu"))))
    want = seen["o"].mean((-2, -1))[0].numpy()
    got = emb.loc[sample["__key__"], cols].to_numpy(dtype="float32")
    assert abs(got - want).max() < 1e-4
    capsys.readouterr()
    assert main(["embed", str(run), str(shards), "-o", str(tmp_path / "x.parquet"), "--layer",
                 "blocks.4.0.bn", "-q"]) != 0
    assert "nearest: blocks.4.0.bn" in capsys.readouterr().err


def test_cytoimagenet_tiny_trains_and_embeds_images_of_several_sizes(tmp_path):
    """data.resize: images of 24 and 40 px share batches (resized to 32), embed --view whole
    and --channels each (three channels -> three gray embeddings concatenated)."""
    import pandas as pd

    from cytodata.baselines import train
    from cytodata.baselines.embedding import embed
    from cytodata.loaders.demo import demo_manifest
    from cytodata.schema import make_key
    from cytodata.shards import write

    small = demo_manifest(tmp_path / "a", n=8, shape=(3, 24, 24))
    large = demo_manifest(tmp_path / "b", n=8, shape=(3, 40, 40))
    large["image_id"] = large["image_id"] + "L"
    large["parent_id"] = large["image_id"]
    large["site"] = large["site"] + 10
    large["key"] = [make_key(s, i) for s, i in zip(large["source"], large["image_id"])]
    write(pd.concat([small, large], ignore_index=True), tmp_path / "s", samples_per_shard=8,
          scheduler="synchronous", progress=False)
    run = train("cytoimagenet-tiny", tmp_path / "run", **{
        "data.train": str(tmp_path / "s"), "data.train_split": None, "data.val_split": None,
        "epochs": None, "steps": 2, "batch_size": 8, "progress": False})
    each = pd.read_parquet(embed(run, tmp_path / "s", tmp_path / "e.parquet", progress=False,
                                 channels="each", view="whole"))      # resized to 32
    n = create("test_efficientnet", in_chans=3, num_classes=2).num_features
    assert len(each) == 16 and sum(c.startswith("emb_") for c in each.columns) == 3 * n
    # native (the recipe's view): each image at its stored size (24 or 40 px), one per batch
    with pytest.raises(TrainingError, match="--batch-size 1"):
        embed(run, tmp_path / "s", tmp_path / "n.parquet", progress=False)
    native = pd.read_parquet(embed(run, tmp_path / "s", tmp_path / "n.parquet", progress=False,
                                   batch_size=1))
    cols = [c for c in native.columns if c.startswith("emb_")]
    assert len(native) == 16 and len(cols) == n and native[cols].notna().all().all()
