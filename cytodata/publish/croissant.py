"""``croissant.json``: Croissant 1.1 JSON-LD metadata of a published shard set.

Distribution: one FileObject per shard (sha256, size) plus a FileSet for the shard glob, the
payload members inside the shards, and the metadata files. Record sets: ``splits``
(``cr:Split``), ``channels``, ``samples`` (every ``index.parquet`` column), ``images`` (the
payload of each sample: a ``(C, H, W)`` array with its dtype, shape and channel names) and
``provenance`` (``provenance.parquet``: source files per sample). A pure function of the facts
and the file table; checked with ``mlcroissant`` in tests/test_publish.py.
"""

from __future__ import annotations

import pandas as pd

from .collect import Facts, split_counts
from .sources import LICENSE_URLS

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"

#: the @context mlcroissant writes for Croissant 1.1 (a different one only draws a warning)
CONTEXT: dict = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "name": {"@container": "@language"},
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

_COLUMN_DOCS = {
    "shard": "tar file holding the sample", "shard_index": "number of the shard",
    "key": "sample key (tar member stem)", "offset": "byte offset of the payload data in the shard",
    "size": "payload bytes", "meta_offset": "byte offset of the KEY.json member data",
    "meta_size": "KEY.json bytes", "n_channels": "C", "height": "H (pixels)", "width": "W (pixels)",
    "label": "weak label token", "category": "metadata column the label came from",
    "split": "train / val / test", "plate": "plate id", "batch": "batch (e.g. week)",
    "source": "source dataset id", "well": "well (e.g. B02)", "site": "field of view in the well",
    "image_id": "image id in the source", "parent_id": "source image the sample comes from",
    "control_type": "trt / negcon / poscon / empty", "compound": "compound", "moa": "mechanism of action",
    "channels": "channel names, in array order", "channel_paths": "original file of each channel",
    "x_min": "crop window in the source image (pixels)", "scaling": "resize factor applied",
}


#: media type of each codec's payload members (the ``payloads`` FileSet)
PAYLOAD_FORMATS = {"npy": "application/x-npy", "npy-gz": "application/gzip", "png16": "image/png",
                   "tiff": "image/tiff", "zstd": "application/zstd"}


def decode_hint(codec) -> str:
    """How a reader without cytodata turns one payload member's bytes into the array."""
    if codec == "npy":
        return "decode with numpy.load(io.BytesIO(data), allow_pickle=False)"
    if codec == "npy-gz":
        return "decode with numpy.load(gzip.open(io.BytesIO(data)), allow_pickle=False)"
    if str(codec).startswith("blosc"):
        return ("decode with numpy.frombuffer(numcodecs.Blosc().decode(data), dtype).reshape(shape), "
                "shape and dtype from the sample's KEY.json")
    return "decode with cytodata.shards.CODECS.get(codec).decode(data, shape, dtype)"


def _data_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "sc:Boolean"
    if pd.api.types.is_integer_dtype(series):
        return "sc:Integer"
    if pd.api.types.is_float_dtype(series):
        return "sc:Float"
    return "sc:Text"


def _ref(id_: str) -> dict:
    return {"@id": id_}


def _file_object(id_: str, url: str, fmt: str, sha256: str, size: int, description: str) -> dict:
    return {"@type": "cr:FileObject", "@id": id_, "name": id_, "description": description,
            "contentUrl": url, "contentSize": f"{size} B", "encodingFormat": fmt, "sha256": sha256}


def _column_fields(record: str, frame: pd.DataFrame, file_id: str, list_columns=()) -> list[dict]:
    fields = []
    for col in frame.columns:
        f = {"@type": "cr:Field", "@id": f"{record}/{col}", "name": col,
             "description": _COLUMN_DOCS.get(col, col),
             "dataType": "sc:Text" if col in list_columns else _data_type(frame[col]),
             "source": {"fileObject": _ref(file_id), "extract": {"column": col}}}
        if col in list_columns:
            f["isArray"] = True
            f["arrayShape"] = "-1"
        fields.append(f)
    return fields


def _glob(facts: Facts, names: list[str]) -> str:
    """``shard-*.tar`` where the shards are: in DEST, or beside the first one (``--in-place``)."""
    url = facts.shard_urls.get(names[0], names[0]) if names else "shard-*.tar"
    return f"{url.rsplit('/', 1)[0]}/shard-*.tar" if "/" in url else "shard-*.tar"


def build_croissant(facts: Facts, files: dict[str, tuple[str, int]]) -> dict:
    """Build the Croissant document. ``files``: published path -> (sha256, bytes) so far."""
    meta = facts.meta
    ext = meta.get("ext") or "bin"
    shard_names = [s["name"] for s in meta.get("shards", [])]
    dist = []
    for s in meta.get("shards", []):
        url = facts.shard_urls.get(s["name"], s["name"])
        dist.append(_file_object(s["name"], url, "application/x-tar", s["sha256"], int(s["bytes"]),
                                 f"WebDataset shard, {s['samples']} samples"))
    docs = {"index.parquet": ("application/x-parquet", "one row per sample: byte ranges + metadata"),
            "provenance.parquet": ("application/x-parquet", "per-sample source files and location"),
            "shards.json": ("application/json", "shard list, codec, normalization statistics"),
            "ledger.parquet": ("application/x-parquet", "rows not written, with reasons"),
            "manifest-provenance.json": ("application/json", "recipe and source file checksums")}
    for path in sorted(files):
        if path in docs:
            fmt, doc = docs[path]
        elif path.startswith("splits/"):
            fmt = "application/x-parquet" if path.endswith(".parquet") else "text/plain"
            doc = ("samples of one split (keys, one per line)" if fmt == "text/plain"
                   else "index rows of one split")
        else:
            continue
        sha, size = files[path]
        dist.append(_file_object(path, path, fmt, sha, size, doc))
    dist.append({"@type": "cr:FileSet", "@id": "shard-files", "name": "shard-files",
                 "description": f"all {len(shard_names)} shards (checksums on each shard's FileObject "
                                "and in SHA256SUMS)",
                 "encodingFormat": "application/x-tar", "includes": _glob(facts, shard_names)})
    codec_doc = f"{meta.get('codec')} payloads of (C, H, W) arrays ({decode_hint(meta.get('codec'))})"
    dist.append({"@type": "cr:FileSet", "@id": "payloads", "name": "payloads", "description": codec_doc,
                 "containedIn": [_ref(n) for n in shard_names],
                 "encodingFormat": PAYLOAD_FORMATS.get(str(meta.get("codec")), "application/octet-stream"),
                 "includes": f"*.{ext}"})

    splits = list(split_counts(facts.index))
    records = [{
        "@type": "cr:RecordSet", "@id": "splits", "name": "splits", "dataType": "cr:Split",
        "description": "the splits of this dataset", "key": _ref("splits/split_name"),
        "field": [{"@type": "cr:Field", "@id": "splits/split_name", "name": "split_name",
                   "description": "name of the split", "dataType": "sc:Text"}],
        "data": [{"splits/split_name": s} for s in splits],
    }]
    channels = meta.get("channels")
    if channels:
        records.append({
            "@type": "cr:RecordSet", "@id": "channels", "name": "channels",
            "description": "channel names in array order (axis 0 of each image)",
            "key": _ref("channels/index"),
            "field": [{"@type": "cr:Field", "@id": "channels/index", "name": "index",
                       "description": "position on the channel axis", "dataType": "sc:Integer"},
                      {"@type": "cr:Field", "@id": "channels/name", "name": "name",
                       "description": "channel (stain) name", "dataType": "sc:Text"}],
            "data": [{"channels/index": i, "channels/name": c} for i, c in enumerate(channels)],
        })
    sample_fields = _column_fields("samples", facts.index, "index.parquet")
    records.append({"@type": "cr:RecordSet", "@id": "samples", "name": "samples",
                    "description": "one record per sample (index.parquet)", "key": _ref("samples/key"),
                    "field": sample_fields})
    shape = meta.get("shape")
    dtype = meta.get("dtype")  # None when samples differ (8- and 16-bit sources)
    dtype_doc = dtype or f"one of {meta.get('dtypes')} (per sample: KEY.json dtype)"
    # mlcroissant yields a file's content as bytes and casts them to the field's dataType; an
    # element type (cr:UInt16) makes it call int() on the whole payload. The payload is
    # therefore declared as bytes (sc:Text) and its description and the card say how to decode it.
    image = {"@type": "cr:Field", "@id": "images/image", "name": "image",
             "description": (f"(C, H, W) {dtype_doc} image"
                             + (f" of shape {list(shape)}" if shape else "")
                             + f", channels {channels or 'per sample (KEY.json channels)'}: the bytes of "
                             f"the {meta.get('codec')} member; {decode_hint(meta.get('codec'))}"),
             "dataType": "sc:Text",
             "source": {"fileSet": _ref("payloads"), "extract": {"fileProperty": "content"}}}
    records.append({
        "@type": "cr:RecordSet", "@id": "images", "name": "images",
        "description": "the image of each sample (payload members of the shards)",
        "key": _ref("images/key"),
        "field": [{"@type": "cr:Field", "@id": "images/key", "name": "key",
                   "description": "sample key", "dataType": "sc:Text",
                   # keys hold no dots (FORMAT.md), so the key is the member name up to its first dot
                   "source": {"fileSet": _ref("payloads"), "extract": {"fileProperty": "filename"},
                              "transform": {"regex": "^([^.]+)"}},
                   "references": {"field": _ref("samples/key")}},
                  image],
    })
    if "provenance.parquet" in files:
        prov_fields = _column_fields("provenance", facts.provenance, "provenance.parquet",
                                     list_columns=("channels", "channel_paths"))
        records.append({"@type": "cr:RecordSet", "@id": "provenance", "name": "provenance",
                        "description": "per-sample provenance: source, plate/well/site, crop window and "
                                       "the original file of every channel",
                        "key": _ref("provenance/key"), "field": prov_fields})

    licenses = sorted({LICENSE_URLS.get(s.license.lower(), s.license) if s.license else "unknown"
                       for s in facts.sources.values()}) or ["unknown"]
    cites = [f"{n}: {s.citation}" for n, s in sorted(facts.sources.items()) if s.citation]
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": facts.name,
        "description": facts.description or f"{len(facts.index)} microscopy images (cytodata shard set)",
        "identifier": f"cytodata:{facts.identity}",
        "version": facts.version,
        "license": licenses if len(licenses) > 1 else licenses[0],
        "citeAs": "; ".join(cites) if cites else "unknown",
        "keywords": ["microscopy", "cell painting", "high-content screening", "webdataset"],
        **({"url": facts.url} if facts.url else {}),
        **({"creator": {"@type": "sc:Organization", "name": facts.creator}} if facts.creator else {}),
        "distribution": dist,
        "recordSet": records,
    }
