"""What this machine's CPU computes natively, and how fast: bf16 matrix products run in emulation, tens of
times slower than fp32, on CPUs without avx512_bf16 or AMX (x86) or the BF16 extension (Arm), AVX2-only x86
for instance. With those instructions they may run faster than fp32 or not (a 2-core AMD EPYC with
avx512_bf16 measured 4x fp32, a 2-core Intel Xeon with avx512_bf16 and no AMX 0.46x), so `gemm_flops`
measures both."""

from __future__ import annotations

from pathlib import Path
from time import perf_counter

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
NO_NATIVE_BF16 = f"no {', '.join(NATIVE_BF16_FLAGS[:-1])} or {NATIVE_BF16_FLAGS[-1]} flag"


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The feature flags of the first CPU listed in `cpuinfo` (`flags` on x86, `Features` on Arm), or None
    where the file is missing or lists none (not Linux, or a sandbox that hides it)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return None


def native_bf16(flags: set[str] | None) -> bool | None:
    """True when `flags` name a native bf16 dot-product instruction, False when they don't, None when the
    flags are unknown."""
    if flags is None:
        return None
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def gemm_flops(dtype: str = "float32", size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a [size, size] x [size, size] matmul in `dtype` ("float32", "bfloat16") on the CPU with
    torch's current thread count: the best of `repeats` after one warm-up product."""
    import torch

    kind = getattr(torch, dtype)
    a, b = torch.randn(size, size).to(kind), torch.randn(size, size).to(kind)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = perf_counter()
        a @ b
        best = min(best, perf_counter() - start)
    return 2 * size**3 / best


def bf16_gemm_rates(flags: set[str] | None) -> dict[str, float | None]:
    """Measured FLOP/s of a float32 and a bfloat16 matmul ({"float32": ..., "bfloat16": ...}); bfloat16 is
    None, unmeasured, where `flags` say the CPU emulates bf16 (a product there takes seconds)."""
    rates: dict[str, float | None] = {"float32": gemm_flops("float32"), "bfloat16": None}
    if native_bf16(flags) is not False:
        rates["bfloat16"] = gemm_flops("bfloat16")
    return rates


def rate_comparison(fp32: float, bf16: float) -> str:
    """The measured rates side by side, e.g. "150 GFLOP/s in bfloat16 against 325 in float32 (0.46x)"."""
    return f"{bf16 / 1e9:.0f} GFLOP/s in bfloat16 against {fp32 / 1e9:.0f} in float32 ({bf16 / fp32:.2f}x)"
