"""Decode-step attention for grouped-query models without repeating keys and values.

transformers' SDPA path repeats every key/value head `num_key_value_groups` times whenever an attention mask
is passed (always, in the HF generator's left-aligned layout), so one decode step copies the whole KV cache of
every layer: for SmolLM2-135M (9 query heads over 3 key/value heads) at 32 rows x 800 columns that copy is
most of the step. Here a one-token step instead folds the query heads that share a key/value head into the
query-length axis, `[B, H, 1, D] -> [B, H_kv, H/H_kv, D]`, and calls SDPA once on the cache as stored. Longer
queries (prefill chunks, training forwards) go to transformers' own SDPA function unchanged.

`decoding(model)` registers the implementation under `IMPLEMENTATION` (attention and mask functions) and
switches a model that uses "sdpa" to it for the duration of a `with` block, so the model never leaves the
generator (to a trainer, a Ray worker, a checkpoint) carrying an implementation only this process knows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

IMPLEMENTATION = "agentrl_grouped_sdpa"


def grouped_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention output [B, S, H, D] for query [B, H, S, D] over key/value [B, H_kv, L, D].

    `attention_mask` is additive (float) or boolean, [B or 1, 1, S, L]. One-token queries
    of a grouped-query layer are computed on the unrepeated cache; every other call is transformers' SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    if length != 1 or heads == kv_heads or dropout or kwargs.get("output_attentions"):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
            **kwargs,
        )  # fmt: skip
    groups = heads // kv_heads
    folded = query.reshape(batch, kv_heads, groups, dim)
    mask = None
    if attention_mask is not None:
        mask = attention_mask.expand(batch, 1, 1, key.shape[-2])
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, 1, heads, dim), None


def register() -> None:
    """Make `IMPLEMENTATION` known to transformers (idempotent); masks are built as for "sdpa"."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, grouped_decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def decoding(model: Any) -> Iterator[bool]:
    """Run `model` on the grouped decode attention inside the block when it uses "sdpa" (yields whether it
    does); it is back on "sdpa" afterwards, also when the block raises."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield False
        return
    register()
    model.set_attn_implementation(IMPLEMENTATION)
    try:
        yield True
    finally:
        model.set_attn_implementation("sdpa")
