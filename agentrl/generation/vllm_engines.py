"""vLLM engines as Ray actors behind the generator contract, kept at the trainer's policy version.

    engines = VLLMEngines.launch(model_path, EngineOptions(...), num_engines=2, placement="separate")
    completions = engines.generate(prompt_ids, sampling)     # prompts split across the engines
    with engines.awake(): ...                                # colocated: wake for a rollout, sleep after
    engines.update_policy(worker_group, version)             # once per optimizer step (`sync_weights`)

Placement (`rollout.vllm.placement`):
- `colocated`: engine i shares the GPU of trainer rank i (same Ray placement-group bundle, half a GPU each in
  Ray's accounting; vLLM's `gpu_memory_utilization` bounds its share of memory). Engines sleep (weights to
  CPU, KV cache freed) while the trainer trains and wake around each rollout; full weights arrive as CUDA
  IPC handles of the trainer's own tensors on that GPU.
- `separate`: each engine gets `tensor_parallel_size` GPUs of its own through a placement group; full
  weights arrive by an NCCL broadcast from trainer rank 0.
With LoRA, only the adapter moves: rank 0 writes it to `adapter_dir/v<version>` and every engine switches
to it under the name `policy-v<version>` (never merged into the base weights); the previous version's
directory is then deleted. Engines on CPU (vLLM's CPU build) take full weights as tensors, which each engine
writes to a shared-memory safetensors file for its worker extension, and never sleep (sleep mode is
GPU-only; the skip is logged).

The engine calls go through `_invoke` / `_gather`, which take Ray actor handles or plain `VLLMEngine`
objects (the latter in tests, with a stand-in `vllm`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentrl.core.generator import (
    AdapterWeights,
    Completion,
    EngineWeights,
    PolicyWeights,
    SamplingParams,
    per_prompt,
)
from agentrl.generation.vllm import ADAPTER_NAME, EngineOptions, VLLMGenerator

log = logging.getLogger(__name__)


class VLLMEngine:
    """One engine (Ray actor body): a `VLLMGenerator` in this process and its weight-update calls."""

    def __init__(self, model: str, options: EngineOptions, tokenizer: Any = None) -> None:
        self.generator = VLLMGenerator(model, tokenizer=tokenizer, options=options)

    @classmethod
    def around(cls, generator: VLLMGenerator) -> VLLMEngine:
        """An engine over an already started generator (engines in this process)."""
        engine = cls.__new__(cls)
        engine.generator = generator
        return engine

    def eos_ids(self) -> set[int]:
        return set(self.generator.eos_ids)

    def on_cpu(self) -> bool:
        return self.generator.on_cpu

    def load_state(self, state: dict[str, Any]) -> None:
        self.generator.load_state(state)

    def generate(
        self, prompts: list[list[int]], sampling: list[SamplingParams], positions: list[int]
    ) -> list[Completion]:
        return self.generator.generate(prompts, sampling, positions)

    def use_adapter(self, name: str, adapter_id: int, path: str) -> None:
        self.generator.use_adapter(name, adapter_id, path)

    def update_weights_from_ipc(self, handles: dict[str, dict[str, Any]]) -> None:
        self.generator.update_weights_from_ipc(handles)

    def init_weight_broadcast(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        self.generator.init_weight_broadcast(host, port, rank_offset, world_size)

    def receive_broadcast(self, metas: list[tuple[str, str, list[int]]]) -> None:
        self.generator.receive_broadcast(metas)

    def sleep(self, level: int = 1) -> None:
        self.generator.sleep(level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.generator.wake_up(tags)


def _is_actor(engine: Any) -> bool:
    return type(engine).__name__ == "ActorHandle"


def _invoke(engine: Any, method: str, *args: Any) -> Any:
    """Start `engine.method(*args)`: a Ray object ref for an actor, the result itself otherwise."""
    if _is_actor(engine):
        return getattr(engine, method).remote(*args)
    return getattr(engine, method)(*args)


def _gather(results: list[Any]) -> list[Any]:
    import sys

    if results and "ray" in sys.modules:
        import ray

        if isinstance(results[0], ray.ObjectRef):
            return ray.get(results)
    return results


class VLLMEngines:
    """The rollout generator over one or more vLLM engines.

    Args:
        engines: Ray actor handles of `VLLMEngine` (or `VLLMEngine` objects).
        placement: `colocated` (sleep/wake around rollouts, IPC weight updates) or `separate` (NCCL
            broadcast).
        lora: the trainer trains a LoRA adapter (only the adapter is synced).
        adapter_dir: where adapters of each version are written (readable by every engine's node).
        tensor_parallel_size: GPUs (vLLM workers) per engine, for the NCCL group's ranks.
    """

    def __init__(
        self,
        engines: list[Any],
        placement: str,
        lora: bool,
        adapter_dir: str | Path,
        tensor_parallel_size: int = 1,
    ) -> None:
        if placement not in ("colocated", "separate"):
            raise ValueError(f"rollout.vllm.placement must be colocated or separate, got {placement!r}")
        self.engines = list(engines)
        self.placement = placement
        self.lora = lora
        self.adapter_dir = Path(adapter_dir)
        self.tensor_parallel_size = tensor_parallel_size
        self.eos_ids: set[int] = set().union(*_gather([_invoke(e, "eos_ids") for e in self.engines]))
        self.on_cpu = any(_gather([_invoke(e, "on_cpu") for e in self.engines]))
        self.version = 0
        self.asleep = False
        self._broadcast_ready = False
        self._adapter: Path | None = None
        self.sleeps = placement == "colocated" and not self.on_cpu
        if placement == "colocated" and self.on_cpu:
            log.info("vLLM sleep mode is GPU-only: colocated CPU engines stay awake between rollouts")
        if self.sleeps:
            self._sleep()

    # ----------------------------------------------------------------- generation

    def generate(
        self, prompt_token_ids: list[list[int]], sampling: SamplingParams | list[SamplingParams]
    ) -> list[Completion]:
        """Prompts dealt round-robin to the engines; prompt j is seeded with `seed + j` whichever engine
        samples it (as in one engine); results in prompt order."""
        params = per_prompt(sampling, len(prompt_token_ids))
        if not prompt_token_ids:
            return []
        if self.asleep:
            self._wake()
        n = len(self.engines)
        shares = [list(range(i, len(prompt_token_ids), n)) for i in range(n)]
        calls = [
            _invoke(e, "generate", [prompt_token_ids[j] for j in rows], [params[j] for j in rows], rows)
            for e, rows in zip(self.engines, shares, strict=True)
            if rows
        ]  # fmt: skip
        out: list[Completion | None] = [None] * len(prompt_token_ids)
        for rows, completions in zip([r for r in shares if r], _gather(calls), strict=True):
            for j, completion in zip(rows, completions, strict=True):
                out[j] = completion
        return out  # type: ignore[return-value]

    @contextlib.contextmanager
    def awake(self) -> Iterator[VLLMEngines]:
        """Colocated GPU engines hold their memory only inside this block (a rollout or an evaluation)."""
        if not self.sleeps:
            yield self
            return
        self._wake()
        try:
            yield self
        finally:
            self._sleep()

    def _wake(self) -> None:
        _gather([_invoke(e, "wake_up", None) for e in self.engines])
        self.asleep = False

    def _sleep(self) -> None:
        _gather([_invoke(e, "sleep", 1) for e in self.engines])
        self.asleep = True

    # ----------------------------------------------------------------- weights

    def update_policy(self, source: PolicyWeights, version: int) -> None:
        """Bring every engine to `source`'s weights (`EngineWeights`: a `trainers.ray_worker.RayWorkerGroup`)
        at `version`.

        LoRA: the adapter alone, under a new name per version (`source` must be `AdapterWeights`). CPU
        engines: the trainable tensors, each engine loading them from shared memory. Colocated GPU full
        weights: the engines' weights wake, load the trainer's tensors through CUDA IPC, and sleep again.
        Separate GPU full weights: an NCCL broadcast from trainer rank 0.
        """
        if self.lora and not isinstance(source, AdapterWeights):
            raise TypeError(f"{type(source).__name__} cannot write a LoRA adapter for the vLLM engines")
        if not (self.lora or self.on_cpu or isinstance(source, EngineWeights)):
            raise TypeError(
                f"GPU vLLM engines take full weights from a Ray worker group (trainer.num_workers >= 1), not "
                f"from {type(source).__name__}"
            )
        if self.lora:
            path = Path(source.save_adapter(self.adapter_dir / f"v{version}"))
            name = ADAPTER_NAME.format(version=version)
            _gather([_invoke(e, "use_adapter", name, version + 1, str(path)) for e in self.engines])
            if self._adapter is not None and self._adapter != path:
                shutil.rmtree(self._adapter, ignore_errors=True)  # no engine samples with it any more
            self._adapter = path
        elif self.on_cpu:
            state = source.trainable_state()
            if any(_is_actor(e) for e in self.engines):
                import ray

                state = ray.put(state)  # one copy in the object store for every engine
            _gather([_invoke(e, "load_state", state) for e in self.engines])
        elif self.placement == "colocated":
            assert isinstance(source, EngineWeights)
            was_asleep = self.asleep
            if was_asleep:
                _gather([_invoke(e, "wake_up", ["weights"]) for e in self.engines])
            handles = source.ipc_handles()
            _gather([_invoke(e, "update_weights_from_ipc", handles) for e in self.engines])
            if was_asleep:
                self._sleep()
        else:
            assert isinstance(source, EngineWeights)
            self._broadcast(source)
        self.version = version

    def _broadcast(self, source: EngineWeights) -> None:
        tp = self.tensor_parallel_size
        if not self._broadcast_ready:
            world = 1 + len(self.engines) * tp
            host, port = source.broadcast_address()
            joins = [_invoke(e, "init_weight_broadcast", host, port, 1 + i * tp, world)
                     for i, e in enumerate(self.engines)]  # fmt: skip
            source.open_weight_broadcast(host, port, world)
            _gather(joins)
            self._broadcast_ready = True
        metas = source.weight_metas()
        receives = [_invoke(e, "receive_broadcast", metas) for e in self.engines]
        source.broadcast_weights()
        _gather(receives)

    def close(self) -> None:
        """Kill the engine actors."""
        for engine in self.engines:
            if _is_actor(engine):
                import ray

                ray.kill(engine)
        self.engines = []


def launch_engines(
    model: str, options: EngineOptions, num_engines: int, placement: str, lora: bool, adapter_dir: str | Path,
    colocate_with: Any = None,
) -> VLLMEngines:  # fmt: skip
    """Start `num_engines` `VLLMEngine` actors and wrap them (Ray must be up).

    `colocate_with`: the trainer's Ray placement group; engine i joins its bundle i with half a GPU
    (colocated placement needs one engine per trainer rank and `tensor_parallel_size` 1). Otherwise each
    engine gets a placement group of `tensor_parallel_size` GPU bundles of its own.
    """
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ray.remote(VLLMEngine)
    tp = options.tensor_parallel_size
    engines = []
    for i in range(num_engines):
        if placement == "colocated":
            strategy = PlacementGroupSchedulingStrategy(colocate_with, placement_group_bundle_index=i)
            gpus = 0.5
        else:
            group = placement_group([{"GPU": 1, "CPU": 1} for _ in range(tp)], strategy="PACK")
            ray.get(group.ready())
            strategy = PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            )
            gpus = 1 if tp == 1 else 0  # with tensor parallelism vLLM places its own Ray workers in the group
        options_for = actor.options(num_cpus=0, num_gpus=gpus, scheduling_strategy=strategy)
        engines.append(options_for.remote(model, options))
    return VLLMEngines(engines, placement, lora, adapter_dir, tp)
