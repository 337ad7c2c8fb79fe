"""A run's directory, its resumable state and its checkpoints.

    runs/quickstart/20261123-101500/
        config.yaml            the resolved config
        metrics.jsonl          one line per step (phase `sft`, `rl` or `eval`)
        trajectories/          the episodes of each step (step-000001.jsonl, ...)
        reference.safetensors  the KL penalty's reference after an SFT cold start (its trainable tensors)
        evals/after-sft.json   per-question scores of each held-out evaluation (paired comparisons)
        checkpoints/step-000004/
            model/             weights or LoRA adapter (safetensors) + tokenizer: from_pretrained-loadable
            optimizer.pt       optimizer and learning-rate schedule
            trainer_state.json step, phase, policy version, data position, FADE state, config, ...
            buffer.jsonl       dynamic-sampling groups waiting for the next step
            rng.pt             Python, NumPy and torch RNG states
        checkpoints/latest     names the newest complete checkpoint (written last)
        plots/*.png

`--resume auto` continues the newest run under `output.dir` that has a checkpoint; a path may name a run
directory or one checkpoint. Fields that change the math must match the checkpoint's config unless forced.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentrl.core.config import ConfigError, dump_config, from_dict, to_dict
from agentrl.core.files import atomic_open, iter_jsonl
from agentrl.experiment import ExperimentConfig
from agentrl.train.checkpoint import COMPLETE, capture_rng, latest_checkpoint, restore_rng, save_checkpoint

STATE_FILE = "trainer_state.json"
BUFFER_FILE = "buffer.jsonl"
RNG_FILE = "rng.pt"
CHECKPOINTS = "checkpoints"
REFERENCE_FILE = "reference.safetensors"
EVALS_DIR = "evals"

MATH_FIELDS = (
    "seed",
    "model.name",
    "finetune.mode",
    "finetune.train_layers",
    "algorithm",
    "rollout.group_size",
    "rollout.temperature",
    "rollout.top_p",
    "rollout.top_k",
    "trainer.batch_size",
    "trainer.epochs",
    "trainer.minibatches",
    "trainer.turn_credit",
    "data.dataset",
    "data.path",
)


@dataclass
class TrainState:
    """Everything besides weights and optimizer that a resumed run needs to continue exactly.

    step: RL steps completed. sft_steps: SFT steps run before RL (TensorBoard / W&B count them first).
    phase: `sft` (SFT not finished), `rl` or `done`.
    policy_version: optimizer steps applied to the policy (what sampled the next episodes).
    loader: the task stream's position; fade: the FADE scheduler state; nonfinite_streak: consecutive
    optimizer steps skipped for NaN/inf; wandb_id: the W&B run to continue; evals: evaluation rows so far.
    """

    step: int = 0
    sft_steps: int = 0
    phase: str = "sft"
    policy_version: int = 0
    loader: dict[str, int] = field(default_factory=lambda: {"epoch": 0, "offset": 0})
    fade: dict[str, Any] | None = None
    nonfinite_streak: int = 0
    wandb_id: str | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)


def new_run_dir(root: str | Path) -> Path:
    """A fresh directory `<root>/<YYYYmmdd-HHMMSS>[-n]`, so earlier runs are never overwritten."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        candidate = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {base}")


def find_resume_checkpoint(spec: str, output_dir: str | Path) -> Path:
    """The checkpoint `--resume spec` means: `auto` (newest run under `output_dir` with one), a run directory
    or a checkpoint directory."""
    if spec == "auto":
        root = Path(output_dir)
        runs = sorted((p for p in root.glob("*") if p.is_dir()), key=lambda p: p.name, reverse=True)
        for run in [root, *runs]:
            found = latest_checkpoint(run / CHECKPOINTS)
            if found is not None:
                return found
        raise FileNotFoundError(f"--resume auto: no run under {root} has a complete checkpoint")
    path = Path(spec).expanduser()
    if (path / COMPLETE).is_file():
        return path
    found = latest_checkpoint(path / CHECKPOINTS)
    if found is None:
        raise FileNotFoundError(f"--resume {spec}: neither a checkpoint nor a run directory with one")
    return found


def run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent


def config_differences(
    old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...] = MATH_FIELDS
) -> list[str]:
    """`key: old -> new` for each math-changing field that differs."""

    def get(data: dict[str, Any], dotted: str) -> Any:
        for part in dotted.split("."):
            data = data.get(part, {}) if isinstance(data, dict) else {}
        return data

    return [f"{k}: {get(old, k)!r} -> {get(new, k)!r}" for k in keys if get(old, k) != get(new, k)]


def save_run_checkpoint(
    run_dir: Path, state: TrainState, worker: Any, tokenizer: Any, cfg: ExperimentConfig, buffer: Any,
    keep_last: int,
) -> Path:  # fmt: skip
    """Write the worker's weights and optimizer, the tokenizer, the run state, the buffer and the RNGs."""

    def write(tmp: Path) -> None:
        worker.save(tmp)
        tokenizer.save_pretrained(tmp / "model")
        data = {**asdict(state), "config": to_dict(cfg)}
        with atomic_open(tmp / STATE_FILE) as f:
            json.dump(data, f, indent=1)
        with atomic_open(tmp / BUFFER_FILE) as f:
            for group in buffer:
                f.write(json.dumps(group) + "\n")
        torch.save(capture_rng(), tmp / RNG_FILE)

    return save_checkpoint(run_dir / CHECKPOINTS, state.step, write, keep_last)


def read_state(checkpoint: Path) -> tuple[TrainState, dict[str, Any], list[Any]]:
    """(state, the checkpoint's config as a dict, the buffer) of a checkpoint."""
    with (checkpoint / STATE_FILE).open(encoding="utf-8") as f:
        data = json.load(f)
    config = data.pop("config")
    buffer = [group for _, group in _groups(checkpoint / BUFFER_FILE)]
    return TrainState(**data), config, buffer


def _groups(path: Path) -> Any:
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                yield line_no, json.loads(line)


def restore_rng_of(checkpoint: Path) -> None:
    restore_rng(torch.load(checkpoint / RNG_FILE, weights_only=False))


def check_resume_config(old: dict[str, Any], cfg: ExperimentConfig, force: bool) -> list[str]:
    """Refuse (ConfigError) when math-changing fields differ, unless `force`; returns the differences."""
    differences = config_differences(old, to_dict(cfg))
    if differences and not force:
        listing = "\n  ".join(differences)
        raise ConfigError(
            "the config differs from the checkpoint's in fields that change the math:\n  "
            f"{listing}\npass --force to resume anyway"
        )
    return differences


def save_reference(run_dir: Path, weights: dict[str, torch.Tensor]) -> Path:
    """Write the KL reference kept after SFT (trainable tensors by name) to `reference.safetensors`."""
    from safetensors.torch import save_file

    target = run_dir / REFERENCE_FILE
    partial = target.with_name(target.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(partial))
    partial.replace(target)
    return target


def load_reference(run_dir: Path) -> dict[str, torch.Tensor] | None:
    """`save_reference`'s tensors, or None when the run has none."""
    from safetensors.torch import load_file

    path = run_dir / REFERENCE_FILE
    return load_file(str(path)) if path.is_file() else None


def eval_scores_path(run_dir: Path, label: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
    return run_dir / EVALS_DIR / f"{slug}.json"


def save_eval_scores(run_dir: Path, label: str, questions: list[Any]) -> Path:
    """Per-question scores of one held-out evaluation (`evals/<label>.json`: question ids and, per score
    name, one mean per question), for paired comparisons of two evaluations."""
    from agentrl.evaluation.metrics import per_question, reported_scores

    path = eval_scores_path(run_dir, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "label": label, "ids": [q.id for q in questions],
        "scores": {name: per_question(questions, name).tolist() for name in reported_scores(questions)},
    }  # fmt: skip
    with atomic_open(path) as f:
        json.dump(data, f)
    return path


def load_eval_scores(run_dir: Path, label: str) -> dict[str, Any] | None:
    """`save_eval_scores`'s data for `label`, or None when that evaluation did not run."""
    path = eval_scores_path(run_dir, label)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    with atomic_open(run_dir / "config.yaml") as f:
        f.write(dump_config(cfg))


def checkpoint_config(checkpoint: Path) -> ExperimentConfig:
    with (checkpoint / STATE_FILE).open(encoding="utf-8") as f:
        return from_dict(ExperimentConfig, json.load(f)["config"], source=str(checkpoint / STATE_FILE))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows a killed run logged after its last checkpoint (`rl`/`eval` rows past `step`), so a resumed
    run's metrics have one row per step."""
    if not path.is_file():
        return
    rows = [row for _, row in iter_jsonl(path)]
    keep = [row for row in rows if row.get("phase") == "sft" or int(row.get("step", 0)) <= step]
    with atomic_open(path) as f:
        for row in keep:
            f.write(json.dumps(row) + "\n")
