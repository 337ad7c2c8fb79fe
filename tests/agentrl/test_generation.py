"""The generator contract on the Hugging Face backend with a tiny random Llama (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from agentrl.core.generator import SamplingParams, process_logits
from agentrl.generation import GENERATORS, build_generator
from agentrl.generation.hf import HFGenerator
from tests.agentrl.conftest import make_tiny_model
from trainers.optim import OptimConfig
from trainers.worker import LocalPolicyWorker, WorkerConfig

PROMPTS = [
    "hello there",
    "a much longer prompt with quite a few more words in it than the others",
    "x",
    "yet another one",
    "five",
]


def _prompts(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]


def _recomputed(model, prompt, completion, sp: SamplingParams) -> torch.Tensor:
    ids = torch.tensor([prompt + completion.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1]
    logp = process_logits(logits, sp.temperature, sp.top_k, sp.top_p)
    return logp.gather(1, torch.tensor(completion.token_ids)[:, None]).squeeze(1)


def test_sampling_params_validate() -> None:
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    assert SamplingParams(stop=["a"]).stop == ("a",)


def test_process_logits_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    t, k, p = 0.7, 10, 0.8
    logp = process_logits(logits, t, top_k=k, top_p=p)
    for row in range(3):
        probs = (logits[row] / t).softmax(-1)
        order = probs.argsort(descending=True)[:k].tolist()
        topk = probs[order] / probs[order].sum()
        kept, mass = [], 0.0
        for token, q in zip(order, topk.tolist(), strict=True):
            kept.append(token)
            mass += q
            if mass >= p:
                break
        expected = torch.full((50,), float("-inf"))
        expected[kept] = (logits[row, kept] / t).log_softmax(-1)
        assert torch.allclose(logp[row], expected, atol=1e-5)


def test_registry_names_backends() -> None:
    assert GENERATORS.names() == ["hf", "vllm"]
    with pytest.raises(KeyError, match="Did you mean 'hf'"):
        build_generator("hff")


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 40, 1.0), (1.3, 0, 0.9), (0.8, 50, 0.95)]
)
def test_logprobs_match_a_full_forward(tokenizer, tiny_model, temperature, top_k, top_p) -> None:
    gen = HFGenerator(tiny_model, tokenizer, max_batch_size=2)  # 5 prompts: rows join as others finish
    sp = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=24, seed=3)
    prompts = _prompts(tokenizer)
    completions = gen.generate(prompts, sp)
    assert len(completions) == len(prompts)
    for prompt, c in zip(prompts, completions, strict=True):
        assert len(c.token_ids) == len(c.logprobs) >= 1
        recorded = torch.tensor(c.logprobs)
        assert torch.allclose(_recomputed(tiny_model, prompt, c, sp), recorded, atol=1e-4)


def test_seeded_sampling_is_reproducible(tokenizer, tiny_model) -> None:
    sp = SamplingParams(temperature=1.0, max_new_tokens=16, seed=11)
    a = HFGenerator(tiny_model, tokenizer).generate(_prompts(tokenizer), sp)
    b = HFGenerator(tiny_model, tokenizer).generate(_prompts(tokenizer), sp)
    c = HFGenerator(tiny_model, tokenizer).generate(
        _prompts(tokenizer), SamplingParams(max_new_tokens=16, seed=12)
    )
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_greedy_matches_transformers_generate(tokenizer, tiny_model) -> None:
    prompts = _prompts(tokenizer)
    completions = HFGenerator(tiny_model, tokenizer).generate(
        prompts, SamplingParams(temperature=0, max_new_tokens=12)
    )
    for prompt, c in zip(prompts, completions, strict=True):
        out = tiny_model.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id
        )
        expected = out[0, len(prompt) :].tolist()
        assert c.token_ids == expected[: len(c.token_ids)]
        assert c.logprobs == [0.0] * len(c.token_ids)


def test_stop_strings_end_generation_and_stay_in_the_output(tokenizer, tiny_model) -> None:
    gen = HFGenerator(tiny_model, tokenizer)
    free = gen.generate(_prompts(tokenizer), SamplingParams(temperature=0, max_new_tokens=12))
    # stop at a string the greedy continuation is known to produce
    target = free[1].text[4:9]
    assert target
    stopped = gen.generate(
        _prompts(tokenizer), SamplingParams(temperature=0, max_new_tokens=12, stop=(target,))
    )
    c = stopped[1]
    assert c.finish_reason == "stop" and c.stop == target
    assert target in c.text and target not in tokenizer.decode(c.token_ids[:-1])
    assert c.token_ids == free[1].token_ids[: len(c.token_ids)]
    assert all(x.finish_reason in ("stop", "length", "eos") for x in stopped)
    assert all(len(x.token_ids) <= 12 for x in stopped)


def test_eos_ends_a_row(tokenizer) -> None:
    model = make_tiny_model(tokenizer, seed=1)

    def favour_eos(module, args, output):
        output.logits[..., tokenizer.eos_token_id] += 100.0

    model.register_forward_hook(favour_eos)
    gen = HFGenerator(model, tokenizer)
    c = gen.generate(_prompts(tokenizer)[:2], SamplingParams(temperature=0, max_new_tokens=8))
    assert all(x.finish_reason == "eos" and x.token_ids[-1] == tokenizer.eos_token_id for x in c)
    assert all(tokenizer.eos_token not in x.text for x in c)


def test_prefix_cache_reuses_earlier_turns_exactly(tokenizer, tiny_model) -> None:
    sp = SamplingParams(temperature=0, max_new_tokens=10)
    cached = HFGenerator(tiny_model, tokenizer)
    plain = HFGenerator(tiny_model, tokenizer, prefix_cache_tokens=0)
    prompts = _prompts(tokenizer)
    first = cached.generate(prompts, sp)
    follow = [
        p + c.token_ids + tokenizer.encode(" and then", add_special_tokens=False)
        for p, c in zip(prompts, first, strict=True)
    ]
    reused_before = cached.stats["reused_tokens"]
    a = cached.generate(follow, sp)
    b = plain.generate(follow, sp)
    assert cached.stats["reused_tokens"] - reused_before == sum(
        len(p) + len(c.token_ids) - 1 for p, c in zip(prompts, first, strict=True)
    )
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    sampled = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=10, seed=5)
    for prompt, c in zip(follow, cached.generate(follow, sampled), strict=True):
        assert torch.allclose(
            _recomputed(tiny_model, prompt, c, sampled), torch.tensor(c.logprobs), atol=1e-4
        )


def test_weight_changes_drop_the_prefix_cache(tokenizer) -> None:
    model = make_tiny_model(tokenizer, seed=2)
    gen = HFGenerator(model, tokenizer)
    sp = SamplingParams(temperature=0, max_new_tokens=6)
    prompts = _prompts(tokenizer)
    gen.generate(prompts, sp)
    assert gen._prefix
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.01)  # an optimizer step in place
    gen.generate(prompts, sp)
    assert gen.stats["reused_tokens"] == 0
    gen.generate(prompts, sp)
    assert gen._prefix
    gen.update_policy(SharedModule(model), 1)
    assert not gen._prefix and gen.policy_version == 1


class SharedModule:
    """`PolicyWeights` of a worker training the generator's own module in this process."""

    def __init__(self, model) -> None:
        self.model = model

    def live_module(self):
        return self.model

    def trainable_state(self) -> dict:
        raise AssertionError("a shared module is never copied")


def test_a_generator_on_another_module_copies_the_trained_parameters(tokenizer) -> None:
    trained, copy = make_tiny_model(tokenizer, seed=2), make_tiny_model(tokenizer, seed=3)
    worker = LocalPolicyWorker(trained, WorkerConfig(OptimConfig(learning_rate=1e-3, total_steps=1)))
    gen = HFGenerator(copy, tokenizer)
    gen.generate(_prompts(tokenizer), SamplingParams(temperature=0, max_new_tokens=4))
    worker.sync_weights(gen)
    assert not gen._prefix
    for (name, a), (_, b) in zip(trained.named_parameters(), copy.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_a_bf16_sampler_copy_follows_the_fp32_trainer(tokenizer) -> None:
    from agentrl.experiment import ExperimentConfig
    from agentrl.rollout.setup import build_generator_for

    trained = make_tiny_model(tokenizer, seed=2)
    cfg = ExperimentConfig()
    cfg.rollout.sampler_dtype = "bfloat16"
    gen = build_generator_for(cfg, trained, tokenizer)
    assert gen.model is not trained and gen.dtype == torch.bfloat16
    assert next(trained.parameters()).dtype == torch.float32
    assert not any(p.requires_grad for p in gen.model.parameters())
    worker = LocalPolicyWorker(trained, WorkerConfig(OptimConfig(learning_rate=1e-2, total_steps=1)))
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)  # the trainer's weights move; the copy follows them at the next sync
    worker.sync_weights(gen)
    for (name, a), (_, b) in zip(trained.named_parameters(), gen.model.named_parameters(), strict=True):
        assert torch.equal(a.to(torch.bfloat16), b), name
    sp = SamplingParams(temperature=1.0, max_new_tokens=8, seed=1)
    prompts = _prompts(tokenizer)
    for prompt, c in zip(prompts, gen.generate(prompts, sp), strict=True):
        recomputed = _recomputed(gen.model, prompt, c, sp)  # the sampler's own log-probs
        assert torch.allclose(recomputed.float(), torch.tensor(c.logprobs), atol=0.1)
    cfg.rollout.sampler_dtype = "float32"
    assert build_generator_for(cfg, trained, tokenizer).model is trained  # already that precision


def test_per_prompt_params_must_share_the_distribution(tokenizer, tiny_model) -> None:
    gen = HFGenerator(tiny_model, tokenizer)
    prompts = _prompts(tokenizer)[:2]
    out = gen.generate(
        prompts, [SamplingParams(max_new_tokens=3, seed=0), SamplingParams(max_new_tokens=5, seed=0)]
    )
    assert len(out[0].token_ids) <= 3 and len(out[1].token_ids) <= 5
    with pytest.raises(ValueError, match="differ only"):
        gen.generate(prompts, [SamplingParams(temperature=1.0), SamplingParams(temperature=0.5)])


def test_rows_finishing_at_different_steps_leave_the_others_exact(tokenizer, tiny_model) -> None:
    prompts = [p for p in _prompts(tokenizer) for _ in range(2)]
    budgets = [1, 9, 2, 7, 3, 5, 4, 8, 6, 1]  # rows finish one by one, so finished slots linger and compact
    gen = HFGenerator(tiny_model, tokenizer, max_batch_size=4)  # later prompts join as slots free up
    sampled = gen.generate(
        prompts, [SamplingParams(temperature=1.0, max_new_tokens=n, seed=5) for n in budgets]
    )
    greedy = gen.generate(prompts, [SamplingParams(temperature=0, max_new_tokens=n) for n in budgets])
    for prompt, n, s, g in zip(prompts, budgets, sampled, greedy, strict=True):
        assert len(s.token_ids) == len(g.token_ids) == n
        sp = SamplingParams(temperature=1.0, max_new_tokens=n)
        assert torch.allclose(_recomputed(tiny_model, prompt, s, sp), torch.tensor(s.logprobs), atol=1e-4)
        out = tiny_model.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=n, pad_token_id=tokenizer.pad_token_id
        )
        assert g.token_ids == out[0, len(prompt) :].tolist()


def test_duplicate_prompts_and_shared_prefixes_are_prefilled_once(tokenizer, tiny_model) -> None:
    system = tokenizer.encode("You are a careful assistant. " * 8, add_special_tokens=False)
    prompts = [system + tokenizer.encode(q, add_special_tokens=False) for q in ("one?", "two??", "three!")]
    prompts = [p for p in prompts for _ in range(3)]  # 3 samples per task
    gen = HFGenerator(tiny_model, tokenizer)  # an empty prefix cache: no earlier turns to reuse
    sp = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=2)
    completions = gen.generate(prompts, sp)
    distinct = {tuple(p) for p in prompts}
    assert gen.stats["prefill_tokens"] == len(system) + sum(len(p) - len(system) for p in distinct)
    assert len({tuple(c.token_ids) for c in completions}) > 3  # samples of one prompt still differ
    for prompt, c in zip(prompts, completions, strict=True):
        assert torch.allclose(_recomputed(tiny_model, prompt, c, sp), torch.tensor(c.logprobs), atol=1e-4)


@pytest.mark.parametrize("prefill_tokens", [1, 7, 40])
def test_prefills_split_into_row_groups_stay_exact(tokenizer, tiny_model, prefill_tokens) -> None:
    prompts = [p for p in _prompts(tokenizer) for _ in range(2)]  # suffixes of many lengths
    sp = SamplingParams(temperature=1.0, max_new_tokens=10, seed=4)
    gen = HFGenerator(tiny_model, tokenizer, prefill_chunk=4, prefill_tokens=prefill_tokens)
    first = gen.generate(prompts, sp)
    follow = [p + c.token_ids + [tokenizer.eos_token_id, 7, 8] for p, c in zip(prompts, first, strict=True)]
    second = gen.generate(follow, sp)  # reused prefixes of different lengths, suffixes split in groups
    assert gen.stats["reused_tokens"] > 0
    for prompt, c in zip(prompts + follow, first + second, strict=True):
        assert torch.allclose(_recomputed(tiny_model, prompt, c, sp), torch.tensor(c.logprobs), atol=1e-4)
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    whole = HFGenerator(tiny_model, tokenizer, prefill_tokens=1 << 20).generate(follow, greedy)
    split = HFGenerator(tiny_model, tokenizer, prefill_chunk=4, prefill_tokens=prefill_tokens)
    assert [c.token_ids for c in split.generate(follow, greedy)] == [c.token_ids for c in whole]
    with pytest.raises(ValueError, match="prefill_tokens"):
        HFGenerator(tiny_model, tokenizer, prefill_tokens=0)


def test_a_frozen_output_head_runs_as_one_gemm_in_prefill(tokenizer) -> None:
    from torch.profiler import ProfilerActivity, profile

    model = make_tiny_model(tokenizer, seed=5).requires_grad_(False)  # a frozen (tied) head, as in training
    vocab = model.get_output_embeddings().weight.shape[0]
    gen = HFGenerator(model, tokenizer)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        gen.generate(_prompts(tokenizer), SamplingParams(temperature=0, max_new_tokens=2))
    batched = [
        e.input_shapes for e in prof.key_averages(group_by_input_shape=True)
        if e.key == "aten::bmm" and any(vocab in shape for shape in e.input_shapes)
    ]  # fmt: skip
    assert not batched  # a batched matmul over per-row copies of the [H, V] weight


def test_prefix_cache_tokens_zero_reuses_no_keys_or_values(tokenizer, tiny_model) -> None:
    system = tokenizer.encode("You are a careful assistant. " * 8, add_special_tokens=False)
    prompts = [system + tokenizer.encode(q, add_special_tokens=False) for q in ("one?", "two??")]
    prompts = [p for p in prompts for _ in range(2)]  # a shared system prompt and duplicate prompts
    gen = HFGenerator(tiny_model, tokenizer, prefix_cache_tokens=0)
    sp = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)
    first = gen.generate(prompts, sp)
    follow = [p + c.token_ids + [tokenizer.eos_token_id] for p, c in zip(prompts, first, strict=True)]
    second = gen.generate(follow, sp)  # next turns extend the first turns' sequences
    assert gen.stats["reused_tokens"] == 0 and not gen._prefix
    assert gen.stats["prefill_tokens"] == sum(len(p) for p in prompts + follow)
    for prompt, c in zip(prompts + follow, first + second, strict=True):
        assert torch.allclose(_recomputed(tiny_model, prompt, c, sp), torch.tensor(c.logprobs), atol=1e-4)
    with pytest.raises(ValueError, match="prefix_cache_tokens"):
        HFGenerator(tiny_model, tokenizer, prefix_cache_tokens=-1)
