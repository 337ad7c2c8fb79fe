"""Linear layers on oneDNN-packed weights: the same products as `F.linear`, packed again after the weights
change, forwards restored, and the HF generator sampling the same tokens with and without them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from agentrl.core.generator import SamplingParams
from agentrl.generation import packed_linear
from agentrl.generation.hf import HFGenerator
from agentrl.generation.packed_linear import PackedLinears
from tests.agentrl.conftest import make_tiny_model

pytestmark = pytest.mark.skipif(
    packed_linear.unsupported(torch.nn.Linear(2, 2)) is not None, reason="this torch build has no oneDNN"
)


def _layers() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 16, bias=False))


@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (8, 24), (3, 5, 24), (300, 24)])
def test_products_match_f_linear_and_short_inputs_use_the_packed_weights(shape) -> None:
    layers = _layers()
    packed = PackedLinears(layers, max_rows=256)
    x = torch.randn(*shape)
    expected = F.linear(F.linear(x, layers[0].weight, layers[0].bias), layers[1].weight)
    with torch.inference_mode(), packed.active():
        out = layers(x)
    assert out.shape == expected.shape
    assert torch.allclose(out, expected, atol=1e-5)
    rows = x.numel() // x.shape[-1]
    assert packed.packed_calls == (2 if 2 <= rows <= 256 else 0)


def test_a_changed_weight_is_packed_again_and_never_read_stale() -> None:
    layers = _layers()
    packed = PackedLinears(layers)
    x = torch.randn(4, 24)
    with torch.inference_mode(), packed.active():
        layers(x)
    assert packed.packs == 2
    with packed.active():
        pass
    assert packed.packs == 2  # nothing changed: the packed copies are reused

    optimizer = torch.optim.SGD(layers.parameters(), lr=0.5)
    layers(x).square().sum().backward()
    optimizer.step()
    expected = F.linear(F.linear(x, layers[0].weight, layers[0].bias), layers[1].weight)
    with torch.inference_mode(), packed.active():
        assert packed.packs == 4
        assert torch.allclose(layers(x), expected, atol=1e-5)
        with torch.no_grad():
            layers[1].weight.mul_(2.0)  # changed inside the block: this layer falls back to F.linear
        calls = packed.packed_calls
        assert torch.allclose(layers(x), 2.0 * expected, atol=1e-5)
        assert packed.packed_calls == calls + 1


def test_forwards_are_restored_after_the_block_also_when_it_raises() -> None:
    layers = _layers()
    packed = PackedLinears(layers)
    with pytest.raises(RuntimeError, match="boom"), packed.active():
        assert "forward" in vars(layers[0])
        raise RuntimeError("boom")
    assert all("forward" not in vars(m) for m in layers)


def test_inputs_that_need_gradients_go_through_f_linear() -> None:
    layers = _layers()
    packed = PackedLinears(layers)
    with packed.active():
        layers(torch.randn(4, 24)).sum().backward()
    assert packed.packed_calls == 0
    assert layers[0].weight.grad is not None


def test_a_layer_with_its_own_instance_forward_is_left_alone() -> None:
    layers = _layers()
    hooked = layers[0].forward
    layers[0].forward = lambda x: hooked(x) + 1.0  # type: ignore[method-assign]
    packed = PackedLinears(layers)
    with torch.inference_mode(), packed.active():
        layers(torch.randn(4, 24))
    assert packed.packs == 1
    assert "forward" in vars(layers[0])


def test_generator_samples_the_same_with_and_without_packed_weights(tokenizer) -> None:
    model = make_tiny_model(tokenizer, seed=4)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in ["one two", "three", "four five six"]]
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    plain = HFGenerator(model, tokenizer, packed_weights=False).generate(prompts, sp)
    generator = HFGenerator(model, tokenizer)
    assert generator.packed is not None
    packed = generator.generate(prompts, sp)
    assert [c.token_ids for c in packed] == [c.token_ids for c in plain]
    assert generator.packed.packed_calls > 0
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert generator.packed.packs == linears

    sampled = SamplingParams(temperature=1.0, max_new_tokens=12, seed=5)
    a = HFGenerator(model, tokenizer, packed_weights=False).generate(prompts, sampled)
    b = generator.generate(prompts, sampled)
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)
    assert generator.packed.packs == linears  # same weights: nothing packed again
    assert all("forward" not in vars(m) for m in model.modules())


def test_packed_weights_are_refused_where_they_cannot_be(tokenizer) -> None:
    model = make_tiny_model(tokenizer).to(torch.bfloat16)
    assert HFGenerator(model, tokenizer).packed is None
    with pytest.raises(ValueError, match=r"packed_weights=True.*bfloat16"):
        HFGenerator(model, tokenizer, packed_weights=True)
    with pytest.raises(ValueError, match="min_rows <= max_rows"):
        PackedLinears(_layers(), min_rows=4, max_rows=2)


class _LiveModule:
    """`PolicyWeights` of a module the generator samples from itself (an in-process trainer's)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def live_module(self) -> torch.nn.Module:
        return self.module

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {}


@pytest.mark.parametrize("optimizer", ["sgd", "fused-adamw"])
def test_a_sampler_on_the_trained_module_samples_from_the_weights_after_each_update(
    tokenizer, optimizer: str
) -> None:
    """SGD's step bumps the weights' version counters; fused AdamW's (the trainer's) does not, and the
    trainer's `update_policy` is what drops the packed copies."""
    from agentrl.experiment import ExperimentConfig
    from agentrl.rollout.setup import build_generator_for

    model = make_tiny_model(tokenizer, seed=6)
    cfg = ExperimentConfig()
    generator = build_generator_for(cfg, model, tokenizer)
    assert generator.model is model and generator.packed is not None
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in ["alpha beta", "gamma"]]
    sp = SamplingParams(temperature=1.0, max_new_tokens=10, seed=7)
    generator.generate(prompts, sp)
    if optimizer == "sgd":
        step = torch.optim.SGD(model.parameters(), lr=1.0)
    else:
        step = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    model(torch.tensor([prompts[0]])).logits[0, -1, :50].sum().backward()
    step.step()  # in place, as the in-process trainer does between rollouts
    if optimizer == "fused-adamw":
        generator.update_policy(_LiveModule(model), 1)
    after = generator.generate(prompts, sp)
    expected = HFGenerator(model, tokenizer, packed_weights=False).generate(prompts, sp)
    assert [c.token_ids for c in after] == [c.token_ids for c in expected]
    for a, b in zip(after, expected, strict=True):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)

    cfg.rollout.packed_weights = False
    assert build_generator_for(cfg, model, tokenizer).packed is None
