"""Copy-paste code for each client of a published set, as the dataset card shows it.

``snippets(facts)`` returns ``[(client, explanation, code), ...]``: plain ``webdataset``,
Hugging Face ``datasets``, ``mlcroissant``, ``numcodecs`` (blosc payloads) and cytodata's own
loader. Every snippet runs as written from the published folder (the one holding README.md)
and ends by printing the key, shape and dtype of one sample; tests/test_publish_clients.py
extracts the snippets from a generated card and runs them. A pure function of the facts.
"""

from __future__ import annotations

from .collect import Facts, split_counts

PORTABLE = ("npy", "npy-gz")


def repacked(facts: Facts) -> bool:
    """True when the shards were rewritten one run per split (``shard-<split>-<id>-NNNNNN.tar``)."""
    return "published_from" in facts.meta


def _urls(facts: Facts, split: str) -> str:
    """Python expression for the shard URLs of ``split`` (or of the whole set)."""
    # listed, not globbed: a missing shard then fails loudly instead of shrinking the split
    if repacked(facts):
        return (f'[s["name"] for s in json.load(open("shards.json"))["shards"]\n'
                f'        if s["name"].startswith("shard-{split}-")]  # one split; drop the test for all')
    return ('[line.split("  ", 1)[1].strip() for line in open("SHA256SUMS")\n'
            '        if line.rstrip().endswith(".tar")]  # the shards, where they are published')


def _webdataset(facts: Facts, split: str) -> list[tuple[str, str, str]]:
    codec, ext = str(facts.meta.get("codec")), str(facts.meta.get("ext"))
    head = f"import json\n\nimport webdataset as wds\n\nurls = {_urls(facts, split)}\n"
    tail = ('    break\nprint(sample["__key__"], image.shape, image.dtype, meta["label"])\n')
    if codec in PORTABLE:
        return [("webdataset", "`.decode()` alone yields the `(C, H, W)` array and the metadata dict:",
                 head + "for sample in wds.WebDataset(urls, shardshuffle=False).decode():\n"
                 f'    image, meta = sample["{ext}"], sample["json"]  # (C, H, W) array, KEY.json dict\n'
                 + tail)]
    out = [("webdataset", "`cytodata.shards.wds_handler` decodes the payload inside the pipeline:",
            head.replace("import webdataset as wds\n", "import webdataset as wds\n"
                         "from cytodata.shards import wds_handler\n")
            + "for sample in wds.WebDataset(urls, shardshuffle=False).decode().map(wds_handler):\n"
            f'    image, meta = sample["{ext}"], sample["json"]  # (C, H, W) array, KEY.json dict\n'
            + tail)]
    if codec.startswith("blosc"):
        out.append(("webdataset + numcodecs (without cytodata)",
                    "A blosc payload is the C-order array bytes; shape and dtype are in `KEY.json`:",
                    head.replace("import webdataset as wds\n", "import numcodecs\nimport numpy as np\n"
                                 "import webdataset as wds\n")
                    + "for sample in wds.WebDataset(urls, shardshuffle=False).decode():\n"
                    '    meta = sample["json"]\n'
                    f'    raw = numcodecs.Blosc().decode(sample["{ext}"])\n'
                    '    image = np.frombuffer(raw, meta["dtype"]).reshape(meta["shape"])\n'
                    + tail))
    return out


def _datasets(facts: Facts, split: str) -> list[tuple[str, str, str]]:
    codec, ext = str(facts.meta.get("codec")), str(facts.meta.get("ext"))
    # a path, not ".": datasets names the dataset after the folder and refuses an empty name
    load = ('DEST = os.path.abspath(".")  # this folder; or the Hub repo id "user/name"\n'
            f'ds = load_dataset(DEST, split="{split}")\n')
    if not repacked(facts):
        return [("Hugging Face datasets", "The shards are referenced in place (splits share shards), "
                 "so the card's configs load the metadata rows; read pixels with webdataset above:",
                 "import os\n\nfrom datasets import load_dataset\n\n" + load
                 + 'print(ds[0]["key"], ds[0]["n_channels"], ds[0]["height"], ds[0]["width"])\n')]
    if codec in PORTABLE:
        return [("Hugging Face datasets", "The card's `configs` name each split's shards and "
                 "`dataset_info` types the columns (the payload an `Array3D` of the stored dtype); "
                 "rows come back as Python lists, so give numpy the dtype:",
                 "import os\n\nimport numpy as np\nfrom datasets import load_dataset\n\n" + load
                 + f'sample = ds[0]\nmeta = sample["json"]  # KEY.json as a dict\n'
                 f'image = np.asarray(sample["{ext}"], dtype=meta["dtype"])  # (C, H, W)\n'
                 'print(sample["__key__"], image.shape, image.dtype, meta["label"])\n')]
    decode = ('raw = numcodecs.Blosc().decode(ds[0]["{ext}"])\n'
              'image = np.frombuffer(raw, meta["dtype"]).reshape(meta["shape"])\n').format(ext=ext)
    if not codec.startswith("blosc"):
        decode = ('image = CODECS.get(meta["codec"]).decode(ds[0]["{ext}"], meta["shape"], '
                  'meta["dtype"])\n').format(ext=ext)
    imports = ("import os\n\nimport numcodecs\nimport numpy as np\n" if codec.startswith("blosc")
               else "import os\n\nfrom cytodata.shards import CODECS\n")
    return [("Hugging Face datasets", f"The payload column `{ext}` holds the {codec} bytes:",
             imports + "from datasets import load_dataset\n\n" + load + 'meta = ds[0]["json"]\n' + decode
             + 'print(ds[0]["__key__"], image.shape, image.dtype, meta["label"])\n')]


def _croissant(facts: Facts) -> list[tuple[str, str, str]]:
    codec = str(facts.meta.get("codec"))
    head = "import io\n\nimport mlcroissant as mlc\nimport numpy as np\n"
    if codec == "npy":
        decode = '    image = np.load(io.BytesIO(record["images/image"]), allow_pickle=False)\n'
    elif codec == "npy-gz":
        head = head.replace("import io\n", "import gzip\nimport io\n")
        decode = '    image = np.load(gzip.open(io.BytesIO(record["images/image"])), allow_pickle=False)\n'
    elif codec.startswith("blosc") and facts.meta.get("dtype"):
        head = head.replace("import io\n\n", "import json\n\nimport numcodecs\n") + (
            '\nindex = {r["samples/key"]: r for r in mlc.Dataset(jsonld="croissant.json").records("samples")}\n'
            'dtype = json.load(open("shards.json"))["dtype"]\n')
        decode = ('    row = index[record["images/key"]]\n'
                  '    shape = (row["samples/n_channels"], row["samples/height"], row["samples/width"])\n'
                  '    raw = numcodecs.Blosc().decode(record["images/image"])\n'
                  '    image = np.frombuffer(raw, dtype).reshape(shape)\n')
    else:
        return []
    return [("mlcroissant", "The `images` record set yields each payload's bytes (Croissant has no "
             "array decoder for them); numpy turns them into the array:",
             head + '\nds = mlc.Dataset(jsonld="croissant.json")\n'
             'for record in ds.records(record_set="images"):\n' + decode + "    break\n"
             'print(record["images/key"].decode(), image.shape, image.dtype)\n')]


def _cytodata(facts: Facts, split: str) -> list[tuple[str, str, str]]:
    where, what = ".", "the published folder"
    if not repacked(facts) and facts.shard_urls:  # --in-place: the shard set where it is
        first = next(iter(facts.shard_urls.values()))
        where, what = (first.rsplit("/", 1)[0] if "/" in first else "."), "the shard set the card points to"
    return [("cytodata", f"The project's loader reads {what} (checksums verified per sample):",
             "from cytodata.loaders import StreamingDataset\n\n"
             f'ds = StreamingDataset("{where}", split="{split}")\n'
             "sample = next(iter(ds))\n"
             'print(sample["__key__"], tuple(sample["image"].shape), sample["image"].dtype)\n')]


def snippets(facts: Facts) -> list[tuple[str, str, str]]:
    """``[(client, explanation, python code), ...]`` for the published set (see module doc)."""
    splits = list(split_counts(facts.index))
    if not splits:
        return []
    split = splits[0]
    return (_webdataset(facts, split) + _datasets(facts, split) + _croissant(facts)
            + _cytodata(facts, split))
