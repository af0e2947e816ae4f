"""DINO's parts against references written here from the paper's equations (Caron et al. 2021,
Sec. 3.1 and Algorithm 1) and against per-parameter norms computed by hand: the head, the
loss with its centre, and the engine's clipping modes.
"""

from __future__ import annotations

import math

import pytest
import torch

from cytodata.baselines import load_config
from cytodata.baselines.clipping import clip_gradients
from cytodata.baselines.methods.dino import DINOHead, DINOLoss
from cytodata.errors import RecipeError


# ----------------------------------------------------------------------------- clipping
def _grads(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3,), (5, 2, 2), (7,)]
    scales = [10.0, 0.01, 2.0, 0.5]               # some tensors above the limit, some below
    params = []
    for shape, s in zip(shapes, scales, strict=True):
        p = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
        p.grad = s * torch.randn(shape, generator=g, dtype=torch.float64)
        params.append(p)
    return params


def test_per_tensor_clipping_equals_per_parameter_norms_computed_by_hand():
    params = _grads()
    before = [p.grad.clone() for p in params]
    total = clip_gradients(params, 1.0, "per_tensor")
    norms = [math.sqrt(sum(float(v) ** 2 for v in b.flatten())) for b in before]
    assert total == pytest.approx(math.sqrt(sum(n * n for n in norms)))
    assert any(n > 1.0 for n in norms) and any(n < 1.0 for n in norms)
    for b, p, n in zip(before, params, norms, strict=True):
        coef = 1.0 / (n + 1e-6)                    # DINO utils.clip_gradients: clip / (norm + 1e-6)
        want = b * coef if coef < 1 else b
        assert torch.allclose(p.grad, want, rtol=1e-12, atol=0)
        after = math.sqrt(sum(float(v) ** 2 for v in p.grad.flatten()))
        assert after <= 1.0 + 1e-9                 # each tensor's own norm is at most the limit


def test_global_clipping_scales_every_tensor_by_one_coefficient():
    params = _grads()
    before = [p.grad.clone() for p in params]
    total = clip_gradients(params, 1.0, "global")
    want_total = math.sqrt(sum(float((b ** 2).sum()) for b in before))
    assert total == pytest.approx(want_total)
    ratios = {round(float((p.grad / b).flatten()[0]), 12) for p, b in zip(params, before, strict=True)}
    assert len(ratios) == 1 and ratios.pop() == pytest.approx(1.0 / want_total, rel=1e-5)


def test_clip_mode_is_validated_and_reaches_the_config():
    cfg = load_config("dino", {"optim.clip_mode": "per_tensor"})
    assert cfg.optim.clip_mode == "per_tensor"
    with pytest.raises(RecipeError, match="clip_mode='value'.*global, per_tensor"):
        load_config("dino", {"optim.clip_mode": "value"})
    with pytest.raises(ValueError, match="clip_mode"):
        clip_gradients(_grads(), 1.0, "elementwise")


# ----------------------------------------------------------------------------- head
def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def test_head_equals_mlp_l2_norm_and_weight_normalised_prototypes():
    """g(x) = W (z / ||z||), z = MLP(x), W_k = g_k v_k / ||v_k|| (weight normalisation)."""
    torch.manual_seed(0)
    head = DINOHead(12, 9, hidden_dim=16, bottleneck_dim=5, layers=3, norm_last_layer=False).double()
    with torch.no_grad():                          # a gain other than 1 so its use is checked
        head.last_layer.parametrizations.weight.original0.copy_(
            torch.linspace(0.5, 2.0, 9, dtype=torch.float64)[:, None])
    x = torch.randn(4, 12, dtype=torch.float64)
    lin = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    z = x
    for i, m in enumerate(lin):
        z = z @ m.weight.T + m.bias
        if i < len(lin) - 1:
            z = _gelu(z)
    z = z / z.norm(dim=1, keepdim=True)
    gain = head.last_layer.parametrizations.weight.original0
    direction = head.last_layer.parametrizations.weight.original1
    w = gain * direction / direction.norm(dim=1, keepdim=True)
    assert torch.allclose(head(x), z @ w.T, atol=1e-12)
    assert gain.requires_grad                      # norm_last_layer false: the gain is trained
    frozen = DINOHead(12, 9, hidden_dim=16, bottleneck_dim=5, norm_last_layer=True)
    assert not frozen.last_layer.parametrizations.weight.original0.requires_grad
    assert torch.all(frozen.last_layer.parametrizations.weight.original0 == 1)


# ----------------------------------------------------------------------------- loss and centre
def test_loss_and_centre_equal_the_papers_equations_sample_by_sample():
    """min over student of sum_{x in globals} sum_{x' != x} H(P_t(x), P_s(x')),
    P_t = softmax((g_t - C) / tau_t), P_s = softmax(g_s / tau_s), C <- m C + (1 - m) mean g_t.
    """
    torch.manual_seed(1)
    b, k, views, tau_s, tau_t, m = 3, 7, 5, 0.1, 0.04, 0.9
    student = torch.randn(views * b, k, dtype=torch.float64) * 3
    teacher = torch.randn(2 * b, k, dtype=torch.float64) * 3
    centre = torch.randn(k, dtype=torch.float64) * 0.1
    terms = []
    for q in range(2):                             # teacher global view
        for v in range(views):                     # student view
            if v == q:
                continue
            for i in range(b):
                t = teacher[q * b + i]
                s = student[v * b + i]
                pt = torch.exp((t - centre) / tau_t) / torch.exp((t - centre) / tau_t).sum()
                log_ps = s / tau_s - torch.log(torch.exp(s / tau_s).sum())
                terms.append(float(-(pt * log_ps).sum()))
    want = sum(terms) / len(terms)                 # mean over pairs and images (equal weights)
    crit = DINOLoss(k, student_temp=tau_s, center_momentum=m).double()
    crit.center.copy_(centre.view(1, 1, k))
    loss, _ = crit(student[None], teacher[None], tau_t, n_views=views)
    assert float(loss) == pytest.approx(want, rel=1e-6)   # ours computes the loss in float32
    new_centre = m * centre + (1 - m) * teacher.mean(dim=0)
    assert torch.allclose(crit.center.flatten(), new_centre, atol=1e-12)
