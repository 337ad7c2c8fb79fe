"""The quickstart pipeline: the whole way from tasks to training signal on the embedded defaults.

1. tasks from the configured source (the synthetic world by default);
2. `group_size` episodes per task with the policy in the configured environment (batched, token-exact);
3. trajectories written to `<run dir>/trajectories.jsonl`, the resolved config to `config.yaml`;
4. advantages of the configured recipe and, for comparison, the gradient masses every preset assigns to the
   same rewards; rollout and advantage metrics appended to `metrics.jsonl`.

Nothing is trained here: the numbers are those of the current policy.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.experiment import ExperimentConfig
from agentrl.files import atomic_open
from agentrl.types import Trajectory


@dataclass
class QuickstartResult:
    run_dir: Path
    trajectories: list[Trajectory]
    metrics: dict[str, float]
    preset_masses: dict[str, dict[str, float]]
    advantages: list[float]
    example_text: str


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


def run_quickstart(
    cfg: ExperimentConfig, on_finish: Any = None, on_stage: Any = None, on_start: Any = None
) -> QuickstartResult:
    """Run the pipeline for `cfg`; callbacks as in `agentrl.rollout.setup.run_from_config`: `on_stage(text)`
    per stage, `on_start(total)` before sampling, `on_finish(n)` as episodes end."""
    from agentrl.advantage_report import preset_masses, scheme_advantages
    from agentrl.config import dump_config
    from agentrl.metrics import MetricsWriter
    from agentrl.rollout.io import write_trajectories
    from agentrl.rollout.setup import run_from_config
    from agentrl.seeding import seed_everything
    from trainers.diagnostics import gradient_masses, reward_stats
    from trainers.presets import get_preset

    seed_everything(cfg.seed)
    preset = get_preset(cfg.algorithm.preset)
    if cfg.algorithm.scheme:
        scheme, scheme_params = cfg.algorithm.scheme, dict(cfg.algorithm.scheme_params)
    else:
        scheme, scheme_params = preset.scheme, {**preset.scheme_params, **cfg.algorithm.scheme_params}
    run_dir = new_run_dir(cfg.output.dir)
    with atomic_open(run_dir / "config.yaml") as f:
        f.write(dump_config(cfg))

    run = run_from_config(cfg, on_start=on_start, on_finish=on_finish, on_stage=on_stage)
    trajectories, tokenizer, stats = run.trajectories, run.tokenizer, run.stats
    write_trajectories(run_dir / "trajectories.jsonl", trajectories, tokenizer)

    if on_stage is not None:
        on_stage(f"advantages ({scheme})")
    advantages = scheme_advantages(trajectories, scheme, scheme_params)
    rewards = [t.reward for t in trajectories]
    groups = [t.group_id for t in trajectories]
    metrics: dict[str, float] = {
        **reward_stats(rewards, groups),  # type: ignore[arg-type]
        **gradient_masses(advantages, rewards, groups),  # type: ignore[arg-type]
        "episodes": float(len(trajectories)),
        "turns/mean": sum(t.num_turns for t in trajectories) / max(len(trajectories), 1),
        "searches/mean": sum(t.num_tool_calls for t in trajectories) / max(len(trajectories), 1),
        "tokens/sampled": float(stats.sampled_tokens),
        "time/rollout_s": float(stats.total_seconds),
        "tokens/per_second": stats.sampled_tokens / stats.total_seconds if stats.total_seconds else 0.0,
        "adv/nonzero_fraction": float((advantages != 0).double().mean()) if len(advantages) else 0.0,
    }
    for reason, count in Counter(t.finish_reason for t in trajectories).items():
        metrics[f"finish/{reason}"] = count / len(trajectories)
    masses = preset_masses(trajectories)
    wandb_project = cfg.output.wandb_project if cfg.output.wandb else None
    with MetricsWriter(run_dir, tensorboard=cfg.output.tensorboard, wandb_project=wandb_project) as writer:
        writer.log(metrics, step=0)
    example = ""
    if trajectories:
        first = trajectories[0]
        example = tokenizer.decode(first.token_ids[first.prompt_length :])
    return QuickstartResult(run_dir, trajectories, metrics, masses, advantages.tolist(), example)
