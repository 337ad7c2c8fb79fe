"""`agentrl train`, `agentrl sft` and `agentrl quickstart`: the training commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentrl.cli.errors import user_errors

QUICKSTART_CONFIG = Path("configs/quickstart.yaml")

OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides as key.sub=value, e.g. trainer.steps=8 rollout.group_size=8."),
]
ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="Continue a run: `auto` (the newest run under output.dir with a checkpoint), a run directory or "
        "a checkpoint directory.",
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Resume even when fields that change the math (model, preset, group size, seed) differ.",
    ),
]


def _run(
    config: Path | None, overrides: list[str] | None, resume: str | None, force: bool, sft_only: bool = False
) -> None:
    from agentrl.core.config import ConfigError, load_config
    from agentrl.core.models import ModelNotFoundError
    from agentrl.experiment import ExperimentConfig
    from agentrl.train.loop import TrainingStopped, train

    errors = (ConfigError, ModelNotFoundError, ValueError, KeyError, FileNotFoundError, TrainingStopped)
    with user_errors(*errors):
        cfg = load_config(ExperimentConfig, config, overrides or [])
        result = train(cfg, source=str(config or "<defaults>"), resume=resume, force=force, sft_only=sft_only)
    if result.interrupted:
        raise typer.Exit(code=130)


def train_command(
    config: Annotated[Path, typer.Argument(help="Experiment YAML, e.g. configs/quickstart.yaml.")],
    overrides: OverridesArg = None,
    resume: ResumeOpt = None,
    force: ForceOpt = False,
) -> None:
    """Train a policy with RL (optionally after an SFT cold start) as CONFIG describes.

    Each step rolls out trainer.batch_size tasks x rollout.group_size episodes in env.id, turns rewards into
    advantages with algorithm.preset, and updates the policy with loss only on the tokens it sampled. A new
    directory under output.dir receives config.yaml, metrics.jsonl (one line per step), the trajectories,
    checkpoints (every trainer.save_every steps and at the end) and plots. Ctrl-C finishes the current step
    and saves; `--resume auto` continues exactly where a run stopped.

    Example: agentrl train configs/quickstart.yaml trainer.steps=8 algorithm.preset=dapo
    """
    _run(config, overrides, resume, force)


def sft_command(
    config: Annotated[Path, typer.Argument(help="Experiment YAML whose `sft` section describes the data.")],
    overrides: OverridesArg = None,
) -> None:
    """Supervised fine-tuning on agent tokens only (the same masks and checkpoints as RL).

    sft.source picks the episodes: `oracle` (scripted oracle episodes played through the rollout engine),
    `rejection` (the policy's own episodes with reward >= sft.min_reward, optionally only from tasks whose
    success rate lies in sft.difficulty) or `trajectories` (a JSONL file from `agentrl rollout`). Evaluates on
    the eval section before and after when eval.enabled, then saves a checkpoint; continue with RL by
    `agentrl train CONFIG --resume <run dir>`, or pass the checkpoint as model.name.

    Example: agentrl sft configs/quickstart.yaml sft.steps=32
    """
    _run(config, [*(overrides or []), "sft.enabled=true"], None, False, sft_only=True)


def quickstart(
    overrides: OverridesArg = None,
    resume: ResumeOpt = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Experiment YAML; default configs/quickstart.yaml."),
    ] = None,
) -> None:
    """The end-to-end CPU run: `agentrl train configs/quickstart.yaml`.

    Bundled SmolLM2-135M, the synthetic world, a dense FAISS index over it with the bundled MiniLM (built on
    first use and cached), SFT on oracle episodes, then RL. Prints format rate, F1 and EM on 200 held-out
    synthetic questions after SFT and after RL, and their difference paired by question. 20-26 minutes on a
    2-core CPU.
    """
    path = config if config is not None else (QUICKSTART_CONFIG if QUICKSTART_CONFIG.is_file() else None)
    if path is None:
        raise typer.BadParameter("configs/quickstart.yaml not found; run from the repository root or pass -c")
    _run(path, overrides, resume, False)
