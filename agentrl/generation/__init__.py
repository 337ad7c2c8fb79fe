"""Generation backends behind one interface: `hf` (transformers, CPU or GPU) and `vllm` (GPU, optional extra).

gen = build_generator("hf", model=model, tokenizer=tokenizer)
completions = gen.generate(prompt_token_ids, SamplingParams(temperature=1.0, stop=("</search>",)))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentrl.core.generator import Completion, Generator, SamplingParams, process_logits
from agentrl.core.registry import Registry

GENERATORS: Registry[Callable[..., Generator]] = Registry("generation backend")


@GENERATORS.register("hf")
def _hf(**kwargs: Any) -> Generator:
    from agentrl.generation.hf import HFGenerator

    return HFGenerator(**kwargs)


@GENERATORS.register("vllm")
def _vllm(**kwargs: Any) -> Generator:
    from agentrl.generation.vllm import VLLMGenerator

    return VLLMGenerator(**kwargs)


def build_generator(name: str, **kwargs: Any) -> Generator:
    """A backend by name; keyword arguments go to its constructor (see `HFGenerator`, `VLLMGenerator`)."""
    return GENERATORS.get(name)(**kwargs)


__all__ = ["GENERATORS", "Completion", "Generator", "SamplingParams", "build_generator", "process_logits"]
