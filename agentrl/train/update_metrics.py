"""The metrics of one RL update: what each minibatch adds up, and the step's row made from the totals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainers.filters import FilterResult
from trainers.presets import Preset
from trainers.worker import finalize_metrics, merge_metrics

STAPO_FILTERS = ("stapo", "s2t")


@dataclass
class UpdateTotals:
    """Sums over an update's minibatches.

    sums: the workers' `forward_backward` metric sums; optim: `optim_step` sums (the learning rate is the
    last one); masked: each filtered minibatch's dropped-token fraction.
    """

    sums: dict[str, float] = field(default_factory=dict)
    optim: dict[str, float] = field(default_factory=dict)
    masked: list[float] = field(default_factory=list)

    def add(self, forward: dict[str, float], step: dict[str, float], filtered: FilterResult | None) -> None:
        """One minibatch: its `forward_backward` and `optim_step` metrics and its filter result."""
        if filtered is not None:
            self.masked.append(filtered.dropped_fraction)
        merge_metrics(self.sums, forward)
        merge_metrics(self.optim, {k: v for k, v in step.items() if k != "optim/lr"})
        self.optim["optim/lr"] = step["optim/lr"]

    def finalize(self, optimizer_steps: int, preset: Preset) -> dict[str, Any]:
        """Means of the loss metrics (the sampler gap is measured before the update instead), the mean
        gradient norm over `optimizer_steps`, the last learning rate, skipped steps and masked fractions."""
        out: dict[str, Any] = finalize_metrics(self.sums)
        out.pop("logprob_gap/mean", None)
        out.pop("logprob_gap/max", None)
        out["optim/grad_norm"] = self.optim.get("optim/grad_norm", 0.0) / optimizer_steps
        out["optim/lr"] = self.optim.get("optim/lr", 0.0)
        out["optim/skipped_steps"] = self.optim.get("optim/skipped", 0.0)
        if self.masked:
            out["filters/masked_fraction"] = sum(self.masked) / len(self.masked)
            names = [f if isinstance(f, str) else f.get("name") for f in preset.filters]
            if any(name in STAPO_FILTERS for name in names):
                out["stapo/masked_fraction"] = out["filters/masked_fraction"]
        return out
