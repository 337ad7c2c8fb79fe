"""The quickstart pipeline end to end on a tiny random model: dense index over the synthetic worlds, oracle
SFT through the rollout engine, RL, held-out evaluations before and after, checkpoint, plots and summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentrl.cli.main import app
from agentrl.core.config import load_config
from agentrl.experiment import ExperimentConfig
from agentrl.metrics import read_metrics
from agentrl.train.run_state import new_run_dir
from tests.conftest import requires_minilm

REPO = Path(__file__).resolve().parents[2]
SMALL_WORLDS = ["env.kwargs.world_entities=40"]


def quickstart_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.name={model_dir}", "model.device=cpu", "sft.steps=2", "sft.batch_size=2",
        "sft.data.num_tasks=4", "trainer.steps=1", "trainer.batch_size=1", "rollout.group_size=2",
        "rollout.max_new_tokens=40", "eval.data.num_tasks=2", f"output.dir={out}", *SMALL_WORLDS, *extra,
    ]  # fmt: skip


@requires_minilm
def test_quickstart_cli_runs_sft_then_rl_and_reports(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["quickstart", *quickstart_args(tiny_model_dir, tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    for label in ("after SFT", "after RL"):
        assert label in result.output
    assert "before SFT" not in result.output  # the config compares SFT with SFT+RL only
    assert "held-out evaluation" in result.output and "training reward by step" in result.output
    assert "after RL vs after SFT: paired over the same 2 held-out questions" in result.output
    (run_dir,) = list((tmp_path / "runs").iterdir())
    indexes = list((tmp_path / "cache" / "indexes").glob("synthetic-w0x40-w1x40-dense-*"))
    assert len(indexes) == 1 and (indexes[0] / "meta.json").is_file()
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["phase"] for r in rows] == ["sft", "sft", "eval", "rl", "eval"]
    assert [r["eval/label"] for r in rows if r["phase"] == "eval"] == ["after SFT", "after RL"]
    assert [r["global_step"] for r in rows] == [1, 2, 2, 3, 3]
    assert "sft/nll" in rows[0] and "sft/optim/lr" in rows[0] and "optim/lr" in rows[3]
    assert 0 < rows[-1]["compare/em_p_one_sided"] <= 1 and "compare/f1_difference" in rows[-1]
    scores = json.loads((run_dir / "evals" / "after-sft.json").read_text())
    assert scores["label"] == "after SFT" and len(scores["ids"]) == len(scores["scores"]["em"]) == 2
    sft = [json.loads(line) for line in (run_dir / "trajectories" / "sft.jsonl").open()]
    assert sft and all(t["reward"] >= 1.0 for t in sft)
    for t in sft:
        agent = [i for i, m in zip(t["token_ids"], t["loss_mask"], strict=True) if m]
        assert "<search>" in t["text"] and agent
    assert (run_dir / "checkpoints" / "latest").is_file()
    assert (run_dir / "plots" / "training.png").is_file()
    saved = load_config(ExperimentConfig, run_dir / "config.yaml")
    assert saved.model.name == str(tiny_model_dir) and saved.sft.enabled


def test_quickstart_config_resolves() -> None:
    cfg = load_config(ExperimentConfig, REPO / "configs" / "quickstart.yaml")
    assert cfg.sft.enabled and cfg.eval.enabled and cfg.retriever.kind == "dense"
    assert cfg.data.options["world_seed"] != cfg.eval.data.options["world_seed"]
    assert cfg.trainer.steps >= 16 and cfg.eval.data.num_tasks >= 200  # enough for a paired test to decide


def test_quickstart_cli_rejects_misspelt_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["quickstart", "rollout.grup_size=2"])
    assert result.exit_code == 2
    assert "rollout.group_size" in result.output


def test_new_run_dir_never_reuses_a_directory(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path)
    second = new_run_dir(tmp_path)
    assert first != second and first.is_dir() and second.is_dir()


def test_write_trajectories_replaces_atomically(tmp_path: Path) -> None:
    from agentrl.core.types import Trajectory
    from agentrl.rollout.io import write_trajectories

    out = tmp_path / "t.jsonl"
    out.write_text("old\n")

    def broken():
        yield Trajectory("a", 0, [1, 2], [0, 1], [-1, 0], [0.0, -0.5], 1, 1.0)
        raise RuntimeError("generation failed")

    with pytest.raises(RuntimeError):
        write_trajectories(out, broken())
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]
