"""Cluster settings are checked before any weights load: Ray addresses, the memory a training rank needs,
and the config combinations the Ray worker group and vLLM engines cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentrl.core.config import ConfigError, load_config
from agentrl.experiment import ExperimentConfig
from agentrl.train.cluster import (
    check_model_fits,
    check_ray_address,
    count_parameters,
    ray_endpoint,
    training_memory,
)
from agentrl.train.recipe import check_config

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
GIB = 2**30


def test_ray_addresses_parse_and_a_malformed_one_names_the_key() -> None:
    assert ray_endpoint("10.1.2.3:6379") == ("10.1.2.3", 6379)
    assert ray_endpoint("ray://head:10001") == ("head", 10001)
    assert ray_endpoint("auto") is None
    with pytest.raises(ConfigError, match=r"cfg.yaml: ray.address: 'head' is not host:port"):
        check_ray_address("head", 1.0, "cfg.yaml")


def test_a_replica_that_does_not_fit_its_gpu_is_refused_with_the_numbers() -> None:
    need = training_memory(4 * 10**9, 4 * 10**9, "bfloat16")
    assert (need.weights, need.gradients, need.optimizer) == (8 * 10**9, 8 * 10**9, 32 * 10**9)
    check_model_fits(need, 80 * GIB, 0.0, "cfg.yaml", "Qwen/Qwen3-4B")
    message = (
        r"needs 44.7 GiB per training rank .* has 40.0 GiB of its 80.0 GiB GPU after "
        r"rollout.vllm.gpu_memory_utilization=0.5; use finetune.mode=lora"
    )
    with pytest.raises(ConfigError, match=message):
        check_model_fits(need, 80 * GIB, 0.5, "cfg.yaml", "Qwen/Qwen3-4B")
    lora = training_memory(4 * 10**9, 16 * 10**6, "bfloat16")
    check_model_fits(lora, 80 * GIB, 0.5, "cfg.yaml", "Qwen/Qwen3-4B")


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_parameters_are_counted_from_the_config_alone(tiny_model_dir: Path, mode: str) -> None:
    from agentrl.core.models import load_model
    from trainers.model_setup import TrainableSpec, prepare_for_training

    cfg = load_config(ExperimentConfig, QUICKSTART, [f"model.name={tiny_model_dir}", f"finetune.mode={mode}"])
    total, trained = count_parameters(cfg)
    model, _ = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    model = prepare_for_training(model, TrainableSpec.from_section(cfg.finetune))
    assert total == sum(p.numel() for p in model.parameters())
    assert trained == sum(p.numel() for p in model.parameters() if p.requires_grad) < total


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.num_workers=-1"], r"trainer.num_workers=-1: use 0 \(in-process\) or N >= 1"),
        (["trainer.num_workers=2", "trainer.log_rank1=true"], r"log_rank1 .* needs trainer.num_workers=0"),
        (["rollout.backend=vllm", "trainer.num_workers=2"], r"sft.enabled with rollout.backend=vllm"),
        (["rollout.vllm.kv_cache_gib=0"], r"rollout.vllm.kv_cache_gib=0.0 must be > 0"),
        (["env.kwargs.top_kk=5"], r"env.kwargs.top_kk: agentrl/SearchQA-v0 takes no argument 'top_kk'"),
        (["rollout.vllm.cpu_reserved_cores=-1"], r"rollout.vllm.cpu_reserved_cores=-1 must be >= 0"),
        (["rollout.backend=vllm", "trainer.num_workers=2", "sft.enabled=false", "rollout.vllm.num_engines=1"],
         r"placement=colocated puts one engine on each trainer GPU: set rollout.vllm.num_engines=2"),
        (["rollout.vllm.gpu_memory_utilization=1.5"], r"gpu_memory_utilization=1.5 must lie in \(0, 1\)"),
        (["rollout.backend=vllm", "rollout.sampler_dtype=bfloat16"],
         r"with rollout.backend=vllm set rollout.vllm.dtype"),
        (["rollout.backend=vllm", "rollout.packed_weights=true"],
         r"packed_weights=true packs the hf sampler"),
        (["rollout.packed_weights=true", "rollout.sampler_dtype=bfloat16"],
         r"packed_weights=true packs float32 weights, but the hf sampler computes in bfloat16"),
    ],
)  # fmt: skip
def test_worker_and_engine_settings_that_cannot_run_are_refused(overrides: list[str], message: str) -> None:
    cfg = load_config(ExperimentConfig, QUICKSTART, overrides)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg, "cfg.yaml")


def test_an_in_process_vllm_engine_beside_the_in_process_trainer_passes_with_sft() -> None:
    overrides = ["rollout.backend=vllm", "trainer.num_workers=0", "sft.enabled=true"]
    check_config(load_config(ExperimentConfig, QUICKSTART, overrides), "cfg.yaml")


def test_a_vllm_run_on_ray_workers_passes() -> None:
    overrides = ["rollout.backend=vllm", "trainer.num_workers=2", "sft.enabled=false",
                 "rollout.vllm.num_engines=2"]  # fmt: skip
    check_config(load_config(ExperimentConfig, QUICKSTART, overrides), "cfg.yaml")
    separate = [*overrides, "rollout.vllm.placement=separate", "rollout.vllm.num_engines=1",
                "rollout.vllm.tensor_parallel_size=2"]  # fmt: skip
    check_config(load_config(ExperimentConfig, QUICKSTART, separate), "cfg.yaml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_device_without_cuda_is_refused_before_loading() -> None:
    cfg = load_config(ExperimentConfig, QUICKSTART, ["model.device=cuda:0"])
    with pytest.raises(ConfigError, match=r"model.device=cuda:0: CUDA is not available on this machine"):
        check_config(cfg, "cfg.yaml")
