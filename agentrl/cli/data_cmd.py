"""`agentrl data filter`: drop training questions that appear in evaluation files, then keep the ones the
current model solves sometimes but not yet half the time (WAPO F.2.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentrl.cli.errors import user_errors

app = typer.Typer(help="Prepare training data: difficulty filter and train / eval de-duplication.")


@app.command("filter")
def filter_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="JSONL of the kept tasks (read with dataset `tasks`).")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Config overrides as key.sub=value, e.g. env.kwargs.corpus=task."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Experiment YAML (default: configs/quickstart.yaml)."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Loader of the training file; config data.dataset.")
    ] = None,
    data_path: Annotated[
        str | None, typer.Option(help="Training file or directory; config data.path.")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split; config data.split.")] = None,
    num_questions: Annotated[
        int | None, typer.Option(help="Questions to read; config data.num_tasks.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="The current policy; config model.name.")
    ] = None,
    samples: Annotated[int, typer.Option("--samples", "-n", min=1, help="Rollouts per question.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the rollouts.")] = 1.0,
    low: Annotated[float, typer.Option(help="Keep accuracy strictly above this.")] = 0.0,
    high: Annotated[float, typer.Option(help="Keep accuracy strictly below this.")] = 0.5,
    difficulty: Annotated[
        bool, typer.Option(help="Run the difficulty filter (--no-difficulty: only de-duplicate).")
    ] = True,
    eval_data: Annotated[
        list[str] | None, typer.Option(help="Evaluation file whose questions are dropped (repeatable).")
    ] = None,
    eval_dataset: Annotated[
        str | None, typer.Option(help="Loader of the --eval-data files (default: the training loader).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT when it exists.")] = False,
) -> None:
    """Filter the training questions of CONFIG's `data` section (or --dataset / --data-path).

    Questions whose normalised text appears in an --eval-data file are dropped and listed. Then each remaining
    question is rolled out --samples times with the model through the training rollout engine and kept when
    its accuracy lies strictly between --low and --high (WAPO F.2.1: 0 < accuracy < 50%). The kept tasks go
    to OUT as JSONL; train on them with data.dataset=tasks data.path=OUT.

    Example: agentrl data filter --dataset hotpotqa --data-path train.jsonl --eval-data dev.jsonl -o k.jsonl
    """
    from rich.console import Console

    from agentrl.core.config import ConfigError, load_config
    from agentrl.core.models import ModelNotFoundError, inspect_model
    from agentrl.core.seeding import derive_seed
    from agentrl.evaluation.evaluator import EvalSettings
    from agentrl.evaluation.filter import check_bounds, difficulty_filter, drop_overlaps, write_tasks
    from agentrl.evaluation.overlap import overlap_message
    from agentrl.experiment import ExperimentConfig
    from agentrl.rollout.setup import section_tasks
    from agentrl.train.recipe import check_config
    from environments.datasets import load_tasks

    console = Console(stderr=True, soft_wrap=True)
    flags = {"model.name": model, "data.dataset": dataset, "data.path": data_path, "data.split": split,
             "data.num_tasks": num_questions}  # fmt: skip
    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    default = Path("configs/quickstart.yaml")
    path = config if config is not None else (default if default.is_file() else None)
    with user_errors(ConfigError, ModelNotFoundError, ValueError, KeyError, FileNotFoundError):
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it, or another --out")
        cfg = load_config(ExperimentConfig, path, [*(overrides or []), *extra])
        check_config(cfg, str(path or "<defaults>"), training=False)
        check_bounds(low, high)
        settings = EvalSettings(
            samples=samples, greedy=False, temperature=temperature, seed=derive_seed(cfg.seed, "filter"),
            chunk_size=max(1, cfg.rollout.batch_size // samples), bootstrap=0,
        )  # fmt: skip
        settings.validate()
        if difficulty:
            inspect_model(cfg.model.name, cfg.model.base)
        tasks = section_tasks(cfg, cfg.data)
        total, seen = len(tasks), 0
        for file in eval_data or []:
            if not Path(file).exists():
                raise FileNotFoundError(f"--eval-data: {file} does not exist")
            tasks, overlaps = drop_overlaps(tasks, load_tasks(eval_dataset or cfg.data.dataset, file))
            seen += len(overlaps)
            if overlaps:
                message = overlap_message(overlaps, total, file, what="training questions")
                console.print(f"dropped: {message}", highlight=False)
        accuracy: dict[str, float] = {}
        if difficulty and tasks:
            console.print(f"• rolling out {len(tasks)} questions x {samples} with {cfg.model.name}")
            tasks, accuracy = difficulty_filter(cfg, tasks, settings, low, high)
        write_tasks(out, tasks)
    rolled = list(accuracy.values())
    hard, easy = sum(a <= low for a in rolled), sum(a >= high for a in rolled)
    Console(soft_wrap=True).print(
        f"{total} questions: {seen} in evaluation files, {hard} at accuracy <= {low:g}, {easy} at accuracy "
        f">= {high:g}; kept {len(tasks)} -> {out}",
        highlight=False,
    )
