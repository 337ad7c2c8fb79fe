"""A resumable task stream: the pool in a fresh order each epoch (seeded by the run seed and the epoch), read
`n` at a time; its position (epoch, offset) goes into every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.core.seeding import derive_seed
from agentrl.core.types import Task


@dataclass
class LoaderPosition:
    epoch: int = 0
    offset: int = 0


class TaskLoader:
    """Cycles through `tasks` in epochs; `take(n)` returns the next n, crossing epoch boundaries."""

    def __init__(self, tasks: list[Task], seed: int) -> None:
        if not tasks:
            raise ValueError("the training data has no tasks")
        self.tasks = list(tasks)
        self.seed = seed
        self.position = LoaderPosition()
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "tasks", epoch))
        return torch.randperm(len(self.tasks), generator=gen).tolist()

    def take(self, n: int) -> list[Task]:
        out: list[Task] = []
        while len(out) < n:
            if self.position.offset >= len(self.tasks):
                self.position = LoaderPosition(self.position.epoch + 1, 0)
                self._order = self._permutation(self.position.epoch)
            out.append(self.tasks[self._order[self.position.offset]])
            self.position.offset += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.position.epoch, "offset": self.position.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = LoaderPosition(int(state["epoch"]), int(state["offset"]))
        self._order = self._permutation(self.position.epoch)
