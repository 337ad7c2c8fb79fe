"""The generator contract: sampling parameters in, sampled token ids with their log-probs out.

A generator turns batches of prompt token ids into completions. Every backend reports, for each sampled token,
its log-probability under the distribution that actually drew it: logits divided by the temperature, then
restricted to the top-k and top-p (nucleus) set and renormalized. `process_logits` is that transformation,
shared with whoever recomputes log-probs later (trainers, tests).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "eos", "length"]


class BackendUnavailableError(ImportError):
    """A generation backend whose package is not installed here; the message names how to install it."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion.

    Attributes:
        temperature: softmax temperature; 0 means greedy (every sampled token then has log-prob 0.0).
        top_p: nucleus mass in (0, 1]; 1.0 disables it.
        top_k: keep the k most likely tokens; 0 disables it.
        max_new_tokens: hard cap on sampled tokens.
        stop: stop strings; generation ends after the token whose decoded text completes one of them, and the
            stop text stays in the output.
        seed: seeds the sampling RNG of one `generate` call; None draws from the global RNG.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 96
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        object.__setattr__(self, "stop", tuple(self.stop))

    def with_max_new_tokens(self, n: int) -> SamplingParams:
        return replace(self, max_new_tokens=n)

    def same_distribution(self, other: SamplingParams) -> bool:
        """True when both share distribution and RNG seed (budgets and stops may differ)."""
        return (self.temperature, self.top_p, self.top_k, self.seed) == (
            other.temperature,
            other.top_p,
            other.top_k,
            other.seed,
        )


@dataclass
class Completion:
    """One sampled continuation of a prompt.

    Attributes:
        token_ids: [T] the sampled ids, stop-string and EOS tokens included.
        logprobs: [T] log-probability of each sampled id under the sampling distribution.
        finish_reason: `stop` (a stop string appeared), `eos` (an EOS token was sampled) or `length`.
        text: the decoded `token_ids` (may run a few characters past a stop string inside the last token).
        stop: the stop string that ended generation, if any.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    text: str = ""
    stop: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class PolicyWeights(Protocol):
    """A policy worker's weights, as a generator takes them after an optimizer step.

    `live_module()` is the trained module itself when it lives in the caller's process (a generator that
    shares it needs no copy), else None; `trainable_state()` is {name: CPU tensor} of the parameters that
    training changes.
    """

    def live_module(self) -> Any | None: ...

    def trainable_state(self) -> dict[str, Any]: ...


@runtime_checkable
class AdapterWeights(PolicyWeights, Protocol):
    """A worker that trains a LoRA adapter and writes it (peft's layout) to a directory, for engines that
    serve adapters by path."""

    def save_adapter(self, directory: str | Path) -> Path: ...


@runtime_checkable
class EngineWeights(AdapterWeights, Protocol):
    """The transports GPU vLLM engines in other processes take on top of `AdapterWeights`: CUDA IPC handles of
    the trainer's tensors by GPU UUID (colocated engines) and an NCCL broadcast from trainer rank 0 (separate
    engines)."""

    def ipc_handles(self) -> dict[str, dict[str, Any]]: ...

    def broadcast_address(self) -> tuple[str, int]: ...

    def open_weight_broadcast(self, host: str, port: int, world_size: int) -> None: ...

    def weight_metas(self) -> list[tuple[str, str, list[int]]]: ...

    def broadcast_weights(self) -> None: ...


@runtime_checkable
class Generator(Protocol):
    """A sampling backend and its life cycle.

    - `generate(prompts, sampling)` takes [N] prompts as token-id lists and returns [N] completions in the
      same order. `sampling` is one `SamplingParams` for all prompts or a list of N that differ only in
      `max_new_tokens` and `stop`.
    - `update_policy(source, version)` brings the sampler to the weights a policy worker holds after its
      `version`-th optimizer step (the one place where weights reach a backend; the worker's `sync_weights`
      calls it) and drops every cache the old weights filled.
    - `awake()` is the block inside which rollouts and evaluations run (colocated engines hold their memory
      only there).
    - `close()` releases the backend's engines.
    """

    def generate(
        self, prompt_token_ids: list[list[int]], sampling: SamplingParams | list[SamplingParams]
    ) -> list[Completion]: ...

    def update_policy(self, source: PolicyWeights, version: int) -> None: ...

    def awake(self) -> AbstractContextManager[object]: ...

    def close(self) -> None: ...


def per_prompt(sampling: SamplingParams | list[SamplingParams], n: int) -> list[SamplingParams]:
    """Expand `sampling` to one entry per prompt, checking that all entries share one distribution."""
    if isinstance(sampling, SamplingParams):
        return [sampling] * n
    params = list(sampling)
    if len(params) != n:
        raise ValueError(f"got {len(params)} SamplingParams for {n} prompts")
    for p in params[1:]:
        if not p.same_distribution(params[0]):
            raise ValueError("per-prompt SamplingParams may differ only in max_new_tokens and stop")
    return params


def process_logits(logits: Any, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Any:
    """Log-probabilities of the sampling distribution.

    Args:
        logits: [..., V] raw next-token logits (any float dtype; computed in float32).
        temperature: > 0 (greedy decoding has no distribution to recompute).
        top_k, top_p: as in `SamplingParams`; excluded tokens get -inf.

    Returns:
        [..., V] float32 log-probs, renormalized over the kept tokens.
    """
    import torch

    if temperature <= 0:
        raise ValueError("process_logits needs temperature > 0; greedy tokens have log-prob 0.0")
    scores = logits.float() / temperature
    vocab = scores.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.log_softmax(dim=-1)
