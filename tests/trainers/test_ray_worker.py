"""The Ray worker group on 2 CPU actors (gloo): the same parameters as the in-process worker after two
optimizer steps on the same batch, with uneven loss masks across the shards; statistics, save/load and the
generator sync agree with it too; a dead rank fails the call with its error. One Ray instance per module."""

from __future__ import annotations

import copy
import socket
from types import SimpleNamespace

import pytest
import torch

from agentrl.generation.hf import HFGenerator
from agentrl.train.step_batch import policy_minibatch, step_tensors
from tests.trainers.test_worker import batch_of_episodes, tiny
from trainers.model_setup import TrainableSpec, prepare_for_training
from trainers.optim import OptimConfig
from trainers.presets import get_preset
from trainers.ray_worker import RayWorkerGroup, WorkerGroupError, choose_placement, shard_rows
from trainers.worker import LocalPolicyWorker, WorkerConfig

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def minibatch(preset_name: str = "grpo"):
    """A minibatch of 8 episodes (2 groups) whose loss masks differ row to row: the first group's episodes
    keep a single loss token each, so the two shards hold very different numbers of loss tokens (11 and
    17) while every denominator is the whole minibatch's."""
    preset = get_preset(preset_name)
    episodes = batch_of_episodes()
    for i, e in enumerate(episodes):
        if i < 4:
            first = e.loss_mask.index(1)
            e.loss_mask = [int(j == first) for j in range(len(e.loss_mask))]
        e.logprobs = [(-1.5 - 0.1 * i) * m for m in e.loss_mask]
    st = step_tensors(episodes, preset, 0)
    batch, _ = policy_minibatch(st, list(range(st.size)), preset, st.tensors["old_logprobs"], None)
    return preset, batch


def tiny_tokenizer() -> SimpleNamespace:
    """What the HF generator reads of a tokenizer when it only takes weights (pad and EOS ids)."""
    return SimpleNamespace(pad_token_id=0, eos_token_id=1)


def config_for(preset, budget: int = 4096) -> WorkerConfig:
    return WorkerConfig(OptimConfig(learning_rate=1e-2, total_steps=2, max_grad_norm=1.0), loss=preset.loss,
                        micro_batch_tokens=budget)  # fmt: skip


def assert_same_adam_result(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], lr: float, steps: int
) -> None:
    """Parameters after `steps` Adam steps from one start, on gradients that differ only in reduction order.

    Adam divides each gradient by its own running scale, so where a gradient is near zero a difference in its
    last bits can turn into a different update, of either sign. An update of bias-corrected Adam is at most
    about `lr` (|m / sqrt(v)| <= 1.0013 over the first two steps with betas 0.9, 0.999), so such an element
    may differ by up to 2 x lr x steps. All but one element in a thousand must match to float noise, and
    none may be further apart than that bound.
    """
    assert actual.keys() == expected.keys()
    bound = 2 * lr * steps * 1.01
    loose = total = 0
    for name, value in actual.items():
        diff = (value - expected[name]).abs()
        assert float(diff.max()) <= bound, f"{name}: {float(diff.max())} exceeds 2 x lr x steps = {bound}"
        loose += int((diff > 1e-4 + 1e-3 * expected[name].abs()).sum())
        total += diff.numel()
    assert loose <= total / 1000, f"{loose} of {total} elements differ beyond rtol 1e-3, atol 1e-4"


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_gloo_actors_match_the_local_worker_after_two_steps(ray_cluster, mode: str) -> None:
    preset, batch = minibatch("dapo" if mode == "full" else "grpo")
    shards = shard_rows([int(x) for x in batch.lengths.tolist()], 2)
    tokens = [int(batch.loss_mask[rows].sum()) for rows in shards]
    assert tokens == [11, 17]
    model = prepare_for_training(tiny(), TrainableSpec(mode=mode))
    local_model = copy.deepcopy(model)
    local = LocalPolicyWorker(local_model, config_for(preset))
    group = RayWorkerGroup(model, config_for(preset, budget=40), num_workers=2)
    try:
        assert group.backend == "gloo"
        for _ in range(2):
            expected = local.forward_backward(batch)
            got = group.forward_backward(batch)
            assert got["tokens"] == expected["tokens"] and got["rows_trained"] == expected["rows_trained"]
            assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4, abs=1e-6)
            norm = local.optim_step()["optim/grad_norm"]
            assert group.optim_step()["optim/grad_norm"] == pytest.approx(norm, rel=1e-4)
        assert group.steps == local.steps == 2
        trained = group.trainable_state()
        expected_params = {n: p.detach() for n, p in local_model.named_parameters() if p.requires_grad}
        assert_same_adam_result(trained, expected_params, lr=1e-2, steps=2)
        inputs = {k: getattr(batch, k) for k in ("input_ids", "attention_mask", "loss_mask")}
        stats, expected_stats = group.compute_stats(inputs), local.compute_stats(inputs)
        torch.testing.assert_close(stats["logprobs"], expected_stats["logprobs"], rtol=1e-5, atol=1e-5)
        driver_copy = prepare_for_training(tiny(seed=3), TrainableSpec(mode=mode))
        generator = HFGenerator(driver_copy, tiny_tokenizer())
        group.sync_weights(generator)
        assert generator.policy_version == group.steps
        synced = dict(driver_copy.named_parameters())
        for name, value in trained.items():
            assert torch.equal(synced[name], value), name
    finally:
        group.close()


def test_train_on_two_workers_matches_in_process_and_resumes_after_a_worker_dies(
    ray_cluster, tiny_model_dir, tmp_path, monkeypatch
) -> None:
    """`agentrl train` with trainer.num_workers=2: a rank killed during step 2 fails the step with that
    rank's error, step 1's checkpoint stays intact, `--resume auto` finishes the run, and the final weights
    equal an in-process run's."""
    from agentrl.metrics import read_metrics
    from agentrl.train.checkpoint import latest_checkpoint
    from agentrl.train.loop import train
    from tests.agentrl.test_train import config, final_params, quiet

    extra = ("trainer.steps=2", "trainer.save_every=1", "trainer.learning_rate=0.01")
    local = train(config(tiny_model_dir, tmp_path / "local", *extra), display=quiet())
    cfg = config(tiny_model_dir, tmp_path / "ray", *extra, "trainer.num_workers=2")
    original = RayWorkerGroup.optim_step

    def dies_in_step_two(self: RayWorkerGroup) -> dict[str, float]:
        if self.steps == 1:
            ray.kill(self.actors[1])
        return original(self)

    monkeypatch.setattr(RayWorkerGroup, "optim_step", dies_in_step_two)
    with pytest.raises(WorkerGroupError, match="policy worker rank 1 died"):
        train(cfg, display=quiet())
    run_dir = next((tmp_path / "ray").iterdir())
    kept = latest_checkpoint(run_dir / "checkpoints")
    assert kept is not None and kept.name == "step-000001"
    monkeypatch.setattr(RayWorkerGroup, "optim_step", original)
    resumed = train(cfg, resume="auto", display=quiet())
    assert resumed.run_dir == run_dir and resumed.state.step == 2
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["phase"] == "rl"]
    assert [r["episode/policy_version_min"] for r in rows] == [0.0, 1.0]  # sampled with synced weights
    assert_same_adam_result(
        final_params(resumed.checkpoint), final_params(local.checkpoint), lr=0.01, steps=2
    )


def test_bad_cluster_settings_fail_before_the_model_loads(ray_cluster, tiny_model_dir, tmp_path) -> None:
    from agentrl.core.config import ConfigError
    from agentrl.train.loop import train
    from tests.agentrl.test_train import config, quiet

    with pytest.raises(ConfigError, match=r"trainer.num_workers=3 needs 3 CPUs .* has 2"):
        train(config(tiny_model_dir, tmp_path, "trainer.num_workers=3"), display=quiet())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    silent = config(tiny_model_dir, tmp_path, "trainer.num_workers=2", f"ray.address=127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=rf"ray.address='127.0.0.1:{port}': nothing answers"):
        train(silent, display=quiet())
    assert not list(tmp_path.glob("*/checkpoints"))


def test_placement_refuses_more_workers_than_the_cluster_has() -> None:
    assert choose_placement(2, {"CPU": 2.0}).backend == "gloo"
    assert choose_placement(2, {"CPU": 32.0, "GPU": 4.0}).backend == "nccl"
    with pytest.raises(ValueError, match=r"trainer.num_workers=3 needs 3 CPUs .* has 2"):
        choose_placement(3, {"CPU": 2.0})
    with pytest.raises(ValueError, match=r"trainer.num_workers=8 needs 8 GPUs .* has 4"):
        choose_placement(8, {"CPU": 64.0, "GPU": 4.0})


def test_shards_balance_tokens_and_cover_every_row_once() -> None:
    shards = shard_rows([10, 3, 7, 7, 1], 2)
    assert sorted(r for s in shards for r in s) == [0, 1, 2, 3, 4]
    assert shard_rows([5], 3) == [[0], [], []]
