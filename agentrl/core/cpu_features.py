"""What this machine's CPU computes natively: bf16 matrix products run at several times the fp32 rate on CPUs
with avx512_bf16 or AMX (x86) or the BF16 extension (Arm), and in emulation, tens of times slower than fp32,
on the others (AVX2-only x86, for instance)."""

from __future__ import annotations

from pathlib import Path

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
