"""One step's episodes: roll out the next tasks, drop episodes that must not train, and (DAPO's dynamic
sampling) drop groups without signal and refill the batch, keeping surplus groups for the next step.

Each rollout call gets a seed derived from the run seed, the step and the refill round, so every step draws
fresh tokens and a resumed run draws exactly the ones an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agentrl.core.seeding import derive_seed
from agentrl.core.types import Trajectory
from agentrl.rollout.engine import RolloutEngine, RolloutStats
from agentrl.train.task_loader import TaskLoader

ALWAYS_EXCLUDED = ("error",)


@dataclass
class SampledStep:
    """What a step trains on, and what it saw.

    groups: the training groups (each a list of episodes of one task, group ids renumbered 0..k-1).
    sampled: every episode rolled out this step (metrics, saved trajectories).
    excluded: episodes left out of the loss by finish reason (errors always), by reason.
    dropped_groups: groups dropped by dynamic sampling for equal rewards.
    rounds: rollout calls this step (1 + refills).
    stats: summed rollout timings and token counts.
    """

    groups: list[list[Trajectory]]
    sampled: list[Trajectory]
    excluded: Counter[str] = field(default_factory=Counter)
    dropped_groups: int = 0
    rounds: int = 0
    stats: RolloutStats = field(default_factory=RolloutStats)

    @property
    def trajectories(self) -> list[Trajectory]:
        return [t for g in self.groups for t in g]


def _add_stats(total: RolloutStats, part: RolloutStats) -> None:
    for f in dataclasses.fields(RolloutStats):
        setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))


def has_signal(group: list[Trajectory]) -> bool:
    """At least two episodes whose rewards differ."""
    return len(group) >= 2 and len({t.reward for t in group}) > 1


class StepSampler:
    """Rolls out `batch_size` groups of `group_size` episodes per step.

    Args:
        engine: the rollout engine.
        loader: the resumable task stream.
        batch_size: groups (tasks) per step.
        group_size: episodes per task.
        seed: the run seed.
        dynamic_sampling: drop groups whose rewards are all equal and refill.
        max_refill_rounds: refills per step (dynamic sampling).
        exclude_finish_reasons: episodes ending so never train (`error` always).
        oversample: with dynamic sampling, each round rolls out ceil(missing groups x oversample) tasks
            (DAPO's generation batch larger than its training batch); groups beyond the batch wait in a
            buffer and train first at the next step.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        loader: TaskLoader,
        batch_size: int,
        group_size: int,
        seed: int,
        dynamic_sampling: bool = False,
        max_refill_rounds: int = 3,
        exclude_finish_reasons: tuple[str, ...] | list[str] = (),
        oversample: float = 1.0,
    ) -> None:
        self.engine = engine
        self.loader = loader
        self.batch_size = batch_size
        self.group_size = group_size
        self.seed = seed
        self.dynamic_sampling = dynamic_sampling
        self.max_refill_rounds = max_refill_rounds
        self.excluded_reasons = set(exclude_finish_reasons) | set(ALWAYS_EXCLUDED)
        if oversample < 1.0:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        self.oversample = oversample if dynamic_sampling else 1.0
        self.buffer: list[list[Trajectory]] = []

    def sample(self, step: int, policy_version: int, on_finish: Any = None) -> SampledStep:
        """The training groups of `step` (buffered groups first when dynamic sampling kept some)."""
        out = SampledStep(groups=[], sampled=[])
        groups = self.buffer[: self.batch_size]
        self.buffer = self.buffer[self.batch_size :]
        next_group = 0
        while len(groups) < self.batch_size and out.rounds <= self.max_refill_rounds:
            need = self.batch_size - len(groups)
            tasks = self.loader.take(math.ceil(need * self.oversample))
            seed = derive_seed(self.seed, "rollout", step, out.rounds)
            episodes = self.engine.run(
                tasks, self.group_size, group_offset=next_group, on_finish=on_finish, seed=seed,
                policy_version=policy_version,
            )  # fmt: skip
            next_group += len(tasks)
            _add_stats(out.stats, self.engine.stats)
            out.rounds += 1
            out.sampled.extend(episodes)
            for g in range(len(tasks)):
                group = []
                for t in episodes[g * self.group_size : (g + 1) * self.group_size]:
                    if t.finish_reason in self.excluded_reasons:
                        out.excluded[t.finish_reason] += 1
                    else:
                        group.append(t)
                if not group:
                    continue
                if self.dynamic_sampling and not has_signal(group):
                    out.dropped_groups += 1
                    continue
                groups.append(group)
            if not self.dynamic_sampling:
                break
        if len(groups) > self.batch_size:
            self.buffer = [*self.buffer, *groups[self.batch_size :]][-self.batch_size :]
            groups = groups[: self.batch_size]
        out.groups = [
            [dataclasses.replace(t, group_id=gid) for t in group] for gid, group in enumerate(groups)
        ]
        return out

    def state_dict(self) -> list[list[dict[str, Any]]]:
        """The dynamic-sampling buffer (episodes as dicts), for the checkpoint."""
        return [[t.to_dict() for t in group] for group in self.buffer]

    def load_state_dict(self, state: list[list[dict[str, Any]]]) -> None:
        self.buffer = [[Trajectory.from_dict(t) for t in group] for group in state]
