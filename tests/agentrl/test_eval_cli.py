"""`agentrl eval` end to end on a tiny random model: report files, resume after a kill, --compare, and the
bad inputs that must fail before any model loads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentrl.cli.main import app
from agentrl.core.config import load_config
from agentrl.evaluation.evaluator import EvalSettings
from agentrl.evaluation.run import run_eval
from agentrl.experiment import ExperimentConfig

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "env.kwargs.world_entities=40",
    "rollout.max_new_tokens=12",
    "retriever.kind=memory",
    "model.device=cpu",
    "rollout.batch_size=4",
    "env.max_turns=2",
    "threads=1",
]


@pytest.fixture(autouse=True)
def _quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AGENTRL_PROGRESS", "0")
    monkeypatch.chdir(REPO)


def invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading a policy fail loudly: errors under test must come before it."""

    def refuse(cfg):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr("agentrl.rollout.setup.load_policy", refuse)


def test_eval_writes_the_report_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = [
        "-m",
        str(tiny_model_dir),
        "--num-questions",
        "3",
        "-n",
        "2",
        "--temperature",
        "1.0",
        "-o",
        str(out),
    ]
    result = invoke(*args, *SMALL)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for key in ("em", "f1", "format_rate", "pass_at_k", "n", "num_questions", "ci", "manifest", "searches"):
        assert key in report, key
    assert report["n"] == 2 and report["num_questions"] == 3 and set(report["pass_at_k"]) == {"1", "2"}
    assert set(report["ci"]) >= {"em", "f1", "pass@1"}
    manifest = report["manifest"]
    assert manifest["model"]["sha256"] and manifest["dataset"]["world"] == [0, 40]
    assert manifest["env"]["id"] == "agentrl/SearchQA-v0" and "{question}" in json.dumps(
        manifest["env"]["prompt"]
    )
    assert manifest["sampling"]["samples"] == 2 and manifest["sampling"]["temperature"] == 1.0
    assert manifest["retriever"]["kind"] == "memory" and manifest["retriever"]["documents_sha256"]
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in lines] == [0, 1, 2]
    assert {"question", "golds", "samples"} <= set(lines[0])
    assert {"answer", "score", "searches"} <= set(lines[0]["samples"][0]) and len(lines[0]["samples"]) == 2
    assert (out / "pass_at_k.png").stat().st_size > 0
    assert "| pass@1 |" in (out / "report.md").read_text() and "pass@1" in result.output


def test_killed_eval_resumes_to_the_same_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = [
        f"model.name={tiny_model_dir}",
        "eval.data.num_tasks=4",
        "eval.samples=2",
        "eval.greedy=false",
    ]
    cfg = load_config(ExperimentConfig, REPO / "configs" / "quickstart.yaml", [*SMALL, *overrides])
    settings = EvalSettings.from_config(cfg, bootstrap=50)
    assert settings.chunk_size == 2
    whole = run_eval(cfg, settings, tmp_path / "whole")

    class Killed(Exception):
        pass

    finished = []

    def kill_in_second_chunk(n: int) -> None:
        finished.append(n)
        if sum(finished) > 4:
            raise Killed

    with pytest.raises(Killed):
        run_eval(cfg, settings, tmp_path / "resumed", on_finish=kill_in_second_chunk)
    predictions = tmp_path / "resumed" / "predictions.jsonl"
    assert len(predictions.read_text().splitlines()) == 2  # the first chunk only
    with predictions.open("a") as f:
        f.write('{"index": 2, "id": "cut sh')  # a line the kill cut short
    resumed = run_eval(cfg, settings, tmp_path / "resumed")
    assert resumed.resumed == 2 and resumed.rolled_out == [2, 3]
    assert whole.rolled_out == [0, 1, 2, 3]
    for name in ("report.json", "predictions.jsonl", "report.md"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    again = run_eval(cfg, settings, tmp_path / "resumed")
    assert again.rolled_out == [] and again.report == resumed.report


def test_resume_refuses_other_settings(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    base = ["-m", str(tiny_model_dir), "-o", str(out), *SMALL]
    assert invoke(*base, "--num-questions", "2").exit_code == 0
    result = invoke(*base, "--num-questions", "3")
    assert result.exit_code == 2 and "other settings" in result.output and "num_questions" in result.output
    assert invoke(*base, "--num-questions", "3", "--overwrite").exit_code == 0
    assert json.loads((out / "report.json").read_text())["num_questions"] == 3


def test_compare_puts_models_side_by_side_and_refuses_other_settings(
    tiny_model_dir: Path, tmp_path: Path, tokenizer
) -> None:
    from tests.agentrl.conftest import make_tiny_model

    other = tmp_path / "other-model"
    make_tiny_model(tokenizer, seed=1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    base = ["--num-questions", "2", *SMALL]
    first = tmp_path / "first"
    assert invoke("-m", str(tiny_model_dir), "-o", str(first), *base).exit_code == 0
    out = tmp_path / "pair"
    result = invoke(
        "-m", str(other), "-o", str(out), "--compare", str(first), "--compare", str(tiny_model_dir), *base
    )
    assert result.exit_code == 0, result.output
    table = (out / "compare.md").read_text()
    assert table.count(str(tiny_model_dir)) == 2 and str(other) in table and "pass@1" in table
    assert (out / "compare_pass_at_k.png").is_file() and len(list(out.glob("compare/2-*/report.json"))) == 1
    mismatch = invoke(
        "-m",
        str(other),
        "-o",
        str(tmp_path / "three"),
        "--compare",
        str(first),
        "--num-questions",
        "3",
        *SMALL,
    )
    assert (
        mismatch.exit_code == 2 and "not comparable" in mismatch.output and "num_questions" in mismatch.output
    )
    flagged = invoke(
        "-m",
        str(other),
        "-o",
        str(tmp_path / "three"),
        "--compare",
        str(first),
        "--allow-mismatch",
        "--num-questions",
        "3",
        *SMALL,
    )
    assert (
        flagged.exit_code == 0 and "num_questions: 3 -> 2" in (tmp_path / "three" / "compare.md").read_text()
    )


def test_bad_model_paths_fail_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_model_loading(monkeypatch)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    result = invoke("-m", str(junk), *SMALL)
    assert result.exit_code == 2 and "neither an `agentrl train` checkpoint" in result.output
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/gone/base-model"}))
    result = invoke("-m", str(adapter), *SMALL)
    assert result.exit_code == 2 and "'/gone/base-model'" in result.output and "--base" in result.output
    result = invoke("-m", str(adapter), "--base", str(tmp_path / "missing-base"), *SMALL)
    assert result.exit_code == 2 and "missing-base" in result.output


def test_a_truncated_model_file_is_one_error_naming_it_before_loading(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_model_loading(monkeypatch)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    result = invoke("-m", str(model), *SMALL)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    compact = "".join(result.output.split())
    assert f"error:{weights}cannotberead(truncatedorcorrupt:" in compact, result.output
    assert "Traceback" not in result.output


def test_bad_settings_and_data_fail_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_model_loading(monkeypatch)
    result = invoke("-n", "2", "--temperature", "1", "--k", "4", *SMALL)
    assert (
        result.exit_code == 2 and "pass@4 needs at least 4 samples per question, but n = 2" in result.output
    )
    empty = tmp_path / "hotpot.jsonl"
    empty.write_text("\n")
    result = invoke("--dataset", "hotpotqa", "--data-path", str(empty), *SMALL)
    assert result.exit_code == 2 and str(empty) in result.output
    index = tmp_path / "index"
    index.mkdir()
    (index / "meta.json").write_text(
        json.dumps({"kind": "dense", "encoder": {"model": "bundled:all-minilm-l6-v2"}})
    )
    result = invoke(
        *SMALL, "retriever.kind=dense", f"retriever.index_dir={index}", "retriever.encoder=intfloat/e5"
    )
    assert result.exit_code == 2 and "retriever.encoder" in result.output and "all-minilm" in result.output


def test_questions_seen_in_training_are_refused(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_model_loading(monkeypatch)
    train = shared_data / "hotpotqa" / "hotpotqa_train_sample.public.jsonl"
    data = [
        "--dataset",
        "hotpotqa",
        "--data-path",
        str(train),
        "--num-questions",
        "4",
        "--train-data",
        str(train),
    ]
    result = invoke(*data, *SMALL, "env.kwargs.corpus=task")
    assert result.exit_code == 2 and "4 of 4 evaluation questions also appear in" in result.output
    assert "--allow-overlap" in result.output
    result = invoke(*data, "--allow-overlap", *SMALL, "env.kwargs.corpus=task")
    assert "also appear" in result.output and "the model was loaded" in str(result.exception)


def test_training_evaluations_are_the_eval_commands(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The held-out evaluation `agentrl train` logs after RL equals `agentrl eval` of the final checkpoint,
    metric for metric under the same names."""
    from agentrl.evaluation.metrics import flat_metrics
    from agentrl.metrics import read_metrics
    from agentrl.train.display import TrainDisplay
    from agentrl.train.loop import train
    from tests.agentrl.train_env import ENV_ID

    cfg = load_config(
        ExperimentConfig,
        None,
        [
            f"model.name={tiny_model_dir}",
            "model.device=cpu",
            "threads=1",
            f"env.id={ENV_ID}",
            "env.max_turns=1",
            "data.dataset=env",
            "data.num_tasks=4",
            "rollout.group_size=2",
            "rollout.max_new_tokens=6",
            "rollout.max_total_tokens=48",
            "trainer.batch_size=2",
            "trainer.steps=1",
            "trainer.micro_batch_tokens=96",
            "eval.data.dataset=env",
            "eval.data.num_tasks=3",
            "eval.data.seed=5",
            "eval.before_training=false",
            "sft.enabled=false",
            f"output.dir={tmp_path / 'runs'}",
            "output.plots=false",
        ],
    )
    run = train(cfg, display=TrainDisplay(live=False))
    logged = [r for r in read_metrics(run.run_dir / "metrics.jsonl") if r.get("eval/label") == "after RL"]
    assert len(logged) == 1
    outcome = run_eval(replace_model(cfg, str(run.run_dir)), EvalSettings.from_config(cfg))
    expected = flat_metrics(outcome.report)
    assert {k: logged[0][k] for k in expected} == pytest.approx(expected)
    assert {"eval/em", "eval/f1", "eval/pass@1", "eval/pass@1_ci_low", "eval/format_rate"} <= set(expected)


def replace_model(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
    from dataclasses import replace

    return replace(cfg, model=replace(cfg.model, name=name))


def test_an_output_directory_of_the_users_own_files_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_model_loading(monkeypatch)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"my": "predictions"}\n')
    (out / "report.md").write_text("# my report\n")
    result = invoke("-o", str(out), *SMALL)
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and f"--output {out} is not empty" in message and "manifest.json" in message
    assert "choose a new or empty directory" in message
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl", "report.md"]
    assert (out / "report.md").read_text() == "# my report\n"


def test_store_refuses_a_foreign_directory(tmp_path: Path) -> None:
    from agentrl.evaluation.store import EvalStore

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds no agentrl evaluation \(manifest.json\)"):
        EvalStore(tmp_path).open({"model": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_full_disk_keeps_the_previous_plot(small_disk: Path) -> None:
    from agentrl.evaluation.report import plot_pass_at_k
    from tests.conftest import fill_disk

    png = small_disk / "pass_at_k.png"
    before = b"\x89PNG a small earlier plot"
    png.write_bytes(before)
    fill_disk(small_disk)
    with pytest.raises(OSError, match="No space left on device"):
        plot_pass_at_k([{"pass_at_k": {"1": 0.5, "2": 0.75}}], ["after"], png)
    assert png.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin", "pass_at_k.png"]


def test_eval_on_a_full_disk_is_a_named_error(tiny_model_dir: Path, small_disk: Path) -> None:
    from tests.conftest import fill_disk

    fill_disk(small_disk)
    out = small_disk / "eval"
    result = invoke("-m", str(tiny_model_dir), "--num-questions", "2", "-o", str(out), *SMALL)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert f"no space left on {out}" in " ".join(result.output.split())
    assert not out.exists() or list(out.iterdir()) == []


def test_a_chunk_that_does_not_fit_is_cut_off_again(small_disk: Path) -> None:
    from agentrl.evaluation.records import QuestionRecord
    from agentrl.evaluation.store import PREDICTIONS, EvalStore, read_predictions
    from tests.conftest import fill_disk

    store = EvalStore(small_disk / "eval")
    store.open({"model": {"spec": "m"}})
    store.append([QuestionRecord(0, "q0", "first?", ["a"], None)])
    before = store.path(PREDICTIONS).read_bytes()
    fill_disk(small_disk)
    chunk = [QuestionRecord(i, f"q{i}", "long question? " * 200, ["a"], None) for i in range(1, 5)]
    with pytest.raises(OSError, match="No space left on device"):
        store.append(chunk)
    assert store.path(PREDICTIONS).read_bytes() == before
    assert list(read_predictions(store.path(PREDICTIONS))) == [0]
