"""WAPO eq. 1 (probability change of non-sampled tokens) and eq. 3 (entropy change), checked numerically."""

from __future__ import annotations

import math

import pytest
import torch


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum()


def bracket(p: torch.Tensor, s: int) -> float:
    """B(p_s) of WAPO eq. 3: p_s log p_s - Σ p² log p + H(p)(p_s - C(p))."""
    ps = p[s]
    c = (p * p).sum()
    return float(ps * ps.log() - (p * p * p.log()).sum() + entropy(p) * (ps - c))


def one_step(z: torch.Tensor, s: int, adv: float, eta: float) -> torch.Tensor:
    """One gradient-descent step of size η on ℓ(z) = -A log softmax(z)_s."""
    z = z.clone().requires_grad_()
    loss = -adv * torch.log_softmax(z, -1)[s]
    (g,) = torch.autograd.grad(loss, z)
    return (z - eta * g).detach()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("adv", [1.0, -0.7])
def test_eq1_probability_change(seed: int, adv: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    v = 9
    z = torch.randn(v, generator=gen, dtype=torch.float64) * 1.5
    s = int(torch.randint(0, v, (1,), generator=gen))
    p = torch.softmax(z, -1)
    c = float((p * p).sum())
    for eta in (1e-4, 1e-5):
        dp = torch.softmax(one_step(z, s, adv, eta), -1) - p
        pred = eta * adv * p * (c - p[s] - p)
        others = torch.arange(v) != s
        err = (dp - pred)[others].abs().max()
        assert err < 10 * eta**2
        assert torch.equal(torch.sign(dp[others]), torch.sign(pred[others]))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("adv", [1.0, -0.7])
def test_eq3_entropy_change(seed: int, adv: float) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    v = 7
    z = torch.randn(v, generator=gen, dtype=torch.float64) * 2
    s = int(torch.randint(0, v, (1,), generator=gen))
    p = torch.softmax(z, -1)
    eta = 1e-5
    dh = float(entropy(torch.softmax(one_step(z, s, adv, eta), -1)) - entropy(p))
    pred = -eta * adv * bracket(p, s)
    assert abs(dh - pred) < 10 * eta**2


@pytest.mark.parametrize("seed", range(20))
def test_valley_tokens_have_nonpositive_bracket_and_max_tokens_nonnegative(seed: int) -> None:
    """App. B.3: B(p_s) <= 0 whenever p_s < C(p); B(p_max) >= 0."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(12, generator=gen, dtype=torch.float64) * 2.5, -1)
    c = float((p * p).sum())
    for s in range(12):
        if float(p[s]) < c:
            assert bracket(p, s) <= 1e-15
    assert bracket(p, int(p.argmax())) >= -1e-15


def test_counterexample_peak_token_with_negative_bracket() -> None:
    """p = (0.14, 0.46, 0.40), p_s = 0.40: a peak by eq. 2 (p_s >= C(p) = 0.3912), not the max, yet B < 0."""
    p = torch.tensor([0.14, 0.46, 0.40], dtype=torch.float64)
    c = float((p * p).sum())
    assert c == pytest.approx(0.3912)
    assert float(p[2]) >= c and int(p.argmax()) != 2
    b = bracket(p, 2)
    assert b == pytest.approx(-0.0083, abs=5e-5)
    assert math.copysign(1.0, b) == -1.0
