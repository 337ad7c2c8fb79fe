"""Seeded random number generators: one call seeds Python, NumPy and torch; derived seeds stay independent."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed `random`, NumPy's global RNG and torch (CPU and every CUDA device)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(seed: int, *names: object) -> int:
    """A stable 63-bit seed for a named sub-stream, e.g. `derive_seed(run_seed, "rollout", step, episode)`.

    Stable across processes and Python versions (no `hash()` randomization), so Ray actors and local runs
    draw the same numbers.
    """
    key = "/".join([str(seed), *(str(n) for n in names)]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def numpy_rng(seed: int, *names: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *names))


def torch_generator(seed: int, *names: object, device: str = "cpu") -> object:
    """A `torch.Generator` on `device` seeded from `derive_seed(seed, *names)`."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, *names))
    return gen
