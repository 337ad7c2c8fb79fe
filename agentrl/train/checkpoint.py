"""Checkpoint directories written atomically, a `latest` pointer written last, the newest K kept; RNG states.

    path = save_checkpoint(root, step, write=lambda tmp: worker.save(tmp), keep_last=2)
    path = latest_checkpoint(root)           # None when no complete checkpoint exists

A checkpoint is first written to `root/.step-NNNNNN.tmp-*`; a marker file `COMPLETE` is the last thing written
into it; only then is it renamed to `root/step-NNNNNN` and `root/latest` updated (itself atomically). A crash,
a kill or a full disk at any point leaves the previous checkpoint and pointer untouched; leftovers of an
interrupted write are removed by the next save.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl.core.files import atomic_open

LATEST = "latest"
COMPLETE = "COMPLETE"
PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def save_checkpoint(root: str | Path, step: int, write: Callable[[Path], None], keep_last: int = 2) -> Path:
    """Write a checkpoint for `step` with `write(directory)`; returns its final path."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    for leftover in base.glob(f".{PREFIX}*.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    name = checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=base))
    try:
        write(tmp)
        _fsync_tree(tmp)
        with atomic_open(tmp / COMPLETE) as f:
            f.write(f"{step}\n")
        final = base / name
        if final.exists():
            stale = base / f".{name}.tmp-replaced"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with atomic_open(base / LATEST) as f:
        f.write(name + "\n")
    prune_checkpoints(base, keep_last)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint `root/latest` names, if complete; else the newest complete `step-*` directory."""
    base = Path(root)
    pointer = base / LATEST
    if pointer.is_file():
        candidate = base / pointer.read_text(encoding="utf-8").strip()
        if (candidate / COMPLETE).is_file():
            return candidate
    complete = [p for p in list_checkpoints(base) if (p / COMPLETE).is_file()]
    return complete[-1] if complete else None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete and incomplete `step-*` directories, oldest first."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (never the one `latest` names)."""
    keep = max(keep_last, 1)
    latest = latest_checkpoint(root)
    complete = [p for p in list_checkpoints(root) if (p / COMPLETE).is_file()]
    for old in complete[:-keep]:
        if latest is not None and old.resolve() == latest.resolve():
            continue
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def capture_rng() -> dict[str, Any]:
    """Every RNG state a training step draws from: Python, NumPy, torch CPU and CUDA."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
