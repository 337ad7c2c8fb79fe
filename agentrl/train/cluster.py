"""The Ray cluster a run trains on: reachability, capacity and memory checks before any weights load, and the
session the trainer holds while its worker group lives.

`connect(cfg, source)` checks that `ray.address` answers, starts or joins Ray, and checks that the cluster
can hold `trainer.num_workers` ranks (`trainers.ray_worker.choose_placement`) and that the model, with its
gradients and optimizer state, fits one rank's GPU (`check_model_fits`). Every failure is a `ConfigError`
naming the key and the config file.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agentrl.core.config import ConfigError
from agentrl.experiment import ExperimentConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
ADAM_STATE_BYTES = 8  # two fp32 moments per trained parameter
LOCAL_ADDRESSES = (None, "", "auto", "local")


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of `host:port` or `ray://host:port`; None for `auto` / `local` (Ray resolves those)."""
    if address in LOCAL_ADDRESSES:
        return None
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{address!r} is not host:port, ray://host:port or auto")
    return parts.hostname, parts.port


def check_ray_address(address: str | None, timeout: float, source: str) -> None:
    """Raise ConfigError when nothing accepts a connection at `ray.address` within `timeout` seconds."""
    if address is None:
        return
    try:
        endpoint = ray_endpoint(address)
    except ValueError as exc:
        raise ConfigError(f"{source}: ray.address: {exc}") from None
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{source}: ray.address={address!r}: nothing answers at {endpoint[0]}:{endpoint[1]} ({exc}); "
            "start the cluster with `ray start --head` there, or leave ray.address unset to start Ray here"
        ) from None


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes one data-parallel rank holds for training: weights, gradients and Adam moments."""

    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def training_memory(total_params: int, trained_params: int, dtype: str) -> MemoryNeed:
    """What a replica needs before activations: every weight in `dtype`, a gradient per trained parameter
    in the same dtype and two fp32 Adam moments per trained parameter."""
    width = DTYPE_BYTES[dtype]
    return MemoryNeed(total_params * width, trained_params * width, trained_params * ADAM_STATE_BYTES)


def check_model_fits(
    need: MemoryNeed, gpu_bytes: int, reserved_fraction: float, source: str, model: str
) -> None:
    """Raise ConfigError when a replica does not fit the GPU share left to training (`reserved_fraction`
    of it is taken by colocated vLLM engines)."""
    available = int(gpu_bytes * (1.0 - reserved_fraction))
    if need.total > available:
        gib = 2**30
        raise ConfigError(
            f"{source}: model.name={model!r} needs {need.total / gib:.1f} GiB per training rank (weights "
            f"{need.weights / gib:.1f}, gradients {need.gradients / gib:.1f}, "
            f"Adam {need.optimizer / gib:.1f}) "
            f"but a rank has {available / gib:.1f} GiB of its {gpu_bytes / gib:.1f} GiB GPU"
            + (f" after rollout.vllm.gpu_memory_utilization={reserved_fraction}" if reserved_fraction else "")
            + "; use finetune.mode=lora, fewer finetune.train_layers, model.dtype=bfloat16 or larger GPUs"
        )


def count_parameters(cfg: ExperimentConfig) -> tuple[int, int]:
    """(total, trained) parameters of `cfg.model` under `cfg.finetune`, from its config alone (built on
    the meta device, so no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from agentrl.core.models import resolve_model_path
    from trainers.model_setup import TrainableSpec, prepare_for_training

    config = AutoConfig.from_pretrained(resolve_model_path(cfg.model.name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        model = prepare_for_training(model, TrainableSpec.from_section(cfg.finetune))
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trained


@dataclass(frozen=True)
class TrainableModel:
    """A picklable recipe that builds the policy inside a worker actor (used when the `agentrl train`
    process holds no copy of the model, as with vLLM engines): load `name` in `dtype` on the CPU, then
    `prepare_for_training` with `spec` (or freeze everything for a reference model)."""

    name: str
    dtype: str
    spec: Any
    reference: bool = False

    def __call__(self) -> Any:
        from agentrl.core.models import load_model
        from trainers.model_setup import prepare_for_training

        model, _ = load_model(self.name, dtype=self.dtype, device="cpu")
        if self.reference:
            return model.requires_grad_(False)
        return prepare_for_training(model, self.spec)


def launch_vllm_engines(cfg: ExperimentConfig, worker: Any, adapter_dir: Any) -> Any:
    """The run's vLLM engines (`rollout.vllm`), colocated with `worker`'s GPUs or on their own."""
    from agentrl.core.models import resolve_model_path
    from agentrl.generation.vllm_engines import launch_engines
    from agentrl.rollout.setup import vllm_options

    v = cfg.rollout.vllm
    colocated = v.placement == "colocated"
    lora = cfg.finetune.mode == "lora"
    options = vllm_options(cfg, lora=lora, sleep=colocated)
    return launch_engines(
        resolve_model_path(cfg.model.name), options, v.num_engines, v.placement, lora,
        adapter_dir, colocate_with=worker.placement_group if colocated else None,
    )  # fmt: skip


def _gpu_memory() -> int:
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory)


def _check_engine_gpus(cfg: ExperimentConfig, resources: dict[str, float]) -> None:
    """Separate vLLM engines need GPUs beyond the trainer's; any vLLM engine needs a GPU."""
    if cfg.rollout.backend != "vllm":
        return
    v, gpus = cfg.rollout.vllm, int(resources.get("GPU", 0))
    engines = v.num_engines * v.tensor_parallel_size if v.placement == "separate" else 0
    need = cfg.trainer.num_workers + engines
    if gpus < max(need, 1):
        raise ValueError(
            f"rollout.backend=vllm with rollout.vllm.placement={v.placement} needs {need} GPUs "
            f"(trainer.num_workers={cfg.trainer.num_workers} + {engines} for the engines) but the Ray "
            f"cluster has {gpus}"
        )


def connect(cfg: ExperimentConfig, source: str) -> bool:
    """Start or join Ray for `cfg` and check it can hold the worker group; True when the caller must call
    `agentrl.rollout.executors.release_ray()` when done."""
    import ray

    from agentrl.rollout.executors import acquire_ray, release_ray
    from trainers.ray_worker import choose_placement

    r = cfg.ray
    check_ray_address(r.address, r.connect_timeout, source)
    try:
        owns = acquire_ray(r.address, r.num_cpus)
    except ConnectionError as exc:
        raise ConfigError(
            f"{source}: ray.address={r.address!r}: no Ray cluster to join ({exc}); start one with "
            "`ray start --head`, or leave ray.address unset to start Ray here"
        ) from None
    try:
        resources = ray.cluster_resources()
        placement = choose_placement(cfg.trainer.num_workers, resources)
        _check_engine_gpus(cfg, resources)
        if placement.gpus:
            gpu_bytes = ray.get(ray.remote(num_gpus=1)(_gpu_memory).remote())
            vllm = cfg.rollout.vllm
            colocated = cfg.rollout.backend == "vllm" and vllm.placement == "colocated"
            total, trained = count_parameters(cfg)
            need = training_memory(total, trained, cfg.model.dtype)
            check_model_fits(need, gpu_bytes, vllm.gpu_memory_utilization if colocated else 0.0, source,
                             cfg.model.name)  # fmt: skip
    except ValueError as exc:
        if owns:
            release_ray()
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{source}: {exc}") from None
    return owns
