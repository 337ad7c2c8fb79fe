"""The vLLM backend's mapping onto vLLM's API, checked against a stand-in `vllm` module that records
calls: sampling parameters and outputs, the version and log-prob-mode checks, EOS ids of the generation
config, weight updates by worker-extension method name, LoRA adapters per policy version, and the engine
group's sleep/wake and weight-sync sequences."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentrl.core.config import load_config
from agentrl.core.generator import SamplingParams
from agentrl.experiment import ExperimentConfig
from agentrl.generation import build_generator
from agentrl.generation.vllm import WORKER_EXTENSION, EngineOptions
from agentrl.generation.vllm_engines import VLLMEngine, VLLMEngines

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


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


class _Tok:
    eos_token_id = 2
    eos_token = "<|im_end|>"

    def decode(self, ids: list[int]) -> str:
        texts = {2: "<|im_end|>", 3: "<|endoftext|>"}
        return "".join(texts.get(i, f"t{i}") for i in ids)


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeLLM:
    """Records what the backend asks of `vllm.LLM`; `log` keeps every call in order."""

    def __init__(self, model: str = "", logprobs_mode: str | None = None, **engine_kwargs) -> None:
        self.model, self.logprobs_mode, self.engine_kwargs = model, logprobs_mode, engine_kwargs
        self.calls: list = []
        self.log: list = []
        self.llm_engine = types.SimpleNamespace(
            model_config=types.SimpleNamespace(logprobs_mode=logprobs_mode, model=model),
            remove_lora=lambda lora_id: self.log.append(("remove_lora", lora_id)),
        )

    def get_tokenizer(self):
        return _Tok()

    def generate(self, prompts, params, use_tqdm=True, lora_request=None):
        self.calls.append((prompts, params, lora_request))
        outs = [
            _Out([5, 6], [{5: _Logprob(-0.5)}, {6: _Logprob(-0.25)}], "stop", "</search>", "a </search>"),
            _Out([7, 2], [{7: _Logprob(-1.0)}, {2: _Logprob(-2.0)}], "stop", None, "b<|im_end|>"),
            _Out([8, 3], [{8: _Logprob(-3.0)}, {3: _Logprob(-0.1)}], "stop", 3, "c<|endoftext|>"),
            _Out([9], [{9: _Logprob(-3.0)}], "length", None, "d"),
        ]
        return [types.SimpleNamespace(outputs=[outs[p["prompt_token_ids"][0] % 4]]) for p in prompts]

    def collective_rpc(self, method, args=()):
        self.log.append(("rpc", method, args))

    def reset_prefix_cache(self):
        self.log.append(("reset_prefix_cache",))

    def sleep(self, level=1):
        self.log.append(("sleep", level))

    def wake_up(self, tags=None):
        self.log.append(("wake_up", tags))


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__version__ = "0.11.0"
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: kw
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    return module


@pytest.fixture
def model_dir(tmp_path: Path) -> str:
    """A model directory whose generation config names a second EOS (Qwen-style `<|endoftext|>`)."""
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 3]}))
    return str(tmp_path)


def test_vllm_generator_maps_params_and_outputs(fake_vllm, model_dir) -> None:
    gen = build_generator("vllm", model=model_dir, dtype="float32", gpu_memory_utilization=0.3)
    llm = gen.llm
    assert llm.logprobs_mode == "processed_logprobs" and llm.engine_kwargs["enable_prefix_caching"]
    assert llm.engine_kwargs["worker_extension_cls"] == WORKER_EXTENSION
    assert llm.engine_kwargs["dtype"] == "float32" and llm.engine_kwargs["gpu_memory_utilization"] == 0.3
    sp = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=16, stop=("</search>",), seed=10)
    out = gen.generate([[0, 1], [1], [2], [3]], sp)
    prompts, params, lora = llm.calls[0]
    assert prompts[:2] == [{"prompt_token_ids": [0, 1]}, {"prompt_token_ids": [1]}] and lora is None
    assert [p["seed"] for p in params] == [10, 11, 12, 13]
    assert params[0]["logprobs"] == 0 and params[0]["include_stop_str_in_output"] is True
    assert params[0]["top_k"] == -1 and params[0]["max_tokens"] == 16 and params[0]["stop"] == ["</search>"]
    assert params[0]["stop_token_ids"] == [2, 3]
    assert [c.finish_reason for c in out] == ["stop", "eos", "eos", "length"]
    assert out[0].stop == "</search>" and out[0].logprobs == [-0.5, -0.25]
    assert out[1].text == "b" and out[1].token_ids == [7, 2]
    assert out[2].text == "c" and out[2].token_ids == [8, 3]


def test_old_vllm_and_raw_logprob_engines_are_refused(fake_vllm, monkeypatch) -> None:
    with pytest.raises(ValueError, match="logprobs_mode='processed_logprobs'"):
        build_generator("vllm", model=FakeLLM("m"))
    monkeypatch.setattr(fake_vllm, "__version__", "0.10.1")
    with pytest.raises(RuntimeError, match=r"vLLM 0.10.1 .* install vllm>=0.10.2"):
        build_generator("vllm", model="m")


def test_an_engine_error_is_raised_not_answered_with_raw_logprobs(fake_vllm, monkeypatch) -> None:
    class Refusing(FakeLLM):
        def __init__(self, model: str = "", logprobs_mode: str | None = None, **kwargs) -> None:
            if logprobs_mode is not None:
                raise TypeError("__init__() got an unexpected keyword argument 'logprobs_mode'")
            super().__init__(model, logprobs_mode, **kwargs)

    monkeypatch.setattr(fake_vllm, "LLM", Refusing)
    with pytest.raises(TypeError, match="logprobs_mode"):
        build_generator("vllm", model="m")


def test_weights_arrive_by_extension_method_name_and_adapters_by_new_name(fake_vllm) -> None:
    gen = build_generator("vllm", model="m")
    llm = gen.llm
    gen.update_weights_from_ipc({"gpu-uuid": {"w": ("rebuild", ())}})
    gen.init_weight_broadcast("10.0.0.1", 29500, 1, 3)
    gen.receive_broadcast([("w", "bfloat16", [2, 2])])
    rpcs = [entry for entry in llm.log if entry[0] == "rpc"]
    assert [r[1] for r in rpcs] == ["update_weights_from_ipc", "init_weight_broadcast", "receive_broadcast"]
    assert all(isinstance(r[1], str) for r in rpcs)
    assert llm.log.count(("reset_prefix_cache",)) == 2
    gen.use_adapter("policy-v1", 2, "/adapters/v1")
    gen.use_adapter("policy-v2", 3, "/adapters/v2")
    assert ("remove_lora", 2) in llm.log
    gen.generate([[0]], SamplingParams(max_new_tokens=4))
    assert llm.calls[-1][2] == FakeLoRARequest("policy-v2", 3, "/adapters/v2")


class RecordingSource:
    """The trainer side of a sync (`RayWorkerGroup`'s weight methods), recording what the engines asked."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.calls: list = []

    def live_module(self) -> None:
        return None

    def trainable_state(self) -> dict:
        return {}

    def save_adapter(self, directory: Path) -> Path:
        self.calls.append(("save_adapter", Path(directory).name))
        Path(directory).mkdir(parents=True)
        return Path(directory)

    def ipc_handles(self) -> dict:
        self.calls.append(("ipc_handles",))
        return {"gpu-0": {"w": ("rebuild", ())}}

    def broadcast_address(self) -> tuple[str, int]:
        self.calls.append(("broadcast_address",))
        return "10.0.0.1", 29500

    def open_weight_broadcast(self, host: str, port: int, world: int) -> None:
        self.calls.append(("open_weight_broadcast", world))

    def weight_metas(self) -> list:
        return [("w", "float32", [2])]

    def broadcast_weights(self) -> None:
        self.calls.append(("broadcast_weights",))


def engines(n: int, placement: str, lora: bool, tmp: Path, tp: int = 1) -> VLLMEngines:
    options = EngineOptions(
        enable_lora=lora, enable_sleep_mode=placement == "colocated", tensor_parallel_size=tp
    )
    return VLLMEngines([VLLMEngine("m", options) for _ in range(n)], placement, lora, tmp / "adapters", tp)


def log_of(group: VLLMEngines, i: int = 0) -> list:
    return [e for e in group.engines[i].generator.llm.log if e[0] != "reset_prefix_cache"]


def test_colocated_engines_sleep_between_rollouts_and_load_full_weights_awake(fake_vllm, tmp_path) -> None:
    group = engines(2, "colocated", lora=False, tmp=tmp_path)
    assert group.engines[0].generator.llm.engine_kwargs["enable_sleep_mode"] is True
    assert log_of(group) == [("sleep", 1)] and group.asleep
    with group.awake():
        out = group.generate([[0], [1], [2], [3]], SamplingParams(max_new_tokens=4, seed=100))
    assert [c.token_ids for c in out] == [[5, 6], [7, 2], [8, 3], [9]]
    prompts, params, _ = group.engines[1].generator.llm.calls[0]
    assert [p["prompt_token_ids"][0] for p in prompts] == [1, 3]
    assert [p["seed"] for p in params] == [101, 103]
    source = RecordingSource(tmp_path)
    group.update_policy(source, 1)
    assert log_of(group) == [
        ("sleep", 1), ("wake_up", None), ("sleep", 1),
        ("wake_up", ["weights"]), ("rpc", "update_weights_from_ipc", ({"gpu-0": {"w": ("rebuild", ())}},)),
        ("sleep", 1),
    ]  # fmt: skip
    assert source.calls == [("ipc_handles",)] and group.version == 1 and group.asleep


def test_lora_syncs_the_adapter_only_under_a_new_name_per_version(fake_vllm, tmp_path) -> None:
    group = engines(2, "separate", lora=True, tmp=tmp_path)
    source = RecordingSource(tmp_path)
    for version in (1, 2):
        group.update_policy(source, version)
    assert source.calls == [("save_adapter", "v1"), ("save_adapter", "v2")]
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["v2"]
    for i in range(2):
        request = group.engines[i].generator.lora_request
        assert (request.lora_name, request.lora_int_id) == ("policy-v2", 3)
        assert request.lora_path == str(tmp_path / "adapters" / "v2")
        assert ("remove_lora", 2) in log_of(group, i)
        assert not [e for e in log_of(group, i) if e[0] == "rpc"]


def test_separate_engines_join_the_broadcast_once_then_receive_every_version(fake_vllm, tmp_path) -> None:
    group = engines(2, "separate", lora=False, tmp=tmp_path, tp=2)
    source = RecordingSource(tmp_path)
    group.update_policy(source, 1)
    group.update_policy(source, 2)
    assert source.calls == [
        ("broadcast_address",), ("open_weight_broadcast", 5), ("broadcast_weights",), ("broadcast_weights",),
    ]  # fmt: skip
    joins = [[e for e in log_of(group, i) if e[1] == "init_weight_broadcast"] for i in range(2)]
    assert [j[0][2] for j in joins] == [("10.0.0.1", 29500, 1, 5), ("10.0.0.1", 29500, 3, 5)]
    receives = [e for e in log_of(group, 1) if e[1] == "receive_broadcast"]
    assert len(receives) == 2 and receives[0][2] == ([("w", "float32", [2])],)
    assert not [e for e in log_of(group) if e[0] in ("sleep", "wake_up")]


def test_engine_options_come_from_the_config() -> None:
    from agentrl.rollout.setup import vllm_options

    cfg = load_config(
        ExperimentConfig, QUICKSTART,
        ["rollout.vllm.gpu_memory_utilization=0.4", "rollout.vllm.enforce_eager=true",
         "rollout.vllm.tensor_parallel_size=2", "model.dtype=bfloat16", "finetune.lora_r=12"],
    )  # fmt: skip
    kwargs = vllm_options(cfg, lora=True, sleep=True).engine_kwargs()
    assert kwargs["dtype"] == "bfloat16" and kwargs["gpu_memory_utilization"] == 0.4
    assert kwargs["enforce_eager"] is True and kwargs["tensor_parallel_size"] == 2
    assert kwargs["distributed_executor_backend"] == "ray" and kwargs["max_lora_rank"] == 16
    assert kwargs["max_model_len"] == cfg.rollout.max_total_tokens and kwargs["enable_sleep_mode"] is True


def test_cpu_engine_options_size_the_kv_cache_and_set_the_thread_environment() -> None:
    from agentrl.generation.vllm import all_cores
    from agentrl.rollout.setup import vllm_options

    assert all_cores() in {"0", *(f"0-{n}" for n in range(1, 1024))} or "," in all_cores()

    cfg = load_config(
        ExperimentConfig, QUICKSTART,
        ["rollout.vllm.cpu_threads_bind=0-1", "rollout.vllm.cpu_reserved_cores=0",
         "rollout.vllm.dtype=bfloat16"],
    )  # fmt: skip
    options = vllm_options(cfg, sleep=True)
    cpu = options.engine_kwargs(cpu=True)
    assert cpu["dtype"] == "bfloat16" and cpu["enable_sleep_mode"] is False
    assert cpu["kv_cache_memory_bytes"] == 4 << 30  # not a fraction of the machine's memory
    assert cpu["enable_chunked_prefill"] is False
    assert cpu["max_num_batched_tokens"] >= cfg.rollout.max_total_tokens
    assert options.environment() == {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    every = vllm_options(load_config(ExperimentConfig, QUICKSTART, [])).environment()
    assert every["VLLM_CPU_OMP_THREADS_BIND"] == all_cores() and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in every
    gpu = options.engine_kwargs()
    assert "kv_cache_memory_bytes" not in gpu and "enable_chunked_prefill" not in gpu
    sized = vllm_options(load_config(ExperimentConfig, QUICKSTART, ["rollout.vllm.kv_cache_gib=0.5"]))
    assert sized.engine_kwargs()["kv_cache_memory_bytes"] == 1 << 29
