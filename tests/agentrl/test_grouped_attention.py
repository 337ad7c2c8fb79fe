"""The HF generator's decode attention on the unrepeated KV cache matches transformers' SDPA."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from agentrl.core.generator import SamplingParams
from agentrl.generation import grouped_attention
from agentrl.generation.hf import HFGenerator
from tests.agentrl.conftest import make_tiny_model


class _Layer(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def _inputs(batch: int, length: int, columns: int, capacity: int = 40):
    torch.manual_seed(0)
    cache_k, cache_v = torch.randn(batch, 2, capacity, 16), torch.randn(batch, 2, capacity, 16)
    query = torch.randn(batch, length, 6, 16).transpose(1, 2)
    allowed = torch.rand(batch, 1, length, columns) > 0.3
    allowed[..., 0] = True
    return query, cache_k[:, :, :columns], cache_v[:, :, :columns], allowed


@pytest.mark.parametrize("mask_kind", ["float", "bool", "shared", "none"])
def test_one_token_queries_match_repeated_heads(mask_kind: str) -> None:
    query, key, value, allowed = _inputs(batch=3, length=1, columns=29)
    mask: torch.Tensor | None = torch.zeros(allowed.shape).masked_fill_(
        ~allowed, torch.finfo(torch.float32).min
    )
    if mask_kind == "bool":
        mask = allowed
    elif mask_kind == "shared":
        mask = mask[:1]
    elif mask_kind == "none":
        mask = None
    expected, _ = sdpa_attention_forward(_Layer(), query, key, value, mask, scaling=0.25)
    got, _ = grouped_attention.grouped_decode_attention(_Layer(), query, key, value, mask, scaling=0.25)
    assert got.shape == expected.shape == (3, 1, 6, 16)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_longer_queries_are_transformers_sdpa_exactly() -> None:
    query, key, value, allowed = _inputs(batch=2, length=5, columns=31)
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    expected, _ = sdpa_attention_forward(_Layer(), query, key, value, mask, scaling=0.25)
    got, _ = grouped_attention.grouped_decode_attention(_Layer(), query, key, value, mask, scaling=0.25)
    assert torch.equal(got, expected)


def test_generator_samples_the_same_with_and_without_it(tokenizer, monkeypatch) -> None:
    stock = make_tiny_model(tokenizer, heads=6, kv_heads=2, hidden_size=96)
    grouped = make_tiny_model(tokenizer, heads=6, kv_heads=2, hidden_size=96)
    prompts = [
        tokenizer.encode(p, add_special_tokens=False) for p in ("hello there", "a longer prompt here", "x")
    ]
    sp = SamplingParams(temperature=1.0, max_new_tokens=20, seed=5)
    calls = {"one_token": 0}
    original = grouped_attention.grouped_decode_attention

    def counting(module, query, *args, **kwargs):
        calls["one_token"] += query.shape[2] == 1
        return original(module, query, *args, **kwargs)

    monkeypatch.setattr(grouped_attention, "grouped_decode_attention", counting)
    a = HFGenerator(stock, tokenizer, max_batch_size=2, grouped_attention=False).generate(prompts, sp)
    assert calls["one_token"] == 0
    b = HFGenerator(grouped, tokenizer, max_batch_size=2).generate(prompts, sp)
    assert calls["one_token"] > 0
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(torch.tensor(y.logprobs), torch.tensor(x.logprobs), atol=1e-5, rtol=0)


def test_the_model_leaves_generation_on_sdpa(tokenizer, tmp_path) -> None:
    """A model the generator sampled from can go to a trainer, another process or a checkpoint as it came."""
    import pickle

    model = make_tiny_model(tokenizer)
    with grouped_attention.decoding(model) as switched:
        assert switched and model.config._attn_implementation == grouped_attention.IMPLEMENTATION
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), grouped_attention.decoding(model):
        raise RuntimeError("a failed generation")
    assert model.config._attn_implementation == "sdpa"
    HFGenerator(model, tokenizer).generate([[5, 6, 7]], SamplingParams(temperature=0, max_new_tokens=4))
    assert pickle.loads(pickle.dumps(model.config))._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    assert grouped_attention.IMPLEMENTATION not in (tmp_path / "config.json").read_text()


def test_models_on_other_attention_are_left_alone(tokenizer) -> None:
    model = make_tiny_model(tokenizer)
    model.set_attn_implementation("eager")
    with grouped_attention.decoding(model) as switched:
        assert not switched
        assert model.config._attn_implementation == "eager"


def test_a_lora_wrapped_model_is_switched(tokenizer) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_tiny_model(tokenizer), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with grouped_attention.decoding(model) as switched:
        assert switched
        assert model.base_model.model.config._attn_implementation == grouped_attention.IMPLEMENTATION
    prompts = [tokenizer.encode("hello there", add_special_tokens=False)]
    out = HFGenerator(model, tokenizer).generate(prompts, SamplingParams(temperature=0, max_new_tokens=6))
    assert len(out[0].token_ids) >= 1
    assert model.base_model.model.config._attn_implementation == "sdpa"
