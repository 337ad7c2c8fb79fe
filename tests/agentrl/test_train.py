"""`agentrl train` end to end on a tiny random model: exact resume, checkpoints, signals, faults, bad
configs."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from agentrl.cli.main import app
from agentrl.core.config import ConfigError, load_config
from agentrl.core.models import load_model
from agentrl.experiment import ExperimentConfig
from agentrl.metrics import read_metrics
from agentrl.train import loop
from agentrl.train.checkpoint import COMPLETE, LATEST, latest_checkpoint
from agentrl.train.display import TrainDisplay
from agentrl.train.loop import TrainingStopped, train
from agentrl.train.run_state import read_state
from tests.agentrl.train_env import ENV_ID

VOLATILE = ("time", "perf/")


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


def config_args(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.name={model}", "model.device=cpu", "threads=1", f"env.id={ENV_ID}", "env.max_turns=1",
        "data.dataset=env", "data.num_tasks=8", "rollout.group_size=3", "rollout.max_new_tokens=6",
        "rollout.max_total_tokens=48", "trainer.batch_size=2", "trainer.steps=4",
        "trainer.micro_batch_tokens=96", "trainer.learning_rate=0.05", "eval.enabled=false",
        "sft.enabled=false", f"output.dir={out}", "output.plots=false", *extra,
    ]  # fmt: skip


def config(model: Path, out: Path, *extra: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, config_args(model, out, *extra))


def quiet() -> TrainDisplay:
    return TrainDisplay(live=False)


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def final_params(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next((checkpoint / "model").glob("*.safetensors")))


@pytest.mark.parametrize(
    "extra",
    [
        # 4 tasks, 2 per step: the resume at step 2 falls exactly on an epoch boundary.
        ("data.num_tasks=4", "algorithm.preset=grpo"),
        # FADE state and a non-empty dynamic-sampling buffer cross the checkpoint.
        ("algorithm.preset=fade", "trainer.dynamic_sampling=true", "trainer.oversample=2.0",
         "trainer.learning_rate=0.5", "trainer.epochs=2", "trainer.minibatches=2"),
    ],
    ids=["epoch-boundary", "fade-dynamic-sampling"],
)  # fmt: skip
def test_resume_is_exact(tiny_dir: Path, tmp_path: Path, extra: tuple[str, ...]) -> None:
    whole = train(config(tiny_dir, tmp_path / "a", *extra), display=quiet())
    cfg = config(tiny_dir, tmp_path / "b", "trainer.save_every=2", *extra)
    first = train(cfg, display=quiet(), stop_after=2)
    assert first.interrupted and latest_checkpoint(first.run_dir / "checkpoints").name == "step-000002"
    state, _, _ = read_state(first.run_dir / "checkpoints" / "step-000002")
    assert state.step == 2 and state.policy_version >= 1
    if "trainer.dynamic_sampling=true" in extra:
        assert state.fade is not None and state.fade["step"] == 2
    resumed = train(cfg, resume="auto", display=quiet())
    assert resumed.run_dir == first.run_dir and resumed.state.step == 4
    a = stable(read_metrics(whole.run_dir / "metrics.jsonl"))
    b = stable(read_metrics(resumed.run_dir / "metrics.jsonl"))
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert a == b
    pa, pb = final_params(whole.checkpoint), final_params(resumed.checkpoint)
    assert pa.keys() == pb.keys()
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], atol=1e-6, rtol=0)
    assert any(not torch.equal(pa[k], v) for k, v in make_tiny_state(tiny_dir).items() if k in pa)


def make_tiny_state(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next(model_dir.glob("*.safetensors")))


def test_each_step_draws_fresh_tokens_and_trajectories_record_version_and_sampling(
    tiny_dir: Path, tmp_path: Path
) -> None:
    result = train(config(tiny_dir, tmp_path, "trainer.steps=2", "data.num_tasks=2"), display=quiet())
    steps = [
        [json.loads(line) for line in (result.run_dir / "trajectories" / f"step-00000{i}.jsonl").open()]
        for i in (1, 2)
    ]
    assert {t["task_id"] for t in steps[0]} == {t["task_id"] for t in steps[1]}
    tokens = [[t["token_ids"][t["prompt_length"] :] for t in step] for step in steps]
    assert tokens[0] != tokens[1]
    assert [t["policy_version"] for t in steps[0]] == [0] * 6
    assert {t["policy_version"] for t in steps[1]} == {1}
    assert steps[0][0]["sampling"] == {"temperature": 1.0, "top_p": 1.0, "top_k": 0}


def test_error_episodes_never_train_and_are_counted(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from tests.agentrl import train_env

    calls = {"n": 0}

    def crash_every_other(self, action: str):
        calls["n"] += 1
        if calls["n"] % 2:
            raise RuntimeError("boom")
        return original(self, action)

    original = train_env.VowelEnv.turn
    monkeypatch.setattr(train_env.VowelEnv, "turn", crash_every_other)
    seen: list[list[int]] = []
    real = loop.step_tensors

    def spy(trajectories, *args, **kwargs):
        seen.append([t.finish_reason for t in trajectories])
        return real(trajectories, *args, **kwargs)

    monkeypatch.setattr(loop, "step_tensors", spy)
    result = train(config(tiny_dir, tmp_path, "trainer.steps=1"), display=quiet())
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert rows[0]["excluded/error"] > 0
    assert rows[0]["finish/error"] > 0
    assert seen and all("error" not in reasons for reasons in seen)


def test_a_step_whose_every_episode_fails_stops_the_run(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from tests.agentrl import train_env

    def down(self, action: str):
        raise RuntimeError("the env is down")

    monkeypatch.setattr(train_env.VowelEnv, "turn", down)
    with pytest.raises(TrainingStopped, match=r"step 1: every one of the 6 episodes ended in an env error"):
        train(config(tiny_dir, tmp_path, "trainer.steps=2"), display=quiet())


def test_greedy_and_bad_batches_are_refused_before_loading(tmp_path: Path) -> None:
    base = ["model.name=./no/such/model"]
    with pytest.raises(ConfigError, match=r"model.name: directory './no/such/model' does not exist"):
        train(config(tmp_path, tmp_path, *base), display=quiet())
    with pytest.raises(ConfigError, match=r"algorithm.preset: unknown preset 'grpoo'. Did you mean 'grpo'"):
        train(config(tmp_path, tmp_path, "algorithm.preset=grpoo"), display=quiet())
    with pytest.raises(ConfigError, match=r"unknown key 'algorithm.loss.kl_coeff'; did you mean"):
        train(config(tmp_path, tmp_path, "algorithm.loss.kl_coeff=0.1"), display=quiet())
    with pytest.raises(ConfigError, match=r"env.id: unknown value 'agentrl/SearchQ-v0'; did you mean"):
        train(config(tmp_path, tmp_path, "env.id=agentrl/SearchQ-v0"), display=quiet())
    with pytest.raises(ConfigError, match=r"2 x 3 = 6 episodes \(2 groups\) cannot be split into"):
        train(config(tmp_path, tmp_path, "trainer.minibatches=4"), display=quiet())
    with pytest.raises(ConfigError, match=r"micro_batch_tokens=32 cannot hold one episode of"):
        train(config(tmp_path, tmp_path, "trainer.micro_batch_tokens=32"), display=quiet())
    with pytest.raises(ConfigError, match=r"rollout.temperature=0.0: greedy episodes carry no sampled"):
        train(config(tmp_path, tmp_path, "rollout.temperature=0"), display=quiet())
    with pytest.raises(ConfigError, match=r"retriever.index_dir: '/nope' is not an agentrl index"):
        cfg = config(tmp_path, tmp_path, "retriever.kind=dense", "retriever.index_dir=/nope")
        train(cfg, display=quiet())
    assert not any(tmp_path.iterdir())


def test_resume_refuses_a_changed_recipe_unless_forced(tiny_dir: Path, tmp_path: Path) -> None:
    first = train(config(tiny_dir, tmp_path, "trainer.steps=1"), display=quiet())
    changed = config(tiny_dir, tmp_path, "trainer.steps=2", "rollout.group_size=2", "seed=3")
    with pytest.raises(ConfigError, match=r"rollout.group_size: 3 -> 2") as info:
        train(changed, resume=str(first.run_dir), display=quiet())
    assert "seed: 0 -> 3" in str(info.value) and "--force" in str(info.value)
    forced = train(changed, resume=str(first.run_dir), force=True, display=quiet())
    assert forced.state.step == 2
    longer_cfg = config(tiny_dir, tmp_path, "trainer.steps=3", "rollout.group_size=2", "seed=3")
    longer = train(longer_cfg, resume="auto", display=quiet())
    assert longer.state.step == 3


def test_nonfinite_steps_are_skipped_then_stop_the_run(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    extra = ("trainer.steps=6", "trainer.save_every=1", "trainer.max_nonfinite_steps=2")
    cfg = config(tiny_dir, tmp_path, *extra)
    real = loop.LocalPolicyWorker.forward_backward
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        if calls["n"] >= 3:
            batch.advantages = batch.advantages * float("nan")
        return real(self, batch)

    monkeypatch.setattr(loop.LocalPolicyWorker, "forward_backward", poisoned)
    with pytest.raises(TrainingStopped, match=r"2 consecutive optimizer steps had a NaN/inf .* step 4"):
        train(cfg, display=quiet())
    run = next(tmp_path.iterdir())
    kept = latest_checkpoint(run / "checkpoints")
    assert kept is not None and kept.name == "step-000003"
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["optim/skipped_steps"] for r in rows] == [0.0, 0.0, 1.0]
    assert rows[2]["perf/policy_version"] == rows[1]["perf/policy_version"]
    before = final_params(run / "checkpoints" / "step-000002")
    assert all(torch.equal(before[k], v) for k, v in final_params(kept).items())


def test_checkpoint_failure_keeps_the_previous_checkpoint(tiny_dir: Path, tmp_path: Path, monkeypatch):
    cfg = config(tiny_dir, tmp_path, "trainer.steps=2", "trainer.save_every=1")
    real = loop.LocalPolicyWorker.save
    calls = {"n": 0}

    def failing(self, directory):
        calls["n"] += 1
        real(self, directory)
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop.LocalPolicyWorker, "save", failing)
    with pytest.raises(OSError, match="No space left"):
        train(cfg, display=quiet())
    checkpoints = next(tmp_path.iterdir()) / "checkpoints"
    assert (checkpoints / LATEST).read_text().strip() == "step-000001"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-000001"]
    assert (checkpoints / "step-000001" / COMPLETE).is_file()


def test_sigint_finishes_the_step_and_saves(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    real = TrainDisplay.end_step

    def interrupt(self, step, total, metrics, prefix="step"):
        real(self, step, total, metrics, prefix)
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(TrainDisplay, "end_step", interrupt)
    result = train(config(tiny_dir, tmp_path), display=quiet())
    assert result.interrupted and result.state.step == 1
    assert result.checkpoint is not None and result.checkpoint.name == "step-000001"
    resumed = train(config(tiny_dir, tmp_path), resume="auto", display=quiet())
    assert resumed.state.step == 4 and not resumed.interrupted


def test_lora_run_checkpoints_an_adapter_peft_loads(tiny_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = config(tiny_dir, tmp_path, "trainer.steps=1", "finetune.mode=lora", "finetune.lora_r=4")
    result = train(cfg, display=quiet())
    model_dir = result.checkpoint / "model"
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert not list(model_dir.glob("model*.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    adapted = PeftModel.from_pretrained(base, model_dir)
    assert any("lora_A" in n for n, _ in adapted.named_parameters())
    merged, _ = load_model(str(result.run_dir), device="cpu")
    expected = adapted.merge_and_unload().state_dict()
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(value, expected[name])


def test_full_checkpoint_loads_with_from_pretrained(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train(config(tiny_dir, tmp_path, "trainer.steps=1"), display=quiet())
    model = AutoModelForCausalLM.from_pretrained(result.checkpoint / "model")
    AutoTokenizer.from_pretrained(result.checkpoint / "model")
    saved = final_params(result.checkpoint)
    for name, value in model.state_dict().items():
        if name in saved:
            assert torch.equal(value, saved[name])
    for spec in (result.run_dir, result.checkpoint):
        loaded, _ = load_model(str(spec), device="cpu")
        assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items() if k in saved)


def test_train_cli_help_and_errors() -> None:
    runner = CliRunner()
    for command in ("train", "sft", "quickstart"):
        out = runner.invoke(app, [command, "--help"])
        assert out.exit_code == 0, out.output
    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    out = runner.invoke(app, ["train", str(quickstart), "algorithm.preset=grpoo"])
    assert out.exit_code == 2 and "Did you mean 'grpo'" in out.output.replace("\n", "")


def truncated_copy(model_dir: Path, target: Path) -> Path:
    """A copy of `model_dir` whose model.safetensors lost its second half."""
    shutil.copytree(model_dir, target)
    weights = target / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    return weights


def test_train_on_a_truncated_model_file_is_one_error_naming_it(tiny_dir: Path, tmp_path: Path) -> None:
    weights = truncated_copy(tiny_dir, tmp_path / "model")
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("seed: 0\n")
    overrides = config_args(weights.parent, tmp_path / "runs")
    result = CliRunner().invoke(app, ["train", str(experiment), *overrides])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    compact = "".join(result.output.split())
    assert f"error:{weights}cannotberead(truncatedorcorrupt:" in compact, result.output
    assert "Traceback" not in result.output


def test_linear_schedule_ends_with_the_run_whatever_optimizer_steps_it_took(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Minibatches reduced to the groups present and steps without any group still move the schedule one
    training step each, so a linear decay reaches its last step (1/steps of the rate), not 56% of it."""
    cfg = config(
        tiny_dir, tmp_path, "trainer.lr_schedule=linear", "trainer.minibatches=2", "trainer.steps=5",
        "trainer.dynamic_sampling=true", "trainer.max_refill_rounds=0", "trainer.learning_rate=0.01",
    )  # fmt: skip
    result = train(cfg, display=quiet())
    rows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r.get("phase") == "rl"]
    short = [r for r in rows if r.get("update/skipped_no_groups") or r.get("update/minibatches") == 1.0]
    assert short, "the test needs a step with fewer optimizer steps than planned"
    for row in rows:
        if "optim/lr" in row:
            assert row["optim/lr"] == pytest.approx(0.01 * (1 - (row["step"] - 1) / 5))


def test_resume_with_another_learning_rate_trains_with_it(tiny_dir: Path, tmp_path: Path) -> None:
    first = train(config(tiny_dir, tmp_path, "trainer.save_every=2"), display=quiet(), stop_after=2)
    cfg = config(tiny_dir, tmp_path, "trainer.save_every=2", "trainer.learning_rate=0.002")
    resumed = train(cfg, resume=str(first.run_dir), display=quiet())
    rows = [r for r in read_metrics(resumed.run_dir / "metrics.jsonl") if r.get("phase") == "rl"]
    lrs = {int(r["step"]): r["optim/lr"] for r in rows if "optim/lr" in r}
    assert lrs[1] == pytest.approx(0.05) and lrs[3] == pytest.approx(0.002) and lrs[4] == pytest.approx(0.002)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_kl_reference_is_the_policy_after_the_sft_cold_start(
    tiny_dir: Path, tmp_path: Path, mode: str
) -> None:
    """On-policy, the first RL step's policy is the SFT'd one, so its KL to the reference is 0; the reference
    survives a resume."""
    cfg = config(
        tiny_dir, tmp_path, f"finetune.mode={mode}", "algorithm.loss.kl_coef=0.1", "sft.enabled=true",
        "sft.source=rejection", "sft.min_reward=0.25", "sft.steps=3", "sft.batch_size=2",
        "sft.learning_rate=0.05", "sft.data.dataset=env", "sft.data.num_tasks=4", "trainer.steps=2",
        "trainer.save_every=1",
    )  # fmt: skip
    first = train(cfg, display=quiet(), stop_after=1)
    rows = [r for r in read_metrics(first.run_dir / "metrics.jsonl") if r.get("phase") == "rl"]
    assert rows[0]["kl/reference"] < 1e-6
    assert (first.run_dir / "reference.safetensors").is_file()
    resumed = train(cfg, resume=str(first.run_dir), display=quiet())
    rows = [r for r in read_metrics(resumed.run_dir / "metrics.jsonl") if r.get("phase") == "rl"]
    assert 0 < rows[1]["kl/reference"] < 0.05


def test_entropy_mean_covers_every_sampled_agent_token(tiny_dir: Path, tmp_path: Path) -> None:
    """Rows of groups without signal are not trained, but their sampled tokens count in `entropy/mean`."""
    from agentrl.rollout.io import read_trajectories

    result = train(config(tiny_dir, tmp_path, "trainer.steps=2"), display=quiet())
    rows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r.get("phase") == "rl"]
    assert any(r.get("update/rows_skipped", 0) > 0 for r in rows), "the test needs untrained rows"
    for row in rows:
        episodes = read_trajectories(result.run_dir / "trajectories" / f"step-{row['step']:06d}.jsonl")
        sampled = [-lp for e in episodes for lp, m in zip(e.logprobs, e.loss_mask, strict=True) if m]
        assert row["entropy/mean"] == pytest.approx(sum(sampled) / len(sampled))
        assert row["entropy/sampled_tokens"] == len(sampled)


def test_groups_held_over_from_earlier_steps_keep_their_sampler_logprobs(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With old log-probs recomputed (2 epochs), a buffered group sampled by an earlier policy version is
    trained against the log-probs it was sampled with, not against the current weights (ratio 1)."""
    seen: list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]] = []
    make = loop.policy_minibatch

    def recording(st, rows, preset, old, stats, behaviour):
        batch, filtered = make(st, rows, preset, old, stats, behaviour)
        seen.append((rows, batch.old_logprobs, st.tensors["old_logprobs"][rows], stats["logprobs"][rows]))
        return batch, filtered

    versions: list[list[int]] = []
    tensors = loop.step_tensors

    def recording_tensors(trajectories, *args):
        versions.append([t.policy_version for t in trajectories])
        return tensors(trajectories, *args)

    monkeypatch.setattr(loop, "policy_minibatch", recording)
    monkeypatch.setattr(loop, "step_tensors", recording_tensors)
    cfg = config(
        tiny_dir, tmp_path, "trainer.dynamic_sampling=true", "trainer.oversample=3.0", "trainer.epochs=2",
        "trainer.steps=4", "trainer.batch_size=1", "data.num_tasks=16",
    )  # fmt: skip
    result = train(cfg, display=quiet())
    rows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r.get("phase") == "rl"]
    assert sum(r.get("update/stale_rows", 0) for r in rows) > 0, "the test needs a held-over group"
    version_after = {int(r["step"]): int(r["perf/policy_version"]) for r in rows}
    updated = [int(r["step"]) for r in rows if not r.get("update/skipped_no_groups")]
    current_of_update = [version_after.get(step - 1, 0) for step in updated]
    stale_checked = 0
    for step_versions, current, (rows_, old, sampler, recomputed) in zip(
        [v for v in versions for _ in range(2)], [c for c in current_of_update for _ in range(2)], seen,
        strict=True,
    ):  # fmt: skip
        for j, r in enumerate(rows_):
            expected = sampler[j] if step_versions[r] < current else recomputed[j]
            torch.testing.assert_close(old[j], expected)
            stale_checked += step_versions[r] < current
    assert stale_checked


@pytest.mark.parametrize("extra", [(), ("trainer.epochs=2",)], ids=["one-step", "recomputed"])
def test_offpolicy_correction_logs_its_weights(
    tiny_dir: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    cfg = config(tiny_dir, tmp_path, "algorithm.loss.offpolicy=token_truncate", "trainer.steps=2", *extra)
    result = train(cfg, display=quiet())
    rows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r.get("phase") == "rl"]
    for row in rows:
        assert 0.5 < row["offpolicy/ratio_mean"] < 1.5 and row["offpolicy/ratio_max"] >= 1.0
        assert 0 <= row["offpolicy/truncated_fraction"] <= 1 and "update/stale_rows" not in row


def test_offpolicy_settings_are_checked_before_the_model_loads(tiny_dir: Path, tmp_path: Path) -> None:
    from agentrl.train.recipe import check_config

    with pytest.raises(ConfigError, match=r"algorithm\.loss: unknown offpolicy 'tis'"):
        check_config(config(tiny_dir, tmp_path, "algorithm.loss.offpolicy=tis"))
