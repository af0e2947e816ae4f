"""The demo's one-page report: ``report/index.html`` with its figures beside it.

Sections: what ran on what; the results table (every score with its n, 95% interval and chance
level; each row links to its rendered evaluation report, ``<row>/report.html``; runs marked
trained, random init or collapsed; what labels each run learned from); the scores as one
figure with intervals and chance; the training curves (one figure, one panel per run); PCA of
the treatment profiles (one figure per colouring, one panel per embedding); the corpus (label
distribution, ledger); the image QC montages (sample fields per source, and the fields each QC
rule failed); publishing.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

#: the BBBC021-layout rows' own manifest folder (under the demo's output folder)
BBBC_MANIFEST = "manifest-bbbc021"
#: k of the image-level k-NN MOA score
KNN_K = 11
#: the results table's score columns: (key in each row's ``scores``, heading)
SCORE_COLUMNS = (("nsc", "NSC (TVN)"), ("nscb", "NSCB (TVN)"), ("nsc_no_tvn", "NSC (no TVN)"),
                 ("nsc_held_out", "NSC held-out images (no TVN)"),
                 ("knn", f"{KNN_K}-NN MOA, own compound excluded"), ("map", "mAP MOA"))
#: a DINO-family run whose last logged losses sit at or above this fraction of ln(K) collapsed
#: to a uniform teacher: the student copies a flat output (loss ~ ln K, nothing is learned)
UNIFORM_LOSS_OVER_LN_K = 0.9
#: uniform teacher: entropy above this fraction of ln K with KL(teacher || student) below the next
UNIFORM_ENTROPY, UNIFORM_KL = 0.9, 0.02
#: one prototype: teacher entropy below this fraction of ln K (every output on one prototype)
ONE_PROTOTYPE_ENTROPY = 0.05
#: the share of a run's logged training rows (its end) the verdict reads
TAIL = 0.2


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11})
    return plt


def _rows(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def run_collapse(run: Path) -> dict:
    """Whether a training run ended collapsed, and the evidence; the one verdict the report uses.

    A run whose ``metrics.jsonl`` rows carry their own verdict (``collapsed``: bool, or
    ``collapse``: the kind or null) is taken at its word. Otherwise the last ``TAIL`` of its
    logged training rows decide: DINO-family rows log ``loss_over_ln_k`` and the teacher's
    entropy and KL(teacher || student). A teacher entropy above ``UNIFORM_ENTROPY`` ln K with KL
    below ``UNIFORM_KL`` ln K is a uniform collapse (the student copies a flat teacher); a loss
    near ln K whose KL is well above zero still learns. Rows without the teacher's statistics
    fall back to the loss: a median at or above ``UNIFORM_LOSS_OVER_LN_K`` ln K is uniform. An
    entropy below ``ONE_PROTOTYPE_ENTROPY`` ln K is a one-prototype collapse. Runs that log
    neither (classifiers) are ``collapsed: False``, ``checked: False``.
    """
    everything = _rows(run)
    rows = [r for r in everything if "loss" in r]
    verdict = {"collapsed": False, "kind": None, "checked": False, "evidence": "", "source": None}
    # the engine's last row (``summary: true``, also RUN_DIR/summary.json) carries the verdict
    flagged = [r for r in everything if "collapsed" in r or "collapse" in r]
    if flagged:
        last = flagged[-1]
        kind = last.get("collapse")
        collapsed = bool(last["collapsed"]) if "collapsed" in last else kind is not None
        detail = last.get("collapse_evidence") or {}
        rule = f"; rule: {detail['rule']}" if isinstance(detail, dict) and detail.get("rule") else ""
        return {"collapsed": collapsed, "kind": (kind or "flagged") if collapsed else None, "checked": True,
                "evidence": f"the run's own verdict at step {last.get('step')}{rule}", "source": "run"}
    dino = [r for r in rows if "loss_over_ln_k" in r]
    if not dino:
        return verdict
    tail = dino[-max(1, math.ceil(TAIL * len(dino))):]
    ratio = float(np.median([r["loss_over_ln_k"] for r in tail]))
    ln_k = float(np.median([r["loss"] / r["loss_over_ln_k"] for r in tail if r["loss_over_ln_k"]]))
    ent = [r["teacher_entropy"] / ln_k for r in tail if "teacher_entropy" in r]
    kl = [r["kl_teacher_student"] / ln_k for r in tail if "kl_teacher_student" in r]
    ent_m = float(np.median(ent)) if ent else None
    kl_m = float(np.median(kl)) if kl else None
    steps = f"steps {tail[0]['step']}-{tail[-1]['step']}"
    evidence = (f"{steps}: loss {ratio:.2f} x ln K (K = {math.exp(ln_k):.0f})"
                + (f", teacher entropy {ent_m:.2f} x ln K" if ent_m is not None else "")
                + (f", KL(teacher||student) {kl_m:.3f} x ln K" if kl_m is not None else ""))
    verdict.update(checked=True, evidence=evidence, source="detected from metrics.jsonl")
    # the teacher's statistics decide when logged: a loss near ln K with KL well above zero still learns
    teacher = ent_m is not None and kl_m is not None
    if (teacher and ent_m > UNIFORM_ENTROPY and kl_m < UNIFORM_KL) or (
            not teacher and ratio >= UNIFORM_LOSS_OVER_LN_K):
        verdict.update(collapsed=True, kind="uniform")
    elif ent_m is not None and ent_m < ONE_PROTOTYPE_ENTROPY:
        verdict.update(collapsed=True, kind="one-prototype")
    return verdict


def status_of(row: dict, collapse: dict | None) -> str:
    """The status cell: ``features``, ``random init``, ``trained`` or ``collapsed (kind)``."""
    if row.get("kind") != "trained":
        return row.get("kind") or "features"
    if collapse and collapse.get("collapsed"):
        return f"collapsed ({collapse.get('kind') or 'flagged'}): not a trained model"
    return "trained"


# ------------------------------------------------------------------------------------- figures
def score_figure(evaluation: dict, statuses: dict, png: Path) -> Path | None:
    """One figure: NSC (TVN), held-out NSC and the k-NN score of every row, 95% intervals, chance."""
    shown = [(k, t) for k, t in SCORE_COLUMNS if k in ("nsc", "nsc_held_out", "knn")]
    names = list(evaluation)
    if not names:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 0.45 * len(names) + 1.8), sharey=True)
    y = np.arange(len(names))
    for ax, (key, title) in zip(np.atleast_1d(axes), shown):
        for i, name in enumerate(names):
            s = evaluation[name]["scores"].get(key)
            if not s or not np.isfinite(s["score"]):
                ax.text(0.02, i, "not computed", va="center", fontsize=9, color="gray")
                continue
            color = "tab:red" if statuses[name].startswith("collapsed") else "tab:blue"
            ax.errorbar(s["score"], i, xerr=[[s["score"] - s["ci_low"]], [s["ci_high"] - s["score"]]],
                        fmt="o", color=color, capsize=3)
            ax.plot([s["chance"]] * 2, [i - 0.35, i + 0.35], color="black", lw=2)
        ax.set_xlim(0, 1)
        ax.set_title(title)
        ax.set_xlabel("score")
        ax.grid(axis="x", alpha=0.3)
    ax0 = np.atleast_1d(axes)[0]
    ax0.set_yticks(y, [f"{n} [collapsed]" if statuses[n].startswith("collapsed") else n for n in names])
    ax0.invert_yaxis()
    fig.suptitle("Scores: dot = score, bar = 95% interval, black tick = chance; red = collapsed run",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def training_figure(runs: dict, collapse: dict, png: Path) -> Path | None:
    """One panel per run: loss against step (DINO runs: loss / ln K, where 1.0 is a uniform collapse)."""
    panels = [(name, _rows(run)) for name, run in runs.items()]
    panels = [(n, r) for n, r in panels if any("loss" in x for x in r)]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels):
        train = [r for r in rows if "loss" in r]
        steps = [r["step"] for r in train]
        if all("loss_over_ln_k" in r for r in train):
            ax.plot(steps, [r["loss_over_ln_k"] for r in train], color="tab:blue")
            ax.axhline(1.0, color="tab:red", ls="--", lw=1)
            ax.text(steps[0], 1.0, " ln K: uniform output", color="tab:red", va="bottom", fontsize=9)
            ax.set_ylabel("training loss / ln K")
            ax.set_ylim(0, max(1.1, max(r["loss_over_ln_k"] for r in train) * 1.05))
        else:
            ax.plot(steps, [r["loss"] for r in train], color="tab:blue", label="training loss")
            ax.set_ylabel("training loss")
            val = [r for r in rows if "val_top1" in r]
            if val:
                ax2 = ax.twinx()
                ax2.plot([r["step"] for r in val], [r["val_top1"] for r in val], "o-", color="tab:orange")
                ax2.set_ylabel("validation top-1 (val split)", color="tab:orange")
                ax2.set_ylim(0, 1)
        verdict = collapse.get(name) or {}
        title = f"{name}: " + (f"COLLAPSED ({verdict.get('kind')})" if verdict.get("collapsed") else "trained")
        ax.set_title(title, color="tab:red" if verdict.get("collapsed") else "black")
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def pca_figure(evaluation: dict, statuses: dict, column: str, png: Path) -> Path | None:
    """PCA of each row's treatment profiles (as scored by NSC), one panel each, one legend."""
    from .evaluate.profiles import feature_matrix

    panels = []
    for name, r in evaluation.items():
        res = r.get("result") or {}
        prof, cols = res.get("profiles"), res.get("features")
        if prof is None or cols is None or column not in prof.columns or len(prof) < 3:
            continue
        x = feature_matrix(prof, cols)
        x = x - x.mean(0)
        u, sv, _ = np.linalg.svd(x, full_matrices=False)
        var = sv ** 2 / max((sv ** 2).sum(), 1e-12)
        panels.append((name, u[:, :2] * sv[:2], var[:2], prof[column].astype(str).fillna("NA").to_numpy()))
    if not panels:
        return None
    plt = _plt()
    labels = sorted({v for *_, lab in panels for v in lab})
    colors = {lab: plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")(i % 20)
              for i, lab in enumerate(labels)}
    ncol = min(5, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.3 * nrow + 1.0), squeeze=False)
    for ax, (name, xy, var, lab) in zip(axes.flat, panels):
        for value in labels:
            m = lab == value
            if m.any():
                ax.scatter(xy[m, 0], xy[m, 1], s=28, color=colors[value], edgecolor="white", lw=0.5)
        ax.set_title(f"{name}\n[{statuses[name]}]" if statuses[name].startswith("collapsed") else name,
                     fontsize=10, color="tab:red" if statuses[name].startswith("collapsed") else "black")
        ax.set_xlabel(f"PC1 ({100 * var[0]:.0f}% of variance)", fontsize=9)
        ax.set_ylabel(f"PC2 ({100 * var[1]:.0f}%)" if len(var) > 1 else "PC2", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[v], label=v) for v in labels]
    top = 1 - 1.0 / (3.3 * nrow + 1.0)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(labels), 6),
               frameon=False, title=f"treatment profiles coloured by {column}", fontsize=10, title_fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def label_distribution(manifest: pd.DataFrame, png: Path) -> Path:
    """Images per weak label, coloured by source."""
    plt = _plt()
    counts = manifest.groupby(["label", "source"]).size().unstack(fill_value=0)
    counts = counts.loc[counts.sum(1).sort_values(ascending=False).index]
    fig, ax = plt.subplots(figsize=(8, 0.24 * len(counts) + 1.5))
    counts.plot.barh(stacked=True, ax=ax, width=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_ylabel("weak label")
    ax.set_title("Images per weak label (manifest)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _composite(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) float in [0, 1]: the first three channels, each at its 1-99.5 percentiles."""
    planes = []
    for c in range(min(3, image.shape[0])):
        p = image[c].astype(np.float32)
        lo, hi = np.percentile(p, [1, 99.5])
        planes.append(np.clip((p - lo) / max(hi - lo, 1e-6), 0, 1))
    while len(planes) < 3:
        planes.append(planes[0] if len(planes) == 1 else np.zeros_like(planes[0]))
    return np.stack(planes, -1)


def qc_montage(manifest: pd.DataFrame, qc: pd.DataFrame | None, png: Path, *, per_source: int = 6,
               seed: int = 0) -> tuple[Path | None, list[str]]:
    """Fields that passed image QC (``per_source`` per source, labelled) and every failed field.

    Returns the PNG and one line per failed field that could not be drawn (e.g. truncated files).
    """
    from .images.io import read_image

    failed = set() if qc is None else set(qc.loc[qc["reason"].notna(), "key"].astype(str))
    reasons = {} if qc is None else dict(zip(qc["key"].astype(str), qc["reason"]))
    rng = np.random.default_rng(seed)
    tiles, undrawn = [], []
    for source, rows in manifest.groupby("source", sort=True):
        ok = rows[~rows["key"].astype(str).isin(failed)]
        pick = ok.iloc[np.sort(rng.choice(len(ok), min(per_source, len(ok)), replace=False))] if len(ok) else ok
        for r in pick.itertuples():
            tiles.append((f"{source}\n{r.label}", list(r.channel_paths), "passed"))
    for key in sorted(failed):
        row = manifest[manifest["key"].astype(str) == key]
        if len(row):
            r = row.iloc[0]
            tiles.append((f"QC FAILED: {reasons[key]}\n{r['source']} {r['label']}", list(r["channel_paths"]),
                          str(reasons[key])))
    drawn = []
    for title, paths, why in tiles:
        try:
            drawn.append((title, _composite(read_image(paths)), why))
        except Exception as exc:                    # noqa: BLE001 - an unreadable file is what QC found
            undrawn.append(f"{title.replace(chr(10), ' ')}: {Path(paths[0]).name} cannot be decoded "
                           f"({type(exc).__name__}: {str(exc)[:120]})")
    if not drawn:
        return None, undrawn
    plt = _plt()
    ncol = per_source
    nrow = -(-len(drawn) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.4 * ncol, 2.75 * nrow), squeeze=False)
    for ax, (title, rgb, why) in zip(axes.flat, drawn):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(title, fontsize=9, color="tab:red" if why != "passed" else "black")
        ax.axis("off")
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    fig.suptitle("Image QC: sample fields per source (first three channels as RGB, 1-99.5 percentile "
                 "stretch); failed fields in red", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png, undrawn


# ---------------------------------------------------------------------------------------- page
def _table(rows: list[list[str]], header: list[str], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def score_cell(score: dict | None) -> str:
    """HTML of one score: the value, then its 95% interval, n and chance on a second line."""
    if not score or not np.isfinite(score.get("score", float("nan"))):
        return "<span class='na'>not computed</span>"
    return (f"<b>{score['score']:.2f}</b><br><span class='ci'>[{score['ci_low']:.2f}, "
            f"{score['ci_high']:.2f}] n={score['n']} {html.escape(score['unit'])}<br>"
            f"chance {score['chance']:.2f}</span>")


def _img(png: Path | None, alt: str, width: str = "100%") -> str:
    if png is None:
        return ""
    return f'<p><img src="{html.escape(png.name)}" alt="{html.escape(alt)}" style="max-width:{width}"></p>'


#: what each synthetic screen is, as the report says it
SCREEN_TEXT = {
    "hard": ("Screen: the hard synthetic BBBC021-layout screen (`SyntheticScreen(difficulty=\"hard\")`): "
             "MOAs differ only in cell morphology and arrangement, per-channel intensity histograms "
             "and cell sizes are matched across treatments, and every compound sits in one week "
             "with its own gains, offsets and focus, so intensity statistics cannot read the MOA "
             "and a week's look misleads. With 20 treatments here the intervals are wide; the "
             "scoreboard (docs/scoreboard.md) measures every recipe on a larger copy, three seeds."),
    "easy": ("Screen: the easy synthetic BBBC021-layout screen (`SyntheticScreen()`): each MOA has "
             "its own cell size, brightness and texture, so simple intensity features separate "
             "the MOAs; scores here say nothing about what a method learns."),
}


def screen_of(out: Path) -> str:
    """The demo screens' difficulty (``sources/screen.json``; ``easy`` for outputs without it)."""
    path = Path(out) / "sources" / "screen.json"
    return json.loads(path.read_text())["difficulty"] if path.exists() else "easy"


def write_index_html(out: Path, results: dict) -> Path:
    """Write ``out/report/index.html`` and its PNGs; returns the HTML path."""
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    evaluation = results.get("evaluate") or {}
    runs = {k: Path(v) for k, v in (results.get("train") or {}).items()}
    collapse = {name: run_collapse(run) for name, run in runs.items()}
    statuses = {name: status_of(r, collapse.get(r.get("run"))) for name, r in evaluation.items()}
    screen = screen_of(out)
    parts = ["<h1>cytodata demo: synthetic screens to trained, evaluated and published embeddings</h1>",
             f"<p class='lead'>A pipeline demonstration on the {screen} synthetic BBBC021-layout "
             "screen, one seed, CPU-minute training runs. The scores below show that each stage runs and "
             "how it is measured; they are not results on real data and not paper figures.</p>",
             "<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(SCREEN_TEXT[screen]))
             + "</p>"]
    if evaluation:
        n_rows = {name: (r["scores"].get("nsc") or {}).get("n") for name, r in evaluation.items()}
        rows = []
        for name, r in evaluation.items():
            status = statuses[name]
            cls = "collapsed" if status.startswith("collapsed") else ""
            trained_on = (html.escape(r.get("labels_in_training") or "no labels (self-supervised)")
                          if r.get("kind") == "trained" else "-")
            config = html.escape(r.get("config") or "-")
            rows.append([f'<a href="{html.escape(r["report"])}">{html.escape(name)}</a>',
                         f"<span class='{cls}'>{html.escape(status)}</span>", config, trained_on,
                         *(score_cell(r["scores"].get(k)) for k, _ in SCORE_COLUMNS)])
        parts.append("<h2>Results</h2>")
        parts.append(_table(rows, ["embedding (full report)", "status", "config", "learned from",
                                   *(t for _, t in SCORE_COLUMNS)], "results"))
        n_treat = max((v for v in n_rows.values() if v), default=0)
        parts.append(
            "<p class='note'>Each cell: the score, its 95% interval, n (what was scored) and the chance "
            "level (what a random neighbour or ranking scores under the same exclusions). "
            f"<b>NSC</b>: each of the ~{n_treat} treatment profiles takes the MOA of its nearest "
            "neighbour among profiles of <i>other compounds</i>; <b>NSCB</b> also excludes the query's "
            "batch (week); Wilson intervals. <b>TVN</b>: whitening fitted on DMSO images, then CORAL per "
            "week (bbbc021-ando); no TVN: z-scored features (bbbc021-cytoimagenet). <b>Held-out</b>: NSC on "
            "profiles of the val and test images only, which no training run saw (the classifier and "
            "WS-DINO learned from the compound labels of the train images, so their NSC over all images "
            f"includes images they were trained on). <b>{KNN_K}-NN MOA</b>: image-level majority vote of "
            "the 11 nearest images, with every image of the query's own compound excluded (its "
            "replicates would otherwise vote for it). <b>mAP</b>: MOA retrieval over treatment "
            "profiles, bootstrap interval over treatments, chance from random rankings. "
            "<b>config</b>: the shipped training config; the <code>*-cells-demo</code> DINO configs are "
            "the project's own settings for runs this short, not the papers' recipes (<code>dino</code>, "
            "<code>ws-dino</code>). "
            "<b>random init</b>: the same backbone before training (ws-dino's random init serves both "
            "ViT rows: one architecture, one seed). <b>collapsed</b>: the run's loss ended at the "
            "uniform-output level (loss / ln K near 1) or on one prototype; its embeddings are those "
            "of a failed run, not of a trained model.</p>")
        parts.append(_img(score_figure(evaluation, statuses, report / "scores.png"), "scores with intervals"))
    if runs:
        parts.append("<h2>Training</h2>")
        parts.append(_img(training_figure(runs, collapse, report / "training.png"), "training curves"))
        items = []
        for name, run in runs.items():
            v = collapse[name]
            verdict = ("<b class='collapsed'>collapsed</b> (" + html.escape(v["kind"] or "") + "): "
                       if v["collapsed"] else "not collapsed: " if v["checked"] else "")
            evidence = (html.escape(v["evidence"]) + f" ({html.escape(v['source'])})" if v["checked"] else
                        "no collapse check (its metrics log no DINO statistics)")
            items.append(f"<li><b>{html.escape(name)}</b>: {verdict}{evidence}; run folder "
                         f"<code>{html.escape(str(run))}</code></li>")
        parts.append("<ul>" + "".join(items) + "</ul>")
    if evaluation:
        parts.append("<h2>Treatment profiles in two dimensions</h2>")
        parts.append("<p class='note'>PCA of the treatment profiles each NSC score above was computed on "
                     "(after TVN and CORAL), one panel per embedding. Colour by MOA: same-MOA treatments close "
                     "together is what NSC rewards; colour by batch: clusters by week are batch effects. "
                     "UMAP and per-MOA plots are in each row's full report.</p>")
        parts.append(_img(pca_figure(evaluation, statuses, "moa", report / "pca_moa.png"), "PCA by MOA"))
        parts.append(_img(pca_figure(evaluation, statuses, "batch", report / "pca_batch.png"), "PCA by batch"))
    manifest_path = out / "manifest" / "manifest.parquet"
    if manifest_path.exists():
        manifest = pd.read_parquet(manifest_path)
        parts.append("<h2>Corpus</h2>")
        parts.append(_img(label_distribution(manifest, report / "labels.png"), "label distribution", "800px"))
        ledger_path = out / "manifest" / "ledger.parquet"
        if ledger_path.exists():
            ledger = pd.read_parquet(ledger_path)
            by = ledger.groupby(["stage", "reason"]).size().reset_index(name="rows")
            parts.append(f"<p>Manifest: {len(manifest) + len(ledger)} rows in, {len(manifest)} kept, "
                         f"{len(ledger)} dropped (every dropped row is in <code>manifest/ledger.parquet</code> "
                         f"with its reason). The BBBC021-layout rows have a manifest folder of their own, "
                         f"<code>{BBBC_MANIFEST}/</code>, from which its shards were written and published.</p>")
            parts.append(_table([[html.escape(str(a)), html.escape(str(b)), str(c)]
                                 for a, b, c in by.itertuples(index=False)], ["stage", "reason", "rows"]))
        qc_path = out / "qc" / "qc.parquet"
        qc = pd.read_parquet(qc_path) if qc_path.exists() else None
        png, undrawn = qc_montage(manifest, qc, report / "qc_montage.png")
        parts.append("<h2>Image QC</h2>")
        if qc is not None:
            counts = qc["reason"].value_counts()
            parts.append(f"<p>{len(qc)} images checked, {int(qc['reason'].isna().sum())} passed; failed: "
                         + (", ".join(f"{html.escape(str(k))} = {v}" for k, v in counts.items()) or "none")
                         + ". Rules and thresholds: <code>qc/report.md</code>.</p>")
        parts.append(_img(png, "QC montage"))
        if undrawn:
            parts.append("<p>Failed fields that cannot be drawn:</p><ul>"
                         + "".join(f"<li>{html.escape(u)}</li>" for u in undrawn) + "</ul>")
    published = results.get("publish")
    if published:
        parts.append("<h2>Published</h2>")
        status = "all files verified" if not published["problems"] else html.escape(str(published["problems"]))
        parts.append(f"<p><code>{html.escape(str(published['dest']))}</code> (card README.md, Croissant, "
                     f"SHA256SUMS; manifest <code>{BBBC_MANIFEST}/</code>): {status}</p>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:1.5em auto;color:#222;padding:0 1em}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 7px;"
             "text-align:left;vertical-align:top}th{background:#f0f0f0;font-size:0.9em}"
             "table.results td{font-size:0.92em}.ci{color:#555;font-size:0.85em}.na{color:#999}"
             ".collapsed{color:#b00;font-weight:bold}.note{font-size:0.9em;color:#333;max-width:1100px}"
             ".lead{font-size:1.05em;background:#fff8e0;padding:0.6em;border-left:4px solid #e0b000}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>cytodata demo</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    index = report / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
