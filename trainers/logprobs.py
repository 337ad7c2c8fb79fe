"""Chunked log-probabilities, token entropy and C(p) = Σ_j p_j² from hidden states and the output head.

`token_stats(hidden, weight, targets)` never materializes the full [B, T, V] logits: rows are processed in
chunks of `chunk_size` positions, and a custom autograd Function recomputes each chunk's logits in the
backward pass instead of saving them. Memory is O(chunk_size·V) beyond the inputs; values and gradients equal
the naive computation (`naive_token_stats`) to float32 rounding.

Gradients flow through all three outputs: log π(y_t) (the policy loss), the entropy (an entropy bonus) and
C(p) (rarely needed; filters read it under `torch.no_grad()`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class TokenStats:
    """Per-position statistics of the next-token distribution softmax(logits / temperature).

    Attributes:
        logprobs: [B, T] log π(y_t) of the given target tokens.
        entropy: [B, T] H_t = -Σ_j p_j log p_j.
        collision: [B, T] C(p) = Σ_j p_j² (WAPO's peak/valley reference level).
    """

    logprobs: Tensor
    entropy: Tensor
    collision: Tensor

    @property
    def probs(self) -> Tensor:
        """[B, T] π(y_t)."""
        return self.logprobs.exp()


@dataclass(frozen=True)
class Processing:
    """The sampling distribution's logit processing: temperature, then top-k, then top-p (nucleus), exactly as
    `agentrl.core.generator.process_logits` applies it when sampling."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def truncates(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, processing: Processing) -> Tensor:
    """[n, V] processed logits, float32 (float64 for float64 inputs); tokens outside top-k/top-p are -inf."""
    z = h @ weight.t() if bias is None else torch.addmm(bias, h, weight.t())
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    if processing.temperature != 1.0:
        z.div_(processing.temperature)
    vocab = z.shape[-1]
    if 0 < processing.top_k < vocab:
        kth = torch.topk(z, processing.top_k, dim=-1).values[..., -1:]
        z.masked_fill_(z < kth, float("-inf"))
    if processing.top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = sorted_z.softmax(dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs >= processing.top_p
        drop_sorted[..., 0] = False
        z.masked_fill_(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    return z


def _plogp(p: Tensor, logp: Tensor) -> Tensor:
    """p·log p with 0·(-inf) = 0 for tokens outside the top-k/top-p set."""
    return torch.where(p > 0, p * logp, torch.zeros_like(p))


class _ChunkedHeadStats(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias [V] | None, targets [N]) -> (logπ [N], H [N], C [N]).

    Outputs and accumulation use float32 (float64 when the inputs are float64).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        processing: Processing,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = hidden.shape[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        logp = hidden.new_empty(n, dtype=acc)
        ent = hidden.new_empty(n, dtype=acc)
        coll = hidden.new_empty(n, dtype=acc)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            z = _chunk_logits(hidden[s:e], weight, bias, processing)
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            z.sub_(lse)
            logp[s:e] = z.gather(1, targets[s:e, None]).squeeze(1)
            p = z.exp()
            ent[s:e] = -_plogp(p, z).sum(-1)
            coll[s:e] = (p * p).sum(-1)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(hidden, weight, bias, targets, ent, coll)
        ctx.processing = processing
        ctx.chunk_size = chunk_size
        return logp, ent, coll

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        g_logp: Tensor | None,
        g_ent: Tensor | None,
        g_coll: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, ent, coll = ctx.saved_tensors
        processing: Processing = ctx.processing
        chunk = ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        acc = ent.dtype
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        n = hidden.shape[0]
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            logp_all = _chunk_logits(hidden[s:e], weight, bias, processing)
            logp_all.sub_(torch.logsumexp(logp_all, dim=-1, keepdim=True))
            p = logp_all.exp()
            grad_z = torch.zeros_like(p)
            if g_logp is not None:
                gl = g_logp[s:e].to(acc)
                grad_z.addcmul_(p, -gl[:, None])
                grad_z.scatter_add_(1, targets[s:e, None], gl[:, None])
            if g_ent is not None:
                ge = g_ent[s:e].to(acc)
                logp_all.add_(ent[s:e, None])
                grad_z.addcmul_(_plogp(p, logp_all), -ge[:, None])
            if g_coll is not None:
                gc = g_coll[s:e].to(acc)
                p_minus_c = p - coll[s:e, None]
                grad_z.addcmul_(p * p_minus_c, 2 * gc[:, None])
            if processing.temperature != 1.0:
                grad_z.div_(processing.temperature)
            if grad_h is not None:
                grad_h[s:e] = (grad_z @ weight.to(acc)).to(hidden.dtype)
            if grad_w is not None:
                grad_w.addmm_(grad_z.t(), hidden[s:e].to(acc))
            if grad_b is not None:
                grad_b += grad_z.sum(0)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None and bias is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def token_stats(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    chunk_size: int = 1024,
    mask: Tensor | None = None,
) -> TokenStats:
    """log π, entropy and C(p) of softmax((hidden @ weightᵀ + bias)/temperature), chunked over positions.

    With `top_k` / `top_p` the distribution is the sampler's truncated one (renormalised over the kept
    tokens, as `agentrl.core.generator.process_logits`): a target outside the kept set gets log π = -inf.

    Args:
        hidden: [B, T, H] final hidden states (position t predicts targets[:, t]).
        weight: [V, H] output head (tied embedding or lm_head weight).
        targets: [B, T] token ids whose log-probability is wanted.
        bias: optional [V] output bias.
        temperature: divides the logits (use the sampling temperature so ratios match the sampler).
        top_k, top_p: the sampler's truncation (0 and 1.0 disable them).
        chunk_size: positions per chunk; peak extra memory is about 3·chunk_size·V floats.
        mask: optional [B, T] bool; only these positions are computed (others are 0 with no gradient), which
            skips prompt and observation tokens.

    Returns:
        `TokenStats` of [B, T] float32 tensors (float64 for float64 inputs).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    processing = Processing(float(temperature), int(top_k), float(top_p))
    b, t, h = hidden.shape
    flat_h = hidden.reshape(b * t, h)
    flat_y = targets.reshape(b * t).long()
    if mask is None:
        lp, ent, coll = _ChunkedHeadStats.apply(flat_h, weight, bias, flat_y, processing, chunk_size)
        return TokenStats(lp.view(b, t), ent.view(b, t), coll.view(b, t))
    rows = mask.reshape(b * t).nonzero().squeeze(1)
    lp, ent, coll = _ChunkedHeadStats.apply(
        flat_h.index_select(0, rows), weight, bias, flat_y[rows], processing, chunk_size
    )
    outs = []
    for x in (lp, ent, coll):
        full = x.new_zeros(b * t).index_put((rows,), x)
        outs.append(full.view(b, t))
    return TokenStats(*outs)


def naive_token_stats(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, *, temperature: float = 1.0
) -> TokenStats:
    """Reference implementation that materializes the full [B, T, V] logits (for tests and benchmarks)."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logp_all = torch.log_softmax(logits / temperature, dim=-1)
    p = logp_all.exp()
    logp = logp_all.gather(-1, targets.long()[..., None]).squeeze(-1)
    return TokenStats(logp, -(p * logp_all).sum(-1), (p * p).sum(-1))
