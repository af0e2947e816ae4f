"""The dataset card ``README.md``: a Hugging Face YAML header + Datasheets-for-Datasets sections.

``render_card(facts)`` is a pure function of :class:`~cytodata.publish.collect.Facts` (no dates,
no absolute paths of this machine), so re-publishing an unchanged shard set gives the same bytes.
"""

from __future__ import annotations

import yaml

from ..schema import BOOL_COLUMNS, FLOAT_COLUMNS, INT_COLUMNS, LIST_COLUMNS
from .collect import Facts, groups_across_splits, size_category, split_counts
from .repack import split_of
from .snippets import PORTABLE, repacked, snippets
from .sources import LICENSE_URLS, hf_license_id

MAX_LABEL_ROWS = 60  # longer label lists are cut in the card (index.parquet has them all)


def card_header(facts: Facts) -> dict:
    """Build the YAML front matter (Hugging Face dataset card conventions)."""
    ids = sorted({hf_license_id(s.license) for s in facts.sources.values()}) or ["unknown"]
    splits = [s for s in split_counts(facts.index)]
    header = {
        "pretty_name": facts.name,
        "license": ids[0] if len(ids) == 1 else ids,
        "task_categories": ["image-classification", "image-feature-extraction"],
        "tags": ["biology", "microscopy", "cell-painting", "high-content-screening", "webdataset",
                 "cytodata"],
        "size_categories": [size_category(len(facts.index))],
    }
    if repacked(facts):  # each split has its own shards: the datasets webdataset builder reads them
        # listed, not globbed: a glob would skip a missing shard and load fewer samples silently
        by_split: dict[str, list[str]] = {}
        for name, split in zip(facts.index["shard"].astype(str), split_of(facts.index), strict=True):
            names = by_split.setdefault(split, [])
            if not names or names[-1] != name:
                names.append(name)
        header["configs"] = [{"config_name": "default",
                              "data_files": [{"split": s, "path": by_split[s]} for s in splits]}]
        features = hf_features(facts)
        if features:
            header["dataset_info"] = {"config_name": "default", "features": features}
    else:  # shards referenced in place hold several splits each: the metadata rows per split
        header["configs"] = [{"config_name": "default",
                              "data_files": [{"split": s, "path": f"splits/{s}.parquet"} for s in splits]}]
    if "unknown" in ids:
        header["license_details"] = ("one or more sources have no known license; see 'Sources' "
                                     "before redistributing")
    return header


def _json_feature(key: str, value) -> dict:
    """The Hugging Face feature of one ``KEY.json`` field (types from the harmonized schema)."""
    if key == "shape":
        return {"name": key, "list": "int64"}
    if key in LIST_COLUMNS or isinstance(value, list):
        return {"name": key, "list": "string"}
    if key in INT_COLUMNS:
        return {"name": key, "dtype": "int64"}
    if key in FLOAT_COLUMNS:
        return {"name": key, "dtype": "float64"}
    if key in BOOL_COLUMNS:
        return {"name": key, "dtype": "bool"}
    return {"name": key, "dtype": "string"}


def hf_features(facts: Facts) -> list[dict] | None:
    """``dataset_info.features`` of the webdataset columns (payload, json, __key__, __url__).

    Declared rather than inferred: ``datasets`` infers types from the first five samples, so a
    metadata field that is null there and a string later fails the cast. None when the
    payload's dtype varies (no single column type).
    """
    meta, example = facts.meta, facts.example_meta
    dtype, shape, ext = meta.get("dtype"), meta.get("shape"), str(meta.get("ext"))
    if example is None:
        return None
    if meta.get("codec") in PORTABLE:
        if not dtype:
            return None
        payload = ({"name": ext, "dtype": {"array3_d": {"shape": [int(v) for v in shape], "dtype": dtype}}}
                   if shape else {"name": ext, "list": {"list": {"list": dtype}}})
    else:
        payload = {"name": ext, "dtype": "binary"}
    fields = [_json_feature(k, v) for k, v in sorted(example.items())]
    return [payload, {"name": "json", "struct": fields}, {"name": "__key__", "dtype": "string"},
            {"name": "__url__", "dtype": "string"}]


def _reading(facts: Facts) -> str:
    parts = ["Each snippet runs from a local copy of this folder (e.g. "
             "`huggingface-cli download REPO --repo-type dataset --local-dir DEST`, then `cd DEST`) "
             "and prints one sample's key, shape and dtype."]
    for client, explain, code in snippets(facts):
        parts += ["", f"**{client}**: {explain}", "", "```python", code.rstrip("\n"), "```"]
    return "\n".join(parts)


def _table(rows: list[list], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _sources(facts: Facts) -> str:
    counts = facts.index["source"].astype("string").value_counts().to_dict() if len(facts.index) else {}
    rows = []
    for name, info in sorted(facts.sources.items()):
        lic = info.license or "unknown"
        url = LICENSE_URLS.get(lic.lower()) if info.license else None
        rows.append([name, counts.get(name, 0), f"[{lic}]({url})" if url else lic,
                     info.citation or "unknown", info.url or ""])
    text = _table(rows, ["source", "samples", "license", "citation", "home page"])
    if any(s.license is None for s in facts.sources.values()):
        text += ("\n\n**License unknown** for: "
                 + ", ".join(sorted(n for n, s in facts.sources.items() if s.license is None))
                 + ". Check the provider's terms before redistributing these images; re-publish "
                 "with `--license SOURCE=SPDX-ID` once known.")
    return text


def _labels(facts: Facts) -> str:
    index = facts.index
    if not len(index) or index["label"].isna().all():
        return "No weak labels were assigned (the `label` column is empty)."
    labels = index["label"].astype("string").fillna("(none)")
    counts = labels.value_counts()
    cats = ({} if "category" not in index else  # one pass, not one scan per label
            index["category"].astype("string").groupby(labels.to_numpy()).first().fillna("").to_dict())
    rows = [[lab, cats.get(lab, ""), int(n)] for lab, n in counts.head(MAX_LABEL_ROWS).items()]
    text = (f"{len(counts)} labels; largest {int(counts.iloc[0])} samples, smallest "
            f"{int(counts.iloc[-1])} (imbalance {counts.iloc[0] / max(counts.iloc[-1], 1):.1f}x). "
            "Labels are CytoImageNet-style weak labels: one `(column, token)` pair per image, "
            "`category` names the metadata column it came from.\n\n")
    text += _table(rows, ["label", "category", "samples"])
    if len(counts) > MAX_LABEL_ROWS:
        text += f"\n\n({len(counts) - MAX_LABEL_ROWS} smaller labels not shown; see `index.parquet`.)"
    return text


def _splits(facts: Facts) -> str:
    split_cfg = facts.recipe.get("split") or {}
    group = split_cfg.get("group")
    counts = split_counts(facts.index)
    rows = [[s, n, f"`splits/{s}.txt`, `splits/{s}.parquet`"] for s, n in counts.items()]
    text = _table(rows, ["split", "samples", "files"]) + "\n\n"
    if group:
        crossing = groups_across_splits(facts.index, group) if group in facts.index.columns else None
        strat = split_cfg.get("stratify")
        text += (f"Splits assign whole `{group}` groups (fractions {split_cfg.get('fractions')}, "
                 + (f"stratified by `{strat}`)" if strat else "not stratified)"))
        text += (f"; {crossing} `{group}` groups cross splits in this set." if crossing is not None
                 else ".")
    else:
        crossing = groups_across_splits(facts.index, "parent_id")
        text += ("The split rule is not recorded (publish with `--manifest` to include the recipe); "
                 f"{crossing} source images (`parent_id`) cross splits in this set.")
    return text


def _qc(facts: Facts) -> str:
    meta, prov = facts.meta, facts.manifest_provenance or {}
    lines = []
    counts = prov.get("counts") or {}
    if counts:
        lines.append(f"Manifest build: {counts.get('inputs')} rows in, {counts.get('kept')} kept, "
                     f"{counts.get('dropped')} dropped.")
        by = prov.get("ledger_by_reason") or {}
        if by:
            lines.append("")
            lines.append(_table([[k.split("/", 1)[0], k.split("/", 1)[-1], v] for k, v in sorted(by.items())],
                                ["stage", "reason", "rows"]))
    rows_in = (meta.get("manifest") or {}).get("n_rows")
    led = facts.ledger
    lines.append("")
    written = rows_in - len(led) if rows_in is not None else "?"
    lines.append(f"Sharding: {rows_in} manifest rows in, {written} "
                 f"written as {len(facts.index)} samples, {len(led)} dropped"
                 + (" (by reason: " + ", ".join(f"{k}={int(v)}" for k, v in
                                                 led["reason"].value_counts().sort_index().items()) + ")"
                    if len(led) else "") + ". Every dropped row is in `ledger.parquet` with its reason.")
    qc = facts.recipe.get("image_qc") or {}
    if qc:
        lines.append(f"\nImage QC rules from the recipe: {qc.get('rules', qc)}.")
    return "\n".join(lines).strip()


def _preprocessing(facts: Facts) -> str:
    meta, recipe = facts.meta, facts.recipe
    mode = {"own": "each image keeps its own channels at full bit depth",
            "merged": "channels merged to one gray channel after per-channel percentile scaling",
            "split": "one sample per channel"}.get(meta.get("channel_mode"), meta.get("channel_mode"))
    lines = [f"- Channel mode `{meta.get('channel_mode')}`: {mode}; pixel values are the stored "
             "intensities (no normalization is applied to the data)."]
    if recipe.get("weak_labels"):
        wl = recipe["weak_labels"]
        lines.append(f"- Weak labels: min_count {wl.get('min_count')}, cap {wl.get('cap')}, "
                     f"presample {wl.get('presample')}.")
    if recipe.get("sample"):
        lines.append(f"- Stratified downsampling: {recipe['sample']}.")
    norm = meta.get("normalization") or {}
    lines.append(f"- Per-channel mean/std of the written pixels per plate ({len(norm.get('plate', {}))}), "
                 f"batch ({len(norm.get('batch', {}))}) and overall are in `shards.json` "
                 "(`normalization`), for plate-wise normalization at load time.")
    return "\n".join(lines)


def _format(facts: Facts) -> str:
    meta = facts.meta
    shape = meta.get("shape")
    return "\n".join([
        f"- {len(meta.get('shards', []))} WebDataset shards ("
        + ("`shard-<split>-<id>-NNNNNN.tar`: each split in its own shards" if repacked(facts) else "`shard-*.tar`")
        + ", plain POSIX tar), "
        f"{sum(s['bytes'] for s in meta.get('shards', []))} bytes; per sample `KEY.{meta.get('ext')}` "
        "(the image) and `KEY.json` (its metadata).",
        f"- Image: `(C, H, W)` array, dtype `{meta.get('dtype') or meta.get('dtypes')}`, shape "
        f"`{tuple(shape) if shape else 'varies (see index.parquet n_channels/height/width)'}`, "
        f"channels `{meta.get('channels') or 'vary per sample (KEY.json channels)'}`.",
        f"- Codec `{meta.get('codec')}` (lossless)"
        + (": a NumPy `.npy` file per image, decoded by webdataset's `.decode()`, Hugging Face "
           "`datasets` and `numpy.load`" if meta.get("codec") in PORTABLE else
           ": decode with `cytodata.shards.decode(sample)` or `cytodata.shards.wds_handler`; blosc "
           "payloads also with `numcodecs.Blosc().decode(...)` + the shape/dtype in KEY.json")
        + ". See *Reading this dataset*.",
        "- `index.parquet`: one row per sample with the byte range of its payload in its shard "
        "(`offset`, `size`) and the metadata columns; `croissant.json` describes every column.",
    ])


def _provenance(facts: Facts) -> str:
    meta, prov = facts.meta, facts.manifest_provenance or {}
    man = meta.get("manifest") or {}
    lines = [
        "- `provenance.parquet`: one row per sample with its source, original image id, "
        "plate/well/site, crop window (`x_min`..`y_max`) and the original file of every channel "
        "(`channel_paths`, in `channels` order), so every sample traces back to the source files.",
        f"- Shards written by cytodata {meta.get('cytodata_version')} from a manifest of "
        f"{man.get('n_rows')} rows (manifest.parquet sha256 `{man.get('sha256') or 'n/a: in memory'}`, "
        f"row content sha256 `{man.get('content_sha256')}`).",
    ]
    if prov:
        lines.append(f"- Recipe `{prov.get('recipe_name')}` (sha256 `{prov.get('recipe_sha256')}`); "
                     "the recipe and the sha256 of every source metadata file are in "
                     "`manifest-provenance.json`.")
    else:
        lines.append("- The manifest's recipe was not supplied to `cytodata publish` (`--manifest`).")
    lines.append("- `SHA256SUMS` lists every published file; check with `cytodata verify DEST` "
                 "or `sha256sum -c SHA256SUMS`.")
    return "\n".join(lines)


def _uses(facts: Facts) -> str:
    text = ("Pretraining and evaluating representation-learning models of cell morphology "
            "(self-supervised or weakly supervised on the weak labels), benchmarking loaders and "
            "augmentations on full-bit-depth multi-channel microscopy. Not for clinical or diagnostic "
            "use. Respect each source's license.")
    nc = sorted(n for n, s in facts.sources.items() if s.license and "-nc" in s.license.lower())
    if nc:
        text += f" Non-commercial terms apply to the samples of {nc}."
    return text


def _limitations(facts: Facts) -> str:
    lines = ["- Weak labels come from metadata tokens (compound, gene, phenotype ...), not from "
             "visual annotation: images with no visible phenotype still carry their treatment label.",
             "- Batch, plate and source effects are strong in microscopy; evaluate across "
             "plates/batches (e.g. NSCB) and normalize per plate (statistics in `shards.json`)."]
    if len(facts.sources) > 1:
        lines.append(f"- {len(facts.sources)} sources with different microscopes, stains and "
                     "channel sets are mixed; `source` identifies each sample's origin.")
    if len(facts.ledger):
        lines.append(f"- {len(facts.ledger)} manifest rows could not be written (see `ledger.parquet`); "
                     "they may not be missing at random.")
    unknown = sorted(n for n, s in facts.sources.items() if s.license is None)
    if unknown:
        lines.append(f"- License unknown for {unknown}.")
    return "\n".join(lines)


def render_card(facts: Facts) -> str:
    """README.md text: YAML header + Datasheets-for-Datasets sections."""
    header = yaml.safe_dump(card_header(facts), sort_keys=False, allow_unicode=True, width=1000)
    sections = [
        ("Sources", _sources(facts)),
        ("Labels", _labels(facts)),
        ("Splits", _splits(facts)),
        ("QC and ledger", _qc(facts)),
        ("Preprocessing", _preprocessing(facts)),
        ("Image format", _format(facts)),
        ("Reading this dataset", _reading(facts)),
        ("Provenance", _provenance(facts)),
        ("Intended uses", _uses(facts)),
        ("Limitations", _limitations(facts)),
    ]
    body = [f"# {facts.name}", "", facts.description or
            f"{len(facts.index)} microscopy images from {len(facts.sources)} source(s), "
            "curated and sharded with cytodata.", ""]
    for title, text in sections:
        body += [f"## {title}", "", text, ""]
    return "---\n" + header + "---\n\n" + "\n".join(body).rstrip() + "\n"
