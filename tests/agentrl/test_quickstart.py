"""The quickstart pipeline end to end on a tiny random model saved as a local model directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from agentrl.cli.main import app
from agentrl.config import load_config
from agentrl.experiment import ExperimentConfig
from agentrl.metrics import read_metrics
from agentrl.quickstart import new_run_dir, run_quickstart
from agentrl.rollout.io import read_trajectories
from tests.agentrl.conftest import make_tiny_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(model_dir: Path, out: Path, *extra: str) -> ExperimentConfig:
    return load_config(
        ExperimentConfig,
        REPO / "configs" / "quickstart.yaml",
        [
            f"model.name={model_dir}", "model.device=cpu", "data.num_tasks=3", "rollout.group_size=2",
            "rollout.max_new_tokens=12", "env.max_turns=2", f"output.dir={out}", *extra,
        ],
    )  # fmt: skip


def test_run_quickstart_writes_trajectories_metrics_and_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_model_dir, tmp_path)
    finished: list[int] = []
    totals: list[int] = []
    result = run_quickstart(cfg, on_finish=finished.append, on_start=totals.append)
    assert totals == [6]
    assert sum(finished) == 6
    trajectories = read_trajectories(result.run_dir / "trajectories.jsonl")
    assert len(trajectories) == 6
    assert sorted({t.group_id for t in trajectories}) == [0, 1, 2]
    for t in trajectories:
        assert 0 < t.num_agent_tokens <= 2 * 12
        assert all(m in (0, 1) for m in t.loss_mask)
    rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float64)
    assert result.metrics["reward/mean"] == pytest.approx(float(rewards.mean()))
    assert result.metrics["episodes"] == 6
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert rows[0]["reward/mean"] == pytest.approx(result.metrics["reward/mean"])
    assert load_config(ExperimentConfig, result.run_dir / "config.yaml") == cfg
    assert set(result.preset_masses) >= {"grpo", "dapo", "gspo", "wapo", "stapo", "fade", "grpo_n"}
    assert len(result.advantages) == 6


def test_quickstart_scheme_override(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_model_dir, tmp_path, "algorithm.scheme=reinforce")
    result = run_quickstart(cfg)
    rewards = [t.reward for t in result.trajectories]
    assert result.advantages == pytest.approx(rewards)


def test_new_run_dir_never_reuses_a_directory(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path)
    second = new_run_dir(tmp_path)
    assert first != second and first.is_dir() and second.is_dir()


def test_quickstart_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = [
        "quickstart", f"model.name={tiny_model_dir}", "model.device=cpu", "data.num_tasks=2",
        "rollout.group_size=2", "rollout.max_new_tokens=8", "env.max_turns=1", f"output.dir={tmp_path}",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "gradient mass per preset" in result.output
    (run_dir,) = list(tmp_path.iterdir())
    lines = (run_dir / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "text" in json.loads(lines[0])


def test_quickstart_cli_rejects_misspelt_override() -> None:
    result = CliRunner().invoke(app, ["quickstart", "rollout.grup_size=2"])
    assert result.exit_code == 2
    assert "rollout.group_size" in result.output


def test_write_trajectories_replaces_atomically(tmp_path: Path) -> None:
    from agentrl.rollout.io import write_trajectories
    from agentrl.types import Trajectory

    out = tmp_path / "t.jsonl"
    out.write_text("old\n")

    def broken():
        yield Trajectory("a", 0, [1, 2], [0, 1], [-1, 0], [0.0, -0.5], 1, 1.0)
        raise RuntimeError("generation failed")

    with pytest.raises(RuntimeError):
        write_trajectories(out, broken())
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]
