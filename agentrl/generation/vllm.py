"""vLLM backend (GPU; `pip install agentrl[gpu]`): the generator contract on top of `vllm.LLM`.

Log-probs: vLLM reports the sampled token's log-prob when `logprobs=0`. By default that is the log-prob under
the raw model distribution (before temperature, top-k and top-p); the engine is therefore built with
`logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2), which reports it under the distribution actually
sampled from. Older vLLM versions lack the option; there the backend refuses temperatures other than 1 and
top-k/top-p filtering unless `allow_raw_logprobs=True` (then the recorded log-probs are raw ones: recompute
them before using them as behaviour log-probs).

Weights: `load_weights(state_dict)` sends the tensors to every worker with `LLM.collective_rpc` and calls the
model's own `load_weights`, then clears vLLM's prefix cache. Everything vLLM-specific stays in this module,
which imports vLLM only when the backend is built.
"""

from __future__ import annotations

from typing import Any

from agentrl.generation.base import Completion, SamplingParams, per_prompt


def _load_into_worker(worker: Any, items: list[tuple[str, Any]]) -> None:
    worker.model_runner.model.load_weights(weights=items)


class VLLMGenerator:
    """`Generator` over a vLLM engine.

    Args:
        model: a model path or hub id, or an existing `vllm.LLM` (then `engine_kwargs` are ignored).
        tokenizer: optional; only used to decode EOS text. Defaults to the engine's tokenizer.
        allow_raw_logprobs: accept a vLLM without `logprobs_mode` even when the sampling distribution differs
            from the raw one.
        engine_kwargs: passed to `vllm.LLM` (`dtype`, `gpu_memory_utilization`, `tensor_parallel_size`,
            `enable_prefix_caching`, ...).
    """

    def __init__(
        self, model: Any, tokenizer: Any = None, allow_raw_logprobs: bool = False, **engine_kwargs: Any
    ) -> None:
        import vllm

        self.vllm = vllm
        self.processed = True
        if isinstance(model, vllm.LLM):
            self.llm = model
            mode = getattr(getattr(model.llm_engine, "model_config", None), "logprobs_mode", None)
            self.processed = mode == "processed_logprobs"
        else:
            kwargs = {"enable_prefix_caching": True, **engine_kwargs}
            try:
                self.llm = vllm.LLM(model=model, logprobs_mode="processed_logprobs", **kwargs)
            except TypeError:
                self.processed = False
                self.llm = vllm.LLM(model=model, **kwargs)
        self.allow_raw_logprobs = allow_raw_logprobs
        self.tokenizer = tokenizer or self.llm.get_tokenizer()
        eos = self.tokenizer.eos_token_id
        self.eos_ids = {eos} if eos is not None else set()

    def _params(self, sp: SamplingParams, index: int) -> Any:
        filtered = sp.temperature not in (0.0, 1.0) or sp.top_k > 0 or sp.top_p < 1.0
        if filtered and not self.processed and not self.allow_raw_logprobs:
            raise RuntimeError(
                "this vLLM reports raw log-probs (no logprobs_mode='processed_logprobs'); upgrade vLLM to >= "
                "0.10.2, sample at temperature 1 without top-k/top-p, or pass allow_raw_logprobs=True"
            )
        return self.vllm.SamplingParams(
            n=1,
            temperature=sp.temperature,
            top_p=sp.top_p,
            top_k=sp.top_k if sp.top_k > 0 else -1,
            max_tokens=sp.max_new_tokens,
            stop=list(sp.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,
            seed=None if sp.seed is None else sp.seed + index,
            skip_special_tokens=False,
        )

    def generate(
        self, prompt_token_ids: list[list[int]], sampling: SamplingParams | list[SamplingParams]
    ) -> list[Completion]:
        """One completion per prompt. Prompt i is seeded with `seed + i`, so a group's samples differ."""
        params = per_prompt(sampling, len(prompt_token_ids))
        if not prompt_token_ids:
            return []
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_token_ids]
        outputs = self.llm.generate(
            prompts, [self._params(sp, i) for i, sp in enumerate(params)], use_tqdm=False
        )
        return [self._completion(o.outputs[0], sp) for o, sp in zip(outputs, params, strict=True)]

    def _completion(self, out: Any, sp: SamplingParams) -> Completion:
        ids = list(out.token_ids)
        if sp.temperature == 0:
            logprobs = [0.0] * len(ids)
        else:
            logprobs = [
                float(step[token].logprob) for token, step in zip(ids, out.logprobs or [], strict=True)
            ]
        stop = out.stop_reason if isinstance(out.stop_reason, str) else None
        if out.finish_reason == "length":
            reason = "length"
        elif stop is not None:
            reason = "stop"
        else:
            reason = "eos"
        text = out.text
        if reason == "eos" and self.tokenizer.eos_token and text.endswith(self.tokenizer.eos_token):
            text = text[: -len(self.tokenizer.eos_token)]
        return Completion(ids, logprobs, reason, text, stop)  # type: ignore[arg-type]

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        """Push a trainer's weights (names as in the transformers model) to every vLLM worker."""
        items = [(name, tensor.detach()) for name, tensor in state_dict.items()]
        self.llm.collective_rpc(_load_into_worker, args=(items,))
        self.llm.reset_prefix_cache()
