from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agentrl.core.registry import Registry
from agentrl.core.seeding import derive_seed, numpy_rng, seed_everything, torch_generator
from agentrl.core.types import Task, Trajectory
from agentrl.metrics import MetricsWriter, read_metrics


def test_registry_lookup_and_suggestion() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", 1)
    reg.register("beta", "b")(2)
    assert reg.get("b") == 2 and "alpha" in reg and len(reg) == 3
    assert reg.names() == ["alpha", "b", "beta"]
    with pytest.raises(KeyError, match=r"unknown widget 'alpah'.*Did you mean 'alpha'"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", 3)


def test_metrics_writer_appends_jsonl(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path) as writer:
        writer.log({"loss": torch.tensor(1.5), "reward/mean": np.float64(0.25), "note": "x"}, step=0)
        writer.log({"loss": float("nan")}, step=1)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[0]["loss"] == 1.5 and rows[0]["reward/mean"] == 0.25 and rows[0]["note"] == "x"
    assert math.isnan(rows[1]["loss"])
    with MetricsWriter(tmp_path) as writer:
        writer.log({"loss": 2.0}, step=2)
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 3


def test_derived_seeds_are_stable_and_independent() -> None:
    assert derive_seed(0, "rollout", 1) == derive_seed(0, "rollout", 1)
    assert derive_seed(0, "rollout", 1) != derive_seed(0, "rollout", 2)
    assert derive_seed(0, "a") < 2**63
    a = numpy_rng(3, "x").random(4)
    b = numpy_rng(3, "x").random(4)
    assert np.array_equal(a, b)
    g1, g2 = torch_generator(5, "t"), torch_generator(5, "t")
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))  # type: ignore[arg-type]
    seed_everything(7)
    x = torch.rand(2)
    seed_everything(7)
    assert torch.equal(x, torch.rand(2))


def test_task_and_trajectory_round_trip() -> None:
    task = Task(id="q1", question="Who?", answers=["A"], dataset="d", metadata={"k": 1})
    assert Task.from_dict(json.loads(json.dumps(task.to_dict()))) == task
    with pytest.raises(ValueError, match="unknown Task field"):
        Task.from_dict({"id": "x", "question": "y", "answr": []})
    traj = Trajectory(
        task_id="q1", group_id=0, token_ids=[1, 2, 3], loss_mask=[0, 1, 1], turn_ids=[-1, 0, 0],
        logprobs=[0.0, -0.5, -0.1], prompt_length=1, reward=1.0,
    )
    assert traj.num_agent_tokens == 2
    assert Trajectory.from_dict(json.loads(json.dumps(traj.to_dict()))) == traj
    with pytest.raises(ValueError, match="loss_mask has length 2"):
        Trajectory(
            task_id="q", group_id=0, token_ids=[1, 2, 3], loss_mask=[0, 1], turn_ids=[0, 0, 0],
            logprobs=[0.0] * 3, prompt_length=1, reward=0.0,
        )


def test_atomic_open_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    from agentrl.core.files import atomic_open

    target = tmp_path / "sub" / "data.bin"
    with atomic_open(target, "wb") as f:
        f.write(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_open(target, "wb") as f:
        f.write(b"partial")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["data.bin"]
    with pytest.raises(ValueError, match="mode must be"), atomic_open(target, "a"):
        pass


def test_iter_jsonl_streams_objects_with_line_numbers(tmp_path: Path) -> None:
    import gzip

    from agentrl.core.files import iter_jsonl

    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"a": 1}\n\n{"a": 2}\n[3]\n')
    rows = iter_jsonl(path)
    assert next(rows) == (1, {"a": 1})
    assert next(rows) == (3, {"a": 2})
    with pytest.raises(ValueError, match=r"rows\.jsonl\.gz:4: expected a JSON object per line, got list"):
        next(rows)


def test_iter_jsonl_names_non_utf8_lines_and_can_skip_bad_lines(tmp_path: Path) -> None:
    from agentrl.core.files import iter_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n{oops\n{"a": 4}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: not valid UTF-8"):
        list(iter_jsonl(path))
    bad: list[Exception] = []
    assert list(iter_jsonl(path, on_bad_line=bad.append)) == [(1, {"a": 1}), (4, {"a": 4})]
    assert [str(e).split(": ")[0].rsplit(":", 1)[1] for e in bad] == ["2", "3"]
