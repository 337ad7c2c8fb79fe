"""`agentrl quickstart`: the end-to-end run on the embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentrl.cli.errors import user_errors

DEFAULT_CONFIG = Path("configs/quickstart.yaml")


def quickstart(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Config overrides as key.sub=value, e.g. rollout.group_size=8 data.num_tasks=4."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Experiment YAML; default configs/quickstart.yaml when it exists, else the built-in "
            "defaults (which are the same).",
        ),
    ] = None,
) -> None:
    """Sample search episodes with the bundled SmolLM2 on the synthetic world and score them.

    Builds the synthetic world, samples rollout.group_size episodes per task in agentrl/SearchQA-v0 (BM25 over
    the world's documents), writes trajectories.jsonl, config.yaml and metrics.jsonl to a new directory under
    output.dir, computes the configured recipe's advantages and shows the gradient masses every preset
    assigns to the same rewards. Takes a few minutes on a laptop CPU; the first run also converts the bundled
    model (about 30 s).
    """
    from rich.console import Console

    from agentrl.config import ConfigError, load_config
    from agentrl.experiment import ExperimentConfig
    from agentrl.models import ModelNotFoundError

    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    with user_errors(ConfigError, ModelNotFoundError, ValueError, KeyError, FileNotFoundError):
        cfg = load_config(ExperimentConfig, path, overrides or [])
        console = Console()
        result = _run_with_progress(cfg, console)
    _print_result(console, result)


def _run_with_progress(cfg, console):  # type: ignore[no-untyped-def]
    from agentrl.progress import make_progress
    from agentrl.quickstart import run_quickstart

    with make_progress(transient=True) as progress:
        bar = progress.add_task("episodes", total=None, visible=False)
        return run_quickstart(
            cfg,
            on_stage=lambda text: console.print(f"[dim]•[/] {text}"),
            on_start=lambda total: progress.update(bar, total=total, visible=True),
            on_finish=lambda n: progress.advance(bar, n),
        )


def _print_result(console, result) -> None:  # type: ignore[no-untyped-def]
    from rich.panel import Panel
    from rich.table import Table

    m = result.metrics
    summary = Table(title=f"{int(m['episodes'])} episodes", show_header=False, box=None)
    summary.add_row("reward mean / std", f"{m['reward/mean']:.3f} / {m['reward/std']:.3f}")
    summary.add_row("zero-variance groups", f"{m['reward/zero_variance_groups']:.2f}")
    summary.add_row("turns / searches (mean)", f"{m['turns/mean']:.2f} / {m['searches/mean']:.2f}")
    finishes = ", ".join(f"{k[7:]}: {v:.2f}" for k, v in m.items() if k.startswith("finish/"))
    summary.add_row("finish reasons", finishes)
    summary.add_row(
        "sampled tokens", f"{int(m['tokens/sampled'])} in {m['time/rollout_s']:.1f} s "
        f"({m['tokens/per_second']:.1f} tokens/s)"
    )  # fmt: skip
    console.print(summary)
    masses = Table("preset", "scheme", "m_S", "m_F", "share with A≠0", title="gradient mass per preset")
    for name, row in result.preset_masses.items():
        masses.add_row(name, row["scheme"], f"{row['m_S']:.4f}", f"{row['m_F']:.4f}", f"{row['nonzero']:.2f}")
    console.print(masses)
    if m["reward/zero_variance_groups"] >= 1.0:
        console.print(
            "[yellow]Every group got equal rewards, so no scheme has a learning signal in this batch.[/] "
            "Small untrained policies rarely follow the <search>/<answer> protocol; try more samples "
            "(rollout.group_size=16), a stronger model (model.name=<hub id or local dir>) or "
            "env.id=agentrl/Math-v0."
        )
    console.print(Panel(result.example_text.strip()[:1500], title="first episode (agent and observations)"))
    console.print(f"written to [bold]{result.run_dir}[/]: trajectories.jsonl, metrics.jsonl, config.yaml")
