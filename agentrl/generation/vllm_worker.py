"""Runs inside vLLM's workers: the `worker_extension_cls` through which a trainer's weights arrive.

vLLM mixes this class into each of its workers, so `self` is the worker (`self.device`,
`self.model_runner.model`). The engine calls these methods by name with `LLM.collective_rpc`, passing only
plain data (CUDA IPC handles, tensor names, dtypes and shapes): no function or tensor goes through vLLM's
RPC. The model's own `load_weights` maps the transformers names onto vLLM's fused layers.

Three paths:
- `load_weights_file`: a safetensors file (written to shared memory, `/dev/shm`, by the engine's own process)
  holding the trainer's tensors by name; the worker maps it and reloads them with vLLM's in-place reload,
  which processes each layer again after loading (the CPU build repacks linear weights for its GEMM kernels,
  so a plain `load_weights` after start-up finds no weight to copy into). This is the CPU path, and the
  in-process engine's on any device.
- `update_weights_from_ipc`: a trainer on the same GPU (colocated placement) shares its parameters as CUDA IPC
  handles (plain data, `agentrl.core.cuda_ipc`) keyed by the GPU's UUID; each worker opens the ones of its
  GPU, zero-copy, on its own device index (the GPU is the same, the index each process sees may differ).
- `init_weight_broadcast` + `receive_broadcast`: a trainer on other GPUs (separate placement) broadcasts the
  tensors over an NCCL group in which it is rank 0 (vLLM's `StatelessProcessGroup` + `PyNcclCommunicator`,
  so the group stays out of torch.distributed's global state).
"""

from __future__ import annotations

from typing import Any

import torch

from agentrl.core.cuda_ipc import device_uuid, open_cuda_ipc_handle


def repack_kept_weights(model: torch.nn.Module) -> int:
    """Rebuild the packed GEMM copy of every CPU layer that keeps its plain weight (embeddings and the output
    head); returns how many were rebuilt.

    vLLM's CPU build multiplies with a packed copy made after loading (`cpu_linear`). A tied output head
    shares the embedding's weight but loads nothing itself, so the in-place reload leaves its packed copy at
    the old values; packing again from the (updated) shared weight fixes it.
    """
    rebuilt = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        method = getattr(module, "quant_method", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.numel() and method:
            method.process_weights_after_loading(module)
            rebuilt += 1
    return rebuilt


class WeightReceiver:
    """vLLM worker extension: weight updates from a trainer (see the module docstring)."""

    device: torch.device
    model_runner: Any
    reload_weights: Any

    def load_weights_file(self, path: str) -> int:
        """Load every tensor of the safetensors file at `path`; returns how many were loaded."""
        from safetensors.torch import load_file

        tensors = load_file(path, device="cpu")
        self.reload_weights(weights_iterator=iter(tensors.items()), is_checkpoint_format=True)
        repack_kept_weights(self.model_runner.model)
        return len(tensors)

    def update_weights_from_ipc(self, handles: dict[str, dict[str, Any]]) -> None:
        uuid = device_uuid(self.device)
        if uuid not in handles:
            raise RuntimeError(f"no trainer tensors were shared for GPU {uuid} (colocated placement)")
        weights = [(name, open_cuda_ipc_handle(h, self.device.index)) for name, h in handles[uuid].items()]
        self.model_runner.model.load_weights(weights=weights)
        torch.cuda.synchronize()

    def init_weight_broadcast(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        rank = get_world_group().rank + rank_offset
        group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
        self._weight_group = PyNcclCommunicator(group, device=self.device)

    def receive_broadcast(self, metas: list[tuple[str, str, list[int]]]) -> None:
        group = getattr(self, "_weight_group", None)
        if group is None:
            raise RuntimeError("receive_broadcast before init_weight_broadcast")
        for name, dtype, shape in metas:
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            group.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
            self.model_runner.model.load_weights(weights=[(name, tensor)])
        torch.cuda.synchronize()
