"""The vLLM backend's mapping onto vLLM's documented API, checked against a stand-in `vllm` module."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from agentrl.generation import build_generator
from agentrl.generation.base import SamplingParams


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Out:
    token_ids: list[int]
    logprobs: list[dict[int, _Logprob]]
    finish_reason: str
    stop_reason: object
    text: str


@dataclass
class _Tok:
    eos_token_id: int = 2
    eos_token: str = "<|im_end|>"


class FakeLLM:
    def __init__(self, model: str = "", logprobs_mode: str | None = None, **engine_kwargs) -> None:
        self.model, self.logprobs_mode, self.engine_kwargs = model, logprobs_mode, engine_kwargs
        self.calls: list = []
        self.rpcs: list = []
        self.resets = 0

    def get_tokenizer(self):
        return _Tok()

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        outs = [
            _Out([5, 6], [{5: _Logprob(-0.5)}, {6: _Logprob(-0.25)}], "stop", "</search>", "a </search>"),
            _Out([7, 2], [{7: _Logprob(-1.0)}, {2: _Logprob(-2.0)}], "stop", None, "b<|im_end|>"),
            _Out([8], [{8: _Logprob(-3.0)}], "length", None, "c"),
        ]
        return [types.SimpleNamespace(outputs=[o]) for o in outs[: len(prompts)]]

    def collective_rpc(self, fn, args=()):
        self.rpcs.append((fn, args))

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_vllm_generator_maps_params_and_outputs(fake_vllm) -> None:
    gen = build_generator("vllm", model="some/model")
    assert gen.llm.logprobs_mode == "processed_logprobs" and gen.llm.engine_kwargs["enable_prefix_caching"]
    sp = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=16, stop=("</search>",), seed=10)
    out = gen.generate([[1, 2], [3], [4]], sp)
    prompts, params = gen.llm.calls[0]
    assert prompts == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}, {"prompt_token_ids": [4]}]
    assert [p["seed"] for p in params] == [10, 11, 12]
    assert params[0]["logprobs"] == 0 and params[0]["include_stop_str_in_output"] is True
    assert params[0]["top_k"] == -1 and params[0]["max_tokens"] == 16 and params[0]["stop"] == ["</search>"]
    assert [c.finish_reason for c in out] == ["stop", "eos", "length"]
    assert out[0].stop == "</search>" and out[0].logprobs == [-0.5, -0.25]
    assert out[1].text == "b" and out[1].token_ids == [7, 2]
    gen.load_weights({})
    assert len(gen.llm.rpcs) == 1 and gen.llm.resets == 1
