"""`agentrl rollout` end to end with a tiny random model saved to a directory."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agentrl.cli.main import app
from tests.agentrl.conftest import make_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_rollout_help_documents_the_options() -> None:
    result = runner.invoke(app, ["rollout", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--env", "--num-tasks", "--group-size", "--out", "--config", "--executor"):
        assert option in result.output


def test_rollout_writes_jsonl_and_prints_a_summary(tiny_dir, tokenizer, tmp_path) -> None:
    out = tmp_path / "rollouts.jsonl"
    args = ["rollout", "--model", str(tiny_dir), "--env", "agentrl/SearchQA-v0", "--num-tasks", "2",
            "--group-size", "3", "--out", str(out), "--max-new-tokens", "8", "--device", "cpu",
            "env.kwargs={world_entities: 200}", "rollout.max_total_tokens=2048"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6
    assert [r["group_id"] for r in records] == [0, 0, 0, 1, 1, 1]
    for r in records:
        assert len(r["token_ids"]) == len(r["loss_mask"]) == len(r["logprobs"])
        assert all((lp is None) == (m == 0) for lp, m in zip(r["logprobs"], r["loss_mask"], strict=True))
        assert r["text"] == tokenizer.decode(r["token_ids"])
        assert r["finish_reason"] in ("answer", "max_turns", "length", "max_tokens")
        for key in ("task_id", "reward", "turn_rewards", "num_turns", "num_searches"):
            assert key in r
    assert "finish reasons" in result.output and "reward" in result.output


def test_rollout_reports_bad_settings_without_a_traceback(tmp_path) -> None:
    result = runner.invoke(app, ["rollout", "--out", str(tmp_path / "x.jsonl"), "--executor", "rayy"])
    assert result.exit_code == 2
    assert "did you mean 'ray'" in result.output


def test_rollout_never_overwrites_an_existing_file(tmp_path) -> None:
    out = tmp_path / "kept.jsonl"
    out.write_text("earlier results\n")
    result = runner.invoke(app, ["rollout", "--out", str(out)])
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert out.read_text() == "earlier results\n"


def test_rollout_on_vllm_without_vllm_names_the_install(tiny_dir, tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as where it is missing
    out = tmp_path / "rollouts.jsonl"
    args = ["rollout", "--model", str(tiny_dir), "--env", "agentrl/SearchQA-v0", "--num-tasks", "1",
            "--group-size", "1", "--out", str(out), "--backend", "vllm", "--device", "cpu",
            "env.kwargs={world_entities: 40}"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "rollout.backend=vllm needs vLLM" in result.output and "make install" in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--env", "agentrl/Nope-v0"], "env.id: unknown value 'agentrl/Nope-v0'"),
        (["--env", "agentrl/SearchQA-v0", "env.kwargs.top_kk=5"],
         "env.kwargs.top_kk: agentrl/SearchQA-v0 takes no argument 'top_kk'; did you mean 'top_k'?"),
        (["--env", "agentrl/SearchQA-v0", "--group-size", "0"], "rollout.group_size=0: must be >= 1"),
    ],
)  # fmt: skip
def test_rollout_refuses_what_would_only_make_errors_before_loading(extra, message, tmp_path) -> None:
    out = tmp_path / "rollouts.jsonl"
    model = str(tmp_path / "no-model-here")
    args = ["rollout", "--model", model, "--num-tasks", "1", "--out", str(out), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and not out.exists()


def test_a_rollout_whose_every_episode_fails_exits_1_naming_the_error(tiny_dir, tmp_path, monkeypatch):
    from tests.agentrl import train_env

    def down(self, action: str):
        raise RuntimeError("the env is down")

    monkeypatch.setattr(train_env.VowelEnv, "turn", down)
    out = tmp_path / "rollouts.jsonl"
    args = ["rollout", "--model", str(tiny_dir), "--env", f"tests.agentrl.train_env:{train_env.ENV_ID}",
            "--dataset", "env", "--num-tasks", "2", "--group-size", "2", "--out", str(out),
            "--max-new-tokens", "4", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "every one of the 4 episodes ended in an env error" in text and "the env is down" in text
    assert len(out.read_text().splitlines()) == 4  # written for inspection
