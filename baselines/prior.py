"""Plate priors of DeepNoise: each class at most once per plate (or per plate group, experiment).

In RxRx1 every siRNA appears at most once on a plate, so a plate's predictions should be an
assignment of distinct classes to its wells. Three ways to enforce it on per-row class
probabilities (``(n, K)``, rows = the plate's wells), registered by name in :data:`ASSIGNERS`
(``cytodata predict --prior-method``):

- ``exact`` (:func:`assign_exact`): the maximum-likelihood assignment, a linear assignment on the
  log-probabilities (``scipy.optimize.linear_sum_assignment``; exact).
- ``deepnoise`` (:func:`assign_deepnoise`): the authors' balancing (Scu-sen/Recursion-Cellular-
  Image-Classification-Challenge ``ensemble.py:32-95, 149-200``): each class's probabilities are
  normalised over the plate's wells, then a multiplicative weight per class (starting at 1) is
  lowered by ``alpha`` (0.01, halved down to 1e-4) on the most-predicted class until every class
  is predicted once; the prediction is the argmax of the weighted scores. It is a heuristic: it
  can stop short of a one-to-one assignment, and is not the likelihood optimum.
- ``auction`` (alias ``iterative``, :func:`assign_auction`): Bertsekas' auction with
  epsilon-scaling; balanced, within ``n * step`` of the exact optimum.

:func:`apply_prior` runs one of them per unit (a plate, or an experiment), optionally restricted
to a unit's allowed classes (a plate group, :mod:`baselines.plate_groups`). A unit with more rows
than allowed classes cannot hold the prior: a warning names it and its rows keep the argmax.
Everything here is pure numpy/scipy on explicit inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from cytodata._registry import Registry

#: probabilities are clipped to this before the log (a zero would make the cost infinite)
PROB_FLOOR = 1e-12

#: assignment methods by name (``cytodata predict --prior-method``)
ASSIGNERS: Registry = Registry("prior method")

#: DeepNoise's balancing constants (authors' ``ensemble.py``)
DEEPNOISE_START_ALPHA = 0.01   # ensemble.py:69 ``start_alpha=0.01``
DEEPNOISE_MIN_ALPHA = 1e-4     # ensemble.py:71 ``min_alpha=0.0001``
DEEPNOISE_ITERATIONS = 3000    # ensemble.py:188 ``pre_balance(..., iter = 3000)`` (submission)


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(_checked(probs), PROB_FLOOR, None))


def _checked(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (rows, classes), got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN/inf; check the model's outputs")
    return p


@ASSIGNERS.register("exact")
def assign_exact(probs: np.ndarray) -> np.ndarray:
    """``(n,)`` distinct class ids maximising ``sum log p[i, c_i]`` (needs ``n <= K``)."""
    from scipy.optimize import linear_sum_assignment

    logp = _log(probs)
    n, k = logp.shape
    if n > k:
        raise ValueError(f"{n} rows but {k} classes: classes cannot be distinct")
    rows, cols = linear_sum_assignment(logp, maximize=True)
    out = np.empty(n, dtype=np.int64)
    out[rows] = cols
    return out


# ----------------------------------------------------------------------------- DeepNoise's balancing
@dataclass
class BalanceResult:
    """What :func:`deepnoise_balance` did."""

    coefficients: np.ndarray      # (K,) float32 per-class weights (start 1)
    assignment: np.ndarray        # (n,) argmax of scores * coefficients
    score: float                  # DeepNoise's score in percent (100: every class once, n == K)
    rounds: int                   # calls of the inner search (ensemble.py:79-92 loop)
    history: list[float] = field(default_factory=list)  # score after each round


def deepnoise_score(counts: np.ndarray, n: int) -> float:
    """``sum_k min(100 count_k / n, 100 / K)`` (ensemble.py:41-47), in percent."""
    k = len(counts)
    return float(np.minimum(counts * 100.0 / n, 100.0 / k).sum())


def _balanced_units(counts: np.ndarray, n: int) -> int:
    # the score times n K / 100, an integer: exact comparisons (ensemble.py compares floats)
    return int(np.minimum(counts * len(counts), n).sum())


def deepnoise_balance(scores: np.ndarray, *, iterations: int = DEEPNOISE_ITERATIONS,
                      start_alpha: float = DEEPNOISE_START_ALPHA,
                      min_alpha: float = DEEPNOISE_MIN_ALPHA) -> BalanceResult:
    """DeepNoise's ``pre_balance`` (ensemble.py:65-95) on ``scores`` ``(n, K)``.

    Rounds of ``iterations`` steps: each step lowers the weight of the currently most-predicted
    class (first of ties) by ``alpha`` and keeps the weights if the score improved
    (``_find_best_coefficients``, ensemble.py:49-63); ``alpha`` halves after a round that did not
    improve; stop at score 100 or ``alpha < min_alpha``. Float32 weights as the authors' CUDA
    tensors. Only the lowered class's column changes in a step, so only the rows predicting it
    are re-scored (same result as re-scoring all rows, far fewer operations).
    """
    y = np.asarray(scores, dtype=np.float32)
    n, k = y.shape
    coefs = np.ones(k, dtype=np.float32)
    if n == 0:
        return BalanceResult(coefs, np.zeros(0, np.int64), 0.0, 0)

    def state(c):
        pred = (y * c).argmax(1)
        return pred, np.bincount(pred, minlength=k)

    pred, counts = state(coefs)
    full = n * k
    last = _balanced_units(counts, n)
    alpha, rounds, history = np.float32(start_alpha), 0, []
    while alpha >= min_alpha:
        rounds += 1
        # _find_best_coefficients(y, coefs, iterations, alpha)
        best_c, best_units = coefs.copy(), _balanced_units(counts, n)
        c, p, cnt = coefs.copy(), pred.copy(), counts.copy()
        best_p, best_cnt = p.copy(), cnt.copy()
        for _ in range(iterations):
            label = int(np.argmax(cnt))
            c[label] -= alpha
            rows = np.flatnonzero(p == label)
            if len(rows):
                new = (y[rows] * c).argmax(1)
                np.subtract.at(cnt, p[rows], 1)
                np.add.at(cnt, new, 1)
                p[rows] = new
            units = _balanced_units(cnt, n)
            if units > best_units:
                best_units, best_c, best_p, best_cnt = units, c.copy(), p.copy(), cnt.copy()
        coefs, pred, counts = best_c, best_p, best_cnt
        if best_units <= last:
            alpha = np.float32(alpha * 0.5)
        last = best_units
        history.append(deepnoise_score(counts, n))
        if last == full:
            break
    return BalanceResult(coefs, pred.astype(np.int64), deepnoise_score(counts, n), rounds, history)


def column_normalise(probs: np.ndarray) -> np.ndarray:
    """Each class's scores normalised over the plate's rows (DeepNoise's ``softmax_np``).

    ensemble.py:202-204 normalises ``exp(logit)`` over axis 0 (the wells), applied to the
    plate's averaged logits (ensemble.py:181). From probabilities ``p = exp(logit) / Z_row`` this
    is ``p / sum_rows p``; it equals the authors' value when the rows' partition functions
    ``Z_row`` are equal (they differ by the per-row softmax normaliser otherwise).
    """
    p = _checked(probs)
    total = p.sum(0, keepdims=True)
    return p / np.where(total > 0, total, 1.0)


@ASSIGNERS.register("deepnoise")
def assign_deepnoise(probs: np.ndarray, *, iterations: int = DEEPNOISE_ITERATIONS) -> np.ndarray:
    """``(n,)`` class ids by DeepNoise's balancing (not always distinct; see the module doc)."""
    return deepnoise_balance(column_normalise(probs), iterations=iterations).assignment


# ----------------------------------------------------------------------------- auction
@dataclass
class IterativeResult:
    """What :func:`balance_iterative` did: the assignment and how it got there."""

    assignment: np.ndarray        # (n,) distinct class ids
    rounds: int                   # step-halving rounds run
    bids: int                     # price raises in all rounds
    score: float                  # sum of log p of the assignment
    history: list[float]          # the score after each round (non-decreasing once balanced)


def balance_iterative(probs: np.ndarray, *, step: float = 1.0, min_step: float = 1e-4,
                      max_bids: int = 1_000_000) -> IterativeResult:
    """Bertsekas' auction with halving steps (epsilon-scaling); see :func:`assign_auction`.

    Each round, rows take their best class at the current per-class prices; a class claimed by
    a second row has its price raised by the claimant's margin over its next choice plus
    ``step``, and the displaced row chooses again, until every class holds at most one row. The
    step then halves and the next round starts from the prices reached. Rounds stop when the
    step is below ``min_step`` or the total score stopped improving. The best balanced
    assignment is returned; with as many rows as classes it is within ``n * step`` of the exact
    optimum (auction theory).
    """
    logp = _log(probs)
    n, k = logp.shape
    if n > k:
        raise ValueError(f"{n} rows but {k} classes: classes cannot be distinct")
    if n == 0:
        return IterativeResult(np.zeros(0, np.int64), 0, 0, 0.0, [])
    real = n
    if n < k:  # dummy rows (score 0 for every class) take the classes left over: same optimum
        logp = np.vstack([logp, np.zeros((k - n, k))])
        n = k
    price = np.zeros(k)
    best, best_score, history, rounds, bids, stale = None, -np.inf, [], 0, 0, 0
    rows = np.arange(n)
    while True:
        rounds += 1
        owner = np.full(k, -1, dtype=np.int64)
        queue = list(range(n))
        assign = np.full(n, -1, dtype=np.int64)
        while queue:  # Gauss-Seidel auction: one row bids at a time
            i = queue.pop()
            value = logp[i] - price
            j = int(np.argmax(value))
            v1 = value[j]
            value[j] = -np.inf
            v2 = value.max() if k > 1 else v1
            price[j] += (v1 - v2) + step
            if owner[j] != -1:
                queue.append(int(owner[j]))
                assign[owner[j]] = -1
            owner[j], assign[i] = i, j
            bids += 1
            if bids > max_bids:
                raise RuntimeError(f"auction did not finish in {max_bids} bids; "
                                   "use the exact assignment (--prior-method exact)")
        score = float(logp[rows, assign].sum())
        history.append(score)
        if score > best_score + 1e-12:
            best, best_score, stale = assign.copy(), score, 0
        else:
            stale += 1
        if step < min_step or stale >= 2:
            break
        step /= 2
    return IterativeResult(best[:real], rounds, bids, best_score, history)


def assign_auction(probs: np.ndarray, *, step: float = 1.0, min_step: float = 1e-4
                   ) -> np.ndarray:
    """``(n,)`` distinct class ids by the auction (needs ``n <= K``)."""
    return balance_iterative(probs, step=step, min_step=min_step).assignment


ASSIGNERS.register("auction")(assign_auction)
ASSIGNERS.register("iterative")(assign_auction)


# ----------------------------------------------------------------------------- per unit
@dataclass
class PriorResult:
    """Per-row classes after the prior and which units kept their argmax."""

    classes: np.ndarray           # (n,) class id per row (input row order)
    fallback_plates: list[str]    # units with more rows than allowed classes (argmax kept)
    changed: int                  # rows whose class differs from the argmax


def apply_prior(probs: np.ndarray, plates, method: str = "exact",
                allowed: Mapping[str, np.ndarray] | None = None, what: str = "plate"
                ) -> PriorResult:
    """Each class at most once per unit; ``plates`` ``(n,)`` names each row's unit.

    ``allowed``: unit -> class indices it may take (a plate group; a class listed twice may be
    taken twice); units not in it may take every class once. Units with more rows than allowed
    classes cannot hold the prior: a warning names them and their rows keep the argmax. Rows
    may come in any order.
    """
    assign = ASSIGNERS.get(method)
    probs = np.asarray(probs, dtype=np.float64)
    plates = np.asarray([str(p) for p in plates], dtype=object)
    if len(plates) != len(probs):
        raise ValueError(f"{len(plates)} {what} names for {len(probs)} rows")
    argmax = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    out = argmax.copy()
    k = probs.shape[1] if probs.ndim == 2 else 0
    fallback = []
    for plate in sorted(set(plates.tolist())):
        rows = np.flatnonzero(plates == plate)
        cols = np.arange(k) if allowed is None or plate not in allowed \
            else np.asarray(allowed[plate], dtype=np.int64)
        if len(rows) > len(cols):
            fallback.append(plate)
            continue
        out[rows] = cols[assign(probs[np.ix_(rows, cols)])]
    if fallback:
        more = " ..." if len(fallback) > 5 else ""
        warnings.warn(f"{what} prior: {what}(s) {fallback[:5]}{more} have more rows than the "
                      f"{k} classes (or their group's), so a class must repeat there; "
                      "their rows keep the argmax (predict per well with --per well, or check "
                      f"the {what} column)", stacklevel=2)
    return PriorResult(out, fallback, int((out != argmax).sum()))
