"""A report a scientist reads without the code.

``write_report(results, out_dir)`` writes ``report.md`` (or ``report.html``), ``metrics.json``,
per-metric CSV tables and PNG figures (matplotlib, Agg backend):

- a summary table: score, Wilson 95% interval, n scored of n given, and the chance level;
- what each metric means (definitions), what was scored and what was left out, and why;
- per class accuracy with intervals and the chance line; confusion matrices with readable
  counts; predictions naming each treatment and its nearest neighbour;
- the profiles drawn in 2-D: PCA with the explained variance on the axes, and UMAP as well
  when the ``umap`` package is installed (each figure says which it is).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import EvaluationError
from .matching import MatchResult, _natural_key
from .profiles import feature_matrix, resolve_features
from .retrieval import MapResult

FORMATS = ("md", "html")


def _pct(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _interval(low, high) -> str:
    if low is None or not (np.isfinite(low) and np.isfinite(high)):
        return "-"
    return f"{100 * low:.1f} to {100 * high:.1f}"


def _table(df: pd.DataFrame, fmt: str) -> str:
    """Render a small table as Markdown or HTML (no optional dependency such as tabulate)."""
    if df.empty:
        return "(none)"
    if fmt == "html":
        return df.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}")
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "/") for v in row]
             for row in df.itertuples(index=False)]
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(r) + " |" for r in cells])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pca(x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """First two principal components and their axis labels with explained variance."""
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    coords = xc @ vt[:2].T
    var = s ** 2
    share = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    if coords.shape[1] < 2:
        coords = np.column_stack([coords, np.zeros(len(coords))])
        share = np.append(share, 0.0)
    return coords, [f"PC{i + 1} ({100 * share[i]:.1f}% of variance)" for i in range(2)]


def _umap(x: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
    try:
        import umap
    except ImportError:
        return None
    n = len(x)
    coords = umap.UMAP(random_state=0, n_neighbors=max(2, min(15, n - 1))).fit_transform(x)
    return coords, ["UMAP 1 (no units)", "UMAP 2 (no units)"]


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _scatter(coords: np.ndarray, axes: list[str], labels: pd.Series, title: str,
             path: Path, legend_title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    # a profile spanning several batches carries "a|b|c": name it briefly, keep the legend
    values = labels.astype("string").fillna("NA").map(
        lambda v: f"several ({v.count('|') + 1}: {v.split('|')[0]}...)" if "|" in v else v)
    cmap = plt.get_cmap("tab10")
    for i, lab in enumerate(sorted(values.unique(), key=_natural_key)):
        sel = (values == lab).to_numpy()
        # 10 colours x 8 markers: classes stay distinguishable past ten
        ax.scatter(coords[sel, 0], coords[sel, 1], s=30, color=cmap(i % 10),
                   marker=MARKERS[(i // 10) % len(MARKERS)], edgecolors="white",
                   linewidths=0.4, label=f"{lab} ({int(sel.sum())})")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=10)
    ax.legend(title=legend_title, fontsize=7, title_fontsize=8, loc="center left",
              bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(alpha=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _confusion_png(confusion: pd.DataFrame, title: str, path: Path, label: str) -> None:
    plt = _plt()
    n = len(confusion)
    values = confusion.to_numpy()
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * n + 3), max(4, 0.5 * n + 2)))
    im = ax.imshow(values, cmap="Blues", vmin=0)
    ax.set_xticks(range(n), confusion.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), confusion.index, fontsize=7)
    top = values.max() if values.size else 0
    for (i, j), v in np.ndenumerate(values):
        if v:  # white text on dark cells, black on light ones
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > top / 2 else "black")
    ax.set_xlabel(f"predicted {label} (nearest neighbour's)")
    ax.set_ylabel(f"true {label}")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.7, label="profiles")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _per_class_png(per: pd.DataFrame, label: str, chance: float, title: str,
                   path: Path) -> None:
    plt = _plt()
    per = per.sort_values("accuracy")
    y = np.arange(len(per))
    acc = 100 * per["accuracy"].to_numpy()
    lo = 100 * per["ci_low"].to_numpy()
    hi = 100 * per["ci_high"].to_numpy()
    fig, ax = plt.subplots(figsize=(7.5, max(3, 0.35 * len(per) + 1.5)))
    ax.barh(y, acc, color="#4C72B0", alpha=0.85)
    ax.errorbar(acc, y, xerr=[acc - lo, hi - acc], fmt="none", ecolor="black", capsize=3,
                lw=1)
    names = [f"{m} (n={t})" for m, t in zip(per[label], per["total"], strict=True)]
    ax.set_yticks(y, names, fontsize=7)
    if np.isfinite(chance):
        ax.axvline(100 * chance, color="#C44E52", ls="--", lw=1.2,
                   label=f"chance ({100 * chance:.1f}%)")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%) with Wilson 95% interval")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: what the counts of ``results["counts"]`` mean, for the "What was scored" table
COUNT_LABELS: dict[str, str] = {
    "rows_expected": "metadata rows (images) given",
    "rows_scored": "rows with an embedding (scored)",
    "features": "feature columns",
    "features_selected": "feature columns kept by feature selection",
    "treatments_in_metadata": "treatments (compound, concentration) in the metadata",
    "treatments_without_moa": "treatments without an MOA annotation (not scored)",
    "treatments_profiled": "treatment profiles (MOA-annotated, not control)",
    "control_images": "control images (fit the normalization)",
    "nsc_scored": "treatments scored by NSC",
    "nscb_scored": "treatments scored by NSCB",
    "knn_scored": "rows scored by k-NN",
    "wells": "wells", "treatment_wells": "treatment wells",
    "treatments": "treatments with wells", "treatments_single_well":
        "treatments with a single well (no replicate, not scored)",
    "moa_profiles": "treatment profiles for MOA retrieval",
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def _summary_row(key: str, res) -> dict | None:
    """One line of the summary table for any result type."""
    if isinstance(res, MatchResult):
        return {"metric": res.name, "score (%)": _pct(res.accuracy),
                "95% CI (%, Wilson)": _interval(res.ci_low, res.ci_high),
                "n": f"{res.correct} of {res.total} correct", "chance (%)": _pct(res.chance)}
    if isinstance(res, MapResult):
        return {"metric": res.name, "score (%)": _pct(res.mean_map),
                "95% CI (%, Wilson)": "-",
                "n": f"{int(res.map['below_corrected_p'].sum())} of {len(res.map)} groups "
                     f"retrieved (BH-corrected p < {res.fdr})",
                "chance (%)": "see null"}
    if hasattr(res, "fraction"):
        return {"metric": res.name, "score (%)": _pct(res.fraction),
                "95% CI (%, Wilson)": _interval(res.ci_low, res.ci_high),
                "n": f"{res.strong} of {res.total} groups",
                "chance (%)": _pct(1 - res.quantile)}
    if hasattr(res, "score"):
        is_pct = not res.name.startswith("grit")
        return {"metric": res.name, "score (%)": _pct(res.score) if is_pct else
                f"{res.score:.2f} (z)", "95% CI (%, Wilson)": _interval(res.ci_low, res.ci_high),
                "n": f"{res.total} scored", "chance (%)": _pct(res.chance) if is_pct else "0 (z)"}
    return None


def summary_table(results: dict) -> pd.DataFrame:
    """Return the summary rows of ``results["metrics"]`` as a table (also what the CLI prints)."""
    rows = [r for k, v in results.get("metrics", {}).items()
            if (r := _summary_row(k, v)) is not None]
    return pd.DataFrame(rows, columns=["metric", "score (%)", "95% CI (%, Wilson)", "n",
                                       "chance (%)"])


def _json_ready(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return str(obj)


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
    json_out = {"protocol": results.get("protocol"), "notes": results.get("notes", []),
                "counts": results.get("counts", {}), "metrics": {}}

    def img(name: str, alt: str) -> str:
        return (f'<img src="{name}" alt="{html.escape(alt)}">' if format == "html"
                else f"![{alt}]({name})")

    def para(text: str) -> str:
        return f"<p>{html.escape(text)}</p>" if format == "html" else text

    definitions = []
    for key, res in metrics.items():
        text = getattr(res, "definition", "")
        if text:
            if text.startswith(f"{res.name}:"):
                text = text[len(res.name) + 1:].strip()
            elif text.startswith(f"{res.name} "):
                text = text[len(res.name):].strip()
            definitions.append(f"**{res.name}** {text}" if format == "md"
                               else f"<b>{html.escape(res.name)}</b> {html.escape(text)}")
        if isinstance(res, MatchResult):
            label = res.per_moa.columns[0]
            per = res.per_moa.copy()
            per.to_csv(out / f"{_slug(key)}_per_class.csv", index=False)
            res.predictions.to_csv(out / f"{_slug(key)}_predictions.csv")
            shown = pd.DataFrame({
                label: per[label], "correct": per["correct"], "total": per["total"],
                "accuracy (%)": [_pct(v) for v in per["accuracy"]],
                "95% CI (%, Wilson)": [_interval(a, b) for a, b in
                                       zip(per["ci_low"], per["ci_high"], strict=False)]})
            conf_png, bar_png = f"{_slug(key)}_confusion.png", f"{_slug(key)}_per_class.png"
            _confusion_png(res.confusion, f"{res.name}: {res.correct} of {res.total} "
                           f"profiles matched ({_pct(res.accuracy)}%)", out / conf_png, label)
            _per_class_png(per, label, res.chance, f"{res.name} per {label}", out / bar_png)
            body = [_table(shown, format), img(bar_png, f"{res.name} accuracy per {label}"),
                    img(conf_png, f"{res.name} confusion matrix")]
            wrong = res.predictions[~res.predictions["correct"]]
            if len(wrong) and "neighbour" in wrong.columns:
                cols = [c for c in ("neighbour", "predicted", "distance") if c in wrong.columns]
                mism = wrong[cols].copy()
                mism.insert(0, "profile", wrong.index.astype(str))
                mism.insert(1, f"true {label}", wrong[label] if label in wrong.columns
                            else "")
                body.append(para(f"Mismatched profiles ({len(wrong)}; all predictions in "
                                 f"{_slug(key)}_predictions.csv):"))
                body.append(_table(mism.head(25).round(4), format))
            if len(res.excluded):
                body.append(para(f"Left out of {res.name} ({len(res.excluded)}):"))
                body.append(_table(res.excluded, format))
            sections.append((f"{res.name}: per {label}", "\n\n".join(body)))
        elif isinstance(res, MapResult):
            res.map.to_csv(out / f"{_slug(key)}.csv", index=False)
            res.ap.to_csv(out / f"{_slug(key)}_ap.csv", index=False)
            sections.append((f"{res.name} per group", _table(res.map.round(4), format)))
        elif hasattr(res, "per_group"):
            res.per_group.to_csv(out / f"{_slug(key)}.csv", index=False)
            sections.append((f"{res.name} per group", _table(res.per_group.round(4).head(40),
                                                             format)))
        if hasattr(res, "summary"):
            json_out["metrics"][key] = res.summary()
    enrich = results.get("enrichment")
    if isinstance(enrich, pd.DataFrame) and len(enrich):
        enrich.to_csv(out / "enrichment.csv", index=False)
        sections.append(("Enrichment of same-MOA pairs among the most similar pairs",
                         _table(enrich.round(4), format)))
        json_out["enrichment"] = enrich.to_dict("records")
    if profiles is not None and len(profiles) >= 3:
        cols = resolve_features(profiles, features)
        x = feature_matrix(profiles, cols)
        views = [("PCA", *_pca(x))]
        um = _umap(x)
        if um is not None:
            views.append(("UMAP", *um))
        body = []
        for method, coords, axes in views:
            for col, what in (("moa", "MOA"), ("batch", "batch"), ("label", "label")):
                if col in profiles.columns and profiles[col].notna().any():
                    png = f"profiles_{method.lower()}_{col}.png"
                    _scatter(coords, axes, profiles[col],
                             f"{method} of the {len(profiles)} profiles scored, coloured by "
                             f"{what}", out / png, what)
                    body.append(img(png, f"{method} of profiles by {what}"))
        if um is None:
            body.append(para("UMAP not drawn: install the umap-learn package to add it."))
        sections.append(("Profiles in two dimensions", "\n\n".join(body)))
    (out / "metrics.json").write_text(json.dumps(json_out, indent=2, default=_json_ready))
    title = f"Evaluation report: {results.get('protocol', 'results')}"
    notes = list(results.get("notes", []))
    counts = results.get("counts", {})
    summary = summary_table(results)
    head = [para("Scores are shares of profiles (or groups) in %, with a Wilson 95% "
                 "interval; 'chance' is what a random neighbour would score under the same "
                 "exclusions.")]
    head.append(_table(summary, format) if len(summary) else para("no metrics"))
    extra = [("What the metrics mean", "\n\n".join(definitions) or para("-")),
             ("What was scored", _table(pd.DataFrame(
                 {"what": [COUNT_LABELS.get(k, k.replace("_", " ")) for k in counts],
                  "count": [str(v) for v in counts.values()]}), format)
              if counts else para("-")),
             ("Notes", "\n".join(f"- {n}" for n in notes) if format == "md" else
              "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")]
    all_sections = [("Summary", "\n\n".join(head)), *extra, *sections]
    if format == "html":
        parts = [f"<h1>{html.escape(title)}</h1>"]
        for head_, body in all_sections:
            parts += [f"<h2>{html.escape(head_)}</h2>", body]
        path = out / "report.html"
        path.write_text("<!doctype html><meta charset='utf-8'><body>\n" + "\n".join(parts)
                        + "\n</body>")
    else:
        parts = [f"# {title}"]
        for head_, body in all_sections:
            parts += [f"## {head_}", body]
        path = out / "report.md"
        path.write_text("\n\n".join(parts) + "\n")
    return path
