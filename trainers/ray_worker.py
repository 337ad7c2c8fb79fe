"""A group of Ray actors behind the policy-worker interface: data-parallel training over torch.distributed.

    group = RayWorkerGroup(model, config, num_workers=2)   # each actor holds a replica of `model`
    sums = group.forward_backward(minibatch)                # rows split across actors, metric sums merged
    group.optim_step()                                      # gradients summed over the process group
    group.sync_weights(generator)                           # rank 0's weights reach the sampler

Every actor is one rank of a torch.distributed process group (nccl when the actors hold GPUs, gloo
otherwise) placed through a Ray placement group, one bundle per rank. `forward_backward` sends each rank a
shard of the minibatch's rows. The minibatch loss is the SUM of the shards' losses, because every denominator
travels in `PolicyBatch.normalizer` (built on the whole minibatch), so `optim_step` all-reduces the
accumulated gradients with SUM (not DDP's average) once per optimizer step, then every rank clips and steps
the same replicated optimizer. A rank whose shard is empty, or whose rows carry no learning signal,
contributes zeros. A non-finite loss on any rank skips the step on all of them.

A rank that fails or dies makes the call raise `WorkerGroupError` naming the rank and its error; the other
ranks, which may be waiting in a collective, are killed with it, so the group is unusable afterwards.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from agentrl.core.allocator import retain_freed_memory
from agentrl.core.cuda_ipc import cuda_ipc_handle, device_uuid
from agentrl.core.generator import Generator
from trainers.batching import PolicyBatch
from trainers.model_setup import trainable_parameters
from trainers.worker import OPTIMIZER_FILE, WEIGHTS_DIR, LocalPolicyWorker, WorkerConfig, merge_metrics

Tensor = torch.Tensor
REDUCE_BUCKET_BYTES = 64 * 2**20
STATS_KEYS = ("logprobs", "entropy", "collision", "ref_logprobs")


class WorkerGroupError(RuntimeError):
    """A rank of the group failed (its error is the message and the cause) or its actor died."""


@dataclass(frozen=True)
class Placement:
    """What each rank reserves (`gpus`: 0 or 1, `cpus`) and the process-group backend that goes with it."""

    gpus: int
    cpus: int

    @property
    def backend(self) -> str:
        return "nccl" if self.gpus else "gloo"


def choose_placement(
    num_workers: int, resources: dict[str, float], use_gpus: bool | None = None
) -> Placement:
    """One GPU per rank when the cluster has GPUs (or `use_gpus`), one CPU per rank otherwise.

    Raises ValueError naming `trainer.num_workers` when the cluster cannot hold that many ranks.
    """
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    on_gpu = gpus > 0 if use_gpus is None else use_gpus
    if on_gpu:
        if num_workers > gpus:
            raise ValueError(
                f"trainer.num_workers={num_workers} needs {num_workers} GPUs (one per rank) but the Ray "
                f"cluster has {gpus}; lower trainer.num_workers or add GPU nodes"
            )
        return Placement(gpus=1, cpus=1 if cpus >= num_workers else 0)
    if num_workers > cpus:
        raise ValueError(
            f"trainer.num_workers={num_workers} needs {num_workers} CPUs (one per rank) but the Ray cluster "
            f"has {cpus}; lower trainer.num_workers or start Ray with more CPUs"
        )
    return Placement(gpus=0, cpus=1)


def shard_rows(lengths: list[int], num_shards: int) -> list[list[int]]:
    """Row indices per shard, balanced by tokens: longest rows first, each to the shard with fewest tokens.

    Every shard gets a list (possibly empty); rows keep their original order inside a shard.
    """
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    load = [0] * num_shards
    for row in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        target = min(range(num_shards), key=lambda s: (load[s], s))
        shards[target].append(row)
        load[target] += lengths[row]
    return [sorted(s) for s in shards]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _materialize(source: Any) -> Any:
    return source() if callable(source) and not isinstance(source, torch.nn.Module) else source


class PolicyRank:
    """One rank: a `LocalPolicyWorker` on this actor's replica whose `optim_step` first sums gradients
    over the process group. Runs inside a Ray actor (see `RayWorkerGroup`)."""

    def __init__(
        self, model: Any, config: WorkerConfig, reference: Any, threads: int, retain_memory: bool = False
    ) -> None:
        torch.set_num_threads(max(threads, 1))
        if retain_memory:
            retain_freed_memory()
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        model = _materialize(model).to(self.device)
        reference = _materialize(reference)
        if isinstance(reference, dict):
            reference = {name: t.to(self.device) for name, t in reference.items()}
        elif reference is not None:
            reference = reference.to(self.device)
        self.worker = LocalPolicyWorker(model, config, reference=reference)
        self.rank = -1

    def address(self) -> tuple[str, int]:
        """(this node's IP, a free port) for rank 0 to host the process group's rendezvous."""
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def join(self, rank: int, world_size: int, host: str, port: int, backend: str, timeout_s: float) -> str:
        """Join the process group; rank 0's trainable parameters are broadcast so every replica starts
        equal (replicas built inside the actors draw their own LoRA initialisation)."""
        import torch.distributed as dist

        if backend == "nccl" and not torch.cuda.is_available():
            raise RuntimeError("backend nccl asked for, but this actor sees no GPU")
        dist.init_process_group(
            backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )  # fmt: skip
        self.rank = rank
        with torch.no_grad():
            for param in self.worker.params:
                dist.broadcast(param.data, src=0)
        return backend

    def compute_stats(self, batch: dict[str, Tensor], with_reference: bool) -> dict[str, Tensor]:
        return self.worker.compute_stats(batch, with_reference)

    def forward_backward(self, batch: PolicyBatch) -> dict[str, float]:
        return self.worker.forward_backward(batch)

    def optim_step(self) -> tuple[dict[str, float], int]:
        """Sum the gradients (and the non-finite flag) over all ranks, then clip and step locally."""
        import torch.distributed as dist

        worker = self.worker
        worker._zero_grads()
        flag = torch.tensor([1.0 if worker._nonfinite else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        worker._nonfinite = bool(flag.item())
        for bucket in _buckets([p.grad for p in worker.params], REDUCE_BUCKET_BYTES):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        return worker.optim_step(), worker.steps

    def advance_schedule(self) -> None:
        self.worker.advance_schedule()

    def trainable_state(self) -> dict[str, Tensor]:
        """{name: CPU tensor} of the trainable parameters (what changes between optimizer steps)."""
        return self.worker.trainable_state()

    def save(self, directory: str) -> None:
        self.worker.save(directory)

    def load(self, directory: str) -> int:
        self.worker.load(directory)
        return self.worker.steps

    def save_adapter(self, directory: str) -> str:
        """Write the LoRA adapter only (peft `save_pretrained`) for an engine that loads adapters by path."""
        self.worker.model.save_pretrained(directory, safe_serialization=True)
        return directory

    # ----------------------------------------------------------------- weights for vLLM engines

    def ipc_handles(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{this GPU's UUID: {name: CUDA IPC handle}} of the trainable parameters, for a colocated engine
        on the same GPU (`agentrl.generation.vllm_worker.WeightReceiver.update_weights_from_ipc`)."""
        uuid = device_uuid(self.device)
        named = trainable_parameters(self.worker.model)
        return {uuid: {name: cuda_ipc_handle(p.detach()) for name, p in named}}

    def weight_metas(self) -> list[tuple[str, str, list[int]]]:
        """(name, dtype, shape) of the trainable parameters, in broadcast order."""
        named = trainable_parameters(self.worker.model)
        return [(name, str(p.dtype).removeprefix("torch."), list(p.shape)) for name, p in named]

    def open_weight_broadcast(self, host: str, port: int, world_size: int) -> None:
        """Become rank 0 of the NCCL group separate vLLM engines join (vLLM's stateless group, outside
        torch.distributed's global state)."""
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host=host, port=port, rank=0, world_size=world_size)
        self._weight_group = PyNcclCommunicator(group, device=self.device)

    def broadcast_weights(self) -> None:
        """Send every trainable parameter, in `weight_metas` order, to the engines."""
        for _, param in trainable_parameters(self.worker.model):
            self._weight_group.broadcast(param.detach(), src=0, stream=torch.cuda.current_stream())
        torch.cuda.synchronize()

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _buckets(tensors: list[Tensor], limit: int) -> list[list[Tensor]]:
    """Consecutive groups of same-dtype tensors of at most `limit` bytes (one tensor may exceed it alone)."""
    out: list[list[Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if not out or size + nbytes > limit or out[-1][0].dtype != t.dtype:
            out.append([])
            size = 0
        out[-1].append(t)
        size += nbytes
    return out


class RayWorkerGroup:
    """`num_workers` Ray actors training replicas of one model data-parallel; same interface as
    `LocalPolicyWorker` (`compute_stats`, `forward_backward`, `optim_step`, `sync_weights`, `save`, `load`,
    `steps`). Ray must already be initialized.

    Args:
        model: the prepared module (sent to every actor through the object store) or a picklable callable
            that builds it inside the actor (on a cluster: load from a path every node can read).
        config: the worker config every rank uses.
        num_workers: ranks.
        reference: the KL penalty's reference: a frozen model (or a callable building it), or a
            `trainable_snapshot` of `model` (see `LocalPolicyWorker`).
        use_gpus: None picks GPUs when the cluster has any; True / False forces it.
        gpu_share: the fraction of its GPU each rank's actor claims in Ray's accounting (0.5 when vLLM
            engines are colocated in the same placement-group bundles).
        timeout_s: how long a collective may wait for a silent rank.
        ready_timeout_s: how long to wait for the placement group's resources.
        retain_freed_memory: each actor's malloc keeps the memory torch frees
            (`agentrl.core.allocator.retain_freed_memory`).
    """

    def __init__(
        self,
        model: Any,
        config: WorkerConfig,
        num_workers: int,
        reference: Any = None,
        use_gpus: bool | None = None,
        gpu_share: float = 1.0,
        timeout_s: float = 1800.0,
        ready_timeout_s: float = 120.0,
        retain_freed_memory: bool = False,
    ) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if num_workers < 1:
            raise ValueError(f"trainer.num_workers must be >= 1 for a worker group, got {num_workers}")
        self.num_workers = num_workers
        self.placement = choose_placement(num_workers, ray.cluster_resources(), use_gpus)
        bundle = {k: v for k, v in (("CPU", self.placement.cpus), ("GPU", self.placement.gpus)) if v}
        self.placement_group = placement_group([dict(bundle) for _ in range(num_workers)], strategy="PACK")
        if not self._wait(self.placement_group.ready(), ready_timeout_s):
            ray.util.remove_placement_group(self.placement_group)
            raise WorkerGroupError(
                f"the Ray cluster could not place {num_workers} policy workers of {bundle} each within "
                f"{ready_timeout_s:.0f} s (resources busy or missing); lower trainer.num_workers"
            )
        model_ref = ray.put(model)
        reference_ref = ray.put(reference)
        actor = ray.remote(PolicyRank)
        self.actors = [
            actor.options(
                num_cpus=self.placement.cpus, num_gpus=self.placement.gpus * gpu_share,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=rank
                ),
            ).remote(model_ref, config, reference_ref, max(self.placement.cpus, 1), retain_freed_memory)
            for rank in range(num_workers)
        ]  # fmt: skip
        host, port = self._call_one(0, "address")
        self.backend = self._call_all(
            [(a.join, (r, num_workers, host, port, self.placement.backend, timeout_s), {})
             for r, a in enumerate(self.actors)]
        )[0]  # fmt: skip
        self.steps = 0

    @staticmethod
    def _wait(ref: Any, timeout: float) -> bool:
        import ray

        ready, _ = ray.wait([ref], timeout=timeout)
        return bool(ready)

    # ----------------------------------------------------------------- calls with failure handling

    def _call_all(self, calls: list[tuple[Any, tuple, dict]]) -> list[Any]:
        """Run one remote call per rank and gather the results in rank order. The first rank that fails
        kills the group and raises `WorkerGroupError` with its error."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        refs = [method.remote(*args, **kwargs) for method, args, kwargs in calls]
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        pending = list(refs)
        results: dict[int, Any] = {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            rank = rank_of[ready[0]]
            try:
                results[rank] = ray.get(ready[0])
            except RayTaskError as exc:
                self.close()
                cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
                raise WorkerGroupError(f"policy worker rank {rank} failed: {cause}") from exc
            except RayActorError as exc:
                self.close()
                raise WorkerGroupError(f"policy worker rank {rank} died: {exc}") from exc
        return [results[r] for r in range(len(refs))]

    def _call_one(self, rank: int, name: str, *args: Any) -> Any:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(getattr(self.actors[rank], name).remote(*args))
        except (RayTaskError, RayActorError) as exc:
            self.close()
            raise WorkerGroupError(f"policy worker rank {rank} failed: {exc}") from exc

    def _each(self, name: str, args_per_rank: list[tuple]) -> list[Any]:
        calls = [(getattr(a, name), args, {}) for a, args in zip(self.actors, args_per_rank, strict=True)]
        return self._call_all(calls)

    # ----------------------------------------------------------------- the policy-worker interface

    def compute_stats(self, batch: dict[str, Tensor], with_reference: bool = False) -> dict[str, Tensor]:
        """[B, L] statistics (see `LocalPolicyWorker.compute_stats`), rows computed across the ranks."""
        lengths = [int(x) for x in batch["attention_mask"].sum(-1).tolist()]
        shards = shard_rows(lengths, self.num_workers)
        args = [({k: v[torch.tensor(rows, dtype=torch.long)] for k, v in batch.items()}, with_reference)
                for rows in shards]  # fmt: skip
        parts = self._each("compute_stats", args)
        shape = batch["input_ids"].shape
        out: dict[str, Tensor] = {}
        for rows, part in zip(shards, parts, strict=True):
            if not rows:
                continue
            index = torch.tensor(rows, dtype=torch.long)
            for key, value in part.items():
                out.setdefault(key, torch.zeros(shape, dtype=torch.float32))[index] = value
        return out

    def forward_backward(self, batch: PolicyBatch) -> dict[str, float]:
        """Accumulate each rank's shard gradient; the metric sums of all shards, merged."""
        shards = shard_rows([int(x) for x in batch.lengths.tolist()], self.num_workers)
        sums: dict[str, float] = {}
        for part in self._each("forward_backward", [(batch.select(rows),) for rows in shards]):
            merge_metrics(sums, part)
        return sums

    def optim_step(self) -> dict[str, float]:
        """Sum gradients over the ranks, clip, step (or skip on NaN/inf everywhere)."""
        results = self._each("optim_step", [() for _ in self.actors])
        metrics, steps = results[0]
        self.steps = int(steps)
        return metrics

    def advance_schedule(self) -> None:
        """Every rank moves its learning-rate schedule one training step."""
        self._each("advance_schedule", [() for _ in self.actors])

    def trainable_state(self) -> dict[str, Tensor]:
        """Rank 0's trainable parameters by name (CPU)."""
        return self._call_one(0, "trainable_state")

    def sync_weights(self, generator: Generator) -> None:
        """Bring the sampler to rank 0's weights at policy version `steps`: this group is the generator's
        `EngineWeights` source (vLLM engines pick a transport; an HF generator copies `trainable_state`)."""
        generator.update_policy(self, self.steps)

    def live_module(self) -> None:
        """The trained replicas live in the actors, never in the caller's process."""
        return None

    def ipc_handles(self) -> dict[str, dict[str, Any]]:
        """Every rank's CUDA IPC handles by GPU UUID (colocated engines pick their GPU's)."""
        merged: dict[str, dict[str, Any]] = {}
        for part in self._each("ipc_handles", [() for _ in self.actors]):
            merged.update(part)
        return merged

    def broadcast_address(self) -> tuple[str, int]:
        """(rank 0's node IP, a free port there) for the weight-broadcast group."""
        return self._call_one(0, "address")

    def open_weight_broadcast(self, host: str, port: int, world_size: int) -> None:
        self._call_one(0, "open_weight_broadcast", host, port, world_size)

    def weight_metas(self) -> list[tuple[str, str, list[int]]]:
        return self._call_one(0, "weight_metas")

    def broadcast_weights(self) -> None:
        self._call_one(0, "broadcast_weights")

    def save_adapter(self, directory: str | Path) -> Path:
        """Rank 0 writes the LoRA adapter only to `directory` (for engines that load adapters by path)."""
        return Path(self._call_one(0, "save_adapter", str(directory)))

    def save(self, directory: str | Path) -> None:
        """Rank 0 writes weights and optimizer (replicated, so identical on every rank)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._call_one(0, "save", str(directory))
        for name in (WEIGHTS_DIR, OPTIMIZER_FILE):
            if not (Path(directory) / name).exists():
                raise WorkerGroupError(
                    f"rank 0 wrote no {name} to {directory}: the directory must be on a filesystem both "
                    "the driver and the workers see"
                )

    def load(self, directory: str | Path) -> None:
        """Every rank restores `save`'s output (the directory must be readable from every node)."""
        path = os.fspath(Path(directory).resolve())
        self.steps = int(self._each("load", [(path,) for _ in self.actors])[0])

    def close(self) -> None:
        """Kill the actors and free the placement group (idempotent)."""
        import ray

        if not ray.is_initialized():
            return
        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []
        group = getattr(self, "placement_group", None)
        if group is not None:
            ray.util.remove_placement_group(group)
            self.placement_group = None
