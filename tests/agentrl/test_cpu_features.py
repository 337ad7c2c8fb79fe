"""Native-bf16 detection from /proc/cpuinfo, the GEMM rates, and the warning a bf16 run gets on a CPU that
emulates bf16 or multiplies it slower than fp32."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrl.core.config import load_config
from agentrl.core.cpu_features import bf16_gemm_rates, cpu_flags, gemm_flops, native_bf16
from agentrl.experiment import ExperimentConfig
from agentrl.rollout.setup import bf16_settings, slow_bf16_warning

ZEN2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"), [(ZEN2, False), (ZEN4, True), (GRAVITON3, True), ("processor\t: 0\n", None)]
)
def test_native_bf16_reads_the_first_cpus_flags(tmp_path: Path, cpuinfo: str, native: bool | None) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert native_bf16(cpu_flags(path)) is native


def test_a_missing_cpuinfo_is_unknown(tmp_path: Path) -> None:
    assert cpu_flags(tmp_path / "absent") is None
    assert native_bf16(None) is None


def cpu_config(*overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, ["model.device=cpu", *overrides])


def test_bf16_settings_name_each_key_that_computes_in_bf16() -> None:
    assert bf16_settings(cpu_config()) == []
    cfg = cpu_config("trainer.compute_dtype=bfloat16", "rollout.sampler_dtype=bfloat16")
    assert bf16_settings(cfg) == ["trainer.compute_dtype=bfloat16", "rollout.sampler_dtype=bfloat16"]
    vllm = cpu_config("model.dtype=bfloat16", "rollout.backend=vllm", "rollout.vllm.dtype=bfloat16")
    assert bf16_settings(vllm) == ["model.dtype=bfloat16", "rollout.vllm.dtype=bfloat16"]


def test_bf16_on_a_cpu_that_emulates_it_is_warned_naming_the_keys() -> None:
    cfg = cpu_config("trainer.compute_dtype=bfloat16")
    warning = slow_bf16_warning(cfg, flags={"avx2", "fma"})
    assert warning is not None
    assert warning.startswith("trainer.compute_dtype=bfloat16 on a CPU without native bf16")
    assert "use float32" in warning
    faster = {"float32": 1e11, "bfloat16": 4e11}
    assert slow_bf16_warning(cfg, flags={"avx2", "avx512_bf16"}, rates=faster) is None
    assert slow_bf16_warning(cpu_config(), flags={"avx2"}) is None


def test_bf16_on_a_native_cpu_that_multiplies_it_slower_than_fp32_is_warned_with_both_rates() -> None:
    cfg = cpu_config("rollout.sampler_dtype=bfloat16")
    native = {"avx512f", "avx512_bf16"}
    warning = slow_bf16_warning(cfg, flags=native, rates={"float32": 325e9, "bfloat16": 150e9})
    assert warning is not None
    assert warning.startswith("rollout.sampler_dtype=bfloat16 on a CPU where a bf16 matrix product measured")
    assert "150 GFLOP/s in bfloat16 against 325 in float32 (0.46x)" in warning
    assert "float32 is faster here" in warning
    assert slow_bf16_warning(cfg, flags=native, rates={"float32": 325e9, "bfloat16": 325e9}) is None
    assert slow_bf16_warning(cpu_config(), flags=native, rates={"float32": 1e11, "bfloat16": 1e9}) is None


def test_gemm_flops_is_two_flops_per_multiply_add_over_the_fastest_product(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import agentrl.core.cpu_features as features

    clock = iter([0.0, 0.5, 1.0, 1.25, 2.0, 2.75])  # products of 0.5 s, 0.25 s and 0.75 s
    monkeypatch.setattr(features, "perf_counter", lambda: next(clock))
    assert gemm_flops("float32", size=64, repeats=3) == 2 * 64**3 / 0.25


def test_bf16_is_left_unmeasured_where_the_cpu_emulates_it() -> None:
    rates = bf16_gemm_rates({"avx2", "fma"})
    assert rates["bfloat16"] is None
    assert rates["float32"] is not None and rates["float32"] > 0
