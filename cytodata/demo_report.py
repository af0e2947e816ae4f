"""The demo's one-page report: ``report/index.html`` with PNGs beside it.

Sections: the results table (NSC/NSCB with and without TVN, kNN, mAP for every embedding), the
training curves of each run (loss, validation top-1), the label distribution of the manifest,
the ledger (rows in, kept, dropped by reason), the QC montages and each evaluation report's plots
(PCA by MOA and by batch, confusion matrices).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(run: Path, png: Path, title: str) -> Path | None:
    """Loss (and validation top-1 when logged) against step from ``metrics.jsonl``."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_top1" in r]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color="tab:blue")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["val_top1"] for r in val], "o-", color="tab:orange",
                 label="validation top-1")
        ax2.set_ylabel("validation top-1", color="tab:orange")
        ax2.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def label_distribution(manifest: pd.DataFrame, png: Path) -> Path:
    """Images per weak label, coloured by source."""
    plt = _plt()
    counts = manifest.groupby(["label", "source"]).size().unstack(fill_value=0)
    counts = counts.loc[counts.sum(1).sort_values(ascending=False).index]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(counts) + 1.5))
    counts.plot.barh(stacked=True, ax=ax, width=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_ylabel("weak label")
    ax.set_title("Images per weak label (manifest)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_index_html(out: Path, results: dict) -> Path:
    """Write ``out/report/index.html`` and its PNGs; returns the HTML path."""
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    parts = ["<h1>cytodata demo: synthetic screens to trained, evaluated and published embeddings</h1>"]
    evaluation = results.get("evaluate") or {}
    if evaluation:
        rows = [[f'<a href="{html.escape(r["report"])}">{html.escape(name)}</a>', f"{r['nsc']:.3f}",
                 f"{r['nscb']:.3f}", f"{r['nsc_no_tvn']:.3f}", f"{r['knn']:.3f}", f"{r['map']:.3f}"]
                for name, r in evaluation.items()]
        parts.append("<h2>Results (synthetic BBBC021-layout screen)</h2>")
        parts.append(_table(rows, ["embedding", "NSC (TVN)", "NSCB (TVN)", "NSC (no TVN)",
                                   "11-NN MOA", "mAP MOA"]))
        parts.append("<p>NSC: 1-nearest-neighbour MOA accuracy over treatment profiles, excluding the "
                     "query's own compound; NSCB also excludes its batch. TVN: whitening fitted on "
                     "DMSO profiles (bbbc021-ando); no TVN: z-scored features "
                     "(bbbc021-cytoimagenet). Random init: the same backbone before training.</p>")
    runs = results.get("train") or {}
    if runs:
        parts.append("<h2>Training</h2>")
        for name, run in runs.items():
            png = training_curves(Path(run), report / f"training-{name}.png", f"{name} training")
            if png:
                parts.append(f'<p><img src="{png.name}" alt="{html.escape(name)} training curves"></p>')
            parts.append(f"<p>run folder: <code>{html.escape(str(run))}</code></p>")
    manifest_path = out / "manifest" / "manifest.parquet"
    if manifest_path.exists():
        manifest = pd.read_parquet(manifest_path)
        png = label_distribution(manifest, report / "labels.png")
        parts.append("<h2>Corpus</h2>")
        parts.append(f'<p><img src="{png.name}" alt="label distribution"></p>')
        ledger_path = out / "manifest" / "ledger.parquet"
        if ledger_path.exists():
            ledger = pd.read_parquet(ledger_path)
            by = ledger.groupby(["stage", "reason"]).size().reset_index(name="rows")
            parts.append(f"<p>rows in: {len(manifest) + len(ledger)}, kept: {len(manifest)}, "
                         f"dropped: {len(ledger)}</p>")
            parts.append(_table([[html.escape(str(a)), html.escape(str(b)), str(c)]
                                 for a, b, c in by.itertuples(index=False)], ["stage", "reason", "rows"]))
    qc_pngs = sorted((out / "qc").glob("**/*.png"))
    if qc_pngs:
        parts.append("<h2>Image QC</h2>")
        for p in qc_pngs[:4]:
            rel = Path("..") / p.relative_to(out)
            parts.append(f'<p>{html.escape(p.stem)}<br><img src="{rel}" alt="{html.escape(p.stem)}" '
                         'style="max-width:600px"></p>')
    plots = [(name, sorted((report / r["report"]).glob("*.png"))) for name, r in evaluation.items()]
    if any(p for _, p in plots):
        parts.append("<h2>Embeddings</h2>")
        for name, pngs in plots:
            for p in pngs:
                if "pca" in p.stem.lower() or "umap" in p.stem.lower():
                    parts.append(f'<p>{html.escape(name)}: {html.escape(p.stem)}<br>'
                                 f'<img src="{p.relative_to(report)}" style="max-width:480px"></p>')
    published = results.get("publish")
    if published:
        parts.append("<h2>Published</h2>")
        status = "all files verified" if not published["problems"] else html.escape(str(published["problems"]))
        parts.append(f"<p><code>{html.escape(str(published['dest']))}</code>: {status}</p>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
             "th{background:#f0f0f0}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>cytodata demo</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    index = report / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
