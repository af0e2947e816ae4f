"""Checkpoints: written to a temp name then renamed (a full disk never costs the previous one),
loaded with ``torch.load(weights_only=True)`` (tensors, numbers, strings and containers only).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from cytodata.errors import TrainingError

FORMAT = "cytodata-checkpoint/1"
BEST = "best.pt"
_STEP = re.compile(r"^step-(\d+)\.pt$")


def save(state: dict, folder: Path, step: int, keep: int = 3) -> Path:
    """Write ``folder/step-N.pt`` and point ``folder/last.pt`` at it; prune old step files.

    Each file is written under a temporary name and renamed, so an interrupted or failed write
    (disk full) leaves the previous checkpoints intact; the error names the file and the cause.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step}.pt"
    tmp = folder / f".step-{step}.pt.tmp-{os.getpid()}"
    try:
        torch.save(dict(state, format=FORMAT), tmp)
        os.replace(tmp, final)
        link_tmp = folder / f".last.pt.tmp-{os.getpid()}"
        try:
            if link_tmp.exists():
                link_tmp.unlink()
            os.link(final, link_tmp)         # no second copy of the bytes
        except OSError:
            torch.save(dict(state, format=FORMAT), link_tmp)
        os.replace(link_tmp, folder / "last.pt")
    except (OSError, RuntimeError) as exc:
        for p in folder.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)
        previous = newest(folder)
        raise TrainingError(
            f"could not write checkpoint {final} ({type(exc).__name__}: {exc}); "
            + (f"the previous checkpoint {previous} is intact, resume from it after freeing space"
               if previous else "no earlier checkpoint exists") ) from exc
    steps = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP.match(p.name)))
    for old in steps[:-keep] if keep > 0 else []:
        (folder / f"step-{old}.pt").unlink(missing_ok=True)
    return final


def save_best(state: dict, folder: Path) -> Path:
    """Write ``folder/best.pt`` (the run's best checkpoint by its ``select`` metric) atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    final, tmp = folder / BEST, folder / f".{BEST}.tmp-{os.getpid()}"
    try:
        torch.save(dict(state, format=FORMAT), tmp)
        os.replace(tmp, final)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise TrainingError(f"could not write checkpoint {final} ({type(exc).__name__}: {exc}); "
                            "free space and resume the run with --resume") from exc
    return final


def newest(folder: Path) -> Path | None:
    """The checkpoint with the highest step in ``folder`` (``last.pt`` when it is the only one)."""
    if not folder.is_dir():
        return None
    steps = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)))
    if steps:
        return steps[-1][1]
    last = folder / "last.pt"
    return last if last.exists() else None


def resolve(path: "str | Path") -> Path:
    """A checkpoint file from a file path, a run folder or its ``checkpoints/`` folder.

    A folder's ``best.pt`` (written by runs with ``select``) is preferred over its newest step:
    the model such a run keeps. ``--resume`` continues from the newest step (:func:`newest`).
    """
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        if (folder / BEST).is_file():
            return folder / BEST
        found = newest(folder)
        if found is not None:
            return found
    raise TrainingError(f"{path}: no checkpoint found (expected a .pt file or a run folder with "
                        "checkpoints/step-N.pt)")


def load(path: "str | Path", map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); errors name the file."""
    path = resolve(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise TrainingError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"{path}: not a cytodata training checkpoint (format "
                            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}); "
                            "pass timm/torch weights as pretrained=PATH instead")
    return state


def check_signature(saved: dict, current: dict, where: str) -> None:
    """Refuse a checkpoint whose model signature differs (architecture, channels, classes...)."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs this run {current.get(k)!r}"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
        raise TrainingError(f"{where} does not fit this model: " + "; ".join(diffs)
                            + ". Resume with the config it was trained with, or start a new run folder")
