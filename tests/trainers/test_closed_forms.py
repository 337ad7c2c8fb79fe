"""Gradient masses m_S, m_F of every scheme against the closed forms of docs/algorithms.md / FADE App. 8."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from trainers.advantages import RAW_REWARD_SCHEMES, compute_advantages

GROUP_SIZES = (2, 4, 8, 16)
Masses = Callable[[float, float, int], tuple[float, float]]


def all_counts_batch(G: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One group per success count c = 0..G, trajectories shuffled across the batch (non-contiguous groups).

    Returns rewards [N], group ids [N] (arbitrary integers) and the success count of each group id.
    """
    rewards, gids, counts = [], [], {}
    for c in range(G + 1):
        gid = 1000 - 7 * c
        counts[gid] = c
        rewards += [1.0] * c + [0.0] * (G - c)
        gids += [gid] * G
    perm = torch.randperm(len(rewards), generator=torch.Generator().manual_seed(seed))
    return torch.tensor(rewards)[perm], torch.tensor(gids)[perm], torch.tensor(list(counts.items()))


def masses_by_count(
    adv: torch.Tensor, r: torch.Tensor, g: torch.Tensor, G: int
) -> dict[int, tuple[float, float]]:
    out = {}
    for c in range(G + 1):
        sel = g == 1000 - 7 * c
        a, rr = adv[sel], r[sel]
        out[c] = (float(a[rr == 1].sum()) / G, -float(a[rr == 0].sum()) / G)
    return out


def binom_ratio(n: int, m: int, k: int) -> float:
    """C(n, k)/C(m, k) with C(n, k) = 0 for n < k."""
    return math.comb(n, k) / math.comb(m, k) if n >= k else 0.0


def passk_chen_masses(k: int) -> Masses:
    def f(p: float, q: float, G: int) -> tuple[float, float]:
        c = round(p * G)
        r_k = 1 - binom_ratio(G - c, G, k)
        if k > G or r_k in (0.0, 1.0):
            return 0.0, 0.0
        m = p * math.sqrt((1 - r_k) / r_k)
        return m, m

    return f


def passk_mix_masses(k: int) -> Masses:
    def f(p: float, q: float, G: int) -> tuple[float, float]:
        c = round(p * G)
        r_k = 1 - binom_ratio(G - c, G, k)
        a_k = (1 - r_k) / math.sqrt(r_k * (1 - r_k)) if 0 < r_k < 1 and k <= G else 0.0
        a_1 = q / math.sqrt(p * q)
        m = p * (p * a_k + q * a_1)
        return m, m

    return f


def sqpq(p: float, q: float) -> float:
    return math.sqrt(p * q)


CASES: list[tuple[str, dict, Masses]] = [
    ("grpo", {"eps": 0.0}, lambda p, q, G: (sqpq(p, q), sqpq(p, q))),
    ("grpo", {"eps": 0.0, "std": "sample"}, lambda p, q, G: (sqpq(p, q) * math.sqrt((G - 1) / G),) * 2),
    ("dr_grpo", {}, lambda p, q, G: (p * q, p * q)),
    ("mean_centered", {}, lambda p, q, G: (p * q, p * q)),
    ("rloo", {}, lambda p, q, G: (G / (G - 1) * p * q, G / (G - 1) * p * q)),
    ("skew_r", {}, lambda p, q, G: (p * q * sqpq(p, q), p * q * sqpq(p, q))),
    ("power_alpha", {"alpha": 1.7}, lambda p, q, G: (p * q**1.7, p * q**1.7)),
    ("power_alpha", {"alpha": 3.0}, lambda p, q, G: (p * q**3, p * q**3)),
    ("asym_power_alpha", {"alpha_s": 2.5, "alpha_f": 1.5}, lambda p, q, G: (p * q**2.5, p**1.5 * q)),
    ("asym_grpo", {"delta": 0.6}, lambda p, q, G: (p * q, p * q / 0.6)),
    ("asym_grpo", {"delta": 2.0}, lambda p, q, G: (p * q, p * q / 2.0)),
    ("maxrl", {}, lambda p, q, G: (q, q)),
    ("asym_rl", {"delta": 0.05}, lambda p, q, G: (p * (q - 0.05), q * (p + 0.05))),
    ("quantile", {"tau": 0.5}, lambda p, q, G: (p * (p <= 0.5), q * (p > 0.5))),
    ("mc_grpo", {}, lambda p, q, G: (p * (p <= 0.5), q * (p > 0.5))),
    ("wapo", {}, lambda p, q, G: (p * q, 0.0)),
    ("wapo_success_norm", {}, lambda p, q, G: (q, 0.0)),
    ("grpo_n", {"eps": 0.0}, lambda p, q, G: (0.0, sqpq(p, q))),
    ("gspo_n", {"eps": 0.0}, lambda p, q, G: (0.0, sqpq(p, q))),
    ("passk_chen", {"k": 1}, passk_chen_masses(1)),
    ("passk_chen", {"k": 2}, passk_chen_masses(2)),
    ("passk_chen", {"k": 4}, passk_chen_masses(4)),
    ("passk_mix", {"k": 2}, passk_mix_masses(2)),
    ("passk_mix", {"k": 4}, passk_mix_masses(4)),
    ("passk_tang", {}, lambda p, q, G: (1 / G if round(p * G) == 1 else 0.0, 0.0)),
    ("reinforce", {}, lambda p, q, G: (p, 0.0)),
    ("psr", {}, lambda p, q, G: (p, 0.0)),
    ("nsr", {}, lambda p, q, G: (0.0, q)),
    ("w_reinforce", {"lam": 0.1}, lambda p, q, G: (0.1 * p, q)),
]


@pytest.mark.parametrize("G", GROUP_SIZES)
@pytest.mark.parametrize(("scheme", "params", "closed"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_masses_match_closed_form(G: int, scheme: str, params: dict, closed: Masses) -> None:
    r, g, _ = all_counts_batch(G, seed=G)
    adv = compute_advantages(scheme, r, g, **params)
    assert adv.dtype == torch.float64
    got = masses_by_count(adv, r, g, G)
    for c in range(G + 1):
        p = c / G
        degenerate = c in (0, G) and scheme not in RAW_REWARD_SCHEMES
        want = (0.0, 0.0) if degenerate else closed(p, 1 - p, G)
        assert got[c][0] == pytest.approx(want[0], abs=1e-9), (scheme, G, c, "m_S")
        assert got[c][1] == pytest.approx(want[1], abs=1e-9), (scheme, G, c, "m_F")


@pytest.mark.parametrize("G", GROUP_SIZES)
def test_fade_masses_first_step(G: int) -> None:
    """At the first step δ = 1 and α is set by p̂, so FADE's masses are Power-α's: p·q^α on both sides."""
    from trainers.advantages import FadeState

    r, g, _ = all_counts_batch(G)
    state = FadeState()
    adv = compute_advantages("fade", r, g, state=state, entropy=2.0)
    assert state.delta == 1.0
    got = masses_by_count(adv, r, g, G)
    for c in range(1, G):
        p, q = c / G, 1 - c / G
        assert got[c][0] == pytest.approx(p * q**state.alpha, abs=1e-9)
        assert got[c][1] == pytest.approx(p * q**state.alpha, abs=1e-9)


def random_binary_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 12, (20,), generator=gen)
    gids = torch.cat([torch.full((int(s),), 3 * i - 17) for i, s in enumerate(sizes)])
    rewards = (torch.rand(gids.numel(), generator=gen) < 0.5).double()
    perm = torch.randperm(gids.numel(), generator=gen)
    return rewards[perm], gids[perm]


@pytest.mark.parametrize("seed", range(5))
def test_passk_chen_k1_equals_grpo_population(seed: int) -> None:
    r, g = random_binary_batch(seed)
    a1 = compute_advantages("passk_chen", r, g, k=1)
    grpo = compute_advantages("grpo", r, g, eps=0.0, std="population")
    torch.testing.assert_close(a1, grpo, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 4, 8])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_passk_tang_expectation_by_enumeration(k: int, p: float) -> None:
    """Σ_c C(k,c) p^c q^(k-c) · Σ_{i∈S} A_i(c) = k p q^(k-1) with G = k (FADE App. 8.4.1); m_F = 0 always."""
    q = 1 - p
    r, g, _ = all_counts_batch(k, seed=k)
    adv = compute_advantages("passk_tang", r, g)
    got = masses_by_count(adv, r, g, k)
    expectation = sum(math.comb(k, c) * p**c * q ** (k - c) * got[c][0] * k for c in range(k + 1))
    assert expectation == pytest.approx(k * p * q ** (k - 1), abs=1e-12)
    assert all(m_f == 0.0 for _, m_f in got.values())


@pytest.mark.parametrize("seed", range(3))
def test_wapo_positive_only_identities(seed: int) -> None:
    """WAPO eq. 6: A⁺_i = (1 - r̄) r_i for binary rewards; normalizer G·r̄ gives (1 - r̄)/r̄ · r_i (App. D)."""
    r, g = random_binary_batch(seed)
    ids, inv = torch.unique(g, return_inverse=True)
    rbar = torch.zeros(ids.numel(), dtype=torch.float64).index_add_(0, inv, r) / torch.bincount(inv).double()
    rbar_i = rbar[inv]
    torch.testing.assert_close(compute_advantages("wapo", r, g), (1 - rbar_i) * r, rtol=0, atol=1e-12)
    want = torch.where(rbar_i > 0, (1 - rbar_i) / rbar_i.clamp_min(1e-300) * r, torch.zeros_like(r))
    torch.testing.assert_close(compute_advantages("wapo_success_norm", r, g), want, rtol=0, atol=1e-12)
