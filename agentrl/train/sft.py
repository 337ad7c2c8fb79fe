"""Supervised fine-tuning on agent tokens: the cold start before RL (`sft.enabled`) and `agentrl sft`.

The loss is the mean negative log-likelihood of the loss-masked tokens, so SFT trains exactly the tokens RL
samples (prompt, observation and template tokens carry no loss), with the same worker, batches and
checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch

from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.io import read_trajectories, write_trajectories
from agentrl.seeding import derive_seed
from agentrl.train.sft_data import OracleGenerator, keep_successes, oracle_episodes
from agentrl.train.step_batch import sft_batch
from agentrl.types import Trajectory
from trainers.optim import OptimConfig
from trainers.worker import LocalPolicyWorker, WorkerConfig, finalize_metrics


def sft_episodes(trainer: Any) -> tuple[list[Trajectory], dict[str, float]]:
    """The episodes to imitate for `trainer.cfg.sft`, and a report of how many were kept."""
    from agentrl.rollout.setup import section_tasks

    cfg, s = trainer.cfg, trainer.cfg.sft
    seed = derive_seed(cfg.seed, "sft")
    if s.source == "trajectories":
        assert s.path is not None
        episodes = read_trajectories(s.path)
        return keep_successes(episodes, s.min_reward)
    tasks = section_tasks(cfg, s.data)
    if s.source == "oracle":
        trainer.display.note(f"playing {len(tasks)} oracle episodes through the rollout engine")
        oracle = OracleGenerator(trainer.tokenizer, tasks)
        engine = RolloutEngine(oracle, trainer.tokenizer, trainer.executor, trainer.engine.config)
        return keep_successes(oracle_episodes(engine, tasks, seed), s.min_reward)
    trainer.display.note(f"rejection sampling: {len(tasks)} tasks x {s.samples_per_task} episodes")
    trainer.display.start_rollout(len(tasks) * s.samples_per_task)
    done = trainer.display.episodes_done
    episodes = trainer.engine.run(tasks, s.samples_per_task, seed=seed, on_finish=done)
    return keep_successes(episodes, s.min_reward, s.difficulty)


def run_sft(trainer: Any) -> None:
    """Train `trainer.model` on `sft_episodes` for `sft.steps` steps of `sft.batch_size` episodes."""
    cfg, s = trainer.cfg, trainer.cfg.sft
    episodes, report = sft_episodes(trainer)
    if not episodes:
        raise ValueError(
            f"SFT has no episodes: none of {int(report['sft/episodes_sampled'])} reached sft.min_reward="
            f"{s.min_reward}"
        )
    trainer.display.note(
        f"SFT on {len(episodes)} episodes ({int(report['sft/tasks_kept'])} tasks) for {s.steps} steps"
    )
    if cfg.output.save_trajectories:
        write_trajectories(trainer.run_dir / "trajectories" / "sft.jsonl", episodes, trainer.tokenizer)
    optim = OptimConfig(
        learning_rate=s.learning_rate, total_steps=s.steps, warmup_ratio=s.warmup_ratio,
        max_grad_norm=s.max_grad_norm, weight_decay=cfg.trainer.weight_decay,
    )  # fmt: skip
    t = cfg.trainer
    config = WorkerConfig(
        optim, micro_batch_tokens=t.micro_batch_tokens, chunk_size=t.logprob_chunk_size,
        share_prompts=t.share_prompts,
    )  # fmt: skip
    worker = LocalPolicyWorker(trainer.model, config)
    pad = trainer.tokenizer.pad_token_id if trainer.tokenizer.pad_token_id is not None else 0
    order = _order(len(episodes), s.steps * s.batch_size, cfg.seed)
    trainer.display.start_phase("sft", s.steps)
    for step in range(1, s.steps + 1):
        if trainer.flag.requested:
            raise KeyboardInterrupt  # SFT is not resumable mid-way: the run stops without saving
        rows = order[(step - 1) * s.batch_size : step * s.batch_size]
        sums = worker.forward_backward(sft_batch([episodes[i] for i in rows], pad))
        metrics = {**finalize_metrics(sums), **worker.optim_step(), **(report if step == 1 else {})}
        metrics = {k: v for k, v in metrics.items() if not k.startswith(("ratio/", "kl/", "logprob_gap"))}
        trainer._log(metrics, step, "sft")
        trainer.display.end_step(step, s.steps, {"sft/nll": metrics.get("sft/nll", 0.0)}, prefix="sft step")
    worker.sync_weights(trainer.generator)


def _order(n: int, total: int, seed: int) -> list[int]:
    """`total` indices cycling through fresh permutations of range(n)."""
    out: list[int] = []
    epoch = 0
    while len(out) < total:
        gen = torch.Generator().manual_seed(derive_seed(seed, "sft-order", epoch))
        out.extend(torch.randperm(n, generator=gen).tolist())
        epoch += 1
    return out[:total]
