"""Runs inside vLLM's GPU workers: the `worker_extension_cls` through which a trainer's weights arrive.

vLLM mixes this class into each of its workers, so `self` is the worker (`self.device`,
`self.model_runner.model`). The engine calls these methods by name with `LLM.collective_rpc`, passing only
plain data (CUDA IPC handles, tensor names, dtypes and shapes): no function or tensor goes through vLLM's
RPC. The model's own `load_weights` maps the transformers names onto vLLM's fused layers.

Two paths:
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


class WeightReceiver:
    """vLLM worker extension: weight updates from a trainer (see the module docstring)."""

    device: torch.device
    model_runner: Any

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
