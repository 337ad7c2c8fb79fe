"""`agentrl train`: the RL loop, with an optional SFT cold start and held-out evaluations around it.

One RL step, top to bottom (`Trainer.rl_step`):
1. the next `trainer.batch_size` tasks -> `rollout.group_size` episodes each (fresh seed per step and refill),
   dynamic sampling and finish-reason filtering (`agentrl.train.sampling`);
2. advantages of the recipe's scheme (FADE advances its state), per-turn credit when configured;
3. a no-grad statistics pass when the recipe needs one: old log-probs recomputed for more than one optimizer
   step per batch, token-filter statistics, reference log-probs for a KL penalty;
4. `epochs` x `minibatches` optimizer steps, each over whole groups with the minibatch's global denominators;
5. the generator gets the new weights; metrics are logged; evaluation and checkpoints on their intervals.

Everything random is seeded from the run seed and the step, and the checkpoint holds the data position, the
FADE state, the dynamic-sampling buffer and every RNG, so a resumed run continues exactly where a killed one
stopped. SIGINT/SIGTERM finish the current step and save; a second one abandons the step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentrl.core.config import to_dict
from agentrl.core.generator import Generator
from agentrl.core.seeding import derive_seed, seed_everything
from agentrl.core.types import Trajectory
from agentrl.evaluation.evaluator import EvalSettings, evaluate, headline, summarize
from agentrl.evaluation.paired import PairedDifference, paired_difference
from agentrl.experiment import ExperimentConfig
from agentrl.metrics import MetricsWriter, read_metrics
from agentrl.rollout.io import write_trajectories
from agentrl.train import run_state
from agentrl.train.checkpoint import capture_rng, restore_rng
from agentrl.train.display import TrainDisplay, print_summary
from agentrl.train.recipe import Recipe, check_config
from agentrl.train.run_state import TrainState
from agentrl.train.sampling import StepSampler
from agentrl.train.step_batch import (
    StepTensors,
    behaviour_old_logprobs,
    needs_stats,
    pad_token_id,
    policy_minibatch,
    step_tensors,
)
from agentrl.train.task_loader import TaskLoader
from agentrl.train.update_metrics import UpdateTotals
from agentrl.train.worker_setup import worker_config
from trainers import diagnostics
from trainers.advantages import FadeState, scheme_inputs
from trainers.batching import split_minibatches
from trainers.filters import FilterInputs
from trainers.model_setup import TrainableSpec, parameter_counts, prepare_for_training
from trainers.worker import LocalPolicyWorker, PolicyWorker


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (too many non-finite steps); the message says why and what was kept."""


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    checkpoint: Path | None
    evals: list[dict[str, Any]] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    interrupted: bool = False


class StopFlag:
    """SIGINT/SIGTERM once: finish the step and save; twice: abandon the step (KeyboardInterrupt)."""

    def __init__(self, on_first: Any = None) -> None:
        self.requested = False
        self.on_first = on_first

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.on_first is not None:
            self.on_first()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class Trainer:
    """Wires a config into a run: policy, worker, engine, data, evaluation, logging and checkpoints.

    Args:
        cfg: the experiment config.
        source: where it came from (named in errors).
        resume: None (a new run), `auto` or a path (see `run_state.find_resume_checkpoint`).
        force: resume even when math-changing config fields differ from the checkpoint's.
        display: progress display (default: a new one on stdout).
        stop_after: end the process after this many RL steps of this invocation, as a kill would (tests).
        sft_only: run the cold start only (evaluations and SFT), save a checkpoint and stop (`agentrl sft`);
            `agentrl train --resume` on that run continues with RL.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        source: str = "<config>",
        resume: str | None = None,
        force: bool = False,
        display: TrainDisplay | None = None,
        stop_after: int | None = None,
        sft_only: bool = False,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.sft_only = sft_only
        self._owns_ray = False
        self.worker: PolicyWorker | None = None
        self.generator: Generator | None = None
        self.executor: Any = None
        self.writer: Any = None
        self.recipe: Recipe = check_config(cfg, source)
        self.display = display or TrainDisplay()
        self.stop_after = stop_after
        self.checkpoint: Path | None = None
        self.resume_from: Path | None = None
        self.state = TrainState()
        self.buffer: list[Any] = []
        if resume is not None:
            self.resume_from = run_state.find_resume_checkpoint(resume, cfg.output.dir)
            state, old_config, self.buffer = run_state.read_state(self.resume_from)
            differences = run_state.check_resume_config(old_config, cfg, force)
            for line in differences:
                self.display.note(f"[yellow]resuming despite a config change[/]: {line}")
            self.state = state
            self.run_dir = run_state.run_dir_of(self.resume_from)
            run_state.truncate_metrics(self.run_dir / "metrics.jsonl", self.state.step)
        else:
            self.run_dir = run_state.new_run_dir(cfg.output.dir)
        self.comparison: list[PairedDifference] = []
        self.comparison_labels = ("", "")
        self.flag = StopFlag(on_first=self._announce_stop)
        self._snapshot: dict[str, Any] | None = None

    def _announce_stop(self) -> None:
        self.display.note("[yellow]stop requested[/]: finishing this step, then saving (again to abandon it)")

    # ----------------------------------------------------------------- set-up

    def build(self) -> None:
        from agentrl.rollout.setup import (
            apply_process_settings,
            build_engine,
            build_generator_for,
            env_kwargs_for,
            load_policy,
            section_tasks,
            slow_bf16_warning,
        )

        cfg = self.cfg
        apply_process_settings(cfg)
        seed_everything(cfg.seed)
        if cfg.trainer.num_workers > 0:
            from agentrl.train.cluster import connect

            self.display.note(f"connecting to Ray for {cfg.trainer.num_workers} policy workers")
            self._owns_ray = connect(cfg, self.source)
        self.display.note(f"loading {cfg.model.name}")
        if warning := slow_bf16_warning(cfg):
            self.display.note(f"[yellow]warning[/]: {warning}")
        model, self.tokenizer = load_policy(cfg, trains_here=True)
        spec = TrainableSpec.from_section(cfg.finetune)
        after_sft = cfg.sft.enabled and self.state.phase != "sft"
        with_reference = self.recipe.loss.kl_coef != 0 and cfg.finetune.mode == "full" and not cfg.sft.enabled
        self.reference: Any = None
        if model is None:  # vLLM engines load their own weights; the workers load theirs in their actors
            from agentrl.train.cluster import TrainableModel

            self.model: Any = None
            self._model_source: Any = TrainableModel(cfg.model.name, cfg.model.dtype, spec)
            if with_reference:
                self.reference = TrainableModel(cfg.model.name, cfg.model.dtype, spec, reference=True)
        else:
            self.model = self._model_source = prepare_for_training(model, spec)
            counts = parameter_counts(self.model)
            self.display.note(
                f"training {counts['params/trainable']:,} of {counts['params/total']:,} parameters "
                f"({cfg.finetune.mode}, layers: {cfg.finetune.train_layers})"
            )
            if with_reference:
                self.reference, _ = load_policy(cfg, trains_here=True)
                self.reference.requires_grad_(False)
            if after_sft and self.recipe.loss.kl_coef != 0:
                self.reference = self._saved_reference()
        self.display.note(f"loading tasks ({cfg.data.dataset})")
        kwargs = env_kwargs_for(cfg)
        self.tasks = section_tasks(cfg, cfg.data, kwargs)
        self.display.note("building the environment and retriever")
        if cfg.rollout.backend == "vllm" and cfg.trainer.num_workers > 0:
            from agentrl.train.cluster import launch_vllm_engines

            self.worker = self._rl_worker()
            v = cfg.rollout.vllm
            self.display.note(f"starting {v.num_engines} vLLM engines ({v.placement})")
            self.generator = launch_vllm_engines(cfg, self.worker, self.run_dir / "adapters")
        else:
            if cfg.rollout.backend == "vllm":
                self.display.note("starting the vLLM engine")
            self.generator = build_generator_for(cfg, self.model, self.tokenizer, self.run_dir / "adapters")
        self.engine, self.executor = build_engine(cfg, self.generator, self.tokenizer)
        self.loader = TaskLoader(self.tasks, cfg.seed)
        t = cfg.trainer
        self.sampler = StepSampler(
            self.engine, self.loader, t.batch_size, cfg.rollout.group_size, cfg.seed,
            dynamic_sampling=self.recipe.dynamic_sampling, max_refill_rounds=t.max_refill_rounds,
            exclude_finish_reasons=t.exclude_finish_reasons, oversample=t.oversample,
        )  # fmt: skip
        self.eval_tasks = None
        if cfg.eval.enabled:
            self.eval_tasks = section_tasks(cfg, cfg.eval.data, kwargs)
        if self.worker is None and (self.state.phase != "sft" or cfg.trainer.num_workers == 0):
            self.worker = self._rl_worker()  # a worker group waits for the weights SFT leaves
        if cfg.rollout.backend == "vllm" and cfg.trainer.num_workers == 0:
            self.worker.sync_weights(self.generator)  # the engine samples the trainer's exact weights
        self.fade = FadeState()
        wandb_project = cfg.output.wandb_project if cfg.output.wandb else None
        self.writer = MetricsWriter(
            self.run_dir, tensorboard=cfg.output.tensorboard, wandb_project=wandb_project,
            config=to_dict(cfg), wandb_id=self.state.wandb_id,
        )  # fmt: skip
        self.state.wandb_id = self.writer.wandb_run_id

    def _keep_reference(self) -> None:
        """After the SFT cold start, a KL penalty's reference is the SFT'd policy: its trainable tensors are
        kept (and written once to the run directory, for a resumed run)."""
        if self.recipe.loss.kl_coef == 0:
            return
        from trainers.model_setup import trainable_snapshot

        self.reference = trainable_snapshot(self.model)
        run_state.save_reference(self.run_dir, self.reference)

    def _saved_reference(self) -> Any:
        """The SFT'd reference of a resumed run (see `_keep_reference`)."""
        reference = run_state.load_reference(self.run_dir)
        if reference is None:
            self.display.note(
                f"[yellow]no SFT reference in {self.run_dir}[/]: the KL penalty's reference is the base model"
            )
            if self.cfg.finetune.mode == "full":
                from agentrl.rollout.setup import load_policy

                reference, _ = load_policy(self.cfg, trains_here=True)
                reference.requires_grad_(False)
        return reference

    def _rl_worker(self) -> PolicyWorker:
        """The RL phase's worker: in-process, or (`trainer.num_workers` >= 1) a Ray worker group that starts
        from the current weights of `self.model` (after SFT, when there was one). A previous group is closed
        first."""
        cfg, t = self.cfg, self.cfg.trainer
        config = worker_config(cfg, self.recipe)
        if t.num_workers == 0:
            return LocalPolicyWorker(self.model, config, reference=self.reference)
        from trainers.ray_worker import RayWorkerGroup

        self._close_worker()
        self.display.note(f"starting {t.num_workers} policy workers on Ray")
        v = cfg.rollout.vllm
        share = 0.5 if cfg.rollout.backend == "vllm" and v.placement == "colocated" else 1.0
        return RayWorkerGroup(
            self._model_source, config, t.num_workers, reference=self.reference, gpu_share=share,
            retain_freed_memory=cfg.retain_freed_memory,
        )  # fmt: skip

    def _generating(self) -> contextlib.AbstractContextManager[object]:
        """Colocated vLLM engines hold their GPU memory only while a rollout or evaluation runs."""
        assert self.generator is not None
        return self.generator.awake()

    def _close_worker(self) -> None:
        if self.worker is not None:
            self.worker.close()

    def _restore(self) -> None:
        assert self.resume_from is not None
        self.display.note(f"resuming from {self.resume_from}")
        if self.state.phase != "sft":
            self.worker.load(self.resume_from)
            self.worker.sync_weights(self.generator)
        self.loader.load_state_dict(self.state.loader)
        self.sampler.load_state_dict(self.buffer)
        if self.state.fade is not None:
            self.fade = FadeState.from_dict(self.state.fade)
        run_state.restore_rng_of(self.resume_from)
        self.checkpoint = self.resume_from

    # ----------------------------------------------------------------- the run

    def run(self) -> TrainResult:
        cfg = self.cfg
        run_state.write_config(self.run_dir, cfg)
        self.display.note(f"run directory {self.run_dir}")
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        interrupted = False
        try:
            with self.display, self.flag.installed():
                try:
                    if self.resume_from is not None:
                        self._restore()
                    if self.state.phase == "sft":
                        self._cold_start()
                    if self.sft_only:
                        self._save()
                        return self._result(interrupted=False)
                    self.display.start_phase("rl", cfg.trainer.steps, done=self.state.step)
                    steps_this_run = 0
                    while self.state.step < cfg.trainer.steps:
                        if self.flag.requested:
                            interrupted = True
                            break
                        self.rl_step(self.state.step + 1)
                        steps_this_run += 1
                        if self.stop_after is not None and steps_this_run >= self.stop_after:
                            return self._result(interrupted=True)
                    if not interrupted:
                        self.state.phase = "done"
                        if self.eval_tasks is not None:
                            self._evaluate("after RL")
                    self._save()
                except KeyboardInterrupt:
                    interrupted = True
                    self._abandon()
        finally:
            self.close()
        return self._result(interrupted)

    def close(self) -> None:
        """Flush the metrics, shut the env executor and the worker group down, release Ray (what `run` does
        on its way out)."""
        if self.writer is not None:
            self.writer.close()
        if self.executor is not None:
            self.executor.close()
        self._close_worker()
        if self.generator is not None:
            self.generator.close()
        if self._owns_ray:
            from agentrl.rollout.executors import release_ray

            self._owns_ray = False
            release_ray()

    def _abandon(self) -> None:
        """A second stop signal mid-step: save the state of the last finished step if this step has not
        changed the weights yet; otherwise keep the last checkpoint as it is."""
        snapshot = self._snapshot
        if snapshot is None or self.worker.steps != snapshot["worker_steps"] or self.state.phase != "rl":
            kept = self.checkpoint or "none"
            self.display.note(f"[yellow]step abandoned mid-update[/]: nothing saved; last checkpoint: {kept}")
            return
        self.loader.load_state_dict(snapshot["loader"])
        self.sampler.load_state_dict(snapshot["buffer"])
        self.fade = FadeState.from_dict(snapshot["fade"])
        restore_rng(snapshot["rng"])
        self._save()
        step = self.state.step
        self.display.note(f"[yellow]step {step + 1} abandoned[/]; saved the state after step {step}")

    def _take_snapshot(self) -> dict[str, Any]:
        return {
            "loader": self.loader.state_dict(), "buffer": self.sampler.state_dict(),
            "fade": self.fade.to_dict(), "rng": capture_rng(), "worker_steps": self.worker.steps,
        }  # fmt: skip

    def _result(self, interrupted: bool) -> TrainResult:
        plots: list[Path] = []
        if self.cfg.output.plots:
            from agentrl.train.plots import plot_training

            plots = plot_training(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "plots")
        rows = [r for r in read_metrics(self.run_dir / "metrics.jsonl") if r.get("phase") == "rl"]
        curve = [(int(r["step"]), float(r["reward/mean"])) for r in rows if "reward/mean" in r]
        print_summary(
            self.display.console, self.run_dir, self.state.evals, curve, self.checkpoint, plots,
            comparison=self.comparison, comparison_labels=self.comparison_labels,
        )  # fmt: skip
        return TrainResult(self.run_dir, self.state, self.checkpoint, self.state.evals, plots, interrupted)

    def _save(self) -> None:
        self.state.loader = self.loader.state_dict()
        self.state.fade = self.fade.to_dict()
        self.checkpoint = run_state.save_run_checkpoint(
            self.run_dir, self.state, self.worker, self.tokenizer, self.cfg, self.sampler.state_dict(),
            self.cfg.trainer.keep_last,
        )  # fmt: skip

    def _log(self, metrics: dict[str, Any], step: int, phase: str) -> None:
        """One metrics row; SFT keys get an `sft/` prefix, and every phase shares one increasing global
        step for TensorBoard / W&B (SFT steps first, then RL steps)."""
        if phase == "sft":
            metrics = {k if k.startswith("sft/") else f"sft/{k}": v for k, v in metrics.items()}
            self.state.sft_steps = max(self.state.sft_steps, step)
            global_step = step
        else:
            global_step = self.state.sft_steps + step
        self.writer.log({"phase": phase, **metrics}, step=step, global_step=global_step)

    # ----------------------------------------------------------------- evaluation and SFT

    def _evaluate(self, label: str) -> dict[str, float]:
        assert self.eval_tasks is not None
        e = self.cfg.eval
        self.display.note(f"evaluating {label}: {len(self.eval_tasks)} held-out tasks x {e.samples}")
        self.display.start_rollout(len(self.eval_tasks) * e.samples)
        settings = EvalSettings.from_config(self.cfg)
        with self._generating():
            result = evaluate(self.engine, self.eval_tasks, settings, on_finish=self.display.episodes_done)
        scores = headline(result.metrics)
        row = {"label": label, **scores, "episodes": result.metrics.get("eval/episodes", 0.0)}
        self.state.evals.append(row)
        metrics = {**result.metrics, "eval/label": label}
        run_state.save_eval_scores(self.run_dir, label, result.questions)
        if label == "after RL":
            metrics.update(self._compare_with_rl_start())
        self._log(metrics, self.state.step, "eval")
        self.display.note(f"{label}: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        return result.metrics

    def _compare_with_rl_start(self) -> dict[str, float]:
        """The paired comparison of the held-out questions before and after RL (`agentrl.evaluation.paired`),
        when the policy RL started from was evaluated on them too."""
        start = "after SFT" if self.cfg.sft.enabled else "before RL"
        before, after = (
            run_state.load_eval_scores(self.run_dir, start),
            run_state.load_eval_scores(self.run_dir, "after RL"),
        )
        if before is None or after is None or before["ids"] != after["ids"]:
            return {}
        seed = derive_seed(self.cfg.seed, "paired")
        self.comparison = [
            paired_difference(name, before["scores"][name], after["scores"][name], seed=seed)
            for name in after["scores"] if name in before["scores"]
        ]  # fmt: skip
        self.comparison_labels = (start, "after RL")
        return {
            f"compare/{c.name}_{key}": float(getattr(c, key))
            for c in self.comparison for key in ("difference", "ci_low", "ci_high", "p_one_sided")
        }  # fmt: skip

    def _cold_start(self) -> None:
        """Evaluate the base model, run SFT when enabled, evaluate again, checkpoint."""
        cfg = self.cfg
        if self.eval_tasks is not None and cfg.eval.before_training:
            self._evaluate("before SFT" if cfg.sft.enabled else "before RL")
        if cfg.sft.enabled:
            from agentrl.train.sft import ColdStart, run_sft

            assert self.generator is not None
            run_sft(ColdStart(
                self.cfg, self.model, self.tokenizer, self.engine, self.generator, self.display, self.run_dir,
                log=lambda metrics, step: self._log(metrics, step, "sft"),
                stop_requested=lambda: self.flag.requested,
            ))  # fmt: skip
            if self.eval_tasks is not None:
                self._evaluate("after SFT")
            self._keep_reference()
        self.state.phase = "rl"
        if self.worker is None or cfg.sft.enabled:  # vLLM engines keep the group they are colocated with
            self.worker = self._rl_worker()
        if cfg.sft.enabled and not self.sft_only:
            self._save()

    # ----------------------------------------------------------------- one RL step

    def rl_step(self, step: int) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.trainer
        self._snapshot = self._take_snapshot()
        started = time.perf_counter()
        self.display.start_rollout(t.batch_size * cfg.rollout.group_size)
        with self._generating():
            sampled = self.sampler.sample(
                step, self.state.policy_version, on_finish=self.display.episodes_done
            )
        trajectories = sampled.trajectories
        rollout_s = time.perf_counter() - started
        _stop_if_every_episode_failed(step, sampled.sampled)
        metrics = self._rollout_metrics(sampled)
        if cfg.output.save_trajectories and sampled.sampled:
            path = self.run_dir / "trajectories" / f"step-{step:06d}.jsonl"
            write_trajectories(path, sampled.sampled, self.tokenizer)
        update_started = time.perf_counter()
        if trajectories:
            metrics.update(self._update(step, trajectories))
        else:
            metrics["update/skipped_no_groups"] = 1.0
            self.display.note(f"step {step}: no group with a learning signal; no update")
        update_s = time.perf_counter() - update_started
        self.worker.advance_schedule()
        self.worker.sync_weights(self.generator)
        self.state.policy_version = self.worker.steps
        self.state.step = step
        metrics.update({
            "perf/rollout_s": rollout_s, "perf/update_s": update_s,
            "perf/step_s": time.perf_counter() - started,
            "perf/tokens_per_s": sampled.stats.sampled_tokens / rollout_s if rollout_s > 0 else 0.0,
            "perf/policy_version": float(self.state.policy_version),
        })  # fmt: skip
        self._log(metrics, step, "rl")
        self.display.end_step(step, t.steps, metrics)
        if t.eval_every and step % t.eval_every == 0 and step < t.steps and self.eval_tasks is not None:
            self._evaluate(f"step {step}")
        if t.save_every and step % t.save_every == 0 and step < t.steps:
            self._save()
        return metrics

    def _rollout_metrics(self, sampled: Any) -> dict[str, Any]:
        episodes = sampled.sampled
        out: dict[str, Any] = {}
        if episodes:
            rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float64)
            groups = torch.tensor([e.group_id for e in episodes])
            out.update(diagnostics.reward_stats(rewards, groups))
            out.update(
                diagnostics.sampled_entropy([e.logprobs for e in episodes], [e.loss_mask for e in episodes])
            )
            out.update(summarize(episodes, "episode/"))
            for reason, n in Counter(e.finish_reason for e in episodes).items():
                out[f"finish/{reason}"] = n / len(episodes)
            versions = [e.policy_version for e in sampled.trajectories] or [self.state.policy_version]
            out["episode/policy_version_min"] = float(min(versions))
        for reason, n in sampled.excluded.items():
            out[f"excluded/{reason}"] = float(n)
        out["dynamic/dropped_groups"] = float(sampled.dropped_groups)
        out["dynamic/rounds"] = float(sampled.rounds)
        out["dynamic/buffered_groups"] = float(len(self.sampler.buffer))
        out["dynamic/train_groups"] = float(len(sampled.groups))
        out["perf/sampled_tokens"] = float(sampled.stats.sampled_tokens)
        for name, total in getattr(self.executor, "counters", {}).items():
            out[f"rollout/{name}"] = float(total)
        return out

    def _update(self, step: int, trajectories: list[Trajectory]) -> dict[str, Any]:
        """Advantages, the statistics pass when the recipe needs one, then `epochs` x `minibatches`
        optimizer steps over whole groups."""
        t, preset = self.cfg.trainer, self.recipe.preset
        pad = pad_token_id(self.tokenizer)
        st = step_tensors(trajectories, preset, pad, self.fade, t.turn_credit, t.turn_gamma)
        out = self._advantage_metrics(st)
        stats = self._statistics(st, out)
        old, behaviour = st.tensors["old_logprobs"], None
        if (t.epochs > 1 or t.minibatches > 1) and stats is not None:
            if preset.loss.offpolicy != "none":  # the correction weighs every row toward the recomputed π_old
                old, behaviour = stats["logprobs"], old
            else:
                versions = torch.tensor([e.policy_version for e in trajectories])
                old, stale = behaviour_old_logprobs(stats["logprobs"], old, versions, self.worker.steps)
                out["update/stale_rows"] = float(stale.sum())
        head_before = self._head_weight() if t.log_rank1 else None
        groups = int(torch.unique(st.tensors["group_ids"]).numel())
        minibatches = math.gcd(groups, t.minibatches)
        if minibatches != t.minibatches:
            out["update/minibatches"] = float(minibatches)
        totals = UpdateTotals()
        for epoch in range(t.epochs):
            gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "minibatches", step, epoch))
            for index, rows in enumerate(split_minibatches(st.tensors["group_ids"], minibatches, gen)):
                batch, filtered = policy_minibatch(st, rows, preset, old, stats, behaviour)
                fb = self.worker.forward_backward(batch)
                if epoch == 0 and index == 0 and stats is None:
                    out.update(self._first_gap(fb, st.tensors, rows))
                result = self.worker.optim_step()
                self._check_finite(step, epoch, index, fb, result)
                totals.add(fb, result, filtered)
        out.update(totals.finalize(t.epochs * minibatches, preset))
        if head_before is not None:
            out["head/rank1_fraction"] = diagnostics.rank1_fraction(head_before, self._head_weight())
        return out

    def _advantage_metrics(self, st: StepTensors) -> dict[str, Any]:
        """Gradient masses and the spread of the step's advantages (and the scheme state's, when it has
        one)."""
        rewards = st.tensors["rewards"].double()
        out: dict[str, Any] = {
            **diagnostics.gradient_masses(st.advantages, rewards, st.tensors["group_ids"]),
            "adv/nonzero_fraction": float((st.advantages != 0).double().mean()),
            "adv/abs_mean": float(st.advantages.abs().mean()),
        }
        if "state" in scheme_inputs(self.recipe.preset.scheme):
            out.update(diagnostics.fade_stats(self.fade))
        return out

    def _statistics(self, st: StepTensors, out: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """The no-grad pass over the whole batch when the recipe needs one (`needs_stats`), with the
        sampler gap, token taxonomy and covariance percentiles it measures added to `out`."""
        t, preset, tensors = self.cfg.trainer, self.recipe.preset, st.tensors
        if not needs_stats(preset, t.epochs, t.minibatches):
            return None
        batch = {k: tensors[k] for k in ("input_ids", "attention_mask", "loss_mask", "prompt_lengths")}
        stats = self.worker.compute_stats(batch, with_reference=preset.loss.kl_coef != 0)
        out.update(_gap(stats["logprobs"], tensors["old_logprobs"], tensors["loss_mask"]))
        inputs = FilterInputs(
            tensors["loss_mask"], st.token_advantages.float(), stats["logprobs"], stats["entropy"],
            stats["collision"], tensors["group_ids"],
        )  # fmt: skip
        out.update(diagnostics.taxonomy_fractions(inputs))
        out.update(diagnostics.covariance_percentiles(inputs))
        return stats

    def _first_gap(self, fb: dict[str, float], tensors: dict[str, Any], rows: list[int]) -> dict[str, float]:
        """The sampler-vs-trainer gap from the first minibatch's forward (at the old weights); when that
        minibatch trained no row (no advantage anywhere), a no-grad pass over its first group measures it."""
        if fb.get("tokens"):
            return {"logprob_gap/mean": fb["gap_sum"] / fb["tokens"], "logprob_gap/max": fb["gap_max"]}
        group = tensors["group_ids"][rows[0]]
        probe = [r for r in rows if tensors["group_ids"][r] == group]
        keys = ("input_ids", "attention_mask", "loss_mask", "prompt_lengths")
        batch = {k: tensors[k][probe] for k in keys}
        stats = self.worker.compute_stats(batch)
        return _gap(stats["logprobs"], tensors["old_logprobs"][probe], tensors["loss_mask"][probe])

    def _head_weight(self) -> torch.Tensor:
        from trainers.model_setup import decoder_and_head

        return decoder_and_head(self.model)[1].weight.detach().clone()

    def _check_finite(
        self, step: int, epoch: int, index: int, fb: dict[str, float], result: dict[str, float]
    ) -> None:
        if not result["optim/skipped"]:
            self.state.nonfinite_streak = 0
            return
        self.state.nonfinite_streak += 1
        where = f"step {step}, epoch {epoch}, minibatch {index}"
        if fb.get("nonfinite_first_min") is not None:
            where += f", micro-batch {int(fb['nonfinite_first_min'])}"
        self.display.note(f"[red]non-finite loss or gradient[/] at {where}: optimizer step skipped")
        limit = self.cfg.trainer.max_nonfinite_steps
        if self.state.nonfinite_streak >= limit:
            raise TrainingStopped(
                f"{self.state.nonfinite_streak} consecutive optimizer steps had a NaN/inf loss or gradient "
                f"(last at {where}); stopping. Checkpoints already written are untouched"
                + (f" (latest: {self.checkpoint})" if self.checkpoint else "")
                + ". Lower trainer.learning_rate, check the rewards, or raise trainer.max_nonfinite_steps."
            )


def _stop_if_every_episode_failed(step: int, episodes: list[Any]) -> None:
    """A step whose every episode ended in an env error has nothing to train on: stop the run, naming it."""
    if episodes and all(t.finish_reason == "error" for t in episodes):
        first = episodes[0].info.get("error", "no message")
        raise TrainingStopped(
            f"step {step}: every one of the {len(episodes)} episodes ended in an env error, so there is "
            f"nothing to train on; the first: {first}. Checkpoints already written are untouched."
        )


def _gap(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Sampler-vs-trainer log-prob gap over agent tokens (mean and max |Δ|)."""
    m = mask.bool()
    diff = (trainer_logp[m].double() - sampler_logp[m].double()).abs()
    diff = diff[torch.isfinite(diff)]
    if diff.numel() == 0:
        return {"logprob_gap/mean": 0.0, "logprob_gap/max": 0.0}
    return {"logprob_gap/mean": float(diff.mean()), "logprob_gap/max": float(diff.max())}


def train(
    cfg: ExperimentConfig,
    source: str = "<config>",
    resume: str | None = None,
    force: bool = False,
    display: TrainDisplay | None = None,
    stop_after: int | None = None,
    sft_only: bool = False,
) -> TrainResult:
    """Run (or resume) training for `cfg`; see `Trainer`."""
    return Trainer(cfg, source, resume, force, display, stop_after, sft_only).run()
