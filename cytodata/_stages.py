"""Stage output folders: each stage (manifest, qc, shards) owns its folder alone.

Every stage writes a ``ledger.parquet``, so two stages sharing a folder would overwrite each
other's ledger (``cytodata shard M -o M --overwrite`` replaced the manifest's). Before writing,
a stage checks its output folder with :func:`claim_stage_folder`: it must not be one of the
stage's input folders and must not hold another stage's files.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CytodataError

#: files that identify the folder of each stage (a folder holding one belongs to that stage)
STAGE_MARKERS: dict[str, tuple[str, ...]] = {
    "manifest": ("manifest.parquet", "provenance.json"),
    "qc": ("qc.parquet", "report.md"),
    "shards": ("plan.json", "shards.json", "index.parquet"),
}


class StageFolderError(CytodataError, ValueError):
    """An output folder is an input folder, or belongs to another stage."""


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def claim_stage_folder(out: str | Path, stage: str, *, inputs: tuple = (),
                       empty_or_own: bool = False) -> Path:
    """Check that ``out`` may receive ``stage``'s files; returns it as a Path (not created).

    Raises :class:`StageFolderError` when ``out`` is one of ``inputs`` (folders or files the
    stage reads), holds another stage's marker files (``STAGE_MARKERS``), or, with
    ``empty_or_own=True``, holds files but none of this stage's markers (unrelated files).
    """
    out = Path(out)
    for inp in inputs:
        if inp is None:
            continue
        p = Path(inp)
        folder = p if p.is_dir() else p.parent
        if _same(out, folder):
            raise StageFolderError(
                f"{stage}: output folder {out} is the input folder {folder}; its ledger.parquet "
                f"and other files would be overwritten. Write {stage} output to its own folder "
                f"(e.g. {folder.parent / (folder.name + '-' + stage)})")
    if not out.exists():
        return out
    if not out.is_dir():
        raise StageFolderError(f"{stage}: output {out} is a file, not a folder; choose a folder")
    names = {p.name for p in out.iterdir()}
    for other, markers in STAGE_MARKERS.items():
        if other != stage and names & set(markers):
            raise StageFolderError(
                f"{stage}: output folder {out} holds {other} files "
                f"({', '.join(sorted(names & set(markers)))}); each stage needs its own folder, "
                f"so choose another output folder for the {stage} output")
    if empty_or_own and names and not names & set(STAGE_MARKERS[stage]):
        shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
        raise StageFolderError(
            f"{stage}: output folder {out} is not empty ({len(names)} entries: {shown}) and holds "
            f"no earlier {stage} output; choose an empty or new folder")
    return out
