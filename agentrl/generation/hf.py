"""Hugging Face backend: a batched sampling loop over the model's forward with a preallocated KV cache.

The loop is written out (instead of calling `model.generate`) so that it controls exactly what the rollout
engine needs: log-probs under the sampling distribution, stop strings checked on the decoded tail of each
sequence, per-sequence early exit (finished rows stop attending and leave the batch once half of it has
finished, so the KV cache is not copied at every finish), continuous batching (waiting prompts are
prefilled and join the running batch as rows finish), and a prefix cache that keeps the keys/values of
finished sequences so that the next turn of a multi-turn episode only prefills the new tokens.

Rows live in one left-aligned layout with per-row attention masks, so rows may hold masked holes (left
padding, or the gap between a reused prefix and a newly prefilled suffix); the 4-D mask is built here.
Supports decoder-only models with full attention in every layer (Llama, Qwen2/3, SmolLM, Mistral without
sliding windows); others raise at construction.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from agentrl.core.generator import Completion, PolicyWeights, SamplingParams, per_prompt, process_logits
from agentrl.generation import packed_linear
from agentrl.generation.grouped_attention import decoding as grouped_decoding


class _Buffers:
    """KV state of running rows.

    keys / values: per layer [B, H_kv, capacity, D]; mask: [B, capacity] bool (True on real tokens);
    length: used columns; next_pos: [B] position id of each row's next token.
    """

    def __init__(self, layers: int, heads: int, dim: int, batch: int, capacity: int, dtype, device) -> None:
        shape = (batch, heads, capacity, dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.mask = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    def rows(self, first: int, end: int) -> _Buffers:
        """Rows first..end-1 as buffers sharing this one's storage (writes land here); same length."""
        view = _Buffers.__new__(_Buffers)
        view.keys = [k[first:end] for k in self.keys]
        view.values = [v[first:end] for v in self.values]
        view.mask = self.mask[first:end]
        view.next_pos = self.next_pos[first:end]
        view.length = self.length
        return view


class _BufferCache:
    """The slice of the transformers cache API the decoder layers call: write new keys/values in place."""

    is_compileable = False

    def __init__(self, buffers: _Buffers) -> None:
        self.buffers = buffers

    def update(self, key_states, value_states, layer_idx: int, *args: Any, **kwargs: Any):
        b = self.buffers
        start, end = b.length, b.length + key_states.shape[-2]
        b.keys[layer_idx][:, :, start:end] = key_states
        b.values[layer_idx][:, :, start:end] = value_states
        return b.keys[layer_idx][:, :, :end], b.values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.buffers.length


@dataclass
class _Row:
    index: int
    prompt: list[int]
    sampling: SamplingParams
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class HFGenerator:
    """Batched sampling with a transformers causal LM on CPU or GPU.

    Args:
        model: a transformers causal LM (eval mode; fp32 recommended on CPU).
        tokenizer: its tokenizer (decodes tails for stop strings).
        max_batch_size: rows decoded together; further prompts wait and join as rows finish.
        prefix_cache_tokens: tokens of keys/values kept from finished sequences for reuse by later prompts
            that extend them; default: as many as fit in 2 GiB. 0 turns off every reuse of keys/values:
            no prefix cache, no shared system-prompt prefill, and identical prompts are each prefilled in
            full (a plain reference path).
        prefill_chunk: prompt columns per prefill forward (bounds attention memory).
        prefill_tokens: rows x columns per prefill forward; larger prefills run as several forwards over
            groups of rows. Default: 4096 on CPU (a forward whose activations stay in cache prefills
            ~1.2-1.4x faster there than one over 64 rows x 256 columns), unbounded on GPU.
        join_fraction: waiting prompts join once this fraction of the batch is free.
        grouped_attention: decode grouped-query models on the unrepeated KV cache
            (`agentrl.generation.grouped_attention`; a model on "sdpa" is switched while it generates).
        packed_weights: decode steps multiply on copies of the linear weights prepacked for oneDNN
            (`agentrl.generation.packed_linear`), packed again after the weights change. None (default): on
            where the model is float32 on the CPU; True: required (raises where it cannot be); False: off.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 64,
        prefix_cache_tokens: int | None = None,
        prefill_chunk: int = 256,
        prefill_tokens: int | None = None,
        join_fraction: float = 0.25,
        grouped_attention: bool = True,
        packed_weights: bool | None = None,
    ) -> None:
        cfg = model.config
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])) or getattr(
            cfg, "use_sliding_window", False
        ):
            raise NotImplementedError(
                "the hf generator needs full attention in every layer; use backend vllm"
            )
        self.model = model
        self.grouped_attention = grouped_attention
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        if prefill_tokens is None:
            prefill_tokens = 4096 if self.device.type == "cpu" else 1 << 62
        if prefill_tokens < 1 or prefill_chunk < 1:
            raise ValueError(
                f"prefill_tokens and prefill_chunk must be >= 1, got {prefill_tokens} and {prefill_chunk}"
            )
        self.prefill_tokens = prefill_tokens
        self.join_fraction = join_fraction
        self.num_layers = cfg.num_hidden_layers
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if prefix_cache_tokens is None:
            token_bytes = 2 * self.num_layers * self.kv_heads * self.head_dim * self.dtype.itemsize
            prefix_cache_tokens = (2 << 30) // token_bytes
        if prefix_cache_tokens < 0:
            raise ValueError(f"prefix_cache_tokens must be >= 0 (0: no reuse), got {prefix_cache_tokens}")
        self.prefix_cache_tokens = prefix_cache_tokens
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._prefix: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._prefix_tokens = 0
        self._weights_version: int | None = None
        self.policy_version = 0
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "decode_steps": 0, "sampled_tokens": 0}
        self.packed = self._packed_linears(packed_weights)

    def _packed_linears(self, wanted: bool | None) -> packed_linear.PackedLinears | None:
        if wanted is False:
            return None
        reason = packed_linear.unsupported(self.model)
        if reason is not None and wanted:
            raise ValueError(f"packed_weights=True, but the model's weights cannot be packed: {reason}")
        return packed_linear.PackedLinears(self.model) if reason is None else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def update_policy(self, source: PolicyWeights, version: int) -> None:
        """Take `source`'s weights at `version`: nothing to copy when this generator samples from the very
        module the worker trains (in-process training), else its trainable parameters are copied in by
        name. Reusable keys/values are dropped either way."""
        if source.live_module() is not self.model:
            _copy_named_parameters(self.model, source.trainable_state())
        self.clear_cache()
        if self.packed is not None:
            self.packed.clear()
        self.policy_version = version

    def awake(self) -> contextlib.nullcontext[HFGenerator]:
        """The model stays where it is between rollouts: nothing to wake."""
        return contextlib.nullcontext(self)

    def close(self) -> None:
        """Free the reusable prefix keys/values and packed weights (the module belongs to the caller)."""
        self.clear_cache()
        if self.packed is not None:
            self.packed.clear()

    def clear_cache(self) -> None:
        """Forget reusable prefixes (done automatically when the weights change in place)."""
        self._prefix.clear()
        self._prefix_tokens = 0

    @torch.inference_mode()
    def generate(
        self, prompt_token_ids: list[list[int]], sampling: SamplingParams | list[SamplingParams]
    ) -> list[Completion]:
        """Sample one completion per prompt; see `agentrl.core.generator.Generator`."""
        params = per_prompt(sampling, len(prompt_token_ids))
        if not prompt_token_ids:
            return []
        if any(len(p) == 0 for p in prompt_token_ids):
            raise ValueError("every prompt needs at least one token")
        self._check_weights()
        with contextlib.ExitStack() as stack:
            if self.grouped_attention:
                stack.enter_context(grouped_decoding(self.model))
            if self.packed is not None:
                stack.enter_context(self.packed.active())
            return self._sample_rows(prompt_token_ids, params)

    def _sample_rows(
        self, prompt_token_ids: list[list[int]], params: list[SamplingParams]
    ) -> list[Completion]:
        first = params[0]
        rng = None
        if first.seed is not None:
            rng = torch.Generator(device=self.device)
            rng.manual_seed(first.seed)
        waiting = [
            _Row(i, list(p), sp) for i, (p, sp) in enumerate(zip(prompt_token_ids, params, strict=True))
        ]
        waiting.reverse()
        results: list[Completion | None] = [None] * len(waiting)
        rows: list[_Row | None] = []  # one per buffer row; None: finished, its slot not yet compacted away
        live = 0
        buffers: _Buffers | None = None
        logits: torch.Tensor | None = None
        join_at = max(1, int(self.max_batch_size * self.join_fraction))
        while waiting or live:
            free = self.max_batch_size - live
            if waiting and (not live or free >= min(join_at, len(waiting))):
                if live < len(rows):
                    assert buffers is not None and logits is not None
                    buffers, logits, rows = _compact(buffers, logits, rows)
                joining = [waiting.pop() for _ in range(min(free, len(waiting)))]
                new_buffers, new_logits = self._prefill(joining)
                buffers, logits = _merge(buffers, logits, new_buffers, new_logits)
                rows.extend(joining)
                live += len(joining)
            assert buffers is not None and logits is not None
            slots = [i for i, row in enumerate(rows) if row is not None]
            if len(slots) < len(rows):
                logits = logits.index_select(0, torch.tensor(slots, dtype=torch.long, device=self.device))
            tokens, logps = _sample(logits, first, rng)
            step = torch.full((len(rows),), self.pad_id, dtype=torch.long)
            going = torch.zeros(len(rows), dtype=torch.bool)
            for i, token, logp in zip(slots, tokens.tolist(), logps.tolist(), strict=True):
                row = rows[i]
                assert row is not None
                row.tokens.append(token)
                row.logprobs.append(logp)
                done = self._finished(row)
                if done is None:
                    step[i], going[i] = token, True
                    continue
                reason, stop = done
                results[row.index] = self._completion(row, reason, stop)
                self._remember(row, buffers, i)
                rows[i] = None
                live -= 1
            self.stats["sampled_tokens"] += len(slots)
            if not live:
                rows, buffers, logits = [], None, None
                continue
            if 2 * live <= len(rows):
                keep = going.nonzero().squeeze(1)
                buffers = _select(buffers, keep.to(self.device))
                rows = [rows[i] for i in keep.tolist()]
                step, going = step[keep], going[keep]
            step, going = step.to(self.device), going.to(self.device)
            logits = self._forward(buffers, step[:, None], going[:, None], buffers.next_pos[:, None])
            buffers.next_pos += 1
            self.stats["decode_steps"] += 1
        return [r for r in results if r is not None]

    def _finished(self, row: _Row) -> tuple[str, str | None] | None:
        token = row.tokens[-1]
        if token in self.eos_ids:
            return "eos", None
        stops = row.sampling.stop
        if stops:
            window = max(len(s) for s in stops) + 1
            tail = self.tokenizer.decode(row.tokens[-window:], skip_special_tokens=False)
            for s in stops:
                if s in tail:
                    return "stop", s
        if len(row.tokens) >= row.sampling.max_new_tokens:
            return "length", None
        return None

    def _completion(self, row: _Row, reason: str, stop: str | None) -> Completion:
        visible = row.tokens[:-1] if reason == "eos" else row.tokens
        text = self.tokenizer.decode(visible, skip_special_tokens=False)
        return Completion(list(row.tokens), list(row.logprobs), reason, text, stop)  # type: ignore[arg-type]

    def _check_weights(self) -> None:
        version = sum(p._version for p in self.model.parameters())
        if version != self._weights_version:
            self.clear_cache()
            self._weights_version = version

    def _remember(self, row: _Row, buffers: _Buffers, i: int) -> None:
        """Keep the row's keys/values (prompt + all sampled tokens but the last, which was never fed)."""
        if self.prefix_cache_tokens <= 0:
            return
        key = (*row.prompt, *row.tokens[:-1])
        if len(key) > self.prefix_cache_tokens:
            return
        if int(buffers.mask[i, : buffers.length].sum()) != len(key):
            return
        kv = _row_kv(buffers, i)
        if key in self._prefix:
            self._prefix_tokens -= len(key)
        self._prefix[key] = kv
        self._prefix.move_to_end(key)
        self._prefix_tokens += len(key)
        while self._prefix_tokens > self.prefix_cache_tokens:
            old, _ = self._prefix.popitem(last=False)
            self._prefix_tokens -= len(old)

    def _lookup(self, prompt: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        best: tuple[int, ...] | None = None
        for key in self._prefix:
            n = len(key)
            if n < len(prompt) and (best is None or n > len(best)) and tuple(prompt[:n]) == key:
                best = key
        if best is None:
            return 0, None
        kv = self._prefix.pop(best)
        self._prefix_tokens -= len(best)
        return len(best), kv

    def _prefill(self, rows: list[_Row]) -> tuple[_Buffers, torch.Tensor]:
        """Prefill `rows`; returns their buffers and next-token logits [B, V].

        Identical prompts (the G samples of a task) are computed once and copied; prompts found in the prefix
        cache only prefill their new tokens; the remaining prompts share the keys/values of their longest
        common prefix (a system prompt), computed once. With `prefix_cache_tokens=0` none of this: every
        prompt is prefilled in full.
        """
        if self.prefix_cache_tokens == 0:
            return self._prefill_rows(rows, [(0, None)] * len(rows))
        unique: dict[tuple[int, ...], int] = {}
        mapping = [unique.setdefault(tuple(r.prompt), len(unique)) for r in rows]
        if len(unique) < len(rows):
            firsts = {u: i for i, u in reversed(list(enumerate(mapping)))}
            buffers, logits = self._prefill_unique([rows[firsts[u]] for u in range(len(unique))])
            index = torch.tensor(mapping, dtype=torch.long, device=self.device)
            return _select(buffers, index), logits.index_select(0, index)
        return self._prefill_unique(rows)

    def _shared_prefix(
        self, prompts: list[list[int]]
    ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """Keys/values of the longest common prefix of `prompts`, when at least two share 32+ tokens."""
        if len(prompts) < 2:
            return None
        n = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for p in prompts[1:]:
            k = 0
            while k < n and p[k] == first[k]:
                k += 1
            n = k
        if n < 32:
            return None
        row = _Row(-1, first[:n], SamplingParams(max_new_tokens=1))
        buffers, _ = self._prefill_rows([row], [(0, None)])
        return n, _row_kv(buffers, 0)

    def _prefill_unique(self, rows: list[_Row]) -> tuple[_Buffers, torch.Tensor]:
        cached = [self._lookup(r.prompt) for r in rows]
        fresh = [i for i, (_, kv) in enumerate(cached) if kv is None]
        shared = self._shared_prefix([rows[i].prompt for i in fresh])
        if shared is not None:
            for i in fresh:
                cached[i] = shared
        return self._prefill_rows(rows, cached)

    def _prefill_rows(
        self, rows: list[_Row], cached: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]]
    ) -> tuple[_Buffers, torch.Tensor]:
        suffixes = [r.prompt[n:] for r, (n, _) in zip(rows, cached, strict=True)]
        c_max = max(n for n, _ in cached)
        s_max = max(len(s) for s in suffixes)
        budget = max(r.sampling.max_new_tokens for r in rows)
        buffers = _Buffers(
            self.num_layers,
            self.kv_heads,
            self.head_dim,
            len(rows),
            c_max + s_max + budget,
            self.dtype,
            self.device,
        )
        for i, (n, kv) in enumerate(cached):
            if kv is None:
                continue
            for layer, (k, v) in enumerate(kv):
                buffers.keys[layer][i, :, c_max - n : c_max] = k
                buffers.values[layer][i, :, c_max - n : c_max] = v
            buffers.mask[i, c_max - n : c_max] = True
        buffers.length = c_max
        ids = torch.full((len(rows), s_max), self.pad_id, dtype=torch.long)
        real = torch.zeros(len(rows), s_max, dtype=torch.bool)
        pos = torch.zeros(len(rows), s_max, dtype=torch.long)
        for i, (suffix, (n, _)) in enumerate(zip(suffixes, cached, strict=True)):
            s = len(suffix)
            ids[i, s_max - s :] = torch.tensor(suffix, dtype=torch.long)
            real[i, s_max - s :] = True
            pos[i, s_max - s :] = torch.arange(n, n + s)
            buffers.next_pos[i] = n + s
        ids, real, pos = ids.to(self.device), real.to(self.device), pos.to(self.device)
        group = max(1, self.prefill_tokens // min(s_max, self.prefill_chunk))
        last: list[torch.Tensor] = []
        for first in range(0, len(rows), group):
            end_row = min(first + group, len(rows))
            skip = s_max - max(len(s) for s in suffixes[first:end_row])  # columns of padding in every row
            view = buffers.rows(first, end_row)
            view.length = c_max + skip
            logits = None
            for start in range(skip, s_max, self.prefill_chunk):
                end = min(start + self.prefill_chunk, s_max)
                sub = slice(first, end_row), slice(start, end)
                logits = self._forward(view, ids[sub], real[sub], pos[sub])
            assert logits is not None
            last.append(logits)
        buffers.length = c_max + s_max
        self.stats["prefill_tokens"] += sum(len(s) for s in suffixes)
        self.stats["reused_tokens"] += sum(n for n, _ in cached)
        return buffers, torch.cat(last) if len(last) > 1 else last[0]

    def _forward(
        self, buffers: _Buffers, ids: torch.Tensor, real: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        """Feed ids [B, S] (real: [B, S] bool, pos: [B, S]) after the buffered columns; last logits [B, V]."""
        start, width = buffers.length, ids.shape[1]
        end = start + width
        buffers.mask[:, start:end] = real
        allowed = buffers.mask[:, None, None, :end]
        if width > 1:
            causal = torch.ones(width, end, dtype=torch.bool, device=ids.device).tril(diagonal=start)
            allowed = allowed & causal[None, None]
        bias = torch.zeros(allowed.shape, dtype=self.dtype, device=ids.device)
        bias.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        out = self.model(
            input_ids=ids,
            attention_mask=bias,
            position_ids=pos,
            past_key_values=_BufferCache(buffers),
            use_cache=True,
            logits_to_keep=_last_column(width, ids.device),
        )
        buffers.length = end
        return out.logits[:, -1, :].float()


def _last_column(width: int, device: torch.device) -> torch.Tensor:
    """`logits_to_keep` selecting the last of `width` positions as an index tensor: the hidden states it
    picks are a contiguous [B, 1, H] copy, so the output head runs as one GEMM. (A slice `[:, -1:]` of a
    wider forward is a strided view; with a head whose weight needs no gradient, torch multiplies that
    as a batched matmul over B copies of the [H, V] weight, ~7 GB for 64 rows of a 49k-token vocab.)"""
    return torch.tensor([width - 1], device=device)


def _copy_named_parameters(model: Any, named: dict[str, torch.Tensor]) -> None:
    """Copy `named` tensors into `model`'s parameters of the same names (in place, no grad)."""
    params = dict(model.named_parameters())
    missing = [n for n in named if n not in params]
    if missing:
        raise KeyError(f"the generator's model has no parameters {missing[:5]}")
    with torch.no_grad():
        for name, value in named.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    if not ids:
        raise ValueError("the model and tokenizer define no eos_token_id")
    return {int(i) for i in ids}


def _sample(logits: torch.Tensor, sampling: SamplingParams, rng: torch.Generator | None):
    """Draw one token per row from logits [B, V]; returns (tokens [B], log-probs [B])."""
    if sampling.temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, torch.zeros(tokens.shape, dtype=torch.float32)
    logp = process_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
    cdf = logp.exp().double().cumsum(dim=-1)  # inverse-CDF draw: one uniform per row
    u = torch.rand(cdf.shape[0], 1, generator=rng, dtype=torch.float64, device=cdf.device) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


def _row_kv(buffers: _Buffers, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) [H_kv, n, D] of row `i`'s n real (unmasked) columns, copied out."""
    cols = buffers.mask[i, : buffers.length].nonzero().squeeze(1)
    return [
        (k[i].index_select(1, cols), v[i].index_select(1, cols))
        for k, v in zip(buffers.keys, buffers.values, strict=True)
    ]


def _select(buffers: _Buffers, index: torch.Tensor) -> _Buffers:
    """Keep rows `index` (a copy of those rows)."""
    used = buffers.length
    out = _Buffers.__new__(_Buffers)
    out.keys = [k.index_select(0, index) for k in buffers.keys]
    out.values = [v.index_select(0, index) for v in buffers.values]
    out.mask = buffers.mask.index_select(0, index)
    out.next_pos = buffers.next_pos.index_select(0, index)
    out.length = used
    return out


def _compact(
    buffers: _Buffers, logits: torch.Tensor, rows: list[_Row | None]
) -> tuple[_Buffers, torch.Tensor, list[_Row | None]]:
    """Drop the slots of finished rows (None in `rows`, at least one row still running) from the buffers and
    the logits [B, V]."""
    keep = [i for i, row in enumerate(rows) if row is not None]
    index = torch.tensor(keep, dtype=torch.long, device=logits.device)
    return _select(buffers, index), logits.index_select(0, index), [rows[i] for i in keep]


def _merge(
    a: _Buffers | None, a_logits: torch.Tensor | None, b: _Buffers, b_logits: torch.Tensor
) -> tuple[_Buffers, torch.Tensor]:
    """Stack two row sets, right-aligning their used columns (the shorter one gets masked left padding)."""
    if a is None or a_logits is None:
        return b, b_logits
    length = max(a.length, b.length)
    spare = max(a.capacity - a.length, b.capacity - b.length)
    k0 = a.keys[0]
    out = _Buffers(
        len(a.keys), k0.shape[1], k0.shape[3], a.batch + b.batch, length + spare, k0.dtype, k0.device
    )
    for offset, src in ((0, a), (a.batch, b)):
        rows = slice(offset, offset + src.batch)
        cols = slice(length - src.length, length)
        for layer in range(len(a.keys)):
            out.keys[layer][rows, :, cols] = src.keys[layer][:, :, : src.length]
            out.values[layer][rows, :, cols] = src.values[layer][:, :, : src.length]
        out.mask[rows, cols] = src.mask[:, : src.length]
        out.next_pos[rows] = src.next_pos
    out.length = length
    return out, torch.cat([a_logits, b_logits], dim=0)
