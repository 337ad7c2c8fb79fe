"""The GPU suite runs only where CUDA and vLLM (>= 0.10.2) are at hand; elsewhere every test is skipped and
the header of the pytest run says why."""

from __future__ import annotations

from pathlib import Path

import pytest


def gpu_skip_reason() -> str | None:
    """Why the GPU suite cannot run here (None when it can)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    try:
        import vllm
    except ImportError as exc:
        return f"vLLM is not installed ({exc}); pip install 'agentrl[gpu]'"
    from agentrl.generation.vllm import check_vllm_version

    try:
        check_vllm_version(vllm.__version__)
    except RuntimeError as exc:
        return str(exc)
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    reason = gpu_skip_reason()
    return f"tests/gpu: skipped: {reason}" if reason else None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reason = gpu_skip_reason()
    if reason is not None:
        terminalreporter.write_line(f"tests/gpu skipped: {reason}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = gpu_skip_reason()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.skip(reason=f"GPU suite: {reason}"))
