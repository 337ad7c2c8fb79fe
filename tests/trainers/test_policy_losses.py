"""Policy losses: micro-batch invariance of every aggregation, GSPO/WAPO/GRPO-N gradients, clipping."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from trainers.advantages import compute_advantages
from trainers.filters import FilterInputs, FilterResult, apply_filters
from trainers.logprobs import token_stats
from trainers.losses import (
    AGGREGATIONS,
    LossConfig,
    LossNormalizer,
    gspo_loss,
    kl_penalty,
    policy_loss,
    ppo_token_loss,
    sequence_log_ratio,
    wapo_loss,
)

B, T, H, V = 10, 9, 6, 13
GROUPS = torch.tensor([4, 9, 4, 2, 9, 2, 4, 7, 9, 7])
SPLITS = ([[0, 1, 2], [3], [4, 5, 6, 7], [8, 9]], [[7, 2, 5], [0, 9, 1], [3, 4, 6, 8]])


@dataclass
class Batch:
    feats: torch.Tensor
    proj: torch.nn.Linear
    head: torch.nn.Parameter
    targets: torch.Tensor
    loss_mask: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    rewards: torch.Tensor

    def params(self) -> list[torch.Tensor]:
        return [*self.proj.parameters(), self.head]

    def stats(self, rows: torch.Tensor):  # type: ignore[no-untyped-def]
        hidden = torch.tanh(self.proj(self.feats[rows]))
        return token_stats(hidden, self.head, self.targets[rows], chunk_size=7, mask=self.loss_mask[rows])


def make_batch(seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    proj = torch.nn.Linear(H, H).double()
    head = torch.nn.Parameter(torch.randn(V, H, generator=gen, dtype=torch.float64))
    feats = torch.randn(B, T, H, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i in range(B):
        start = int(torch.randint(1, 3, (1,), generator=gen))
        end = int(torch.randint(start + 2, T + 1, (1,), generator=gen))
        mask[i, start:end] = True
        if end - start > 3:
            mask[i, start + 1] = False  # an observation token inside the episode
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.3, 0.0, 0.9])
    batch = Batch(feats, proj, head, targets, mask, torch.zeros(B, T), torch.zeros(B, T), rewards)
    with torch.no_grad():
        logp = batch.stats(torch.arange(B)).logprobs
    batch.old_logp = (logp + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    batch.ref_logp = (logp + 0.2 * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    return batch


def minibatch_filters(batch: Batch, adv: torch.Tensor, specs: list, renormalize: bool) -> FilterResult:
    with torch.no_grad():
        stats = batch.stats(torch.arange(B))
    inputs = FilterInputs(batch.loss_mask, adv, stats.logprobs, stats.entropy, stats.collision, GROUPS)
    return apply_filters(inputs, specs, renormalize=renormalize)


def grads_of(
    batch: Batch,
    splits: list[list[int]],
    config: LossConfig,
    adv: torch.Tensor,
    filt: FilterResult,
    normalizer: LossNormalizer | None,
) -> list[torch.Tensor]:
    total = [torch.zeros_like(p) for p in batch.params()]
    for split in splits:
        rows = torch.tensor(split)
        norm = normalizer
        if norm is None:  # deliberately wrong: denominators of the micro-batch only
            norm = LossNormalizer.build(
                config.aggregation,
                filt.count_mask[rows],
                GROUPS[rows],
                max_length=T,
                advantages=adv[rows],
                active_groups_only=config.active_groups_only,
            )
        stats = batch.stats(rows)
        loss, _ = policy_loss(
            config,
            norm,
            stats.logprobs,
            batch.old_logp[rows],
            adv[rows],
            filt.keep[rows],
            group_ids=GROUPS[rows],
            token_weights=filt.weights[rows],
            ref_logp=batch.ref_logp[rows],
            entropy=stats.entropy,
            count_mask=filt.count_mask[rows],
        )
        for acc, g in zip(total, torch.autograd.grad(loss, batch.params()), strict=True):
            acc += g
    return total


FILTER_CASES = {
    "none": ([], True),
    "stapo": ([{"name": "stapo", "tau_p": 0.2, "entropy_top_fraction": 0.5}], True),
    "stapo_no_renorm": ([{"name": "stapo", "tau_p": 0.2, "entropy_top_fraction": 0.5}], False),
    "cov_gaussian": (["cov_gaussian"], True),
    "high_entropy+cov": (["high_entropy", "cov_gaussian"], True),
}


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("ratio", ["token", "sequence", "wapo"])
@pytest.mark.parametrize("filters", list(FILTER_CASES))
def test_micro_batches_sum_to_minibatch_gradient(aggregation: str, ratio: str, filters: str) -> None:
    batch = make_batch()
    scheme = "wapo" if ratio == "wapo" else "grpo"
    adv = compute_advantages(scheme, batch.rewards, GROUPS)
    specs, renorm = FILTER_CASES[filters]
    filt = minibatch_filters(batch, adv, specs, renorm)
    if filters.startswith("stapo"):
        assert 0 < filt.dropped_fraction < 1
    config = LossConfig(
        ratio=ratio,
        aggregation=aggregation,
        max_length=T,
        kl_coef=0.05,
        kl_estimator="k3",
        entropy_coef=0.01,
        active_groups_only=ratio == "wapo",
        eps_low=0.2,
        eps_high=0.28,
    )
    normalizer = LossNormalizer.build(
        aggregation,
        filt.count_mask,
        GROUPS,
        max_length=T,
        advantages=adv,
        active_groups_only=config.active_groups_only,
    )
    full = grads_of(batch, [list(range(B))], config, adv, filt, normalizer)
    assert sum(float(g.abs().sum()) for g in full) > 0
    for splits in SPLITS:
        micro = grads_of(batch, splits, config, adv, filt, normalizer)
        for a, b in zip(micro, full, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "fixed_length"])
def test_local_denominators_would_break_invariance(aggregation: str) -> None:
    """Control: normalizing each micro-batch by its own counts changes the gradient."""
    batch = make_batch()
    adv = compute_advantages("grpo", batch.rewards, GROUPS)
    filt = minibatch_filters(batch, adv, [], True)
    config = LossConfig(aggregation=aggregation, max_length=T)
    normalizer = LossNormalizer.build(aggregation, filt.count_mask, GROUPS, max_length=T)
    full = grads_of(batch, [list(range(B))], config, adv, filt, normalizer)
    local = grads_of(batch, SPLITS[0], config, adv, filt, None)
    assert max(float((a - b).abs().max()) for a, b in zip(local, full, strict=True)) > 1e-4


def test_aggregation_weights_values() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    gid = torch.tensor([5, 5, 8])
    tm = LossNormalizer.build("token_mean", mask).token_weights(mask)
    torch.testing.assert_close(tm, mask.double() / 7)
    sm = LossNormalizer.build("seq_mean_token_mean", mask).token_weights(mask)
    torch.testing.assert_close(sm.sum(-1), torch.full((3,), 1 / 3, dtype=torch.float64))
    ss = LossNormalizer.build("seq_mean_token_sum", mask).token_weights(mask)
    torch.testing.assert_close(ss, mask.double() / 3)
    fl = LossNormalizer.build("fixed_length", mask, gid, max_length=10).token_weights(mask, gid)
    want = (
        mask.double() * torch.tensor([1 / (2 * 10 * 2), 1 / (2 * 10 * 2), 1 / (1 * 10 * 2)])[:, None].double()
    )
    torch.testing.assert_close(fl, want)
    adv = torch.tensor([0.5, 0.0, 0.0])
    active = LossNormalizer.build(
        "fixed_length", mask, gid, max_length=10, advantages=adv, active_groups_only=True
    )
    assert active.num_groups == 1
    w = active.token_weights(mask, gid)
    assert torch.equal(w[2], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(w[0], mask[0].double() / (2 * 10))


def test_normalizer_errors() -> None:
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="group_ids and max_length"):
        LossNormalizer.build("fixed_length", mask)
    norm = LossNormalizer.build("fixed_length", mask, torch.tensor([1, 2]), max_length=3)
    with pytest.raises(ValueError, match="not built with"):
        norm.token_weights(mask, torch.tensor([1, 5]))
    with pytest.raises(ValueError, match="unknown aggregation"):
        LossNormalizer.build("mean", mask)
    with pytest.raises(ValueError, match="unknown ratio"):
        LossConfig(ratio="seq")


def test_seq_mean_token_mean_without_renormalization_counts_all_original_tokens() -> None:
    """Sequence 0 has 4 loss tokens and keeps 2, sequence 1 has 2 and keeps 1; ratio 1, so ℓ_t = -A_i.

    renormalize=False: (1/2)·[(1/4)·2·(-1) + (1/2)·1·(+2)] = 0.25
    renormalize=True:  (1/2)·[(1/2)·2·(-1) + (1/1)·1·(+2)] = 0.5
    """
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    keep = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    logp = torch.full((2, 4), -0.5, dtype=torch.float64)
    config = LossConfig(aggregation="seq_mean_token_mean")
    for renormalize, want in ((False, 0.25), (True, 0.5)):
        filt = FilterResult(keep, keep.double(), renormalize=renormalize, original_mask=mask)
        norm = LossNormalizer.build(config.aggregation, filt.count_mask)
        loss, _ = policy_loss(config, norm, logp, logp, adv, filt.keep, count_mask=filt.count_mask)
        assert float(loss) == pytest.approx(want, abs=1e-12)
        split = 0.0
        for r in ([0], [1]):  # one sequence per micro-batch
            counted = filt.count_mask[r]
            part, _ = policy_loss(config, norm, logp[r], logp[r], adv[r], keep[r], count_mask=counted)
            split += float(part)
        assert split == pytest.approx(want, abs=1e-12)
    weights = LossNormalizer.build(config.aggregation, mask).token_weights(keep, count_mask=mask)
    torch.testing.assert_close(weights, keep.double() / torch.tensor([[4.0 * 2], [2.0 * 2]]).double())


def test_gspo_gradient_equals_analytic() -> None:
    """d/d log π_{i,t} of (1/B) Σ_i -min(s_i A_i, clip(s_i) A_i).

    It is -A_i s_i/(B|y_i|) inside the clip range and 0 outside.
    """
    gen = torch.Generator().manual_seed(4)
    b, t = 6, 8
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[:, 6:] = False
    mask[1, 3:] = False
    old = torch.randn(b, t, generator=gen, dtype=torch.float64) * mask
    shift = torch.tensor([0.0, 0.05, 0.5, -0.5, 0.1, -0.1], dtype=torch.float64)
    logp = (
        old + shift[:, None] + 0.01 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    ).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, -0.5, 0.7], dtype=torch.float64)
    config = LossConfig(ratio="sequence", eps_low=0.2, eps_high=0.2, aggregation="seq_mean_token_mean")
    normalizer = LossNormalizer.build("seq_mean_token_mean", mask)
    loss, _ = policy_loss(config, normalizer, logp, old, adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)

    lengths = mask.sum(-1).double()
    s = torch.exp(((logp.detach() - old) * mask).sum(-1) / lengths)
    active = torch.where(adv > 0, s <= 1.2, s >= 0.8).double()
    want = (-adv * s * active / (b * lengths))[:, None] * mask
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-14)
    assert active.min() == 0 and active.max() == 1  # both regimes exercised
    objective = -(torch.minimum(s * adv, s.clamp(0.8, 1.2) * adv)).mean()
    assert float(loss.detach()) == pytest.approx(float(objective), rel=1e-12)
    torch.testing.assert_close(sequence_log_ratio(logp.detach(), old, mask).exp(), s)


def test_gspo_needs_sequence_advantages() -> None:
    with pytest.raises(ValueError, match=r"\[B\]"):
        gspo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))


@pytest.mark.parametrize("aggregation", ["fixed_length", "token_mean"])
def test_wapo_nonpositive_advantages_get_zero_gradient(aggregation: str) -> None:
    batch = make_batch(1)
    adv = compute_advantages("dr_grpo", batch.rewards, GROUPS)  # signed: the loss must drop A <= 0 itself
    rows = torch.arange(B)
    stats = batch.stats(rows)
    logp = stats.logprobs.detach().requires_grad_()
    config = LossConfig(ratio="wapo", aggregation=aggregation, max_length=T)
    norm = LossNormalizer.build(aggregation, batch.loss_mask, GROUPS, max_length=T)
    loss, _ = policy_loss(config, norm, logp, batch.old_logp, adv, batch.loss_mask, group_ids=GROUPS)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.equal(grad[adv <= 0], torch.zeros_like(grad[adv <= 0]))
    assert (grad[adv > 0].abs().sum(-1) > 0).all()


def test_grpo_n_nonnegative_advantages_get_zero_gradient() -> None:
    batch = make_batch(2)
    plain = compute_advantages("grpo", batch.rewards, GROUPS)
    adv = compute_advantages("grpo_n", batch.rewards, GROUPS)
    torch.testing.assert_close(adv, plain.clamp(max=0))
    logp = batch.stats(torch.arange(B)).logprobs.detach().requires_grad_()
    old = logp.detach() * batch.loss_mask
    config = LossConfig(eps_low=0.2, eps_high=0.2)
    loss, _ = policy_loss(
        config, LossNormalizer.build(config.aggregation, batch.loss_mask), logp, old, adv, batch.loss_mask
    )
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.equal(grad[plain >= 0], torch.zeros_like(grad[plain >= 0]))
    assert (grad[plain < 0].abs().sum(-1) > 0).all()


def test_ppo_clip_dual_clip_and_log_ratio_clamp() -> None:
    old = torch.zeros(1, 5, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.5, 0.5, 5.0, 1.1, 1.0]], dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, -2.0]], dtype=torch.float64)
    loss, info = ppo_token_loss(logp, old, adv, eps_low=0.2, eps_high=0.2, dual_clip=3.0)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 0.8, 3.0, -1.1, 2.0]], dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert grad[0, 0] == 0 and grad[0, 1] == 0 and grad[0, 2] == 0  # clipped high, clipped low, dual-clipped
    assert grad[0, 3] != 0 and grad[0, 4] != 0
    assert info["clipped_high"].tolist() == [[True, False, False, False, False]]
    assert info["clipped_low"].tolist() == [[False, True, False, False, False]]
    assert info["dual_clipped"].tolist() == [[False, False, True, False, False]]
    huge, info = ppo_token_loss(
        torch.tensor([[100.0]]), torch.tensor([[0.0]]), torch.tensor([1.0]), dual_clip=None, eps_high=1e9
    )
    assert torch.isfinite(huge).all() and float(info["ratio"]) == pytest.approx(
        float(torch.tensor(20.0).exp())
    )
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_token_loss(old, old, adv, dual_clip=0.5)


def test_wapo_loss_upper_clip_only() -> None:
    old = torch.zeros(1, 3, dtype=torch.float64)
    logp = torch.log(torch.tensor([[0.1, 1.1, 2.0]], dtype=torch.float64))
    loss, _ = wapo_loss(logp, old, torch.tensor([2.0], dtype=torch.float64), eps_high=0.2)
    torch.testing.assert_close(loss, torch.tensor([[-0.2, -2.2, -2.4]], dtype=torch.float64))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators(estimator: str) -> None:
    logp = torch.log(torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64))
    ref = torch.log(torch.tensor([0.4, 0.5, 0.3], dtype=torch.float64))
    d = ref - logp
    want = {"k1": -d, "k2": 0.5 * d**2, "k3": d.exp() - d - 1}[estimator]
    got = kl_penalty(logp, ref, estimator)
    torch.testing.assert_close(got, want)
    assert got[1] == 0
    if estimator != "k1":
        assert (got >= 0).all()
    with pytest.raises(KeyError, match="KL estimator"):
        kl_penalty(logp, ref, "k4")


def test_policy_loss_requires_inputs_for_kl_and_entropy() -> None:
    x = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    norm = LossNormalizer.build("token_mean", mask)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(LossConfig(kl_coef=0.1), norm, x, x, torch.zeros(1), mask)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(LossConfig(entropy_coef=0.1), norm, x, x, torch.zeros(1), mask)
