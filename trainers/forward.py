"""The policy forward pass of training: log π, entropy and C(p) at the positions that predict loss tokens.

The G episodes of a group start with the same prompt (system prompt, question, template), which is often half
of their tokens, and episodes of different tasks still share the system prompt. With `share_prompts`, the
prefix every row shares runs through the model once, then each distinct prompt's remainder once, and their
keys/values are expanded to every episode that starts with them (the gradient flows back through the
expansion, so it equals the plain forward's up to float rounding); only the episodes' own tokens run per row.

Both paths return the statistics in a `TokenWindow`: column j of row b is token `start[b] + j` of the padded
batch, predicted from the hidden state of the token before it. Every per-token tensor of the batch is read
through the same window (`TokenWindow.take`), and results go back to token positions with `TokenWindow.put`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainers.logprobs import Processing, TokenStats, token_stats
from trainers.model_setup import decoder_and_head

Tensor = torch.Tensor
MIN_COMMON_PREFIX = 16  # shorter shared prefixes are not worth an extra forward pass


@dataclass
class TokenWindow:
    """Per-row windows of a right-padded [B, L] batch: column j of row b is token `start[b] + j`, valid while
    it is a real token of the row."""

    start: Tensor
    lengths: Tensor
    width: int

    def index(self) -> tuple[Tensor, Tensor]:
        cols = self.start[:, None] + torch.arange(self.width, device=self.start.device)[None, :]
        valid = cols < self.lengths[:, None]
        return cols.clamp(max=max(int(self.lengths.max()) - 1, 0)), valid

    def take(self, x: Tensor) -> Tensor:
        """[B, L] token-aligned values -> [B, width] window values (0 past the row's end)."""
        cols, valid = self.index()
        taken = x.gather(1, cols.to(x.device))
        return taken * valid.to(x.device) if taken.dtype != torch.bool else taken & valid.to(x.device)

    def put(self, values: Tensor, length: int) -> Tensor:
        """[B, width] window values -> [B, length] token-aligned (0 outside the window)."""
        cols, valid = self.index()
        out = values.new_zeros(values.shape[0], length)
        return out.scatter_add(1, cols.to(values.device), values * valid.to(values.device))


class _KVList:
    """The slice of the transformers cache API decoder layers call: each layer's keys/values are appended to
    the prefix's (if any) and kept, so the result can serve as the prefix of a later pass."""

    is_compileable = False

    def __init__(self, num_layers: int, prefix: _Prefix | None = None) -> None:
        self.prefix = prefix
        self.keys: list[Any] = [None] * num_layers
        self.values: list[Any] = [None] * num_layers

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        if self.prefix is not None:
            key_states = torch.cat([self.prefix.keys[layer_idx], key_states], dim=-2)
            value_states = torch.cat([self.prefix.values[layer_idx], value_states], dim=-2)
        self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.prefix is None else int(self.prefix.real.shape[1])


@dataclass
class _Prefix:
    """Keys/values of already-run tokens: per layer [n, H_kv, W, D], and which of the W columns are real."""

    keys: list[Tensor]
    values: list[Tensor]
    real: Tensor

    def select(self, index: Tensor) -> _Prefix:
        return _Prefix(
            [k.index_select(0, index) for k in self.keys],
            [v.index_select(0, index) for v in self.values],
            self.real.index_select(0, index),
        )


def _bias(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean [B, 1, Q, K] mask -> additive attention bias."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)


def supports_prompt_sharing(model: Any) -> bool:
    """Decoder-only models with full attention in every layer (as the HF generator requires)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return False
    layer_types = getattr(cfg, "layer_types", None) or []
    return all(t == "full_attention" for t in layer_types) and not getattr(cfg, "use_sliding_window", False)


def prompt_groups(input_ids: Tensor, prompt_lengths: Tensor) -> tuple[list[int], Tensor]:
    """(one representative row per distinct prompt, [B] index of each row's prompt in that list)."""
    firsts: dict[tuple[int, ...], int] = {}
    which = []
    for b in range(input_ids.shape[0]):
        key = tuple(input_ids[b, : int(prompt_lengths[b])].tolist())
        which.append(firsts.setdefault(key, len(firsts)))
    reps = [0] * len(firsts)
    for b, u in reversed(list(enumerate(which))):
        reps[u] = b
    return reps, torch.tensor(which, dtype=torch.long)


def _plain(model: Any, ids: Tensor, attn: Tensor) -> tuple[Tensor, TokenWindow]:
    body, _ = decoder_and_head(model)
    hidden = body(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
    b = ids.shape[0]
    window = TokenWindow(torch.ones(b, dtype=torch.long), attn.sum(-1).long().cpu(), ids.shape[1] - 1)
    return hidden[:, :-1], window


def _extend(
    body: Any, ids: Tensor, real: Tensor, positions: Tensor, prefix: _Prefix | None, dtype: torch.dtype
) -> tuple[Tensor, _Prefix]:
    """Run `ids` [n, S] (right-padded, `real` [n, S]) after `prefix`; returns (hidden [n, S, H], the prefix
    extended by these tokens)."""
    s = ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril()[None, None] & real[:, None, None, :]
    allowed = causal if prefix is None else torch.cat(
        [prefix.real[:, None, None, :].expand(-1, 1, s, -1), causal], dim=-1
    )
    cache = _KVList(len(body.layers), prefix)
    hidden = body(
        input_ids=ids, attention_mask=_bias(allowed, dtype), position_ids=positions, past_key_values=cache,
        use_cache=True,
    ).last_hidden_state  # fmt: skip
    seen = real if prefix is None else torch.cat([prefix.real, real], dim=1)
    return hidden, _Prefix(cache.keys, cache.values, seen)


def common_prefix_length(input_ids: Tensor, prompt_lengths: Tensor) -> int:
    """Longest prefix every row starts with, at most the shortest prompt (e.g. a shared system prompt)."""
    limit = int(prompt_lengths.min())
    same = (input_ids[:, :limit] == input_ids[:1, :limit]).all(dim=0)
    differs = (~same).nonzero()
    return int(differs[0]) if differs.numel() else limit


def _padded(rows: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    real = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        real[i, : len(r)] = True
    return ids.to(device), real.to(device)


def _shared(model: Any, ids: Tensor, attn: Tensor, prompt_lengths: Tensor) -> tuple[Tensor, TokenWindow]:
    """Hidden states predicting each row's tokens from its prompt's end on. The prefix all rows share runs
    once, each distinct prompt's remainder once, and each row's own tokens after its prompt's keys/values."""
    body, _ = decoder_and_head(model)
    dev = ids.device
    dtype = next(model.parameters()).dtype
    cpu_ids = ids.cpu()
    lengths = attn.sum(-1).long().cpu()
    plen = prompt_lengths.long().cpu().clamp(min=1)
    reps, which = prompt_groups(cpu_ids, plen)
    common = common_prefix_length(cpu_ids, plen) if len(reps) > 1 else 0
    prefix = None
    common_hidden = None
    if common > 0:
        row, real = _padded([cpu_ids[0, :common].tolist()], dev)
        common_hidden, prefix = _extend(body, row, real, torch.arange(common, device=dev)[None], None, dtype)
        prefix = prefix.select(torch.zeros(len(reps), dtype=torch.long, device=dev))
    rests = [cpu_ids[b, common : int(plen[b])].tolist() for b in reps]
    rest_ids, rest_real = _padded(rests, dev)
    rest_hidden = None
    if rest_ids.shape[1]:
        positions = common + torch.arange(rest_ids.shape[1], device=dev)[None].expand(len(reps), -1)
        rest_hidden, prefix = _extend(body, rest_ids, rest_real, positions, prefix, dtype)
    last = []
    for u, rest in enumerate(rests):
        source = rest_hidden[u, len(rest) - 1] if rest else common_hidden[0, common - 1]  # type: ignore[index]
        last.append(source)
    assert prefix is not None
    window = TokenWindow(plen, lengths, max(int((lengths - plen).max()), 1))
    suffix_ids = window.take(cpu_ids).to(dev)
    suffix_real = window.index()[1].to(dev)
    index = which.to(dev)
    positions = plen.to(dev)[:, None] + torch.arange(window.width, device=dev)[None]
    suffix, _ = _extend(body, suffix_ids, suffix_real, positions, prefix.select(index), dtype)
    hidden = torch.cat([torch.stack(last).index_select(0, index)[:, None], suffix[:, :-1]], dim=1)
    return hidden, window


def policy_token_stats(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_mask: Tensor,
    prompt_lengths: Tensor | None = None,
    processing: Processing | None = None,
    chunk_size: int = 1024,
    share_prompts: bool = True,
) -> tuple[TokenStats, TokenWindow]:
    """log π, entropy and C(p) ([B, width], in the returned window) of the tokens `loss_mask` marks.

    Args:
        model: a causal LM (possibly peft-wrapped).
        input_ids, attention_mask, loss_mask: [B, L] right-padded batch.
        prompt_lengths: [B] leading tokens shared by episodes of the same prompt; needed to share prompts.
        processing: the sampler's temperature / top-k / top-p.
        share_prompts: run each distinct prompt once when at least two rows share one.
    """
    processing = processing or Processing()
    use_shared = share_prompts and prompt_lengths is not None and supports_prompt_sharing(model)
    if use_shared:
        assert prompt_lengths is not None
        plen = prompt_lengths.cpu().clamp(min=1)
        distinct = len(prompt_groups(input_ids.cpu(), plen)[0])
        common = common_prefix_length(input_ids.cpu(), plen)
        use_shared = distinct < input_ids.shape[0] or common >= MIN_COMMON_PREFIX
    if use_shared:
        hidden, window = _shared(model, input_ids, attention_mask, prompt_lengths)  # type: ignore[arg-type]
    else:
        hidden, window = _plain(model, input_ids, attention_mask)
    _, head = decoder_and_head(model)
    targets = window.take(input_ids.cpu()).to(input_ids.device)
    mask = window.take(loss_mask.cpu()).to(input_ids.device).bool()
    stats = token_stats(
        hidden, head.weight, targets, bias=head.bias, temperature=processing.temperature,
        top_k=processing.top_k, top_p=processing.top_p, chunk_size=chunk_size, mask=mask,
    )  # fmt: skip
    return stats, window
