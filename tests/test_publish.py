"""Publishing shard sets: card, Croissant 1.1 (checked with mlcroissant), SHA256SUMS, verify."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cytodata.errors import PublishError
from cytodata.loaders.demo import demo_manifest, write_demo_shards
from cytodata.publish import PublishWarning, publish, verify

METADATA = ("README.md", "croissant.json", "SHA256SUMS", "index.parquet", "shards.json",
            "ledger.parquet", "provenance.parquet", "manifest-provenance.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A real manifest (two CSV sources, one missing file) sharded with one truncated TIFF."""
    from cytodata.manifest import build
    from cytodata.shards import write

    root = tmp_path_factory.mktemp("corpus")
    table = demo_manifest(root / "img", 30, (2, 12, 12))
    rows = [dict(image_id=r.image_id, plate=r.plate, well=r.well, site=r.site,
                 compound=["dmso", "taxol", "aspirin"][i % 3], DNA=r.channel_paths[0], ER=r.channel_paths[1])
            for i, r in enumerate(table.itertuples())]
    rows.append(dict(image_id="gone", plate="P9", well="B01", site=1, compound="x",
                     DNA=str(root / "img" / "nothere.tif"), ER=str(root / "img" / "nothere2.tif")))
    frame = pd.DataFrame(rows)
    frame.iloc[:20].to_csv(root / "lab1.csv", index=False)
    frame.iloc[20:].to_csv(root / "lab2.csv", index=False)
    cols = {"plate": "plate", "well": "well", "site": "site", "compound": "compound"}
    recipe = {
        "name": "pubtest",
        "sources": [
            {"adapter": "csv", "source": "lab1", "license": "CC-BY-4.0", "citation": "Lab One (2024)",
             "params": {"path": str(root / "lab1.csv"), "channels": ["DNA", "ER"], "id_column": "image_id",
                        "columns": cols}},
            {"adapter": "csv", "source": "lab2",
             "params": {"path": str(root / "lab2.csv"), "channels": ["DNA", "ER"], "id_column": "image_id",
                        "columns": cols}}],
        "weak_labels": {"columns": ["compound"], "min_count": 2, "presample": 100, "cap": 100,
                        "presample_by": ["name"], "sample_by": ["compound"]},
        "split": {"group": "plate", "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}, "stratify": None},
    }
    build(recipe, root / "manifest", progress=False)
    bad = Path(table.channel_paths.iloc[7][0])
    bad.write_bytes(bad.read_bytes()[:100])  # one image becomes unreadable: a shard-ledger row
    write(root / "manifest", root / "shards", samples_per_shard=8, scheduler="synchronous", progress=False)
    return root


def _publish(corpus, dest, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PublishWarning)
        return publish(corpus / "shards", dest, manifest=corpus / "manifest", **kw)


def test_publish_writes_card_croissant_sums_and_provenance(corpus, tmp_path):
    with pytest.warns(PublishWarning, match="lab2"):
        summary = publish(corpus / "shards", tmp_path / "pub", manifest=corpus / "manifest")
    pub = tmp_path / "pub"
    index = pd.read_parquet(pub / "index.parquet")
    meta = json.loads((pub / "shards.json").read_text())
    assert summary["samples"] == len(index) == 29 and summary["shards"] == len(meta["shards"])
    assert summary["codec"] == meta["codec"] == "npy"  # the portable payload by default
    for name in METADATA:
        assert (pub / name).is_file(), name
    # the shards were repacked: one run of shards per split, every sample once, pixels unchanged
    from cytodata.shards import decode

    source = pd.read_parquet(corpus / "shards" / "index.parquet")
    assert sorted(index["key"]) == sorted(source["key"])
    for s in meta["shards"]:
        rows = index[index["shard"] == s["name"]]
        assert s["name"].startswith(f"shard-{rows['split'].iloc[0]}-") and rows["split"].nunique() == 1
    src = source.set_index("key")
    for row in index.itertuples():
        a, b = (pub / row.shard).read_bytes(), (corpus / "shards" / src.loc[row.key, "shard"]).read_bytes()
        o, so = src.loc[row.key, "offset"], src.loc[row.key, "meta_offset"]
        got, _ = decode({"__key__": row.key, "npy": a[row.offset:row.offset + row.size],
                         "json": a[row.meta_offset:row.meta_offset + row.meta_size]})
        want, _ = decode({"__key__": row.key, "blosc": b[o:o + src.loc[row.key, "size"]],
                          "json": b[so:so + src.loc[row.key, "meta_size"]]})
        assert got.dtype == want.dtype and (got == want).all()

    # the card: HF YAML header + datasheet sections with the facts
    text = (pub / "README.md").read_text()
    head = yaml.safe_load(text.split("---\n")[1])
    assert head["license"] == ["cc-by-4.0", "unknown"]
    assert head["size_categories"] == ["n<1K"]
    assert {d["split"] for d in head["configs"][0]["data_files"]} == set(index["split"])
    for section in ("## Sources", "## Labels", "## Splits", "## QC and ledger", "## Preprocessing",
                    "## Image format", "## Provenance", "## Intended uses", "## Limitations"):
        assert section in text
    assert "Lab One (2024)" in text and "**License unknown** for: lab2" in text
    assert "31 rows in, 30 kept, 1 dropped" in text and "missing file" in text  # manifest ledger
    assert "truncated=1" in text  # the shard ledger
    assert "whole `plate` groups" in text and "0 `plate` groups cross splits" in text
    assert "dtype `uint16`, shape `(2, 12, 12)`, channels `['DNA', 'ER']`" in text
    for label, n in index["label"].value_counts().items():
        assert f"| {label} | compound | {n} |" in text

    # split lists and per-image provenance back to the source files
    for split, rows in index.groupby("split"):
        assert (pub / "splits" / f"{split}.txt").read_text().split() == list(rows["key"])
        assert list(pd.read_parquet(pub / "splits" / f"{split}.parquet")["key"]) == list(rows["key"])
    prov = pd.read_parquet(pub / "provenance.parquet")
    manifest = pd.read_parquet(corpus / "manifest" / "manifest.parquet").set_index("key")
    assert list(prov["key"]) == list(index["key"])
    for row in prov.itertuples():
        assert list(row.channel_paths) == list(manifest.loc[row.key, "channel_paths"])
        assert Path(row.channel_paths[0]).is_file()
        assert (row.plate, row.well, row.source) == tuple(manifest.loc[row.key, ["plate", "well", "source"]])

    # SHA256SUMS: sha256sum's own format, every file but itself
    listed = [line.split("  ", 1)[1] for line in (pub / "SHA256SUMS").read_text().splitlines()]
    on_disk = sorted(str(p.relative_to(pub)) for p in pub.rglob("*") if p.is_file()
                     and p.name not in ("SHA256SUMS", ".cytodata-publish"))
    assert sorted(listed) == on_disk
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=pub, check=True)
    assert verify(pub) == []


def test_croissant_validates_and_mlcroissant_reads_records(corpus, tmp_path):
    mlc = pytest.importorskip("mlcroissant")
    _publish(corpus, tmp_path / "pub")
    doc = json.loads((tmp_path / "pub" / "croissant.json").read_text())
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    ds = mlc.Dataset(jsonld=str(tmp_path / "pub" / "croissant.json"))  # raises on validation errors
    index = pd.read_parquet(tmp_path / "pub" / "index.parquet")
    samples = list(ds.records(record_set="samples"))
    assert [r["samples/key"].decode() for r in samples] == list(index["key"])
    assert [r["samples/label"].decode() for r in samples] == list(index["label"])
    assert [r["samples/offset"] for r in samples] == list(index["offset"])
    assert sorted(_text(r["splits/split_name"]) for r in ds.records(record_set="splits")) == sorted(
        set(index["split"]))
    assert [_text(r["channels/name"]) for r in ds.records(record_set="channels")] == ["DNA", "ER"]
    prov = list(ds.records(record_set="provenance"))
    assert [p.decode() for p in prov[0]["provenance/channel_paths"]] == list(
        pd.read_parquet(tmp_path / "pub" / "provenance.parquet")["channel_paths"].iloc[0])
    # the image field: bytes mlcroissant can yield, described with dtype, shape and the decoder
    image = next(f for rs in doc["recordSet"] if rs["@id"] == "images" for f in rs["field"]
                 if f["@id"] == "images/image")
    assert image["dataType"] == "sc:Text" and "uint16 image of shape [2, 12, 12]" in image["description"]
    assert "numpy.load" in image["description"]
    meta = json.loads((tmp_path / "pub" / "shards.json").read_text())
    objs = {d["@id"]: d for d in doc["distribution"]}
    for s in meta["shards"]:
        obj = objs[s["name"]]
        assert obj["sha256"] == s["sha256"] and obj["contentSize"] == f"{s['bytes']} B"
    assert objs["shard-files"]["includes"] == "shard-*.tar"
    assert objs["payloads"]["encodingFormat"] == "application/x-npy"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_republish_is_byte_identical(corpus, tmp_path):
    _publish(corpus, tmp_path / "a")
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    _publish(corpus, tmp_path / "a")  # same DEST: accepted (same dataset), rewritten
    _publish(corpus, tmp_path / "b")  # another DEST: the same metadata bytes
    for p, data in before.items():
        assert p.read_bytes() == data, p
        assert (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() == data, p


def test_verify_names_truncated_altered_and_missing_files(corpus, tmp_path):
    pub = tmp_path / "pub"
    _publish(corpus, pub)
    names = [s["name"] for s in json.loads((pub / "shards.json").read_text())["shards"]]
    shard0, shard1 = pub / names[0], pub / names[1]
    shard0.write_bytes(shard0.read_bytes()[:-700])
    data = bytearray(shard1.read_bytes())
    data[2000] ^= 0xFF
    shard1.write_bytes(bytes(data))
    (pub / "splits" / "val.txt").unlink()
    with open(pub / "README.md", "a") as fh:
        fh.write("edited\n")
    problems = verify(pub)
    assert len(problems) == 4, problems
    assert any(p.startswith(f"truncated: {names[0]}") for p in problems)
    assert any(p.startswith(f"altered: {names[1]}") for p in problems)
    assert "missing: splits/val.txt" in problems
    assert any(p.startswith("altered: README.md") for p in problems)
    assert verify(tmp_path / "nothing-here")[0].startswith("SHA256SUMS missing")
    # the command-line verdict (for `cytodata verify DEST`): exit code 1 and one line per file
    import io

    from cytodata.publish.checksums import report

    text = io.StringIO()
    assert report(pub, out=text) == 1
    assert f"truncated: {names[0]}" in text.getvalue() and "4 problem(s)" in text.getvalue()
    (pub / "SHA256SUMS").write_text((pub / "SHA256SUMS").read_text() + "not a checksum line\n")
    assert any("SHA256SUMS line" in p for p in verify(pub))
    _publish(corpus, tmp_path / "fine")
    assert report(tmp_path / "fine", out=io.StringIO()) == 0


def test_in_place_references_the_shards(corpus, tmp_path):
    mlc = pytest.importorskip("mlcroissant")
    pub = tmp_path / "meta"
    summary = _publish(corpus, pub, in_place=True)
    assert summary["in_place"] and not list(pub.glob("shard-*.tar"))
    sums = (pub / "SHA256SUMS").read_text()
    rel = Path(__import__("os").path.relpath(corpus / "shards", pub)).as_posix()
    assert f"  {rel}/shard-000000.tar\n" in sums
    assert verify(pub) == []
    ds = mlc.Dataset(jsonld=str(pub / "croissant.json"))
    assert len(list(ds.records(record_set="samples"))) == 29


def test_refuses_bad_inputs(corpus, tmp_path):
    # not a shard set
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    with pytest.raises(PublishError, match="not a cytodata shard set"):
        publish(tmp_path / "plain", tmp_path / "out")
    # a shard changed after writing (same size): named, and DEST left without copies
    changed = tmp_path / "changed"
    shutil.copytree(corpus / "shards", changed)
    data = bytearray((changed / "shard-000002.tar").read_bytes())
    data[1500] ^= 0x01
    (changed / "shard-000002.tar").write_bytes(bytes(data))
    with pytest.raises(PublishError, match=r"shard-000002\.tar") as err:
        _publish_set(changed, tmp_path / "out2")
    assert "no longer match shards.json" in str(err.value)
    assert not [p for p in (tmp_path / "out2").rglob("*") if p.is_file()]  # DEST left as it was
    # a shard cut short or gone since writing: named before anything is published
    (changed / "shard-000002.tar").write_bytes(data[:-512])
    with pytest.raises(PublishError, match=r"shard-000002\.tar \(\d+ bytes, shards.json says \d+\)"):
        _publish_set(changed, tmp_path / "out3")
    (changed / "shard-000002.tar").unlink()
    with pytest.raises(PublishError, match=r"\['shard-000002\.tar'\] listed in shards.json are missing"):
        _publish_set(changed, tmp_path / "out3")
    assert not (tmp_path / "out3").exists()
    # DEST holding another dataset / unrelated files
    _publish(corpus, tmp_path / "taken")
    other = tmp_path / "other"
    write_demo_shards(other, 9, (1, 8, 8), samples_per_shard=4)
    with pytest.raises(PublishError, match="already holds another dataset"):
        _publish_set(other, tmp_path / "taken")
    with pytest.raises(PublishError, match="not a cytodata publication"):
        _publish_set(other, tmp_path / "plain")
    _publish_set(other, tmp_path / "taken", overwrite=True)
    assert verify(tmp_path / "taken") == []
    taken = tmp_path / "taken"  # nothing of the replaced dataset is left behind
    listed = sorted(line.split("  ", 1)[1] for line in (taken / "SHA256SUMS").read_text().splitlines())
    assert listed == sorted(str(p.relative_to(taken)) for p in taken.rglob("*") if p.is_file()
                            and p.name not in ("SHA256SUMS", ".cytodata-publish"))
    shards = json.loads((taken / "shards.json").read_text())["shards"]
    assert sorted(p.name for p in taken.glob("shard-*.tar")) == sorted(s["name"] for s in shards)
    assert not (taken / "manifest-provenance.json").exists()
    # a manifest that is not the one the shards came from
    with pytest.raises(PublishError, match="not the one these shards were written from"):
        publish(other, tmp_path / "o3", manifest=corpus / "manifest")


def _publish_set(src, dest, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PublishWarning)
        return publish(src, dest, **kw)


def test_license_override_and_unknown_warning(tmp_path):
    write_demo_shards(tmp_path / "set", 12, (1, 8, 8), samples_per_shard=5)
    with pytest.warns(PublishWarning, match=r"no license known for source\(s\) \['demo'\]"):
        publish(tmp_path / "set", tmp_path / "a")
    header = yaml.safe_load((tmp_path / "a" / "README.md").read_text().split("---\n")[1])
    assert header["license"] == "unknown"
    with warnings.catch_warnings():
        warnings.simplefilter("error", PublishWarning)  # no warning once the license is given
        publish(tmp_path / "set", tmp_path / "b", licenses={"demo": "CC0-1.0"}, citations={"demo": "Us"})
    text = (tmp_path / "b" / "README.md").read_text()
    cc0 = "[CC0-1.0](https://creativecommons.org/publicdomain/zero/1.0/)"
    assert "license: cc0-1.0" in text and f"| demo | 12 | {cc0} | Us |" in text
    croissant = json.loads((tmp_path / "b" / "croissant.json").read_text())
    assert croissant["license"] == "https://creativecommons.org/publicdomain/zero/1.0/"
    with pytest.raises(PublishError, match="not in this shard set"):
        publish(tmp_path / "set", tmp_path / "c", licenses={"nope": "MIT"})


def test_cli_publish_and_errors(corpus, tmp_path):
    cmd = [sys.executable, "-m", "cytodata", "publish", str(corpus / "shards"), "-o", str(tmp_path / "pub"),
           "--manifest", str(corpus / "manifest"), "--license", "lab2=CC0-1.0", "--name", "Lab screens",
           "--url", "https://example.org/lab-screens", "--creator", "Lab One"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "published 29 samples" in done.stdout and "warning" not in done.stderr
    assert verify(tmp_path / "pub") == []
    assert "pretty_name: Lab screens" in (tmp_path / "pub" / "README.md").read_text()
    doc = json.loads((tmp_path / "pub" / "croissant.json").read_text())
    assert (doc["url"], doc["creator"]["name"]) == ("https://example.org/lab-screens", "Lab One")
    bad = subprocess.run([sys.executable, "-m", "cytodata", "publish", str(tmp_path),
                          "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a cytodata shard set" in bad.stderr
    warn = subprocess.run(cmd[:6] + [str(tmp_path / "pub2"), "--manifest", str(corpus / "manifest")],
                          capture_output=True, text=True, timeout=300)
    assert warn.returncode == 0 and "warning: no license known for source(s) ['lab2']" in warn.stderr


def test_recipe_accepts_license_fields():
    from cytodata.recipe import parse_recipe

    r = parse_recipe({"name": "x", "sources": [{"adapter": "csv", "license": "CC0-1.0", "citation": "c",
                                                "url": "https://x", "params": {"path": "x.csv"}}]})
    assert (r.sources[0].license, r.sources[0].citation, r.sources[0].url) == ("CC0-1.0", "c", "https://x")


def test_publish_into_the_shard_folder_itself(tmp_path):
    write_demo_shards(tmp_path / "set", 11, (1, 8, 8), samples_per_shard=4)
    tars = {p.name: p.read_bytes() for p in (tmp_path / "set").glob("shard-*.tar")}
    summary = _publish_set(tmp_path / "set", tmp_path / "set", in_place=True)
    assert summary["in_place"] and verify(tmp_path / "set") == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "set").glob("shard-*.tar")} == tars
    assert "  shard-000000.tar\n" in (tmp_path / "set" / "SHA256SUMS").read_text()
    _publish_set(tmp_path / "set", tmp_path / "set")  # same place: nothing to copy, accepted


def test_mixed_channels_and_unassigned_split_validate(tmp_path):
    """Samples with different channel counts and rows without a split still give valid Croissant."""
    mlc = pytest.importorskip("mlcroissant")
    from cytodata.schema import make_key
    from cytodata.shards import write

    one = demo_manifest(tmp_path / "a", 6, (1, 8, 8))
    two = demo_manifest(tmp_path / "b", 5, (2, 8, 8), seed=1)
    two["image_id"] = two["image_id"] + "b"
    two["well"] = two["well"] + "b"
    two["key"] = [make_key(s, i) for s, i in zip(two["source"], two["image_id"], strict=True)]
    table = pd.concat([one, two], ignore_index=True)
    table.loc[:2, "split"] = pd.NA
    write(table, tmp_path / "set", samples_per_shard=4, scheduler="synchronous", progress=False)
    _publish_set(tmp_path / "set", tmp_path / "pub")
    doc = json.loads((tmp_path / "pub" / "croissant.json").read_text())
    image = next(f for rs in doc["recordSet"] if rs["@id"] == "images" for f in rs["field"]
                 if f["@id"] == "images/image")
    assert "per sample (KEY.json channels)" in image["description"] and " of shape " not in image["description"]
    assert "channels" not in {rs["@id"] for rs in doc["recordSet"]}
    assert (tmp_path / "pub" / "splits" / "unassigned.txt").read_text().split() == list(table["key"][:3])
    ds = mlc.Dataset(jsonld=str(tmp_path / "pub" / "croissant.json"))
    assert len(list(ds.records(record_set="samples"))) == 11
    assert verify(tmp_path / "pub") == []
