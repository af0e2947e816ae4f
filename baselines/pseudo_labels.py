"""DeepNoise's online pseudo-labels: hard, group-restricted, balanced labels for unlabelled wells.

The authors' ``update_pseudo_labels`` (Scu-sen/Recursion-Cellular-Image-Classification-Challenge
``main.py:475-497``): the EMA teacher's logits over ``tta_num`` random views of every unlabelled
image are averaged, smoothed with the previous ones (``old * (1 - ratio) + new * ratio``;
ratio 1.0 for the first labels, 0.9 later, ``main.py:571-596``), restricted per plate to the
plate's group of classes, normalised class-wise over the plate's wells and balanced
(``ensemble.py:206-248``, ``pre_balance`` with 500 iterations), and the label is the argmax
(``main.py:469-473``). Here a plate's group is the learned one (:mod:`baselines.plate_groups`),
where the authors read it from a leaked table (``leaks/``); plates that fit no group are
balanced over all classes.

Pure numpy on explicit inputs; :class:`~baselines.methods.mean_teacher.MeanTeacher` gathers the
logits and keeps the state.
"""

from __future__ import annotations

import numpy as np

from .plate_groups import PlateGroups, group_columns, match_groups
from .prior import deepnoise_balance

#: DeepNoise's values (authors' main.py)
FIRST_RATIO = 1.0        # main.py:575 ratio=1.0 (first labels)
RATIO = 0.9              # main.py:594 ratio=0.9 (later updates)
VIEWS = 4                # main.py:576, :595 tta_num=4
BALANCE_ITERATIONS = 500  # main.py:572, :591 iters_balance = 500


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def smooth(previous: np.ndarray | None, new: np.ndarray, ratio: float) -> np.ndarray:
    """``previous * (1 - ratio) + new * ratio`` (main.py:495); ``new`` when there is none."""
    return new.copy() if previous is None else previous * (1.0 - ratio) + new * ratio


def balanced_labels(logits: np.ndarray, plates, classes: list[str],
                    groups: PlateGroups | None, *, iterations: int = BALANCE_ITERATIONS
                    ) -> tuple[np.ndarray, dict[str, int]]:
    """Hard labels ``(n,)`` for wells ``logits`` ``(n, K)`` on ``plates``; and each plate's group.

    Per plate: the columns of its group (all classes when it fits none), ``exp(logit)``
    normalised over the plate's wells (``ensemble.py:202-204, 235``), DeepNoise's balancing,
    the argmax mapped back to class ids.
    """
    logits = np.asarray(logits, dtype=np.float64)
    plates = np.asarray([str(p) for p in plates], dtype=object)
    k = logits.shape[1]
    match = None
    cols = []
    if groups is not None and groups.groups:
        cols = group_columns(groups, classes)
        match = match_groups(softmax(logits, 1), plates, classes, groups)
    labels = np.full(len(logits), -1, dtype=np.int64)
    chosen: dict[str, int] = {}
    for plate in sorted(set(plates.tolist())):
        rows = np.flatnonzero(plates == plate)
        g = match.group[plate] if match is not None else -1
        c = cols[g] if g >= 0 else np.arange(k)
        chosen[plate] = int(g)
        scores = softmax(logits[np.ix_(rows, c)], 0)
        if iterations > 0:
            labels[rows] = c[deepnoise_balance(scores, iterations=iterations).assignment]
        else:                     # ensemble.py:237-241: iters 0 skips the balancing
            labels[rows] = c[scores.argmax(1)]
    return labels, chosen


def balanced_accuracy(logits: np.ndarray, truth: np.ndarray, plates, classes: list[str],
                      groups: PlateGroups | None) -> float:
    """DeepNoise's validation accuracy, the one its checkpoints are kept by.

    ``do_valid`` (main.py:88-93): per plate, the logits ``(n, K)`` restricted to the plate's
    group, ``exp`` normalised over the plate's rows (``balance_plate_probability_training`` with
    ``iters=0``, ensemble.py:206-248: no balancing), the argmax; its accuracy against ``truth``
    (class ids). Plates that fit no learned group keep all classes.
    """
    labels, _ = balanced_labels(logits, plates, classes, groups, iterations=0)
    return float((labels == np.asarray(truth)).mean()) if len(labels) else float("nan")
