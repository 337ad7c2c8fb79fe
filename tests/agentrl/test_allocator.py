"""malloc keeping freed memory: no block of a process that called `retain_freed_memory` is mmap'd, and the
run settings apply it (each in a fresh interpreter: the change is process-wide)."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import subprocess
import sys

import pytest

GLIBC = hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
NO_GLIBC = "mallinfo2 needs glibc >= 2.33; elsewhere retain_freed_memory is a no-op"

PROBE = """
import ctypes, ctypes.util, json, sys

FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
          "keepcost")

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
{setup}
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
after = libc.mallinfo2()
print(json.dumps({{"applied": applied, "mapped_blocks": mapped, "heap_kept": after.arena}}))
"""


def probe(setup: str) -> dict[str, int | bool]:
    code = PROBE.format(setup=setup)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason=NO_GLIBC)
def test_a_large_block_comes_from_the_heap_and_stays_there_after_free() -> None:
    default = probe("applied = False")
    assert default["mapped_blocks"] == 1  # 64 MiB is above glibc's mmap threshold
    kept = probe("from agentrl.core.allocator import retain_freed_memory\napplied = retain_freed_memory()")
    assert kept["applied"] is True
    assert kept["mapped_blocks"] == 0
    assert kept["heap_kept"] >= 64 << 20  # freed, not trimmed


@pytest.mark.skipif(not GLIBC, reason=NO_GLIBC)
@pytest.mark.parametrize("retain", [True, False])
def test_the_run_settings_apply_retain_freed_memory_and_threads(retain: bool) -> None:
    setup = (
        "import torch\n"
        "from agentrl.core.config import load_config\n"
        "from agentrl.experiment import ExperimentConfig\n"
        "from agentrl.rollout.setup import apply_process_settings\n"
        f"overrides = ['threads=1', 'retain_freed_memory={str(retain).lower()}']\n"
        "cfg = load_config(ExperimentConfig, None, overrides)\n"
        "apply_process_settings(cfg)\n"
        "applied = torch.get_num_threads() == 1\n"
    )
    out = probe(setup)
    assert out["applied"] is True
    assert out["mapped_blocks"] == (0 if retain else 1)
