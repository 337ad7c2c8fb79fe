"""Fixtures for the generation and rollout tests: the SmolLM2 tokenizer, a tiny random Llama on it, and a
scripted generator that emits the tokenizer's own encoding of fixed actions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from agentrl.core.generator import Completion, SamplingParams, per_prompt


def make_tiny_model(tokenizer, seed: int = 0, hidden_size: int = 64, heads: int = 4, kv_heads: int = 2):
    """A 2-layer fp32 Llama with random weights over the SmolLM2 vocabulary (grouped-query attention; vLLM's
    CPU attention needs a head size of 32 or more: `hidden_size=128, heads=2`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return make_tiny_model(tokenizer)


class ScriptedGenerator:
    """Emits `script(prompt_text, turn)` encoded by the tokenizer; actions with no stop string end with EOS.

    `turn` counts the assistant turns already in the prompt. Log-probs are a fixed -1.0.
    """

    def __init__(self, tokenizer, script: Callable[[str, int], str]) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.eos_ids = {tokenizer.eos_token_id}

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingParams | list[SamplingParams]):
        params = per_prompt(sampling, len(prompt_token_ids))
        out = []
        for prompt, sp in zip(prompt_token_ids, params, strict=True):
            text = self.tokenizer.decode(prompt)
            turn = text.count("<|im_start|>assistant") - 1
            action = self.script(text, turn)
            ids = self.tokenizer.encode(action, add_special_tokens=False)
            stop = next((s for s in sp.stop if action.endswith(s)), None)
            if stop is not None:
                reason = "stop"
            else:
                ids = [*ids, self.tokenizer.eos_token_id]
                reason = "eos"
            if len(ids) > sp.max_new_tokens:
                ids, reason, stop = ids[: sp.max_new_tokens], "length", None
                action = self.tokenizer.decode(ids)
            out.append(Completion(ids, [-1.0] * len(ids), reason, action, stop))
        return out

    def update_policy(self, source, version: int) -> None:
        self.policy_version = version

    def awake(self):
        return contextlib.nullcontext(self)

    def close(self) -> None:
        self.closed = True
