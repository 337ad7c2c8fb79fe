"""vLLM backend (GPU; `pip install agentrl[gpu]`): the generator contract on top of `vllm.LLM`.

Log-probs: every engine is built with `logprobs_mode="processed_logprobs"`, so the sampled token's log-prob is
the one under the distribution actually sampled from (after temperature, top-k and top-p). vLLM computes
that mode after temperature from 0.10.2 on (0.10.0 and 0.10.1 accept the option but apply it before
temperature), so older versions are refused at start-up (`check_vllm_version`).

EOS: the tokenizer's EOS and every `eos_token_id` of the model's `generation_config` (Qwen's `<|endoftext|>`
next to `<|im_end|>`) end a completion; they are passed as `stop_token_ids` and their text is stripped from
`Completion.text`, so the env never sees it.

Weights change through vLLM's supported paths only: methods of the worker extension
`agentrl.generation.vllm_worker.WeightReceiver` called by name with `LLM.collective_rpc` (CUDA IPC handles
of a colocated trainer's tensors, or an NCCL broadcast from a separate one), or a LoRA adapter directory
loaded under a new name per policy version. Everything vLLM-specific stays in this module and
`vllm_worker`, which import vLLM only when a backend is built.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from agentrl.core.generator import Completion, PolicyWeights, SamplingParams, per_prompt

MIN_VLLM_VERSION = "0.10.2"
WORKER_EXTENSION = "agentrl.generation.vllm_worker.WeightReceiver"
PROCESSED = "processed_logprobs"


def check_vllm_version(version: str) -> None:
    """Refuse a vLLM whose `processed_logprobs` are not post-temperature (or that lacks the option)."""
    from packaging.version import Version

    if Version(version) < Version(MIN_VLLM_VERSION):
        raise RuntimeError(
            f"vLLM {version} reports log-probs before temperature (processed_logprobs is post-temperature "
            f"from {MIN_VLLM_VERSION} on); install vllm>={MIN_VLLM_VERSION} (`pip install agentrl[gpu]`)"
        )


def eos_token_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    """The tokenizer's EOS id and every `eos_token_id` (an int or a list) of the generation config."""
    ids: set[int] = set()
    for source in (tokenizer, generation_config):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return ids


def _generation_config(model: str) -> Any:
    """The model's generation config from its directory or the local hub cache (vLLM has just fetched
    the model there), None when it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model, local_files_only=True)
    except OSError:
        return None


@dataclass
class EngineOptions:
    """What `vllm.LLM` is built with (see `agentrl.experiment.VLLMSection`).

    dtype: the trainer's `model.dtype` (the engine must compute in the same precision for its log-probs to
        match the trainer's).
    enable_lora / max_lora_rank: serve LoRA adapters (the trainer's adapter, one per policy version).
    enable_sleep_mode: colocated engines release their GPU memory between rollouts.
    seed: the engine's base seed.
    """

    dtype: str = "auto"
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool = True
    max_model_len: int | None = None
    enable_lora: bool = False
    max_lora_rank: int = 16
    enable_sleep_mode: bool = False
    seed: int = 0

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "dtype": self.dtype, "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager, "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": self.enable_prefix_caching, "enable_sleep_mode": self.enable_sleep_mode,
            "seed": self.seed,
        }  # fmt: skip
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.tensor_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "ray"
        if self.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=2)
        return kwargs


class VLLMGenerator:
    """`Generator` over a vLLM engine in this process.

    Args:
        model: a model path or hub id, or an existing `vllm.LLM` built with
            `logprobs_mode="processed_logprobs"` (then `engine_kwargs` are ignored).
        tokenizer: optional; defaults to the engine's tokenizer.
        extra_eos_ids: more ids that end a completion (besides the tokenizer's and the generation config's).
        engine_kwargs: passed to `vllm.LLM` (`EngineOptions.engine_kwargs()`).
    """

    def __init__(
        self, model: Any, tokenizer: Any = None, extra_eos_ids: set[int] | None = None, **engine_kwargs: Any
    ) -> None:
        import vllm

        check_vllm_version(vllm.__version__)
        self.vllm = vllm
        if isinstance(model, vllm.LLM):
            self.llm = model
            mode = getattr(getattr(model.llm_engine, "model_config", None), "logprobs_mode", None)
            if mode != PROCESSED:
                raise ValueError(
                    f"the vllm.LLM passed in reports {mode or 'raw_logprobs'}; build it with "
                    f"logprobs_mode={PROCESSED!r} so sampled log-probs follow temperature, top-k and top-p"
                )
            path = getattr(getattr(model.llm_engine, "model_config", None), "model", None)
        else:
            path = model
            kwargs = {"enable_prefix_caching": True, **engine_kwargs}
            self.llm = vllm.LLM(
                model=model, logprobs_mode=PROCESSED, worker_extension_cls=WORKER_EXTENSION, **kwargs
            )
        self.tokenizer = tokenizer or self.llm.get_tokenizer()
        generation = _generation_config(path) if isinstance(path, str) else None
        self.eos_ids = eos_token_ids(self.tokenizer, generation) | set(extra_eos_ids or ())
        self._eos_text = {i: self.tokenizer.decode([i]) for i in self.eos_ids}
        self.lora_request: Any = None

    def _params(self, sp: SamplingParams, index: int) -> Any:
        return self.vllm.SamplingParams(
            n=1,
            temperature=sp.temperature,
            top_p=sp.top_p,
            top_k=sp.top_k if sp.top_k > 0 else -1,
            max_tokens=sp.max_new_tokens,
            stop=list(sp.stop) or None,
            stop_token_ids=sorted(self.eos_ids),
            include_stop_str_in_output=True,
            logprobs=0,
            seed=None if sp.seed is None else sp.seed + index,
            skip_special_tokens=False,
        )

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        sampling: SamplingParams | list[SamplingParams],
        positions: list[int] | None = None,
    ) -> list[Completion]:
        """One completion per prompt. Prompt i is seeded with `seed + positions[i]` (default `seed + i`), so a
        group's samples differ; engines that each take a share of one call pass the prompts' positions in it.
        """
        params = per_prompt(sampling, len(prompt_token_ids))
        if not prompt_token_ids:
            return []
        where = positions if positions is not None else range(len(prompt_token_ids))
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_token_ids]
        outputs = self.llm.generate(
            prompts, [self._params(sp, i) for i, sp in zip(where, params, strict=True)], use_tqdm=False,
            lora_request=self.lora_request,
        )  # fmt: skip
        return [self._completion(o.outputs[0], sp) for o, sp in zip(outputs, params, strict=True)]

    def _completion(self, out: Any, sp: SamplingParams) -> Completion:
        ids = list(out.token_ids)
        if sp.temperature == 0:
            logprobs = [0.0] * len(ids)
        else:
            logprobs = [
                float(step[token].logprob) for token, step in zip(ids, out.logprobs or [], strict=True)
            ]
        stop = out.stop_reason if isinstance(out.stop_reason, str) else None
        text = out.text
        if out.finish_reason == "length":
            reason = "length"
        elif stop is not None:
            reason = "stop"
        else:
            reason = "eos"
            eos_text = self._eos_text.get(ids[-1], "") if ids else ""
            if eos_text and text.endswith(eos_text):
                text = text[: -len(eos_text)]
        return Completion(ids, logprobs, reason, text, stop)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- weights and memory

    def use_adapter(self, name: str, adapter_id: int, path: str) -> None:
        """Sample with the LoRA adapter at `path` from now on, registered as `name` / `adapter_id` (a new
        pair per policy version; the previous adapter is dropped from the engine)."""
        from vllm.lora.request import LoRARequest

        previous = self.lora_request
        self.lora_request = LoRARequest(name, adapter_id, path)
        if previous is not None and previous.lora_int_id != adapter_id:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
        self.llm.reset_prefix_cache()

    def update_weights_from_ipc(self, handles: dict[str, dict[str, Any]]) -> None:
        """Load a colocated trainer's tensors shared as CUDA IPC handles ({device uuid: {name: handle}})."""
        self.llm.collective_rpc("update_weights_from_ipc", args=(handles,))
        self.llm.reset_prefix_cache()

    def init_weight_broadcast(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        """Join the NCCL group whose rank 0 is the trainer; this engine's workers take ranks from
        `rank_offset`."""
        self.llm.collective_rpc("init_weight_broadcast", args=(host, port, rank_offset, world_size))

    def receive_broadcast(self, metas: list[tuple[str, str, list[int]]]) -> None:
        """Receive (name, dtype, shape) tensors broadcast by the trainer, in order, and load them."""
        self.llm.collective_rpc("receive_broadcast", args=(metas,))
        self.llm.reset_prefix_cache()

    def update_policy(self, source: PolicyWeights, version: int) -> None:
        """Refused: weights reach vLLM through `VLLMEngines`, which picks a transport (adapter, CUDA IPC or
        NCCL) and calls this engine's worker-extension methods by name."""
        raise TypeError(
            "a single in-process vLLM engine takes no weight updates; train with rollout.backend=vllm, "
            "whose engines (rollout.vllm.num_engines) are synced after every optimizer step"
        )

    def awake(self) -> contextlib.nullcontext[VLLMGenerator]:
        """An in-process engine never sleeps."""
        return contextlib.nullcontext(self)

    def close(self) -> None:
        """Drop the engine (vLLM stops its engine process once the `LLM` is garbage-collected)."""
        self.llm = None

    def sleep(self, level: int = 1) -> None:
        """Release GPU memory (level 1: weights to CPU, KV cache discarded)."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Restore `tags` (`weights`, `kv_cache`; None: both)."""
        self.llm.wake_up(tags=tags)
