"""Decode-step linear layers on weights prepacked for oneDNN (float32, CPU).

A decode step multiplies a few rows (one per live sequence) by every weight matrix of the model. MKL's path
for such short products can be far from the machine's limit: on a 2-core AVX2 EPYC the output head of
SmolLM2-135M, [8, 576] x [576, 49152], takes 45 ms through `F.linear` on one thread and 68 ms on two, against
21 and 14 ms on a weight packed once into oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`).

`PackedLinears(model)` keeps one packed copy of every `nn.Linear` weight of `model` and packs a weight again
when its storage or version counter has changed since (a copy into it, a move, an unfused optimizer step);
`clear()` drops every copy, for changes that leave the version counter alone (torch's fused AdamW): the HF
generator calls it in `update_policy`, which the trainer calls after every optimizer step.
Inside `with packed.active():` the model's linear layers multiply inputs of `min_rows`..`max_rows` rows
on the packed copies; one-row inputs, prefill chunks, inputs that need gradients and every call outside the
block go through `F.linear` unchanged. The packed copies take as much memory again as the linear weights.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def unsupported(model: Any) -> str | None:
    """Why `model`'s linear layers cannot run on packed weights here; None when they can."""
    param = next(model.parameters(), None)
    if param is None:
        return "the model has no parameters"
    if param.device.type != "cpu":
        return f"its weights are on {param.device}, packing is for the CPU"
    if param.dtype != torch.float32:
        return f"its weights are {param.dtype}, packing is for float32"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return "this torch build has no oneDNN (mkldnn) linear kernels"
    return None


@dataclass
class _Packed:
    """A packed weight and the (storage address, version counter) of the weight it was packed from."""

    source: tuple[int, int]
    weight: torch.Tensor


def _source(weight: torch.Tensor) -> tuple[int, int]:
    return weight.data_ptr(), weight._version


class PackedLinears:
    """Packed copies of the `nn.Linear` weights of one model, used for short inputs inside `active()`.

    Args:
        model: the module whose linear layers are routed (float32 on the CPU; see `unsupported`).
        min_rows / max_rows: inputs with this many rows (the product of all but the last dimension) use the
            packed weight. On the EPYC above the packed product is 0.4-0.8x `F.linear`'s speed at one row
            and 1.0-4.9x from 2 to 256 rows (1.1-1.2x at 256).
    """

    def __init__(self, model: torch.nn.Module, min_rows: int = 2, max_rows: int = 256) -> None:
        if not 1 <= min_rows <= max_rows:
            raise ValueError(f"need 1 <= min_rows <= max_rows, got {min_rows} and {max_rows}")
        self.model = model
        self.min_rows = min_rows
        self.max_rows = max_rows
        self._packed: dict[torch.nn.Linear, _Packed] = {}
        self.packs = 0  # weights packed so far
        self.packed_calls = 0  # products computed on a packed weight

    def linears(self) -> list[torch.nn.Linear]:
        """The model's linear layers that can be routed: float32 weights on the CPU, no forward of their own
        set on the instance (hooks that wrap `forward`, as accelerate's, keep theirs)."""
        return [
            m
            for m in self.model.modules()
            if isinstance(m, torch.nn.Linear)
            and "forward" not in vars(m)
            and m.weight.device.type == "cpu"
            and m.weight.dtype == torch.float32
        ]

    @torch.no_grad()
    def refresh(self) -> int:
        """Pack every routed weight that changed since it was last packed; returns how many were packed."""
        linears = self.linears()
        current = set(linears)
        for gone in [m for m in self._packed if m not in current]:
            del self._packed[gone]
        packed = 0
        for module in linears:
            source = _source(module.weight)
            held = self._packed.get(module)
            if held is not None and held.source == source:
                continue
            weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), self.max_rows)
            self._packed[module] = _Packed(source, weight)
            packed += 1
        self.packs += packed
        return packed

    def clear(self) -> None:
        """Drop every packed copy (the next `active()` packs again)."""
        self._packed.clear()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Route the model's linear layers to their packed weights inside the block (packing what changed
        first); their own forward is back afterwards, also when the block raises."""
        self.refresh()
        routed = list(self._packed)
        for module in routed:
            module.forward = functools.partial(self._forward, module)  # type: ignore[method-assign]
        try:
            yield
        finally:
            for module in routed:
                vars(module).pop("forward", None)

    def _forward(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        held = self._packed.get(module)
        features = x.shape[-1]
        rows = x.numel() // features if features else 0
        if (
            held is None
            or not self.min_rows <= rows <= self.max_rows
            or x.dtype != torch.float32
            or held.source != _source(module.weight)
            or (torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad))
        ):
            return F.linear(x, module.weight, module.bias)
        self.packed_calls += 1
        out = torch.ops.mkldnn._linear_pointwise(
            x.reshape(rows, features), held.weight, module.bias, "none", [], ""
        )
        return out.reshape(*x.shape[:-1], out.shape[-1])
