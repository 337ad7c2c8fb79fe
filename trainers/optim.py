"""AdamW over the trainable parameters and a warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

SCHEDULES = ("constant", "linear", "cosine")
SCHEDULE_UNITS = ("optimizer_step", "update")


@dataclass
class OptimConfig:
    """Optimizer settings of one training phase.

    total_steps: schedule steps the schedule spans (warmup included).
    warmup_ratio: linear warmup from 0 over this fraction of `total_steps` (at least one step when > 0).
    schedule: after warmup, `constant`, `linear` decay to 0 or `cosine` decay to 0.
    schedule_unit: what one schedule step is: `optimizer_step` (every optimizer step taken moves it) or
        `update` (the caller moves it once per training step, `LocalPolicyWorker.advance_schedule`, however
        many optimizer steps that step took or skipped, so the schedule ends where the run does).
    """

    learning_rate: float
    total_steps: int
    warmup_ratio: float = 0.0
    schedule: str = "constant"
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    schedule_unit: str = "optimizer_step"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule_unit not in SCHEDULE_UNITS:
            raise ValueError(f"schedule_unit must be one of {SCHEDULE_UNITS}, got {self.schedule_unit!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate <= 0 or self.total_steps < 1:
            raise ValueError(
                f"learning_rate must be > 0 and total_steps >= 1, got {self.learning_rate} and "
                f"{self.total_steps}"
            )

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_ratio * self.total_steps) if self.warmup_ratio > 0 else 0


def lr_factor(step: int, config: OptimConfig) -> float:
    """Multiplier of the base learning rate for optimizer step `step` (0-based)."""
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    span = max(config.total_steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    if config.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    params: list[torch.nn.Parameter], config: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (fused where torch supports it) and its LambdaLR schedule."""
    if not params:
        raise ValueError("no trainable parameters: check finetune.mode / finetune.train_layers")
    optimizer = torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        betas=(float(config.betas[0]), float(config.betas[1])),
        eps=config.eps,
        weight_decay=config.weight_decay,
        fused=_fused_supported(params),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    return optimizer, scheduler


def set_learning_rate(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, config: OptimConfig
) -> None:
    """Make `config.learning_rate` the base rate of a restored optimizer and schedule (a checkpoint carries
    the rate it was saved with), at the schedule's current position."""
    factor = lr_factor(scheduler.last_epoch, config)
    scheduler.base_lrs = [config.learning_rate for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"] = config.learning_rate
        group["lr"] = config.learning_rate * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _fused_supported(params: list[torch.nn.Parameter]) -> bool | None:
    """Fused AdamW (one kernel over all tensors: about 4x faster than the per-tensor loop on a CPU) for
    floating-point parameters on CPU or CUDA; None leaves the choice to torch."""
    devices = {p.device.type for p in params}
    dtypes = {p.dtype for p in params}
    floats = {torch.float32, torch.float16, torch.bfloat16, torch.float64}
    return True if devices <= {"cpu", "cuda"} and dtypes <= floats else None


def clip_and_check(params: list[torch.nn.Parameter], max_norm: float | None) -> tuple[float, bool]:
    """Clip gradients to `max_norm` (None: only measure); returns (total norm before clipping, finite?).

    A non-finite norm means some gradient holds NaN/inf: the caller skips the step.
    """
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0, True
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else float("inf"))
    value = float(norm)
    return value, math.isfinite(value)


def optimizer_state(optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
