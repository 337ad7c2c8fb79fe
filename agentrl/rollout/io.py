"""Trajectories as JSONL: one object per line, the `Trajectory` fields plus readable extras.

Each line holds every `Trajectory` field, with `logprobs` null where the loss mask is 0, plus `text` (the
decoded episode, when a tokenizer is given) and `num_searches` (= `num_tool_calls`). `read_trajectories`
restores the `Trajectory` objects (nulls back to 0.0).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from agentrl.core.files import atomic_open, iter_jsonl
from agentrl.core.types import Trajectory


def trajectory_record(t: Trajectory, tokenizer: Any = None) -> dict[str, Any]:
    record = t.to_dict()
    record["logprobs"] = [lp if m else None for lp, m in zip(t.logprobs, t.loss_mask, strict=True)]
    record["num_searches"] = t.num_tool_calls
    if tokenizer is not None:
        record["text"] = tokenizer.decode(t.token_ids, skip_special_tokens=False)
    return record


def write_trajectories(path: str | Path, trajectories: Iterable[Trajectory], tokenizer: Any = None) -> int:
    """Write one JSON object per trajectory; returns the count. Parent directories are created.

    The file is written under a temporary name and renamed into place, so an interrupted write never leaves
    a truncated file where a complete one was.
    """
    count = 0
    with atomic_open(path) as f:
        for t in trajectories:
            f.write(json.dumps(trajectory_record(t, tokenizer), ensure_ascii=False) + "\n")
            count += 1
    return count


def iter_trajectories(path: str | Path) -> Iterator[Trajectory]:
    for _, data in iter_jsonl(path):
        data["logprobs"] = [0.0 if lp is None else float(lp) for lp in data["logprobs"]]
        yield Trajectory.from_dict(data)


def read_trajectories(path: str | Path) -> list[Trajectory]:
    return list(iter_trajectories(path))
