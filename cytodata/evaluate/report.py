"""A report people can read: metric tables, per-MOA accuracy, confusion matrices, scatter plots.

``write_report(results, out_dir)`` writes ``report.md`` (or ``report.html``), ``metrics.json``,
per-metric CSV tables and PNG figures (matplotlib, Agg backend). Profiles are drawn with UMAP
when the ``umap`` package is importable, else PCA; the report says which.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import EvaluationError
from .matching import MatchResult
from .profiles import feature_matrix, resolve_features
from .retrieval import MapResult

FORMATS = ("md", "html")


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _table(df: pd.DataFrame, fmt: str) -> str:
    """A small table as Markdown or HTML (no optional dependency such as tabulate)."""
    if fmt == "html":
        return df.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}")
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
             for row in df.itertuples(index=False)]
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(r) + " |" for r in cells])


def _embed_2d(x: np.ndarray) -> tuple[np.ndarray, str]:
    try:
        import umap  # noqa: F401  optional

        return umap.UMAP(random_state=0).fit_transform(x), "UMAP"
    except ImportError:
        xc = x - x.mean(axis=0)
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        coords = xc @ vt[:2].T
        if coords.shape[1] < 2:
            coords = np.column_stack([coords, np.zeros(len(coords))])
        return coords, "PCA (umap not installed)"


def _scatter(coords: np.ndarray, labels: pd.Series, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5))
    values = labels.astype("string").fillna("NA")
    cmap = plt.get_cmap("tab20")
    for i, lab in enumerate(sorted(values.unique())):
        sel = (values == lab).to_numpy()
        ax.scatter(coords[sel, 0], coords[sel, 1], s=18, color=cmap(i % 20), label=lab)
    ax.set_title(title)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _confusion_png(confusion: pd.DataFrame, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(confusion)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * n + 2), max(3.5, 0.45 * n + 1.5)))
    ax.imshow(confusion.to_numpy(), cmap="Blues")
    ax.set_xticks(range(n), confusion.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(n), confusion.index, fontsize=7)
    for (i, j), v in np.ndenumerate(confusion.to_numpy()):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def write_report(results: dict, out_dir, *, profiles: pd.DataFrame | None = None,
                 features: Sequence[str] | str | None = None, format: str = "md") -> Path:
    """Write the report for ``run_protocol`` results into ``out_dir``; returns the report path.

    ``profiles``/``features`` default to ``results["profiles"]``/``results["features"]``.
    """
    if format not in FORMATS:
        raise EvaluationError(f"unknown report format {format!r}; valid: {FORMATS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = results.get("metrics", {})
    profiles = results.get("profiles") if profiles is None else profiles
    features = results.get("features") if features is None else features
    sections: list[tuple[str, str]] = []  # (heading, body in the chosen format)
    summary_rows, json_out = [], {"protocol": results.get("protocol"),
                                  "notes": results.get("notes", []), "metrics": {}}

    def img(name: str, alt: str) -> str:
        return (f'<img src="{name}" alt="{html.escape(alt)}">' if format == "html"
                else f"![{alt}]({name})")

    for key, res in metrics.items():
        if isinstance(res, MatchResult):
            summary_rows.append({"metric": res.name, "score (%)": _pct(res.accuracy),
                                 "95% CI (± pp)": _pct(res.ci95),
                                 "n": f"{res.correct}/{res.total}"})
            per = res.per_moa.copy()
            per["accuracy (%)"] = [_pct(v) for v in per.pop("accuracy")]
            per["95% CI (± pp)"] = [_pct(v) for v in per.pop("ci95")]
            per.to_csv(out / f"{_slug(key)}_per_class.csv", index=False)
            res.predictions.to_csv(out / f"{_slug(key)}_predictions.csv")
            png = f"{_slug(key)}_confusion.png"
            _confusion_png(res.confusion, f"{res.name} confusion", out / png)
            body = _table(per, format) + "\n\n" + img(png, f"{res.name} confusion matrix")
            if res.dropped:
                body += f"\n\nDropped (present in one batch only): {', '.join(res.dropped)}"
            sections.append((f"{res.name}: per class", body))
            json_out["metrics"][key] = res.summary()
        elif isinstance(res, MapResult):
            summary_rows.append({"metric": res.name, "score (%)": _pct(res.mean_map),
                                 "95% CI (± pp)": "-",
                                 "n": f"{int(res.map['below_corrected_p'].sum())}/{len(res.map)}"
                                      f" retrieved at FDR {res.fdr}"})
            res.map.to_csv(out / f"{_slug(key)}.csv", index=False)
            res.ap.to_csv(out / f"{_slug(key)}_ap.csv", index=False)
            sections.append((f"{res.name} per group", _table(res.map.round(4), format)))
            json_out["metrics"][key] = res.summary()
    if profiles is not None and len(profiles) >= 3:
        cols = resolve_features(profiles, features)
        coords, method = _embed_2d(feature_matrix(profiles, cols))
        body = []
        for col in ("moa", "batch"):
            if col in profiles.columns:
                png = f"profiles_{col}.png"
                _scatter(coords, profiles[col], f"{method} of profiles by {col}", out / png)
                body.append(img(png, f"profiles by {col}"))
        sections.append((f"Profiles ({method})", "\n\n".join(body) or "no moa/batch column"))
    (out / "metrics.json").write_text(json.dumps(json_out, indent=2, default=str))
    title = f"Evaluation report: {results.get('protocol', 'results')}"
    notes = results.get("notes", [])
    summary = _table(pd.DataFrame(summary_rows), format) if summary_rows else "no metrics"
    if format == "html":
        parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>", summary]
        parts += [f"<p>{html.escape(n)}</p>" for n in notes]
        for head, body in sections:
            parts += [f"<h2>{html.escape(head)}</h2>", body]
        path = out / "report.html"
        path.write_text("<!doctype html><meta charset='utf-8'><body>\n" + "\n".join(parts)
                        + "\n</body>")
    else:
        parts = [f"# {title}", "## Summary", summary] + [f"- {n}" for n in notes]
        for head, body in sections:
            parts += [f"## {head}", body]
        path = out / "report.md"
        path.write_text("\n\n".join(parts) + "\n")
    return path
