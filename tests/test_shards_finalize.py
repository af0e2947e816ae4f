"""One finish for every shard format: the same index files, no temp files, one typed index schema,
typed task options, and shard numbers carried from the plan (never parsed out of a file name)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pandas as pd
import pytest
from test_shards_webdataset import make_manifest, synthetic_rows

from cytodata.shards import write
from cytodata.shards._samples import INDEX_COLUMNS, records

#: files every finished shard set holds, whatever its format
COMMON = {"identity.json", "index.parquet", "ledger.parquet", "plan.json", "shards.json"}
#: what each format adds next to them (for the 4 rows of _rows: plates p0/p1, 2 shards of 2)
OWN = {
    "webdataset": {"shard-000000.tar", "shard-000000.tar.done.json",
                   "shard-000001.tar", "shard-000001.tar.done.json"},
    "zarr": {"image", "parts", "zarr.json", "channel", "written", "key", "plate", "well", "site",
             "label", "split", "source", "batch", "image_id", "parent_id", "category",
             "control_type", "compound", "moa", "y_min", "x_min"},
    "ome-zarr": {"p0.ome.zarr", "p1.ome.zarr"},
}
FORMATS = tuple(OWN)
OPTIONS = {"webdataset": {"samples_per_shard": 2}, "zarr": {"chunk": 8}, "ome-zarr": {}}


def _rows(tmp_path, n=4):
    rows = synthetic_rows(tmp_path, n, size=16)
    for i, r in enumerate(rows):
        r.update(split=["train", "val"][i % 2], site=i + 1)
    return rows


def _write(rows, out, fmt, **kw):
    return write(make_manifest(rows), out, format=fmt, scheduler="synchronous", progress=False,
                 **OPTIONS[fmt], **kw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_leaves_the_same_index_files_and_no_temp_file(tmp_path, fmt):
    rows = _rows(tmp_path)
    out = tmp_path / fmt
    _write(rows, out, fmt)
    assert {p.name for p in out.iterdir()} == COMMON | OWN[fmt]
    # a job killed while publishing leaves save_json/save_parquet temp files (and, for the
    # WebDataset and Zarr tasks, their own); the re-run resumes and sweeps every one of them
    stale = ["shards.json.tmp", "index.parquet.tmp", "ledger.parquet.tmp", "plan.json.tmp"]
    stale += {"webdataset": ["shard-000001.tar.tmp-0123abcd"],
              "zarr": ["parts/part-000000.done.json.tmp"], "ome-zarr": []}[fmt]
    for name in stale:
        (out / name).write_bytes(b"half written")
    summary = _write(rows, out, fmt)
    assert summary["samples"] == 4 and summary["rows_written"] == 4
    assert {p.name for p in out.iterdir()} == COMMON | OWN[fmt]
    left = [str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name]
    assert not left, left


def test_the_three_formats_finish_through_one_function(tmp_path, monkeypatch):
    from cytodata.shards import _finalize, _writer, omezarr, zarr

    real = _finalize.finalize
    assert _writer.finalize is zarr.finalize is omezarr.finalize is real
    calls = []

    def spy(out, *args, **kwargs):
        calls.append(kwargs["fmt"])
        return real(out, *args, **kwargs)

    for module in (_writer, zarr, omezarr):
        monkeypatch.setattr(module, "finalize", spy)
    rows = _rows(tmp_path)
    for fmt in FORMATS:
        _write(rows, tmp_path / fmt, fmt)
    assert calls == ["cytodata-webdataset", "cytodata-zarr", "cytodata-ome-zarr"]


def test_shards_json_and_index_share_one_schema_across_formats(tmp_path):
    rows = _rows(tmp_path)
    rows.append(dict(rows[0], image_id="gone", site=9,
                     channel_paths=[str(tmp_path / "missing.tif")] * 2))
    metas, indexes = {}, {}
    for fmt in FORMATS:
        out = tmp_path / fmt
        _write(rows, out, fmt)
        metas[fmt] = json.loads((out / "shards.json").read_text())
        indexes[fmt] = pd.read_parquet(out / "index.parquet")
    common = {"format", "version", "dtype", "dtypes", "channels", "channel_mode", "n_samples",
              "label_counts", "normalization", "manifest", "ledger", "cytodata_version"}
    for fmt, meta in metas.items():
        assert common <= set(meta), (fmt, common - set(meta))
        assert meta["n_samples"] == 4 and meta["dtype"] == "uint16" and meta["dtypes"] == ["uint16"]
        assert meta["channels"] == ["DNA", "RNA"] and meta["channel_mode"] == "own"
        assert meta["label_counts"] == {"l0": 2, "l1": 1, "l2": 1}
        assert meta["ledger"] == {"rows": 1, "by_reason": {"missing file": 1}}
        assert meta["manifest"]["n_rows"] == 5 and len(meta["manifest"]["identity"]) == 64
        assert meta["normalization"]["all"]["all"]["channels"] == ["DNA", "RNA"]
    # the normalization statistics are the same numbers whichever format wrote the pixels
    ref = metas["webdataset"]["normalization"]
    for fmt in ("zarr", "ome-zarr"):
        got = metas[fmt]["normalization"]
        assert {level: sorted(got[level]) for level in got} == {level: sorted(ref[level]) for level in ref}
        for level, groups in ref.items():
            for group, stats in groups.items():
                mine = got[level][group]
                assert (mine["channels"], mine["pixels"]) == (stats["channels"], stats["pixels"])
                assert mine["mean"] == pytest.approx(stats["mean"])
                assert mine["std"] == pytest.approx(stats["std"])
    # one dtype per manifest column in every index (not str in one format, string in another)
    for col in INDEX_COLUMNS + ("key",):
        dtypes = {fmt: str(ix[col].dtype) for fmt, ix in indexes.items()}
        assert set(dtypes.values()) == {"Int64" if col == "site" else "string"}, (col, dtypes)
    for fmt, ix in indexes.items():
        assert sorted(ix["key"]) == sorted(indexes["webdataset"]["key"]), fmt


def test_ome_zarr_plate_whose_every_image_fails_goes_to_the_ledger(tmp_path):
    """A plate with no readable field goes to the ledger; the rest of the export completes."""
    rows = _rows(tmp_path, 2)
    (tmp_path / "trunc.tif").write_bytes(open(rows[0]["channel_paths"][0], "rb").read()[:-300])
    rows.append(dict(rows[0], image_id="trunc", plate="p9", well="B03",
                     channel_paths=[str(tmp_path / "trunc.tif"), rows[0]["channel_paths"][1]]))
    out = tmp_path / "ome"
    summary = write(make_manifest(rows), out, format="ome-zarr", scheduler="synchronous",
                    progress=False)
    assert summary["samples"] == 2 and summary["dropped"] == {"truncated": 1}
    meta = json.loads((out / "shards.json").read_text())
    assert meta["plates"] == {"p0": "p0.ome.zarr", "p1": "p1.ome.zarr"}
    assert not (out / "p9.ome.zarr").exists()
    ledger = pd.read_parquet(out / "ledger.parquet")
    assert list(ledger["input_id"]) == ["trunc"] and list(ledger["reason"]) == ["truncated"]


def test_unknown_write_option_is_refused_by_name(tmp_path):
    rows = _rows(tmp_path, 1)
    with pytest.raises(TypeError, match=r"'tiel'.*tile"):
        write(make_manifest(rows), tmp_path / "z", format="zarr", tiel=8,
              scheduler="synchronous", progress=False)
    assert not (tmp_path / "z").exists() or not any((tmp_path / "z").iterdir())


def test_task_options_are_frozen_typed_and_pickle(tmp_path):
    from cytodata.shards._options import SampleOptions, WriteOptions
    from cytodata.shards.omezarr import PlateTask
    from cytodata.shards.webdataset import ShardTask
    from cytodata.shards.zarr import RowsTask

    opts = WriteOptions(codec="zstd", tile=8)
    samples = opts.samples
    assert samples == SampleOptions(channel_mode="own", qc=None, gray="auto")
    rec = records(make_manifest(_rows(tmp_path, 1)))[0]  # what the writers hand their tasks
    tasks = [ShardTask(out=str(tmp_path), index=3, recs=[rec], codec="zstd", samples=samples),
             RowsTask(path=str(tmp_path / "image"), start=0, images=[], samples=samples),
             PlateTask(path=str(tmp_path / "p.ome.zarr"), plate="p", fields=[], samples=samples)]
    for task in (opts, samples, *tasks):
        assert dataclasses.is_dataclass(task)
        assert all(f.type for f in dataclasses.fields(task))  # every field annotated
        assert pickle.loads(pickle.dumps(task)) == task  # dask ships them to workers
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(task, dataclasses.fields(task)[0].name, None)
    assert tasks[0].name == "shard-000003.tar"


def test_shard_number_comes_from_the_plan_not_the_file_name(tmp_path):
    """The index's ``shard_index`` is the task's number. Parsing it back out of the name
    (``name[6:12]``) gave 100000 for ``shard-1000000.tar``, the millionth-and-first shard."""
    from cytodata.shards._options import SampleOptions, WriteOptions
    from cytodata.shards._writer import finalize_webdataset
    from cytodata.shards.webdataset import ShardTask, write_shard

    recs = records(make_manifest(_rows(tmp_path, 1)))
    task = ShardTask(out=str(tmp_path), index=1_000_000, recs=recs, codec="npy",
                     samples=SampleOptions())
    stats = write_shard(task)
    assert stats["name"] == "shard-1000000.tar" and (tmp_path / "shard-1000000.tar").exists()
    plan = {"samples_per_shard": 1, "identity": "0" * 64}
    manifest = {"sha256": None, "content_sha256": "0" * 64, "n_rows": 1}
    finalize_webdataset(tmp_path, {task.index: stats}, plan, manifest, WriteOptions(codec="npy"))
    index = pd.read_parquet(tmp_path / "index.parquet")
    assert list(index["shard_index"]) == [1_000_000]
    assert list(index["shard"]) == ["shard-1000000.tar"]


def test_ome_zarr_refuses_split_channel_mode(tmp_path):
    """One image per field: split mode (one sample per channel) is refused, not cut to channel 0."""
    from cytodata.errors import ShardError

    with pytest.raises(ShardError, match=r"channel_mode='split'.*--channel-mode own` \(or merged\)"):
        write(make_manifest(_rows(tmp_path, 1)), tmp_path / "ome", format="ome-zarr",
              channel_mode="split", scheduler="synchronous", progress=False)


def test_ome_zarr_plate_tasks_run_on_a_local_cluster(tmp_path):
    """The typed plate tasks travel to real dask worker processes (LocalCluster, 2 workers)."""
    rows = _rows(tmp_path)
    sync = _write(rows, tmp_path / "sync", "ome-zarr")
    # not _write: it pins the synchronous scheduler
    dist = write(make_manifest(rows), tmp_path / "dist", format="ome-zarr", n_workers=2,
                 progress=False)
    assert dist["samples"] == sync["samples"] == 4 and dist["shards"] == 2
    a, b = (pd.read_parquet(tmp_path / d / "index.parquet") for d in ("sync", "dist"))
    pd.testing.assert_frame_equal(a, b)
