"""CUDA IPC handles as plain data: how a trainer shares its parameters with an engine on the same GPU.

`cuda_ipc_handle` (trainer side) turns a CUDA tensor into sizes, a dtype name and handle bytes, so it crosses
vLLM's RPC without pickled classes or functions; `open_cuda_ipc_handle` (engine side) reopens it zero-copy.
`device_uuid` names the GPU both sides compare (the device index each process sees may differ).
"""

from __future__ import annotations

from typing import Any

import torch


def device_uuid(device: torch.device | int) -> str:
    """The UUID of a CUDA device (what trainer and engine compare to find tensors on their shared GPU)."""
    return str(torch.cuda.get_device_properties(device).uuid)


def cuda_ipc_handle(tensor: torch.Tensor) -> dict[str, Any]:
    """A CUDA tensor's IPC handle as plain data (sizes, dtype name, handle bytes)."""
    from torch.multiprocessing.reductions import reduce_tensor

    _, args = reduce_tensor(tensor)
    (_, size, stride, offset, _, dtype, _, handle, size_bytes, offset_bytes, _, ref_handle, ref_offset,
     event_handle, event_sync) = args  # fmt: skip
    return {
        "size": list(size), "stride": list(stride), "offset": int(offset),
        "dtype": str(dtype).removeprefix("torch."), "handle": handle, "size_bytes": int(size_bytes),
        "offset_bytes": int(offset_bytes), "ref_counter_handle": ref_handle,
        "ref_counter_offset": int(ref_offset), "event_handle": event_handle,
        "event_sync_required": bool(event_sync),
    }  # fmt: skip


def open_cuda_ipc_handle(handle: dict[str, Any], device_index: int) -> torch.Tensor:
    """The tensor another process on this GPU shared with `cuda_ipc_handle`, zero-copy."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    return rebuild_cuda_tensor(
        torch.Tensor, torch.Size(handle["size"]), tuple(handle["stride"]), handle["offset"],
        torch.storage.TypedStorage, getattr(torch, handle["dtype"]), device_index, handle["handle"],
        handle["size_bytes"], handle["offset_bytes"], False, handle["ref_counter_handle"],
        handle["ref_counter_offset"], handle["event_handle"], handle["event_sync_required"],
    )  # fmt: skip
