"""Wire a rollout from an `ExperimentConfig`: env kwargs, retriever, generator, executor and engine.

The trainer and `agentrl rollout` share these, so a YAML config means the same rollout everywhere.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentrl.core.types import Task, Trajectory
from agentrl.experiment import DataSection, ExperimentConfig
from agentrl.rollout.engine import EngineConfig, RolloutEngine, RolloutStats
from agentrl.rollout.executors import Executor, build_executor
from agentrl.rollout.tasks import load_rollout_tasks


def import_env_module(env_id: str) -> str:
    """Import what registers `env_id` (agentrl's envs, or `module` of a `module:Env-v0` id, as gymnasium does
    in `make`) and return the bare id."""
    import importlib

    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        importlib.import_module(module)
    if env_id.startswith("agentrl/"):
        import environments  # noqa: F401
    return env_id


def env_parameters(env_id: str) -> set[str] | None:
    """Constructor parameter names of a registered env (None when they cannot be read)."""
    import gymnasium

    env_id = import_env_module(env_id)
    try:
        entry = gymnasium.spec(env_id).entry_point
        cls = gymnasium.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
        params = inspect.signature(cls).parameters
    except Exception:
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def run_worlds(cfg: ExperimentConfig) -> list[tuple[int, int]]:
    """(seed, entities) of every synthetic world the run's data sections draw from (training data, and the
    SFT and held-out evaluation data when those phases are on)."""
    from agentrl.rollout.synthetic import world_of

    sections = [cfg.data]
    for phase in ("sft", "eval"):
        section = getattr(cfg, phase, None)
        if section is not None and section.enabled:
            sections.append(section.data)
    return sorted(
        {world_of(s.options, cfg.env.kwargs) for s in sections if s.dataset == "synthetic" and s.path is None}
    )


def build_retriever(cfg: ExperimentConfig) -> Any:
    """The configured search backend, or None to let the env use its default.

    With synthetic data, `memory` is BM25 over the documents of the run's worlds, and `dense` / `bm25` /
    `hybrid` without an `index_dir` build (once, then reuse) an index over them with `retriever.encoder`.
    """
    section = cfg.retriever
    params = env_parameters(cfg.env.id)
    worlds = run_worlds(cfg) if params is None or "retriever" in params else []
    if section.kind == "memory":
        if not worlds:
            return None
        from environments.search_env import world_retriever

        if len(worlds) == 1:
            return world_retriever(*worlds[0])
        from agentrl.rollout.synthetic import synthetic_documents
        from retrievers.memory import InMemoryRetriever

        return InMemoryRetriever(synthetic_documents(worlds))
    from retrievers.factory import open_retriever

    if section.kind != "http" and not section.index_dir and worlds:
        from agentrl.rollout.synthetic import synthetic_index

        return open_retriever(synthetic_index(worlds, section.kind, section.encoder))
    key = "url" if section.kind == "http" else "index_dir"
    target = getattr(section, key)
    if not target:
        raise ValueError(f"retriever.kind={section.kind} needs retriever.{key}")
    return open_retriever(target)


def env_kwargs_for(cfg: ExperimentConfig, retriever: Any = None) -> dict[str, Any]:
    """`env.kwargs` plus `max_turns`, `top_k` and `retriever` where the env's constructor takes them."""
    kwargs = dict(cfg.env.kwargs)
    params = env_parameters(cfg.env.id)
    extras = {"max_turns": cfg.env.max_turns, "top_k": cfg.retriever.topk, "retriever": retriever}
    for name, value in extras.items():
        if value is None or name in kwargs:
            continue
        if params is None or name in params:
            kwargs[name] = value
    return kwargs


def section_tasks(
    cfg: ExperimentConfig, section: DataSection, env_kwargs: dict[str, Any] | None = None
) -> list[Task]:
    """The tasks a data section of `cfg` (`data`, `eval.data` or `sft.data`) names, for `cfg.env`
    (`env_kwargs` default: `env_kwargs_for(cfg)`)."""
    kwargs = env_kwargs_for(cfg) if env_kwargs is None else env_kwargs
    return load_rollout_tasks(
        section.dataset, section.path, section.num_tasks, seed=section.seed, env_id=cfg.env.id,
        env_kwargs=kwargs, split=section.split, options=section.options,
    )  # fmt: skip


def build_generator_for(
    cfg: ExperimentConfig, model: Any = None, tokenizer: Any = None, adapter_dir: Any = None
) -> Any:
    """The run's generator in this process: HF over `model`, or one vLLM engine that loads `model.name`
    itself (`lora`: it serves the trainer's adapter, written under `adapter_dir` per policy version)."""
    from agentrl.generation import build_generator

    if cfg.rollout.backend == "vllm":
        from agentrl.core.models import resolve_model_path

        lora = model is not None and cfg.finetune.mode == "lora"
        options = vllm_options(cfg, lora=lora)
        return build_generator(
            "vllm", model=resolve_model_path(cfg.model.name), tokenizer=tokenizer, options=options,
            adapter_dir=adapter_dir,
        )  # fmt: skip
    sampler = sampler_model(model, cfg.rollout.sampler_dtype)
    return build_generator(
        "hf", model=sampler, tokenizer=tokenizer, max_batch_size=cfg.rollout.batch_size,
        packed_weights=cfg.rollout.packed_weights,
    )  # fmt: skip


def sampler_model(model: Any, dtype: str | None) -> Any:
    """`model` itself, or (when `dtype` names another precision) a frozen copy of it in `dtype` for the HF
    sampler, which takes the trained weights after every update (`HFGenerator.update_policy`)."""
    import torch

    if dtype is None or model is None:
        return model
    target = getattr(torch, dtype)
    if next(model.parameters()).dtype == target:
        return model
    sampler = copy.deepcopy(model).to(target).eval()
    sampler.requires_grad_(False)
    return sampler


def vllm_options(cfg: ExperimentConfig, lora: bool = False, sleep: bool = False) -> Any:
    """`EngineOptions` of `cfg.rollout.vllm` with the trainer's dtype (so engine and trainer compute the
    same log-probs) and a context of `rollout.max_total_tokens` unless `max_model_len` says otherwise."""
    from agentrl.generation.vllm import EngineOptions

    v = cfg.rollout.vllm
    return EngineOptions(
        dtype=v.dtype or cfg.model.dtype, gpu_memory_utilization=v.gpu_memory_utilization,
        enforce_eager=v.enforce_eager, tensor_parallel_size=v.tensor_parallel_size,
        enable_prefix_caching=v.enable_prefix_caching,
        max_model_len=v.max_model_len or cfg.rollout.max_total_tokens, enable_lora=lora,
        max_lora_rank=max(8, 1 << (cfg.finetune.lora_r - 1).bit_length()), enable_sleep_mode=sleep,
        seed=cfg.seed, kv_cache_gib=v.kv_cache_gib, cpu_threads_bind=v.cpu_threads_bind,
        cpu_reserved_cores=v.cpu_reserved_cores,
    )  # fmt: skip


def build_executor_for(cfg: ExperimentConfig, env_kwargs: dict[str, Any]) -> Executor:
    r = cfg.rollout
    return build_executor(
        r.executor, cfg.env.id, env_kwargs, num_workers=r.num_workers, address=r.ray_address,
        step_timeout=r.step_timeout,
    )  # fmt: skip


def build_engine(cfg: ExperimentConfig, generator: Any, tokenizer: Any) -> tuple[RolloutEngine, Executor]:
    """An engine for `cfg` (the caller closes the returned executor)."""
    kwargs = env_kwargs_for(cfg, build_retriever(cfg))
    executor = build_executor_for(cfg, kwargs)
    config = EngineConfig.from_section(cfg.rollout, max_turns=cfg.env.max_turns)
    return RolloutEngine(generator, tokenizer, executor, config), executor


def bf16_settings(cfg: ExperimentConfig) -> list[str]:
    """The `key=bfloat16` settings of `cfg` that put matrix products in bf16 (the policy's weights, the
    trainer's autocast, the hf sampler's copy, a vLLM engine's dtype)."""
    r = cfg.rollout
    named = {
        "model.dtype": cfg.model.dtype,
        "trainer.compute_dtype": cfg.trainer.compute_dtype,
        "rollout.sampler_dtype": r.sampler_dtype if r.backend == "hf" else None,
        "rollout.vllm.dtype": r.vllm.dtype if r.backend == "vllm" else None,
    }
    return [f"{key}=bfloat16" for key, value in named.items() if value == "bfloat16"]


def slow_bf16_warning(
    cfg: ExperimentConfig, flags: set[str] | None = None, rates: dict[str, float | None] | None = None
) -> str | None:
    """A warning when `cfg` computes in bf16 on a CPU where bf16 matrix products are slower than fp32; None
    otherwise. `flags`: the CPU's feature flags (default this machine's): without native bf16 instructions
    the products run in emulation, tens of times slower. With them, `rates` (FLOP/s by dtype, default
    measured here in a fraction of a second, see `bf16_gemm_rates`) decide: some such CPUs multiply bf16
    at half the fp32 rate."""
    from agentrl.core.cpu_features import (
        NO_NATIVE_BF16,
        bf16_gemm_rates,
        cpu_flags,
        native_bf16,
        rate_comparison,
    )
    from agentrl.core.models import resolve_device

    settings = bf16_settings(cfg)
    if not settings or resolve_device(cfg.model.device) != "cpu":
        return None
    flags = cpu_flags() if flags is None else flags
    if native_bf16(flags) is False:
        return (
            f"{', '.join(settings)} on a CPU without native bf16 instructions ({NO_NATIVE_BF16}): its bf16 "
            "matrix products run in emulation, tens of times slower than fp32; use float32 here"
        )
    rates = bf16_gemm_rates(flags) if rates is None else rates
    fp32, bf16 = rates["float32"], rates["bfloat16"]
    if fp32 is None or bf16 is None or bf16 >= fp32:
        return None
    return (
        f"{', '.join(settings)} on a CPU where a bf16 matrix product measured {rate_comparison(fp32, bf16)}, "
        "native bf16 instructions notwithstanding: float32 is faster here"
    )


def apply_process_settings(cfg: ExperimentConfig) -> None:
    """This process's share of `cfg`: torch's intra-op threads (`threads`) and malloc keeping freed memory
    (`retain_freed_memory`)."""
    import torch

    from agentrl.core.allocator import retain_freed_memory

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.retain_freed_memory:
        retain_freed_memory()


def load_policy(cfg: ExperimentConfig, trains_here: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) for `cfg.model`; with the vLLM backend only the tokenizer (vLLM loads weights),
    unless `trains_here`: the in-process trainer (`trainer.num_workers: 0`) trains the model beside it."""
    from agentrl.core.models import load_model, resolve_model_path

    if cfg.rollout.backend == "vllm" and not (trains_here and cfg.trainer.num_workers == 0):
        from transformers import AutoTokenizer

        return None, AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name))
    return load_model(cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device, base=cfg.model.base)


@dataclass
class RolloutRun:
    """What `run_from_config` produced: trajectories task-major, the tokenizer that made them, timings."""

    trajectories: list[Trajectory]
    tokenizer: Any
    stats: RolloutStats


def run_from_config(
    cfg: ExperimentConfig,
    on_start: Callable[[int], None] | None = None,
    on_finish: Callable[[int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> RolloutRun:
    """Load `cfg`'s tasks and policy, sample `rollout.group_size` episodes per task and close the executor.

    `on_stage(text)` announces each stage, `on_start(total)` gives the number of episodes before sampling and
    `on_finish(n)` reports n more finished episodes.
    """
    stage = on_stage or (lambda text: None)
    apply_process_settings(cfg)
    stage(f"loading tasks ({cfg.data.dataset})")
    tasks = section_tasks(cfg, cfg.data)
    stage(f"loading {cfg.model.name}")
    if warning := slow_bf16_warning(cfg):
        stage(f"warning: {warning}")
    model, tokenizer = load_policy(cfg)
    engine, executor = build_engine(cfg, build_generator_for(cfg, model, tokenizer), tokenizer)
    stage(f"sampling {len(tasks)} tasks x {cfg.rollout.group_size} episodes in {cfg.env.id}")
    if on_start is not None:
        on_start(len(tasks) * cfg.rollout.group_size)
    try:
        trajectories = engine.run(tasks, cfg.rollout.group_size, on_finish=on_finish)
    finally:
        executor.close()
    return RolloutRun(trajectories, tokenizer, engine.stats)
