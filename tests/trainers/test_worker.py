"""The local policy worker on a tiny random model: every preset trains (full and LoRA) with gradient only on
agent tokens, micro-batching leaves the gradient unchanged, non-finite steps are skipped, save/load
round-trips, and recomputed log-probs honour the sampler's temperature, top-k and top-p."""

from __future__ import annotations

import copy

import pytest
import torch

from agentrl.core.generator import process_logits
from agentrl.core.types import Trajectory
from agentrl.train.step_batch import needs_stats, policy_minibatch, sft_batch, step_tensors
from trainers.advantages import FadeState
from trainers.batching import PolicyBatch, pack_micro_batches, split_minibatches
from trainers.logprobs import naive_token_stats, token_stats
from trainers.losses import LossNormalizer
from trainers.model_setup import TrainableSpec, decoder_and_head, prepare_for_training
from trainers.optim import OptimConfig, lr_factor
from trainers.presets import PRESETS, get_preset
from trainers.worker import LocalPolicyWorker, WorkerConfig, signal_rows

VOCAB = 200


def tiny(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def episode(gen: torch.Generator, group: int, reward: float) -> Trajectory:
    """Prompt (mask 0), agent turn, observation (mask 0), agent turn; lengths vary, so batches carry
    padding."""
    bounds = [(4, 8, 0), (2, 6, 1), (2, 5, 0), (1, 5, 1)]
    parts = [(int(torch.randint(lo, hi, (1,), generator=gen)), m) for lo, hi, m in bounds]
    mask = [m for n, m in parts for _ in range(n)]
    turns = [-1] * parts[0][0] + [0] * (parts[1][0] + parts[2][0]) + [1] * parts[3][0]
    ids = torch.randint(1, VOCAB, (len(mask),), generator=gen).tolist()
    return Trajectory(
        task_id=f"t{group}", group_id=group, token_ids=ids, loss_mask=mask, turn_ids=turns,
        logprobs=[0.0] * len(mask), prompt_length=parts[0][0], reward=reward, turn_rewards=[0.0, reward],
        num_turns=2, finish_reason="answer",
    )  # fmt: skip


def batch_of_episodes(seed: int = 0) -> list[Trajectory]:
    gen = torch.Generator().manual_seed(seed)
    rewards = [1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 1.0, 0.5]
    return [episode(gen, i // 4, r) for i, r in enumerate(rewards)]


def with_sampler_logprobs(worker: LocalPolicyWorker, episodes: list[Trajectory]) -> list[Trajectory]:
    """The sampler's log-probs = the model's own (ratio 1 at the first step)."""
    from agentrl.rollout.collate import collate

    t = collate(episodes, pad_token_id=0)
    stats = worker.compute_stats({k: t[k] for k in ("input_ids", "attention_mask", "loss_mask")})
    for i, e in enumerate(episodes):
        row = stats["logprobs"][i].tolist()
        e.logprobs = [float(x) if m else 0.0 for x, m in zip(row, e.loss_mask, strict=False)]
    return episodes


class HiddenGrad:
    """Keeps the final hidden states of the last forward with their gradient."""

    def __init__(self, model) -> None:
        body, _ = decoder_and_head(model)
        self.hidden = None
        body.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        if output.last_hidden_state.requires_grad:
            output.last_hidden_state.retain_grad()
            self.hidden = output.last_hidden_state


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_trains_with_gradient_only_on_agent_tokens(name: str, mode: str) -> None:
    model = prepare_for_training(tiny(), TrainableSpec(mode=mode, lora_r=4))
    preset = get_preset(name)
    if preset.loss.max_length is None:
        preset.loss.max_length = 32
    reference = copy.deepcopy(model).requires_grad_(False) if preset.loss.kl_coef and mode == "full" else None
    optim = OptimConfig(learning_rate=0.05, total_steps=3)
    config = WorkerConfig(optim, loss=preset.loss, micro_batch_tokens=4096, share_prompts=False)
    worker = LocalPolicyWorker(model, config, reference=reference)
    episodes = with_sampler_logprobs(worker, batch_of_episodes())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    hook = HiddenGrad(model)
    fade = FadeState()
    for step in range(3):
        st = step_tensors(episodes, preset, 0, fade_state=fade)
        stats = None
        if needs_stats(preset, 1, 1):
            t = st.tensors
            inputs = {k: t[k] for k in ("input_ids", "attention_mask", "loss_mask")}
            stats = worker.compute_stats(inputs, with_reference=bool(preset.loss.kl_coef))
        batch, _ = policy_minibatch(st, list(range(st.size)), preset, st.tensors["old_logprobs"], stats)
        sums = worker.forward_backward(batch)
        assert sums["tokens"] > 0 and torch.isfinite(torch.tensor(sums["loss"]))
        if step == 0:
            trained = batch.select(signal_rows(batch, preset.loss))
            micro = trained.select(pack_micro_batches(trained.lengths, 4096)[0])
            grad = hook.hidden.grad
            predicts_agent = torch.zeros_like(micro.loss_mask, dtype=torch.bool)
            predicts_agent[:, :-1] = micro.loss_mask[:, 1:].bool()
            assert torch.count_nonzero(grad[~predicts_agent]) == 0
            assert torch.count_nonzero(grad[predicts_agent]) > 0
        result = worker.optim_step()
        assert result["optim/skipped"] == 0.0
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, f"{name}/{mode}: no parameter moved"


def test_micro_batching_does_not_change_the_gradient() -> None:
    preset = get_preset("grpo")
    grads = []
    for budget in (4096, 24):
        model = prepare_for_training(tiny(), TrainableSpec())
        optim = OptimConfig(learning_rate=1e-3, total_steps=1)
        config = WorkerConfig(optim, loss=preset.loss, micro_batch_tokens=budget)
        worker = LocalPolicyWorker(model, config)
        episodes = batch_of_episodes()
        for e in episodes:
            e.logprobs = [-2.0 * m for m in e.loss_mask]
        st = step_tensors(episodes, preset, 0)
        batch, _ = policy_minibatch(st, list(range(st.size)), preset, st.tensors["old_logprobs"], None)
        worker.forward_backward(batch)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert len(pack_micro_batches(batch.lengths, 24)) > 1
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_nonfinite_loss_skips_the_step_and_leaves_weights() -> None:
    preset = get_preset("grpo")
    model = prepare_for_training(tiny(), TrainableSpec())
    config = WorkerConfig(OptimConfig(learning_rate=0.1, total_steps=2), loss=preset.loss)
    worker = LocalPolicyWorker(model, config)
    st = step_tensors(batch_of_episodes(), preset, 0)
    batch, _ = policy_minibatch(st, list(range(st.size)), preset, st.tensors["old_logprobs"], None)
    batch.advantages = batch.advantages * float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    sums = worker.forward_backward(batch)
    assert sums["nonfinite"] >= 1 and sums["nonfinite_first_min"] == 0
    result = worker.optim_step()
    assert result["optim/skipped"] == 1.0 and worker.steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_save_and_load_round_trip(tmp_path, mode: str) -> None:
    preset = get_preset("grpo")
    spec = TrainableSpec(mode=mode, lora_r=4)
    model = prepare_for_training(tiny(), spec)
    config = WorkerConfig(OptimConfig(learning_rate=0.05, total_steps=4), loss=preset.loss)
    worker = LocalPolicyWorker(model, config)
    st = step_tensors(batch_of_episodes(), preset, 0)
    batch, _ = policy_minibatch(st, list(range(st.size)), preset, st.tensors["old_logprobs"], None)
    worker.forward_backward(batch)
    worker.optim_step()
    worker.save(tmp_path)
    base_seed = 0 if mode == "lora" else 1  # an adapter restores onto its own base model
    other = LocalPolicyWorker(prepare_for_training(tiny(seed=base_seed), spec), config)
    other.load(tmp_path)
    for (n, a), (_, b) in zip(model.state_dict().items(), other.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert other.steps == 1 and other.scheduler.last_epoch == worker.scheduler.last_epoch
    for a, b in zip(worker.optimizer.state.values(), other.optimizer.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_sft_batch_is_mean_nll_of_agent_tokens() -> None:
    model = prepare_for_training(tiny(), TrainableSpec())
    worker = LocalPolicyWorker(model, WorkerConfig(OptimConfig(learning_rate=0.01, total_steps=1)))
    episodes = batch_of_episodes()
    batch = sft_batch(episodes, pad_token_id=0)
    sums = worker.forward_backward(batch)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logp = logits.log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = batch.loss_mask[:, 1:].bool()
    expected = -logp[mask].mean()
    assert sums["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert sums["nll_sum"] / sums["tokens"] == pytest.approx(float(expected), rel=1e-5)


def test_only_the_upper_layers_train_when_asked() -> None:
    model = prepare_for_training(tiny(), TrainableSpec(train_layers="upper_half", freeze_embeddings=True))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("model.layers.1.", "model.norm.")) for n in trained)
    with pytest.raises(ValueError, match="train_layers=5 but the model has 2"):
        prepare_for_training(tiny(), TrainableSpec(train_layers=5))


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (5, 1.0), (0, 0.7), (7, 0.8)])
def test_recomputed_logprobs_follow_the_sampling_distribution(top_k: int, top_p: float) -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    logits = hidden @ weight.t()
    reference = process_logits(logits.detach(), 0.7, top_k, top_p).double()
    targets = reference.argmax(-1)
    stats = token_stats(hidden, weight, targets, temperature=0.7, top_k=top_k, top_p=top_p, chunk_size=5)
    expected = reference.gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(stats.logprobs.detach(), expected, rtol=1e-5, atol=1e-6)  # float32 reference
    (stats.logprobs.sum() + stats.entropy.sum()).backward()
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()
    if top_k == 0 and top_p == 1.0:
        plain = naive_token_stats(hidden.detach(), weight.detach(), targets, temperature=0.7)
        torch.testing.assert_close(stats.entropy.detach(), plain.entropy)


def test_minibatches_hold_whole_groups_and_refuse_uneven_splits() -> None:
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    parts = split_minibatches(groups, 2, torch.Generator().manual_seed(0))
    assert sorted(i for p in parts for i in p) == list(range(8))
    for p in parts:
        assert len({int(groups[i]) for i in p}) == 2 and len(p) == 4
    with pytest.raises(ValueError, match=r"4 groups cannot be split into trainer\.minibatches=3"):
        split_minibatches(groups, 3, torch.Generator())
    with pytest.raises(ValueError, match="an episode of 50 tokens does not fit"):
        pack_micro_batches([10, 50], 40)


def test_policy_batch_checks_shapes() -> None:
    t = torch.zeros(2, 3)
    normalizer = LossNormalizer.build("token_mean", t)
    with pytest.raises(ValueError, match="loss_mask has shape"):
        PolicyBatch(t.long(), t.long(), torch.zeros(2, 4), t, torch.zeros(2), t[:, 0].long(), normalizer)


def test_warmup_then_decay_schedules() -> None:
    cosine = OptimConfig(learning_rate=1.0, total_steps=10, warmup_ratio=0.2, schedule="cosine")
    assert [lr_factor(s, cosine) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(9, cosine) < 0.05
    linear = OptimConfig(learning_rate=1.0, total_steps=4, schedule="linear")
    assert [lr_factor(s, linear) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(ValueError, match="lr schedule"):
        OptimConfig(learning_rate=1.0, total_steps=1, schedule="step")


@pytest.mark.parametrize(
    ("top_p", "system", "sizes"),
    [(1.0, 0, (5, 8)), (0.9, 0, (3, 6)), (1.0, 20, (4, 7)), (1.0, 20, (0, 3))],
    ids=["group-prompts", "top-p", "system-prompt", "prompt-equals-system-prompt"],
)
def test_sharing_prompts_gives_the_plain_forward_values_and_gradients(top_p, system, sizes) -> None:
    from trainers.forward import policy_token_stats
    from trainers.logprobs import Processing

    episodes = batch_of_episodes()
    gen = torch.Generator().manual_seed(1)
    shared = torch.randint(1, VOCAB, (system,), generator=gen).tolist()
    prompts = {g: shared + torch.randint(1, VOCAB, (n,), generator=gen).tolist() for g, n in enumerate(sizes)}
    for e in episodes:
        body = e.token_ids[e.prompt_length :]
        e.token_ids = prompts[e.group_id] + body
        e.loss_mask = [0] * len(prompts[e.group_id]) + e.loss_mask[e.prompt_length :]
        e.turn_ids = [-1] * len(prompts[e.group_id]) + e.turn_ids[e.prompt_length :]
        e.logprobs = [0.0] * len(e.token_ids)
        e.prompt_length = len(prompts[e.group_id])
    from agentrl.rollout.collate import collate

    t = collate(episodes, pad_token_id=0)
    results = []
    for share in (False, True):
        model = tiny()
        stats, window = policy_token_stats(
            model, t["input_ids"], t["attention_mask"], t["loss_mask"], t["prompt_lengths"],
            Processing(0.8, 0, top_p), share_prompts=share,
        )  # fmt: skip
        width = t["input_ids"].shape[1]
        logp = window.put(stats.logprobs, width)
        ent = window.put(stats.entropy, width)
        (logp.sum() + 0.1 * ent.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((logp.detach(), ent.detach(), grads))
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = results
    assert torch.count_nonzero(lp_a[t["loss_mask"] == 0]) == 0
    torch.testing.assert_close(lp_a, lp_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ent_a, ent_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_a, g_b, rtol=1e-3, atol=1e-5)


def test_rows_without_advantage_are_skipped_with_the_same_gradient() -> None:
    from trainers.losses import policy_loss

    preset = get_preset("grpo")
    episodes = batch_of_episodes()
    for e in episodes[:4]:
        e.reward = 0.5  # group 0 ties: advantage 0 for its four episodes
    for e in episodes:
        e.logprobs = [-1.5 * m for m in e.loss_mask]
    st = step_tensors(episodes, preset, 0)
    batch, _ = policy_minibatch(st, list(range(st.size)), preset, st.tensors["old_logprobs"], None)
    model = prepare_for_training(tiny(), TrainableSpec())
    config = WorkerConfig(OptimConfig(1e-3, 1), loss=preset.loss, share_prompts=False)
    worker = LocalPolicyWorker(model, config)
    sums = worker.forward_backward(batch)
    assert sums["rows_skipped"] == 4 and sums["rows_trained"] == 4
    skipped = [p.grad.clone() for p in model.parameters()]

    reference = prepare_for_training(tiny(), TrainableSpec())
    logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logp = logits.log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    loss, _ = policy_loss(
        preset.loss, batch.normalizer, logp, batch.old_logprobs[:, 1:], batch.advantages,
        batch.loss_mask[:, 1:], group_ids=batch.group_ids,
    )  # fmt: skip
    loss.backward()
    for got, param in zip(skipped, reference.parameters(), strict=True):
        torch.testing.assert_close(got, param.grad, rtol=1e-4, atol=1e-7)

    everyone_ties = batch_of_episodes()
    for e in everyone_ties:
        e.reward = 1.0
    st = step_tensors(everyone_ties, preset, 0)
    batch, _ = policy_minibatch(st, list(range(st.size)), preset, st.tensors["old_logprobs"], None)
    fresh = LocalPolicyWorker(prepare_for_training(tiny(), TrainableSpec()), config)
    sums = fresh.forward_backward(batch)
    assert sums["rows_trained"] == 0 and all(torch.count_nonzero(p.grad) == 0 for p in fresh.params)
    assert fresh.optim_step()["optim/skipped"] == 0.0 and fresh.steps == 1


def test_bf16_autocast_trains_fp32_weights_close_to_the_fp32_forward() -> None:
    preset = get_preset("grpo")
    preset.loss.max_length = 32
    stats, grads = [], []
    for dtype in ("float32", "bfloat16"):
        model = prepare_for_training(tiny(), TrainableSpec())
        config = WorkerConfig(OptimConfig(learning_rate=0.01, total_steps=1), loss=preset.loss,
                              compute_dtype=dtype)  # fmt: skip
        worker = LocalPolicyWorker(model, config)
        episodes = batch_of_episodes()
        st = step_tensors(episodes, preset, 0)
        t = st.tensors
        stats.append(worker.compute_stats({k: t[k] for k in ("input_ids", "attention_mask", "loss_mask")}))
        batch, _ = policy_minibatch(st, list(range(st.size)), preset, t["old_logprobs"], None)
        worker.forward_backward(batch)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        worker.optim_step()
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(s["exp_avg"].dtype == torch.float32 for s in worker.optimizer.state.values())
    mask = t["loss_mask"].bool()
    gap = (stats[0]["logprobs"] - stats[1]["logprobs"])[mask].abs()
    assert 0 < float(gap.max()) < 0.1
    assert torch.isfinite(grads[1]).all()
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cosine > 0.99


def test_unknown_compute_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        WorkerConfig(OptimConfig(learning_rate=0.01, total_steps=1), compute_dtype="float16")
