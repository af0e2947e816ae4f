"""The per-plate prior of DeepNoise: each class at most once per plate.

In RxRx1 every siRNA appears at most once on a plate, so a plate's predictions should be an
assignment of distinct classes to its wells. Two ways to enforce it on per-row class
probabilities (``(n, K)``, rows = the plate's wells or sites):

- :func:`assign_exact`: the maximum-likelihood assignment, a linear assignment on the
  log-probabilities (``scipy.optimize.linear_sum_assignment``; Hungarian/JV, exact).
- :func:`assign_iterative`: DeepNoise's iterative balancing. Over-predicted classes get their
  scores lowered by a step (a per-class "price"); rows move to their best class at the new
  prices; the step halves between rounds (epsilon-scaling, Bertsekas' auction algorithm, which
  makes the balancing provably terminate) until the assignment is balanced and its total score
  stops improving (close to, not always equal to, the exact optimum).

A plate with more rows than classes cannot hold the prior: :func:`apply_prior` warns, names the
plate and keeps the argmax for it. Everything here is pure numpy/scipy on explicit inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from cytodata._registry import Registry

#: probabilities are clipped to this before the log (a zero would make the cost infinite)
PROB_FLOOR = 1e-12

#: assignment methods by name (``cytodata predict --prior-method``)
ASSIGNERS: Registry = Registry("per-plate prior method")


def _log(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (rows, classes), got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN/inf; check the model's outputs")
    return np.log(np.clip(p, PROB_FLOOR, None))


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


@dataclass
class IterativeResult:
    """What :func:`assign_iterative` did: the assignment and how it got there."""

    assignment: np.ndarray        # (n,) distinct class ids
    rounds: int                   # step-halving rounds run
    bids: int                     # price raises in all rounds
    score: float                  # sum of log p of the assignment
    history: list[float]          # the score after each round (non-decreasing once balanced)


def balance_iterative(probs: np.ndarray, *, step: float = 1.0, min_step: float = 1e-4,
                      max_bids: int = 1_000_000) -> IterativeResult:
    """DeepNoise's iterative balancing with halving steps; see :func:`assign_iterative`.

    Each round, rows take their best class at the current per-class prices; a class claimed by
    a second row has its score lowered (price raised) by the claimant's margin over its next
    choice plus ``step``, and the displaced row chooses again, until every class holds at most
    one row (a balanced round; Bertsekas' auction). The step then halves and the next round
    starts from the prices reached. Rounds stop when the step is below ``min_step`` or the total
    score stopped improving. The best balanced assignment is returned; with as many rows as
    classes it is within ``n * step`` of the exact optimum (auction theory).
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
            # lower the class's score by the bidder's margin over its next choice + step, so a
            # class wanted by several rows ends with the row that gains most from it
            price[j] += (v1 - v2) + step
            if owner[j] != -1:
                queue.append(int(owner[j]))
                assign[owner[j]] = -1
            owner[j], assign[i] = i, j
            bids += 1
            if bids > max_bids:
                raise RuntimeError(f"iterative balancing did not finish in {max_bids} bids; "
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


@ASSIGNERS.register("iterative")
def assign_iterative(probs: np.ndarray, *, step: float = 1.0, min_step: float = 1e-4
                     ) -> np.ndarray:
    """``(n,)`` distinct class ids by DeepNoise's iterative balancing (needs ``n <= K``)."""
    return balance_iterative(probs, step=step, min_step=min_step).assignment


@dataclass
class PriorResult:
    """Per-row classes after the prior and which plates kept their argmax."""

    classes: np.ndarray           # (n,) class id per row (input row order)
    fallback_plates: list[str]    # plates with more rows than classes (argmax kept)
    changed: int                  # rows whose class differs from the argmax


def apply_prior(probs: np.ndarray, plates, method: str = "exact") -> PriorResult:
    """Each class at most once per plate; ``plates`` ``(n,)`` names each row's plate.

    Plates with more rows than classes cannot hold the prior: a warning names them and their
    rows keep the argmax. Rows may come in any order.
    """
    assign = ASSIGNERS.get(method)
    probs = np.asarray(probs, dtype=np.float64)
    plates = np.asarray([str(p) for p in plates], dtype=object)
    if len(plates) != len(probs):
        raise ValueError(f"{len(plates)} plate names for {len(probs)} rows")
    argmax = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    out = argmax.copy()
    k = probs.shape[1] if probs.ndim == 2 else 0
    fallback = []
    for plate in sorted(set(plates.tolist())):
        rows = np.flatnonzero(plates == plate)
        if len(rows) > k:
            fallback.append(plate)
            continue
        out[rows] = assign(probs[rows])
    if fallback:
        more = " ..." if len(fallback) > 5 else ""
        warnings.warn(f"per-plate prior: plate(s) {fallback[:5]}{more} have more rows than the "
                      f"{k} classes, so a class must repeat there; "
                      "their rows keep the argmax (predict per well with --per well, or check "
                      "the plate column)", stacklevel=2)
    return PriorResult(out, fallback, int((out != argmax).sum()))
