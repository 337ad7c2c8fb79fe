"""`agentrl data filter`: train / eval de-duplication by normalised question text and WAPO's difficulty filter
(0 < rollout accuracy < 0.5), with a scripted policy whose accuracy per question is known."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentrl.cli.main import app
from agentrl.core.types import Task
from agentrl.evaluation.overlap import find_overlaps, normalize_question
from environments.datasets import load_tasks
from tests.agentrl.conftest import ScriptedGenerator
from tests.agentrl.train_env import ENV_ID
from tests.conftest import fill_disk

REPO = Path(__file__).resolve().parents[2]
# Word k is answered correctly (all vowels: score 1) in CORRECT_OF_4[k] of every 4 samples.
CORRECT_OF_4 = {0: 0, 1: 1, 2: 2, 3: 4, 4: 1}


def write_tasks(path: Path, tasks: list[Task]) -> Path:
    path.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in tasks))
    return path


def test_normalised_questions_match() -> None:
    assert normalize_question("Who wrote  *Hamlet*?") == normalize_question("who wrote the hamlet")
    train = [Task("t1", "Who wrote Hamlet?"), Task("t2", "Capital of France?")]
    evaluation = [Task("e1", "capital of france"), Task("e2", "Who?"), Task("e3", "WHO WROTE HAMLET")]
    overlaps = find_overlaps(train, evaluation)
    assert [(o.eval_index, o.eval_id, o.train_id) for o in overlaps] == [(0, "e1", "t2"), (2, "e3", "t1")]


def test_tasks_loader_round_trips_every_field(tmp_path: Path) -> None:
    task = Task("x", "Q?", ["a"], "hotpotqa", {"type": "bridge"}, [{"id": "d", "title": "T", "text": "b"}])
    assert load_tasks("tasks", write_tasks(tmp_path / "t.jsonl", [task])) == [task]
    (tmp_path / "bad.jsonl").write_text('{"question": "Q?", "colour": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a task record: unknown Task field"):
        load_tasks("tasks", tmp_path / "bad.jsonl")


def test_filter_drops_eval_questions_and_keeps_the_hard_but_solvable(
    tmp_path: Path, tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[int, int] = {}

    def script(prompt: str, turn: int) -> str:
        k = int(re.findall(r"Write word number (\d+)\.", prompt)[-1])
        calls[k] = calls.get(k, 0) + 1
        return "aaaa" if (calls[k] - 1) % 4 < CORRECT_OF_4[k] else "bbbb"

    monkeypatch.setattr("agentrl.rollout.setup.load_policy", lambda cfg: (None, tokenizer))
    monkeypatch.setattr(
        "agentrl.rollout.setup.build_generator_for", lambda cfg, m, t: ScriptedGenerator(tokenizer, script)
    )
    monkeypatch.chdir(REPO)
    train = [Task(f"w{k}", f"Write word number {k}.", dataset="vowels") for k in CORRECT_OF_4]
    data = write_tasks(tmp_path / "train.jsonl", train)
    held_out = write_tasks(tmp_path / "eval.jsonl", [Task("e", "write word number 4")])
    out = tmp_path / "kept.jsonl"
    args = [
        "data", "filter", "-o", str(out), "--dataset", "tasks", "--data-path", str(data), "-n", "4",
        "--eval-data", str(held_out), f"env.id={ENV_ID}", "env.kwargs={}", "env.max_turns=1",
        "sft.enabled=false", "eval.enabled=false", "rollout.batch_size=8", "retriever.kind=memory",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "1 of 5 training questions also appear in" in output
    assert "5 questions: 1 in evaluation files, 1 at accuracy <= 0, 2 at accuracy >= 0.5; kept 1" in output
    assert [t.id for t in load_tasks("tasks", out)] == ["w1"]
    assert calls == {0: 4, 1: 4, 2: 4, 3: 4}  # the overlapping question is never rolled out
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output


def test_filter_rejects_bad_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["data", "filter", "-o", str(tmp_path / "k.jsonl"), "--low", "0.6"])
    assert result.exit_code == 2 and "0 <= low < high <= 1" in result.output


def test_a_full_disk_is_a_named_error_that_keeps_the_old_output(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    train = [Task(f"w{k}", f"Write word number {k}. " * 50) for k in range(40)]
    data = write_tasks(tmp_path / "train.jsonl", train)
    out = write_tasks(small_disk / "kept.jsonl", [Task("old", "Kept from an earlier run.")])
    before = out.read_text()
    fill_disk(small_disk)
    args = [
        "data", "filter", "-o", str(out), "--overwrite", "--no-difficulty", "--dataset", "tasks",
        "--data-path", str(data), f"env.id={ENV_ID}", "env.kwargs={}", "retriever.kind=memory",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert f"no space left on {small_disk} while writing {out}" in " ".join(result.output.split())
    assert out.read_text() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin", "kept.jsonl"]
