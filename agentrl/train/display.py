"""What a person watching a training run sees: a live progress display on a terminal (steps with ETA and the
latest numbers, and the episodes of the rollout under way), one plain line per step elsewhere, and a
one-screen summary at the end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from agentrl.core.progress import progress_enabled
from agentrl.evaluation.paired import PairedDifference

LIVE_FIELDS = (
    ("reward/mean", "reward", "{:.3f}"),
    ("episode/format_rate", "format", "{:.2f}"),
    ("episode/f1", "F1", "{:.3f}"),
    ("episode/accuracy", "acc", "{:.3f}"),
    ("entropy/mean", "H", "{:.3f}"),
    ("kl/old_new_k3", "KL", "{:.1e}"),
    ("loss/clip_frac", "clip", "{:.3f}"),
    ("logprob_gap/mean", "gap", "{:.1e}"),
    ("perf/tokens_per_s", "tok/s", "{:.0f}"),
    ("sft/nll", "nll", "{:.3f}"),
)


def step_line(metrics: dict[str, Any]) -> str:
    """`reward 0.412  format 0.95  F1 0.388  H 0.61  ...` for the fields present."""
    parts = []
    for key, label, fmt in LIVE_FIELDS:
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label} {fmt.format(value)}")
    return "  ".join(parts)


class TrainDisplay:
    """Progress of one phase (`sft` or `rl`): a steps bar with the latest numbers and an episodes bar.

    Use as a context manager; `live=None` shows bars on a terminal (see
    `agentrl.core.progress.progress_enabled`).
    """

    def __init__(self, console: Console | None = None, live: bool | None = None) -> None:
        self.console = console or Console()
        self.live = progress_enabled() if live is None else live
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[line]}"),
            console=self.console,
            disable=not self.live,
            transient=False,
        )
        self._steps: Any = None
        self._episodes: Any = None

    def __enter__(self) -> TrainDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]•[/] {text}", highlight=False, soft_wrap=True)

    def start_phase(self, name: str, total_steps: int, done: int = 0) -> None:
        if self._steps is not None:
            self.progress.update(self._steps, visible=False)
        self._steps = self.progress.add_task(name, total=total_steps, completed=done, line="")

    def start_rollout(self, episodes: int) -> None:
        if self._episodes is None:
            self._episodes = self.progress.add_task("episodes", total=episodes, line="")
        else:
            self.progress.reset(self._episodes, total=episodes, visible=True)

    def episodes_done(self, n: int) -> None:
        if self._episodes is not None:
            self.progress.advance(self._episodes, n)

    def end_step(self, step: int, total: int, metrics: dict[str, Any], prefix: str = "step") -> None:
        line = step_line(metrics)
        if self._steps is not None:
            self.progress.update(self._steps, completed=step, line=line)
        if self._episodes is not None:
            self.progress.update(self._episodes, visible=False)
        if not self.live:
            self.console.print(f"{prefix} {step}/{total}  {line}", highlight=False, soft_wrap=True)


def summary_table(evals: list[dict[str, Any]]) -> Table:
    """Held-out evaluations side by side: one row per evaluation (before SFT, after SFT, after RL, ...)."""
    names = ("format_rate", "f1", "em", "accuracy", "score", "reward")
    keys = [k for k in names if any(k in e for e in evals)]
    table = Table(title="held-out evaluation (greedy)")
    table.add_column("when")
    table.add_column("episodes", justify="right")
    for k in keys:
        table.add_column(k.replace("_", " "), justify="right")
    for e in evals:
        values = [f"{e.get(k, 0.0):.3f}" for k in keys]
        table.add_row(str(e["label"]), str(int(e.get("episodes", 0))), *values)
    return table


def comparison_table(comparison: Sequence[PairedDifference], labels: tuple[str, str]) -> Table:
    """The paired comparison of two evaluations on the same questions, one row per score."""
    n = comparison[0].n if comparison else 0
    table = Table(title=f"{labels[1]} vs {labels[0]}: paired over the same {n} held-out questions")
    for column in ("score", labels[0], labels[1], "difference", "95% interval", "one-sided p"):
        table.add_column(column, justify="left" if column == "score" else "right")
    for c in comparison:
        table.add_row(
            c.name, f"{c.before:.3f}", f"{c.after:.3f}", f"{c.difference:+.3f}",
            f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]", f"{c.p_one_sided:.4f}",
        )  # fmt: skip
    return table


def print_summary(
    console: Console,
    run_dir: Path,
    evals: list[dict[str, Any]],
    reward_curve: list[tuple[int, float]],
    checkpoint: Path | None,
    plots: list[Path],
    comparison: Sequence[PairedDifference] = (),
    comparison_labels: tuple[str, str] = ("before", "after"),
) -> None:
    """The closing screen: evaluations, the paired before/after-RL comparison when there is one, the
    training reward per step, and where everything was written."""
    if evals:
        console.print(summary_table(evals))
    if comparison:
        console.print(comparison_table(comparison, comparison_labels))
    if reward_curve:
        curve = "  ".join(f"{s}:{r:.3f}" for s, r in reward_curve)
        console.print(f"training reward by step  {curve}", highlight=False)
    where = Table(show_header=False, box=None, title="written")
    where.add_row("run", str(run_dir))
    where.add_row("checkpoint", str(checkpoint) if checkpoint else "(none)")
    where.add_row("metrics", str(run_dir / "metrics.jsonl"))
    where.add_row("plots", ", ".join(p.name for p in plots) if plots else "(none: install agentrl\\[plot])")
    console.print(where)
