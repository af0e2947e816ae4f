"""The collapse monitor: teacher entropy, marginal entropy and KL per step, and the verdict."""

from __future__ import annotations

import math

import torch


def monitor_stats(probs: torch.Tensor, loss: float) -> dict:
    """Collapse statistics of teacher probabilities ``(M, N, K)`` (averaged over models).

    KL(teacher || student) averaged over the loss pairs equals ``loss - teacher entropy``: each
    teacher view meets the same number of student views.
    """
    k = probs.shape[-1]
    ent = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
    marg = probs.mean(dim=1)
    marg_ent = -(marg * torch.log(marg.clamp_min(1e-12))).sum(-1).mean()
    h = float(ent)
    return {"teacher_entropy": h, "teacher_marginal_entropy": float(marg_ent),
            "kl_teacher_student": max(loss - h, 0.0), "loss_over_ln_k": loss / math.log(k),
            "n_samples": probs.shape[1]}


def collapse_kind(stats: dict, out_dim: int) -> str | None:
    """``"uniform"``, ``"one-prototype"`` or None from one step's :func:`monitor_stats` stats.

    Uniform: the teacher is (nearly) flat and the student copies it, so the loss sits near
    ln(out_dim) and KL(teacher || student), the only learning signal, is ~ 0. Thresholds (as
    fractions of ln(out_dim)): teacher entropy > 0.9 and KL < 0.02. Measured: runs that drifted
    there (entropy 0.94-0.99, KL 0.2-1.4%) had lost to the random-init backbone on NSC; healthy
    runs keep KL at 5-15% of ln K. One prototype: every teacher output is sharp *and* on the
    same prototype (entropy ~ 0 and the batch-mean distribution is ~ one-hot too).
    """
    ln_k = math.log(out_dim)
    if stats["teacher_entropy"] > 0.9 * ln_k and stats["kl_teacher_student"] < 0.02 * ln_k:
        return "uniform"
    reach = math.log(max(2, min(out_dim, int(stats.get("n_samples", out_dim)))))
    if stats["teacher_entropy"] < 0.05 * ln_k and stats["teacher_marginal_entropy"] < 0.1 * reach:
        return "one-prototype"
    return None


REMEDIES = {
    "uniform": "the centring outweighs the sharpening: lower teacher_temp (0.04; warm up to "
               "0.07 at most, warmup_teacher_temp_epochs), raise center_momentum towards "
               "0.9-0.99, lower optim.lr or raise momentum_teacher (0.996)",
    "one-prototype": "the sharpening outweighs the centring: keep centring on "
                     "(center_momentum 0.9; 1.0 disables it), raise teacher_temp slightly "
                     "(0.04 -> 0.07), raise momentum_teacher (0.996), lower optim.lr or add "
                     "warm-up",
}
