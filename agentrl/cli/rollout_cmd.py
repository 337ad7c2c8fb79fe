"""`agentrl rollout`: run a policy on an environment and write the trajectories as JSONL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agentrl.cli.errors import err_console, user_errors


def rollout(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write, one trajectory per line.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Config overrides as key.sub=value, applied after --config, e.g. rollout.top_p=0.9."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Experiment YAML (defaults: configs/quickstart.yaml's)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Policy: bundled:smollm2-135m-instruct, a local directory or a hub id; config model.name."
        ),
    ] = None,
    env: Annotated[
        str | None, typer.Option(help="Gymnasium id, e.g. agentrl/SearchQA-v0; config env.id.")
    ] = None,
    num_tasks: Annotated[int | None, typer.Option(help="Tasks to run; config data.num_tasks.")] = None,
    group_size: Annotated[
        int | None, typer.Option(help="Samples per task (G); config rollout.group_size.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Loader (hotpotqa, math500, ...); synthetic/env: the env's tasks; config data.dataset"
        ),
    ] = None,
    data_path: Annotated[
        str | None, typer.Option(help="Dataset file, directory or hub name; config data.path.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature; config rollout.temperature.")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Tokens per turn; config rollout.max_new_tokens.")
    ] = None,
    max_turns: Annotated[
        int | None, typer.Option(help="Agent turns per episode; config env.max_turns.")
    ] = None,
    observation_mode: Annotated[
        str | None, typer.Option(help="`message` or `inline`; config rollout.observation_mode.")
    ] = None,
    executor: Annotated[str | None, typer.Option(help="`local` or `ray`; config rollout.executor.")] = None,
    backend: Annotated[str | None, typer.Option(help="`hf` or `vllm`; config rollout.backend.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling and env seed; config rollout.seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, ...; config model.device.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT when it already exists.")] = False,
) -> None:
    """Run MODEL on ENV for NUM_TASKS tasks x GROUP_SIZE samples and write the trajectories to OUT.

    Each JSONL line holds task_id, group_id, text (the decoded episode), token_ids, loss_mask, logprobs (null
    where the mask is 0), reward, turn_rewards, num_turns, num_searches, finish_reason and the env's info.
    Settings come from --config (or the built-in defaults), then OVERRIDES, then the options below.
    Example: agentrl rollout --env agentrl/SearchQA-v0 --num-tasks 8 --group-size 4 --out runs/r.jsonl
    """
    from agentrl.core.config import ConfigError, load_config
    from agentrl.core.models import ModelNotFoundError
    from agentrl.experiment import ExperimentConfig
    from agentrl.train.recipe import check_config

    flags = {
        "model.name": model,
        "env.id": env,
        "data.num_tasks": num_tasks,
        "rollout.group_size": group_size,
        "data.dataset": dataset,
        "data.path": data_path,
        "rollout.temperature": temperature,
        "rollout.max_new_tokens": max_new_tokens,
        "env.max_turns": max_turns,
        "rollout.observation_mode": observation_mode,
        "rollout.executor": executor,
        "rollout.backend": backend,
        "rollout.seed": seed,
        "model.device": device,
    }
    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    with user_errors(ConfigError, ModelNotFoundError, ValueError, KeyError, FileNotFoundError):
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it, or another --out")
        cfg = load_config(ExperimentConfig, config, [*(overrides or []), *extra])
        check_config(cfg, str(config or "<defaults>"), training=False)
        trajectories = _run(cfg, out)
    if trajectories and all(t.finish_reason == "error" for t in trajectories):
        first = trajectories[0].info.get("error", "no message")
        err_console.print(
            f"[bold red]error:[/] every one of the {len(trajectories)} episodes ended in an env error (they "
            f"are in {out}); the first: {first}", highlight=False,
        )  # fmt: skip
        raise typer.Exit(code=1)


def _run(cfg, out: Path) -> list[Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agentrl.rollout.io import write_trajectories
    from agentrl.rollout.setup import run_from_config

    columns = (TextColumn("episodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        bar = progress.add_task("rollout", total=None)
        run = run_from_config(
            cfg,
            on_start=lambda total: progress.update(bar, total=total),
            on_finish=lambda n: progress.advance(bar, n),
        )
    write_trajectories(out, run.trajectories, run.tokenizer)
    print_summary(Console(), run.trajectories, run.stats, out)
    return run.trajectories


def print_summary(console, trajectories, stats, out: Path) -> None:
    from collections import Counter

    from rich.table import Table

    n = len(trajectories)
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    table = Table(title=f"{n} trajectories -> {out}", show_header=False)
    table.add_row("reward (mean)", f"{mean([t.reward for t in trajectories]):.3f}")
    table.add_row("turns (mean)", f"{mean([t.num_turns for t in trajectories]):.2f}")
    table.add_row("searches / tool calls (mean)", f"{mean([t.num_tool_calls for t in trajectories]):.2f}")
    table.add_row("sampled tokens", str(stats.sampled_tokens))
    rate = stats.sampled_tokens / stats.total_seconds if stats.total_seconds else 0.0
    table.add_row(
        "time", f"{stats.total_seconds:.1f} s ({rate:.1f} sampled tokens/s, env {stats.env_seconds:.1f} s)"
    )
    reasons = Counter(t.finish_reason for t in trajectories)
    table.add_row("finish reasons", ", ".join(f"{k}: {v}" for k, v in reasons.most_common()))
    console.print(table)
