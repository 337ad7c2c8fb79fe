"""The transfer manifest: everything that decides what an evaluation measures, written beside its report.

    model       spec, kind, weights hash (every file of the model / adapter directory), base, chat template
    dataset     loader, path, split, options, the hash of every data file read, the hash of the questions
    env         id, max_turns, constructor kwargs, the prompt (system message and user template)
    retriever   kind, top-k, the env's corpus mode; an index's meta.json hash, encoder conventions, corpus
                path and content hash; or the synthetic worlds and their documents' hash; or the server URL
    sampling    samples per question, greedy / temperature, top-p / top-k, token budgets, observation mode,
                questions per chunk
    seed        the evaluation seed

Two reports measure the same thing when their manifests agree outside `model` (`manifest_differences`); a
resumed evaluation must agree everywhere. Paths are recorded but never compared: the content hashes are.
File hashes are cached by (path, size, modification time) under the agentrl cache directory, so a large corpus
is read once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from agentrl.core.files import atomic_open
from agentrl.core.models import ModelSource, resolve_model_path
from agentrl.core.paths import cache_dir
from agentrl.core.types import Task
from agentrl.evaluation.evaluator import EvalSettings
from agentrl.experiment import ExperimentConfig

HASH_CACHE = "file_hashes.json"
COMPARED_OUTSIDE = ("model",)
_CHUNK = 1 << 20


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_sha256(data: Any) -> str:
    return text_sha256(json.dumps(data, sort_keys=True, ensure_ascii=False, default=str))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, cached by (absolute path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = cache_dir() / HASH_CACHE
    cache = _read_cache(cache_file)
    if key in cache:
        return str(cache[key])
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    value = digest.hexdigest()
    cache[key] = value
    try:
        with atomic_open(cache_file) as f:
            json.dump(cache, f)
    except OSError:
        pass
    return value


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def directory_sha256(path: str | Path) -> str:
    """One hash over the names and contents of every file directly in `path` (weights, config, tokenizer)."""
    files = sorted(p for p in Path(path).iterdir() if p.is_file() and not p.name.startswith("."))
    return json_sha256([[p.name, file_sha256(p)] for p in files])


def model_manifest(source: ModelSource, tokenizer: Any = None) -> dict[str, Any]:
    """The model's spec, kind, directory, weights hash (None for a hub id), LoRA base and chat template."""
    path = source.weights_path()
    local = Path(path).is_dir()
    out: dict[str, Any] = {
        "spec": source.spec, "kind": source.kind, "path": path,
        "sha256": directory_sha256(path) if local else None,
    }  # fmt: skip
    if source.base is not None:
        base = resolve_model_path(source.base)
        digest = directory_sha256(base) if Path(base).is_dir() else None
        out["base"] = {"spec": source.base, "path": base, "sha256": digest}
    template = getattr(tokenizer, "chat_template", None)
    out["chat_template_sha256"] = text_sha256(str(template)) if template else None
    return out


def questions_sha256(tasks: list[Task]) -> str:
    return json_sha256([[t.id, t.question, list(t.answers)] for t in tasks])


def dataset_manifest(section: Any, tasks: list[Task], env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Loader, path, split, options, the number and hash of the questions and the hash of every file read."""
    out: dict[str, Any] = {
        "name": section.dataset, "path": section.path, "split": section.split,
        "options": dict(section.options), "num_tasks": section.num_tasks, "sample_seed": section.seed,
        "num_questions": len(tasks),
        "questions_sha256": questions_sha256(tasks),
    }  # fmt: skip
    if section.dataset == "synthetic" and section.path is None:
        from agentrl.rollout.synthetic import world_of

        out["world"] = list(world_of(section.options, env_kwargs))
    elif section.path is not None:
        out["files"] = [{"path": str(p), "sha256": file_sha256(p)} for p in dataset_files(section)]
    return out


def dataset_files(section: Any) -> list[Path]:
    """The local files a data section reads ([] for a hub dataset)."""
    from environments.datasets import LOADERS
    from environments.datasets.base import resolve_files

    if section.path is None or not Path(section.path).expanduser().exists():
        return []
    spec = LOADERS.get(section.dataset)
    return resolve_files(section.path, spec.patterns, section.split if spec.split_by_file_name else None)


def prompt_template(env_id: str, env_kwargs: dict[str, Any], task: Task) -> list[dict[str, str]]:
    """The env's opening messages for `task` with the question text replaced by `{question}`."""
    from agentrl.rollout.executors import make_env

    env = make_env(env_id, dict(env_kwargs))
    try:
        inner = env.unwrapped
        if hasattr(inner, "initial_messages"):
            messages = inner.initial_messages(task)
        else:
            messages = env.reset(seed=0, options={"task": task})[1]["messages"]
    finally:
        env.close()
    question = task.question.strip()
    return [{"role": m["role"], "content": m["content"].replace(question, "{question}")} for m in messages]


def env_manifest(cfg: ExperimentConfig, task: Task) -> dict[str, Any]:
    """Env id, turn budget, constructor kwargs (as the engine passes them, retriever aside) and the prompt."""
    from agentrl.rollout.setup import env_kwargs_for

    kwargs = env_kwargs_for(cfg)
    return {
        "id": cfg.env.id, "max_turns": cfg.env.max_turns,
        "kwargs": json.loads(json.dumps(kwargs, sort_keys=True, default=repr)),
        "prompt": prompt_template(cfg.env.id, kwargs, task),
    }  # fmt: skip


def index_manifest(index_dir: str | Path) -> dict[str, Any]:
    """An index's meta.json hash, kind, size, encoder conventions and corpus (path + content hash)."""
    from retrievers.index_meta import META_FILE, read_meta

    meta = read_meta(index_dir)
    corpus = dict(meta.get("corpus") or {})
    corpus_path = corpus.get("path")
    if corpus_path and Path(corpus_path).is_file():
        corpus["sha256"] = file_sha256(corpus_path)
    elif corpus_path:
        corpus["sha256"] = None
    return {
        "path": str(Path(index_dir).resolve()), "meta_sha256": file_sha256(Path(index_dir) / META_FILE),
        "kind": meta.get("kind"), "num_docs": meta.get("num_docs"), "encoder": meta.get("encoder"),
        "corpus": corpus,
    }  # fmt: skip


def retriever_manifest(cfg: ExperimentConfig) -> dict[str, Any]:
    """What search envs search: the index, the synthetic worlds' documents, or a server (as `build_retriever`
    chooses them), with the top-k and the env's corpus mode (`task` searches each question's own passages)."""
    from agentrl.rollout.setup import env_kwargs_for, run_worlds

    section = cfg.retriever
    out: dict[str, Any] = {
        "kind": section.kind, "topk": section.topk, "env_corpus": cfg.env.kwargs.get("corpus", "default"),
    }  # fmt: skip
    takes_retriever = "retriever" in env_kwargs_for(cfg, retriever=object())
    worlds = run_worlds(cfg) if takes_retriever else []
    if section.kind == "http":
        out["url"] = section.url
    elif section.index_dir:
        out["index"] = index_manifest(section.index_dir)
    elif worlds and section.kind != "memory":
        from agentrl.rollout.synthetic import synthetic_index

        out["index"] = index_manifest(synthetic_index(worlds, section.kind, section.encoder))
    elif worlds:
        from agentrl.rollout.synthetic import synthetic_documents

        out["synthetic_worlds"] = [list(w) for w in worlds]
        out["documents_sha256"] = json_sha256(synthetic_documents(worlds))
    return out


def sampling_manifest(cfg: ExperimentConfig, settings: EvalSettings) -> dict[str, Any]:
    r = cfg.rollout
    return {
        "samples": settings.samples, "greedy": settings.greedy,
        "temperature": 0.0 if settings.greedy else settings.temperature, "top_p": r.top_p, "top_k": r.top_k,
        "max_new_tokens": r.max_new_tokens, "max_total_tokens": r.max_total_tokens,
        "max_observation_tokens": r.max_observation_tokens, "observation_mode": r.observation_mode,
        "inline_format": r.inline_format, "end_on_length": r.end_on_length, "chunk_size": settings.chunk_size,
        "backend": r.backend,
    }  # fmt: skip


def build_manifest(
    cfg: ExperimentConfig, settings: EvalSettings, source: ModelSource, tokenizer: Any, tasks: list[Task]
) -> dict[str, Any]:
    """The manifest of evaluating `source` on `tasks` as `cfg` and `settings` describe."""
    from agentrl.rollout.setup import env_kwargs_for

    return {
        "model": model_manifest(source, tokenizer),
        "dataset": dataset_manifest(cfg.eval.data, tasks, env_kwargs_for(cfg)),
        "env": env_manifest(cfg, tasks[0]),
        "retriever": retriever_manifest(cfg),
        "sampling": sampling_manifest(cfg, settings),
        "seed": settings.seed,
    }


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list) and any(isinstance(v, dict | list) for v in data):
        out = {}
        for i, value in enumerate(data):
            out.update(_leaves(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: data}


def manifest_differences(
    old: dict[str, Any], new: dict[str, Any], outside: tuple[str, ...] = ()
) -> list[str]:
    """`key: old -> new` for every manifest entry that differs, sections in `outside` and paths aside."""

    def kept(key: str) -> bool:
        return key.split(".", 1)[0] not in outside and key.rsplit(".", 1)[-1] != "path"

    a, b = _leaves(old), _leaves(new)
    keys = sorted(k for k in set(a) | set(b) if kept(k))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
