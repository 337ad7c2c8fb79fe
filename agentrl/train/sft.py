"""Supervised fine-tuning on agent tokens: the cold start before RL (`sft.enabled`) and `agentrl sft`.

The loss is the mean negative log-likelihood of the loss-masked tokens, so SFT trains exactly the tokens RL
samples (prompt, observation and template tokens carry no loss), with the same worker, batches and
checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrl.core.generator import Generator
from agentrl.core.seeding import derive_seed
from agentrl.core.types import Trajectory
from agentrl.experiment import ExperimentConfig
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.io import read_trajectories, write_trajectories
from agentrl.train.display import TrainDisplay
from agentrl.train.sft_data import OracleGenerator, keep_successes, oracle_episodes
from agentrl.train.step_batch import pad_token_id, sft_batch
from agentrl.train.worker_setup import worker_config
from trainers.worker import LocalPolicyWorker, finalize_metrics


@dataclass
class ColdStart:
    """What SFT takes from the run around it.

    model: the policy module (trained in place); engine: the policy's rollout engine (rejection sampling;
    its executor and config also play the oracle's episodes); generator: synced to the trained weights at
    the end; log(metrics, step): one metrics row of an SFT step; stop_requested: a stop signal arrived.
    """

    cfg: ExperimentConfig
    model: Any
    tokenizer: Any
    engine: RolloutEngine
    generator: Generator
    display: TrainDisplay
    run_dir: Path
    log: Callable[[dict[str, Any], int], None]
    stop_requested: Callable[[], bool]


def sft_episodes(run: ColdStart) -> tuple[list[Trajectory], dict[str, float]]:
    """The episodes to imitate for `cfg.sft`, and a report of how many were kept."""
    from agentrl.rollout.setup import section_tasks

    cfg, s = run.cfg, run.cfg.sft
    seed = derive_seed(cfg.seed, "sft")
    if s.source == "trajectories":
        assert s.path is not None
        episodes = read_trajectories(s.path)
        return keep_successes(episodes, s.min_reward)
    tasks = section_tasks(cfg, s.data)
    if s.source == "oracle":
        run.display.note(f"playing {len(tasks)} oracle episodes through the rollout engine")
        oracle = OracleGenerator(run.tokenizer, tasks)
        engine = RolloutEngine(oracle, run.tokenizer, run.engine.executor, run.engine.config)
        return keep_successes(oracle_episodes(engine, tasks, seed), s.min_reward)
    run.display.note(f"rejection sampling: {len(tasks)} tasks x {s.samples_per_task} episodes")
    run.display.start_rollout(len(tasks) * s.samples_per_task)
    episodes = run.engine.run(tasks, s.samples_per_task, seed=seed, on_finish=run.display.episodes_done)
    return keep_successes(episodes, s.min_reward, s.difficulty)


def run_sft(run: ColdStart) -> None:
    """Train `run.model` on `sft_episodes` for `sft.steps` steps of `sft.batch_size` episodes."""
    cfg, s = run.cfg, run.cfg.sft
    episodes, report = sft_episodes(run)
    if not episodes:
        raise ValueError(
            f"SFT has no episodes: none of {int(report['sft/episodes_sampled'])} reached sft.min_reward="
            f"{s.min_reward}"
        )
    run.display.note(
        f"SFT on {len(episodes)} episodes ({int(report['sft/tasks_kept'])} tasks) for {s.steps} steps"
    )
    if cfg.output.save_trajectories:
        write_trajectories(run.run_dir / "trajectories" / "sft.jsonl", episodes, run.tokenizer)
    worker = LocalPolicyWorker(run.model, worker_config(cfg))
    pad = pad_token_id(run.tokenizer)
    order = _order(len(episodes), s.steps * s.batch_size, cfg.seed)
    run.display.start_phase("sft", s.steps)
    for step in range(1, s.steps + 1):
        if run.stop_requested():
            raise KeyboardInterrupt  # SFT is not resumable mid-way: the run stops without saving
        rows = order[(step - 1) * s.batch_size : step * s.batch_size]
        sums = worker.forward_backward(sft_batch([episodes[i] for i in rows], pad))
        metrics = {**finalize_metrics(sums), **worker.optim_step(), **(report if step == 1 else {})}
        metrics = {k: v for k, v in metrics.items() if not k.startswith(("ratio/", "kl/", "logprob_gap"))}
        run.log(metrics, step)
        run.display.end_step(step, s.steps, {"sft/nll": metrics.get("sft/nll", 0.0)}, prefix="sft step")
    worker.sync_weights(run.generator)


def _order(n: int, total: int, seed: int) -> list[int]:
    """`total` indices cycling through fresh permutations of range(n)."""
    out: list[int] = []
    epoch = 0
    while len(out) < total:
        gen = torch.Generator().manual_seed(derive_seed(seed, "sft-order", epoch))
        out.extend(torch.randperm(n, generator=gen).tolist())
        epoch += 1
    return out[:total]
