"""`agentrl eval` end to end: check everything, load, roll out (resumably), write the report files.

The experiment config's `eval` section names the questions (`eval.data`), the samples per question and the
sampling; `model` the policy (`model.base` the base of a LoRA adapter); `env`, `retriever` and `rollout` the
environment and rollout engine, exactly as in training. Evaluation reads no training data: `data` and `sft`
are replaced by the evaluation data and turned off, so a synthetic-world retriever covers the evaluated world.

Every check that can fail on the inputs runs before any generation: the config (including an index built with
another encoder than the one named), the model spec (neither a checkpoint, an adapter nor a model directory;
an adapter whose base is missing), the settings (n < k for a requested pass@k), the questions (a dataset with
none usable) and the overlap with training questions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agentrl.core.models import ModelSource
from agentrl.core.types import Task
from agentrl.evaluation.evaluator import EvalSettings, evaluate
from agentrl.evaluation.records import QuestionRecord
from agentrl.evaluation.report import plot_pass_at_k, report_markdown
from agentrl.evaluation.store import PASS_AT_K_PNG, REPORT_MD, EvalStore, check_output_dir
from agentrl.experiment import ExperimentConfig

Stage = Callable[[str], None]


@dataclass
class EvalOutcome:
    """The report (metrics + `manifest`), the per-question records and the directory written (or None)."""

    report: dict[str, Any]
    questions: list[QuestionRecord]
    out_dir: Path | None
    resumed: int = 0
    rolled_out: list[int] = field(default_factory=list)


def eval_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` as an evaluation runs it: the training data replaced by the evaluation data, SFT off."""
    sft = replace(cfg.sft, enabled=False)
    return replace(cfg, data=cfg.eval.data, sft=sft, eval=replace(cfg.eval, enabled=True))


def load_eval_tasks(cfg: ExperimentConfig) -> list[Task]:
    """The evaluation questions of `cfg.eval.data`; a ValueError naming the file when none is usable."""
    from agentrl.rollout.setup import section_tasks

    e = cfg.eval.data
    where = e.path or e.dataset
    try:
        tasks = section_tasks(cfg, e)
    except ValueError as exc:
        if "gave no tasks" in str(exc):
            message = f"{where}: 0 usable questions for loader {e.dataset!r} ({e.split} split)"
            raise ValueError(message) from None
        raise
    usable = [t for t in tasks if t.question.strip()]
    if not usable:
        raise ValueError(f"{where}: 0 usable questions (all {len(tasks)} records have an empty question)")
    return usable


def check_overlap(
    cfg: ExperimentConfig, tasks: list[Task], train_files: list[str], allow_overlap: bool, stage: Stage,
    model: ModelSource,
) -> None:
    """Refuse (unless `allow_overlap`) questions that also appear in `train_files` (read with the evaluation
    data's loader) or, when `model` is an `agentrl train` checkpoint, in the run's training data."""
    from agentrl.evaluation.overlap import find_overlaps, overlap_message

    sources = [(f, _file_tasks(cfg.eval.data.dataset, f)) for f in train_files]
    run = _run_training_tasks(model)
    if run is not None:
        sources.append(run)
    for name, train in sources:
        overlaps = find_overlaps(train, tasks)
        if not overlaps:
            continue
        message = overlap_message(overlaps, len(tasks), name)
        if not allow_overlap:
            raise ValueError(message + "\nremove them (`agentrl data filter`) or pass --allow-overlap")
        stage("warning: " + message)


def _file_tasks(dataset: str | None, path: str) -> list[Task]:
    from environments.datasets import load_tasks

    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"--train-data: {path} does not exist")
    return load_tasks(dataset, path)


def _run_training_tasks(source: ModelSource) -> tuple[str, list[Task]] | None:
    """The training questions of the `agentrl train` run a checkpoint belongs to (its config.yaml)."""
    if source.kind != "checkpoint" or source.checkpoint is None:
        return None
    config_file = Path(source.checkpoint).parent.parent / "config.yaml"
    if not config_file.is_file():
        return None
    from agentrl.core.config import load_config
    from agentrl.rollout.setup import section_tasks

    run = load_config(ExperimentConfig, config_file, [])
    d = run.data
    tasks = section_tasks(run, d)
    return f"the training data of {config_file.parent} ({d.dataset} {d.path or dict(d.options)})", tasks


def run_eval(
    cfg: ExperimentConfig,
    settings: EvalSettings,
    output: Path | None = None,
    overwrite: bool = False,
    allow_overlap: bool = False,
    train_files: list[str] | None = None,
    stage: Stage | None = None,
    on_start: Callable[[int], None] | None = None,
    on_finish: Callable[[int], None] | None = None,
    source: str = "<config>",
) -> EvalOutcome:
    """Evaluate `cfg.model` on `cfg.eval.data` with `settings`; write the report files to `output` (resuming
    an evaluation of the same manifest found there)."""
    from agentrl.core.models import inspect_model
    from agentrl.evaluation.manifest import build_manifest
    from agentrl.rollout.setup import (
        apply_process_settings,
        build_engine,
        build_generator_for,
        load_policy,
        slow_bf16_warning,
    )
    from agentrl.train.recipe import check_config

    say = stage or (lambda text: None)
    cfg = eval_config(cfg)
    check_config(cfg, source, training=False)
    settings.validate()
    if output is not None:
        check_output_dir(output)
    model_source = inspect_model(cfg.model.name, cfg.model.base)
    say(f"loading questions ({' '.join(str(p) for p in (cfg.eval.data.dataset, cfg.eval.data.path) if p)})")
    tasks = load_eval_tasks(cfg)
    check_overlap(cfg, tasks, list(train_files or []), allow_overlap, say, model_source)
    apply_process_settings(cfg)
    say(f"loading {cfg.model.name}")
    if warning := slow_bf16_warning(cfg):
        say(f"warning: {warning}")
    model, tokenizer = load_policy(cfg)
    say("building the environment and retriever")
    engine, executor = build_engine(cfg, build_generator_for(cfg, model, tokenizer), tokenizer)
    try:
        with _disk_full(output):
            manifest = build_manifest(cfg, settings, model_source, tokenizer, tasks)
            store = EvalStore(output) if output is not None else None
            done = store.open(manifest, overwrite) if store is not None else {}
            done = {i: r for i, r in done.items() if i < len(tasks) and r.id == tasks[i].id}
            todo = len(tasks) - len(done)
            if done:
                say(f"resuming: {len(done)} of {len(tasks)} questions already evaluated in {output}")
            say(f"evaluating {len(tasks)} questions x {settings.samples} in {cfg.env.id}")
            if on_start is not None:
                on_start(todo * settings.samples)
            rolled: list[int] = []

            def keep(records: list[QuestionRecord]) -> None:
                rolled.extend(r.index for r in records)
                if store is not None:
                    store.append(records)

            result = evaluate(engine, tasks, settings, on_finish=on_finish, done=done, on_chunk=keep)
    finally:
        executor.close()
    report = {**result.report, "manifest": manifest}
    if store is not None:
        with _disk_full(store.out):
            store.finish(result.questions, report)
            write_report_files(store.out, report)
    return EvalOutcome(report, result.questions, store.out if store else None, len(done), rolled)


def _disk_full(output: Path | None) -> contextlib.AbstractContextManager[None]:
    """Running out of space in `output` as a `NoSpaceError` naming it (the writes are atomic or cut back)."""
    from agentrl.core.files import disk_full_error

    return disk_full_error(output) if output is not None else contextlib.nullcontext()


def write_report_files(out: Path, report: dict[str, Any]) -> None:
    from agentrl.core.files import atomic_open

    with atomic_open(out / REPORT_MD) as f:
        f.write(report_markdown(report))
    plot_pass_at_k([report], [str(report["manifest"]["model"]["spec"])], out / PASS_AT_K_PNG)
