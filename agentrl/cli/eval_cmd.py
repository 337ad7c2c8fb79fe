"""`agentrl eval`: score a model on a dataset through the training rollout engine and write a report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentrl.cli.errors import user_errors

if TYPE_CHECKING:
    from agentrl.evaluation.evaluator import EvalSettings
    from agentrl.experiment import ExperimentConfig

DEFAULT_CONFIG = Path("configs/quickstart.yaml")
COMPARE_MD = "compare.md"
COMPARE_JSON = "compare.json"
COMPARE_PNG = "compare_pass_at_k.png"


def eval_command(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Config overrides as key.sub=value, e.g. env.kwargs.corpus=task."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="bundled:NAME, a model directory, an `agentrl train` run or checkpoint directory, a LoRA "
            "adapter directory or a hub id; config model.name.",
        ),
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="Base model of a LoRA adapter (replaces the one its config names).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Experiment YAML (default: configs/quickstart.yaml if present)."),
    ] = None,
    env: Annotated[str | None, typer.Option(help="Gymnasium id; config env.id.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Loader: hotpotqa, 2wikimultihopqa, math500, aime, synthetic; eval.data.dataset"),
    ] = None,
    data_path: Annotated[str | None, typer.Option(help="Dataset file or directory; eval.data.path.")] = None,
    split: Annotated[str | None, typer.Option(help="Dataset split; eval.data.split.")] = None,
    num_questions: Annotated[
        int | None, typer.Option(help="Questions to evaluate; eval.data.num_tasks.")
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", "-n", help="Samples per question; eval.samples.")
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(help="Sample at this temperature (eval.greedy=false); default greedy decoding."),
    ] = None,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="pass@k to report (repeatable); default 1, 2, 4, ... n.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Run seed the evaluation seed derives from; config seed.")
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Bootstrap resamples for the 95% CIs (0: none).")
    ] = 1000,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Directory for report.json, report.md, predictions.jsonl, pass_at_k.png; a rerun resumes.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an evaluation in --output made with other settings.")
    ] = False,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            help="Evaluation directory or model spec to put beside this one (repeatable); models are "
            "evaluated with the same settings into OUTPUT/compare/."
        ),
    ] = None,
    allow_mismatch: Annotated[
        bool, typer.Option(help="Compare reports whose settings differ (listed) instead of refusing.")
    ] = False,
    train_data: Annotated[
        list[str] | None,
        typer.Option(help="Training file whose questions must not be evaluated (repeatable; same loader)."),
    ] = None,
    allow_overlap: Annotated[
        bool, typer.Option(help="Evaluate questions that also appear in the training data (with a warning).")
    ] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, ...; config model.device.")] = None,
) -> None:
    """Evaluate a model on held-out questions: EM, F1, format rate, pass@k with bootstrap CIs, searches,
    answer-in-retrieval, finish reasons and a breakdown by question type.

    The questions come from the config's `eval.data` (or --dataset / --data-path); the env, retriever and
    rollout settings are the training ones, and so is the evaluator `agentrl train` logs `eval/*` with. With
    --output, predictions are appended a chunk of questions at a time, so a killed evaluation rerun with the
    same command continues where it stopped and ends with the same report.

    Example: agentrl eval -m runs/quickstart/<run> --num-questions 40 -o runs/eval/qs
    --compare bundled:smollm2-135m-instruct
    """
    from agentrl.core.config import ConfigError, load_config
    from agentrl.core.models import ModelNotFoundError
    from agentrl.evaluation.evaluator import EvalSettings
    from agentrl.experiment import ExperimentConfig

    flags = {
        "model.name": model, "model.base": base, "model.device": device, "env.id": env,
        "eval.data.dataset": dataset, "eval.data.path": data_path, "eval.data.split": split,
        "eval.data.num_tasks": num_questions, "eval.samples": samples, "seed": seed,
    }  # fmt: skip
    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    if temperature is not None:
        extra += ["eval.greedy=false", f"eval.temperature={temperature}"]
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    with user_errors(ConfigError, ModelNotFoundError, ValueError, KeyError, FileNotFoundError):
        if compare and output is None and any(not _is_report_dir(c) for c in compare):
            raise ValueError("--compare with a model evaluates it too: pass --output DIR for its report")
        cfg = load_config(ExperimentConfig, path, [*(overrides or []), *extra])
        settings = EvalSettings.from_config(cfg, ks=list(k) if k else None, bootstrap=bootstrap)
        source = str(path or "<defaults>")
        outcome = _evaluate(cfg, settings, output, overwrite, allow_overlap, train_data, source)
        _print_report(outcome.report, outcome.out_dir)
        if compare:
            checks = (allow_overlap, list(train_data or []))
            report = outcome.report
            _compare(cfg, settings, report, compare, output, overwrite, allow_mismatch, checks, source)


def _is_report_dir(spec: str) -> bool:
    from agentrl.evaluation.store import is_eval_dir

    return is_eval_dir(spec)


def _evaluate(
    cfg: ExperimentConfig,
    settings: EvalSettings,
    output: Path | None,
    overwrite: bool,
    allow_overlap: bool,
    train_data: list[str] | None,
    source: str,
) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agentrl.evaluation.run import run_eval

    console = Console(stderr=True)
    columns = (TextColumn("episodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("eval", total=None)
        return run_eval(
            cfg, settings, output, overwrite, allow_overlap, list(train_data or []),
            stage=lambda text: console.print(f"• {text}", highlight=False),
            on_start=lambda total: progress.update(bar, total=total),
            on_finish=lambda n: progress.advance(bar, n), source=source,
        )  # fmt: skip


def _print_report(report: dict[str, Any], out_dir: Path | None) -> None:
    from rich.console import Console

    from agentrl.evaluation.report import report_markdown

    console = Console(soft_wrap=True)
    console.print(report_markdown(report).split("\n## Manifest")[0], markup=False, highlight=False)
    if out_dir is not None:
        console.print(f"report: {out_dir}/report.json, report.md, predictions.jsonl, pass_at_k.png")


def _compare(
    cfg: ExperimentConfig,
    settings: EvalSettings,
    main: dict[str, Any],
    entries: list[str],
    output: Path | None,
    overwrite: bool,
    allow_mismatch: bool,
    checks: tuple[bool, list[str]],
    source: str,
) -> None:
    """Evaluate or read every compared entry, refuse (or flag) settings that differ, write and print the
    table."""
    import json
    from dataclasses import replace

    from rich.console import Console

    from agentrl.evaluation.manifest import manifest_differences
    from agentrl.evaluation.report import comparison_markdown, comparison_rows, model_label, plot_pass_at_k
    from agentrl.evaluation.store import EvalStore

    reports = [main]
    for i, entry in enumerate(entries):
        if _is_report_dir(entry):
            reports.append(EvalStore(entry).report())
            continue
        assert output is not None
        other = replace(cfg, model=replace(cfg.model, name=entry, base=None))
        out = output / "compare" / f"{i + 1}-{_slug(entry)}"
        reports.append(_evaluate(other, settings, out, overwrite, *checks, source).report)
    flags = []
    for entry, report in zip(entries, reports[1:], strict=True):
        differences = manifest_differences(main["manifest"], report["manifest"], outside=("model",))
        if differences and not allow_mismatch:
            listing = "\n  ".join(differences[:12])
            raise ValueError(
                f"{entry} was evaluated with other settings than {model_label(main)}, so the scores are not "
                f"comparable:\n  {listing}\npass --allow-mismatch to compare them anyway (the differences "
                "are listed beside the table)"
            )
        flags += [f"{entry}: {d}" for d in differences]
    labels = [model_label(r) for r in reports]
    rows = comparison_rows(reports, labels)
    text = comparison_markdown(rows, flags)
    Console(soft_wrap=True).print(text, markup=False, highlight=False)
    if output is not None:
        from agentrl.core.files import atomic_open, disk_full_error

        with disk_full_error(output):
            with atomic_open(output / COMPARE_MD) as f:
                f.write(text)
            with atomic_open(output / COMPARE_JSON) as f:
                json.dump({"rows": rows, "differences": flags}, f, indent=2)
            plot_pass_at_k(reports, labels, output / COMPARE_PNG)


def _slug(spec: str) -> str:
    import re

    name = Path(spec.rstrip("/")).name or spec
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("bundled:", ""))[:60]
