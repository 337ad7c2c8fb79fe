"""Off-policy correction: importance weights toward π_old of samples drawn by another policy or precision,
truncated or masked per token or per sequence, in closed form and through the worker."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from agentrl.train.step_batch import policy_minibatch, step_tensors
from tests.trainers.test_worker import batch_of_episodes, tiny, with_sampler_logprobs
from trainers.losses import LossConfig, LossNormalizer, offpolicy_weights, policy_loss
from trainers.model_setup import TrainableSpec, prepare_for_training
from trainers.optim import OptimConfig
from trainers.presets import get_preset
from trainers.worker import LocalPolicyWorker, WorkerConfig, finalize_metrics

OLD = torch.tensor([[0.5, 0.2, 0.9, 1.0], [0.5, 0.5, 1.0, 1.0]]).log()
BEHAVIOUR = torch.tensor([[0.25, 0.4, 0.3, 1.0], [0.5, 0.25, 1.0, 1.0]]).log()
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # w_t = 2, 0.5, 3 | 1, 2


@pytest.mark.parametrize(
    ("mode", "cap", "expected"),
    [
        ("none", 2.5, [[1, 1, 1, 0], [1, 1, 0, 0]]),
        ("token_truncate", 2.5, [[2, 0.5, 2.5, 0], [1, 2, 0, 0]]),
        ("token_mask", 2.5, [[1, 1, 0, 0], [1, 1, 0, 0]]),  # floor 1/2.5 = 0.4 keeps 0.5
        ("sequence_truncate", 2.5, [[2.5, 2.5, 2.5, 0], [2, 2, 0, 0]]),  # Π w = 3 | 2
        ("sequence_mask", 2.5, [[0, 0, 0, 0], [1, 1, 0, 0]]),
        ("token_mask", 4.0, [[1, 1, 1, 0], [1, 1, 0, 0]]),
    ],
)  # fmt: skip
def test_weights_in_closed_form(mode: str, cap: float, expected: list[list[float]]) -> None:
    weights, info = offpolicy_weights(OLD, BEHAVIOUR, MASK, mode, cap=cap)
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float32))
    raw = [[2, 0.5, 3, 0], [1, 2, 0, 0]] if mode.startswith("token") or mode == "none" else None
    if raw is not None:
        torch.testing.assert_close(info["raw"], torch.tensor(raw, dtype=torch.float32))
    if mode == "token_truncate":
        assert info["truncated"].tolist() == [[False, False, True, False], [False] * 4]
    if mode == "sequence_mask":
        assert info["masked"].tolist() == [[True, True, True, False], [False] * 4]


def test_mask_floor_is_configurable() -> None:
    weights, info = offpolicy_weights(OLD, BEHAVIOUR, MASK, "token_mask", cap=5.0, floor=0.6)
    assert weights.tolist() == [[1, 0, 1, 0], [1, 1, 0, 0]] and int(info["masked"].sum()) == 1


def test_loss_gradient_is_the_weighted_on_policy_gradient() -> None:
    """On-policy ratio (old = the forward's own log-probs), token-mean: ∂ℓ/∂log π_t = -A·min(w_t, C)/N."""
    logp = OLD.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -2.0])
    config = LossConfig(aggregation="token_mean", offpolicy="token_truncate", offpolicy_cap=2.5)
    normalizer = LossNormalizer.build("token_mean", MASK)
    loss, info = policy_loss(config, normalizer, logp, logp.detach(), adv, MASK, behaviour_logp=BEHAVIOUR)
    loss.backward()
    w = torch.tensor([[2, 0.5, 2.5, 0], [1, 2, 0, 0]])
    torch.testing.assert_close(logp.grad, -adv[:, None] * w * MASK / MASK.sum())
    assert "offpolicy_raw" in info


def test_unknown_mode_and_cap_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown offpolicy 'tis'"):
        LossConfig(offpolicy="tis")
    with pytest.raises(ValueError, match="offpolicy_cap must be a finite number >= 1"):
        LossConfig(offpolicy="token_truncate", offpolicy_cap=0.5)


def test_worker_weights_toward_its_own_forward_when_old_logprobs_are_the_samplers() -> None:
    """One optimizer step per batch: π_old is the forward itself, so a sampler that put e^-0.1 less mass on
    every token gives weights e^0.1 (under the cap) and exactly e^0.1 times the uncorrected gradient."""
    preset = get_preset("grpo")
    grads, metrics = [], []
    for offpolicy, shift in (("none", 0.0), ("token_truncate", 0.1)):
        model = prepare_for_training(tiny(), TrainableSpec())
        loss = dataclasses.replace(preset.loss, offpolicy=offpolicy, offpolicy_cap=2.0, max_length=32)
        worker = LocalPolicyWorker(model, WorkerConfig(OptimConfig(learning_rate=0.01, total_steps=1), loss))
        episodes = with_sampler_logprobs(worker, batch_of_episodes())
        for e in episodes:
            e.logprobs = [lp - shift * m for lp, m in zip(e.logprobs, e.loss_mask, strict=True)]
        st = step_tensors(episodes, preset, 0)
        batch, _ = policy_minibatch(st, list(range(st.size)), preset, st.tensors["old_logprobs"], None)
        metrics.append(finalize_metrics(worker.forward_backward(batch)))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0] * math.exp(0.1), rtol=1e-4, atol=1e-7)
    assert metrics[1]["offpolicy/ratio_mean"] == pytest.approx(math.exp(0.1), rel=1e-4)
    assert metrics[1]["offpolicy/truncated_fraction"] == 0.0
    assert metrics[1]["ratio/mean"] == pytest.approx(1.0)
    assert "offpolicy/ratio_mean" not in metrics[0]
