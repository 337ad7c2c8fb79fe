"""Keep the memory torch frees inside the process (glibc malloc).

glibc serves blocks above its mmap threshold (32 MiB at most) with fresh pages from the kernel and hands them
back on free, and trims the heap's free top: a training step, which allocates tensors of the same sizes at
every micro-batch (activations, logits chunks, gradients), then pays a page fault per 4 KiB page for each
of them. On a 2-core CPU that made the full fine-tuning forward/backward of a 135M-parameter model 1.9x slower
(`bench/bench_train_step.py`: its embedding gradient and logits chunks are above the threshold).
`retain_freed_memory` turns both off, so freed blocks are reused; the price is a resident size that stays at
its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Make this process's malloc take every block from its heap and never trim it (mallopt M_MMAP_MAX=0,
    M_TRIM_THRESHOLD=-1). Returns whether it did: False, changing nothing, where the C library has no
    mallopt that accepts them (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
