"""The policy forward pass of training: log π, entropy and C(p) at the positions that predict loss tokens.

The G episodes of a group start with the same prompt (system prompt, question, template), which is often half
of their tokens. With `share_prompts`, each distinct prompt runs through the model once and its keys/values
are expanded to every episode that starts with it (the gradient flows back through the expansion, so it equals
the plain forward's up to float rounding); only the episodes' own tokens run per row.

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
    """The slice of the transformers cache API decoder layers call. Without a prefix it records each layer's
    keys/values (the prompt pass); with one it returns prefix + new keys/values (the episodes' pass)."""

    is_compileable = False

    def __init__(self, num_layers: int, prefix: tuple[list[Tensor], list[Tensor]] | None = None) -> None:
        self.prefix = prefix
        self.keys: list[Any] = [None] * num_layers
        self.values: list[Any] = [None] * num_layers

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        if self.prefix is None:
            self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
            return key_states, value_states
        keys, values = self.prefix
        keys_out = torch.cat([keys[layer_idx], key_states], dim=-2)
        return keys_out, torch.cat([values[layer_idx], value_states], dim=-2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.prefix is None else int(self.prefix[0][0].shape[-2])


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


def _shared(model: Any, ids: Tensor, attn: Tensor, prompt_lengths: Tensor) -> tuple[Tensor, TokenWindow]:
    """Hidden states predicting each row's tokens from its prompt's end on, each distinct prompt run once."""
    body, _ = decoder_and_head(model)
    dev = ids.device
    lengths = attn.sum(-1).long().cpu()
    plen = prompt_lengths.long().cpu().clamp(min=1)
    reps, which = prompt_groups(ids.cpu(), plen)
    p_max = int(plen.max())
    u = len(reps)
    prompt_ids = torch.zeros(u, p_max, dtype=torch.long)
    prompt_real = torch.zeros(u, p_max, dtype=torch.bool)
    for k, b in enumerate(reps):
        n = int(plen[b])
        prompt_ids[k, :n] = ids[b, :n].cpu()
        prompt_real[k, :n] = True
    prompt_ids, prompt_real = prompt_ids.to(dev), prompt_real.to(dev)
    dtype = next(model.parameters()).dtype
    causal = torch.ones(p_max, p_max, dtype=torch.bool, device=dev).tril()
    record = _KVList(len(body.layers))
    out = body(
        input_ids=prompt_ids, attention_mask=_bias(causal[None, None] & prompt_real[:, None, None, :], dtype),
        position_ids=torch.arange(p_max, device=dev)[None].expand(u, -1), past_key_values=record,
        use_cache=True,
    )  # fmt: skip
    prompt_hidden = out.last_hidden_state
    window = TokenWindow(plen, lengths, max(int((lengths - plen).max()), 1))
    s = window.width
    suffix_ids = window.take(ids.cpu()).to(dev)
    _, suffix_real = window.index()
    suffix_real = suffix_real.to(dev)
    index = which.to(dev)
    keys = [k.index_select(0, index) for k in record.keys]
    prefix = (keys, [v.index_select(0, index) for v in record.values])
    allowed = torch.cat(
        [
            prompt_real.index_select(0, index)[:, None, None, :].expand(-1, 1, s, -1),
            torch.ones(s, s, dtype=torch.bool, device=dev).tril()[None, None] & suffix_real[:, None, None, :],
        ],
        dim=-1,
    )
    suffix = body(
        input_ids=suffix_ids, attention_mask=_bias(allowed, dtype),
        position_ids=plen.to(dev)[:, None] + torch.arange(s, device=dev)[None],
        past_key_values=_KVList(len(body.layers), prefix), use_cache=True,
    ).last_hidden_state  # fmt: skip
    last = prompt_hidden[torch.arange(u, device=dev), (plen[reps] - 1).to(dev)]
    hidden = torch.cat([last.index_select(0, index)[:, None], suffix[:, :-1]], dim=1)
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
    use_shared = (
        share_prompts
        and prompt_lengths is not None
        and supports_prompt_sharing(model)
        and len(prompt_groups(input_ids.cpu(), prompt_lengths.cpu().clamp(min=1))[0]) < input_ids.shape[0]
    )
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
