"""Chunked log π / entropy / C(p) equal the naive full-logits computation, values and gradients."""

from __future__ import annotations

import pytest
import torch

from trainers.logprobs import naive_token_stats, token_stats

B, T, H, V = 3, 11, 16, 97


def inputs(dtype: torch.dtype, with_bias: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=gen, dtype=dtype) * 0.4).requires_grad_()
    bias = (torch.randn(V, generator=gen, dtype=dtype) * 0.3).requires_grad_() if with_bias else None
    targets = torch.randint(0, V, (B, T), generator=gen)
    return hidden, weight, bias, targets


def run(fn, hidden, weight, bias, targets, coefs, **kw):  # type: ignore[no-untyped-def]
    stats = fn(hidden, weight, targets, bias, **kw)
    loss = sum(
        (c * x).sum() for c, x in zip(coefs, (stats.logprobs, stats.entropy, stats.collision), strict=True)
    )
    params = [p for p in (hidden, weight, bias) if p is not None]
    grads = torch.autograd.grad(loss, params)
    return stats, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_chunked_equals_naive(
    dtype: torch.dtype, with_bias: bool, temperature: float, chunk_size: int
) -> None:
    hidden, weight, bias, targets = inputs(dtype, with_bias)
    gen = torch.Generator().manual_seed(1)
    coefs = [torch.randn(B, T, generator=gen, dtype=dtype) for _ in range(3)]
    s1, g1 = run(
        token_stats, hidden, weight, bias, targets, coefs, temperature=temperature, chunk_size=chunk_size
    )
    s2, g2 = run(naive_token_stats, hidden, weight, bias, targets, coefs, temperature=temperature)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(
        (s1.logprobs, s1.entropy, s1.collision), (s2.logprobs, s2.entropy, s2.collision), strict=True
    ):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_gradient_of_each_output_alone(which: int) -> None:
    hidden, weight, bias, targets = inputs(torch.float64, True, seed=2)
    coefs = [torch.zeros(B, T, dtype=torch.float64) for _ in range(3)]
    coefs[which] = torch.randn(B, T, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _, g1 = run(token_stats, hidden, weight, bias, targets, coefs, chunk_size=4)
    _, g2 = run(naive_token_stats, hidden, weight, bias, targets, coefs)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_stats_are_what_they_claim() -> None:
    hidden, weight, bias, targets = inputs(torch.float64, True)
    with torch.no_grad():
        stats = token_stats(hidden, weight, targets, bias, chunk_size=7)
        p = torch.softmax(hidden @ weight.t() + bias, -1)
    torch.testing.assert_close(stats.probs, p.gather(-1, targets[..., None]).squeeze(-1))
    torch.testing.assert_close(stats.entropy, -(p * p.log()).sum(-1))
    torch.testing.assert_close(stats.collision, (p * p).sum(-1))


def test_mask_computes_only_selected_positions() -> None:
    hidden, weight, bias, targets = inputs(torch.float64, False)
    mask = torch.rand(B, T, generator=torch.Generator().manual_seed(3)) < 0.5
    stats = token_stats(hidden, weight, targets, bias, mask=mask, chunk_size=3)
    ref = naive_token_stats(hidden, weight, targets, bias)
    torch.testing.assert_close(stats.logprobs[mask], ref.logprobs[mask])
    assert torch.equal(stats.logprobs[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))
    (g_masked,) = torch.autograd.grad(stats.logprobs.sum(), hidden)
    (g_ref,) = torch.autograd.grad((ref.logprobs * mask).sum(), hidden)
    torch.testing.assert_close(g_masked, g_ref)
    assert torch.equal(g_masked[~mask], torch.zeros_like(g_masked[~mask]))


def test_never_saves_full_logits() -> None:
    """No tensor with B·T·V elements is saved for backward (the naive path saves several)."""
    hidden, weight, bias, targets = inputs(torch.float32, True)
    big = B * T * V
    for fn, expect_big in ((token_stats, False), (naive_token_stats, True)):
        sizes: list[int] = []

        def pack(t: torch.Tensor, sizes: list[int] = sizes) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            stats = fn(hidden, weight, targets, bias)
            (stats.logprobs.sum() + stats.entropy.sum()).backward()
        assert (max(sizes) >= big) == expect_big


def test_bad_temperature() -> None:
    hidden, weight, _bias, targets = inputs(torch.float32, False)
    with pytest.raises(ValueError, match="temperature"):
        token_stats(hidden, weight, targets, temperature=0.0)
