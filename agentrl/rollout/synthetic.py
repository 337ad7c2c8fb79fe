"""The synthetic world as a run's data source: its questions as tasks, and a search index over the documents
of every world a run touches (training, SFT and held-out worlds differ by seed; one retriever serves all).

Data sections select a world with `options: {world_seed: S, world_entities: N}`. The index for a set of worlds
is built once with the configured encoder and cached under `agentrl.core.paths.cache_dir()/indexes`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agentrl.core.files import atomic_open
from agentrl.core.paths import cache_dir
from agentrl.core.types import Task

DEFAULT_ENTITIES = 3000
DEFAULT_ENCODER = "bundled:all-minilm-l6-v2"
WORLD_OPTIONS = ("world_seed", "world_entities")


def world_of(options: dict[str, Any], env_kwargs: dict[str, Any] | None = None) -> tuple[int, int]:
    """(seed, entities) of the world a data section names; the env's `world_seed`/`world_entities` (then 0 and
    3000) fill what the section leaves out."""
    unknown = sorted(set(options) - set(WORLD_OPTIONS))
    if unknown:
        raise ValueError(f"synthetic data options {unknown} are unknown; valid: {list(WORLD_OPTIONS)}")
    env_kwargs = env_kwargs or {}
    seed = int(options.get("world_seed", env_kwargs.get("world_seed", 0)))
    entities = int(options.get("world_entities", env_kwargs.get("world_entities", DEFAULT_ENTITIES)))
    return seed, entities


def synthetic_tasks(
    options: dict[str, Any], num_tasks: int | None, seed: int = 0, env_kwargs: dict[str, Any] | None = None
) -> list[Task]:
    """`num_tasks` questions of the world (all when None), drawn without replacement with `seed`."""
    from environments.synthetic_world import build_world

    world_seed, entities = world_of(options, env_kwargs)
    tasks = list(build_world(world_seed, entities).tasks)
    if num_tasks is None or num_tasks >= len(tasks):
        return tasks
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    return random.Random(seed).sample(tasks, num_tasks)


def synthetic_documents(worlds: Iterable[tuple[int, int]]) -> list[dict[str, str]]:
    """The documents of every world in `worlds` (each `(seed, entities)`), in order, without duplicates."""
    from environments.synthetic_world import build_world

    docs: list[dict[str, str]] = []
    for seed, entities in sorted(set(worlds)):
        docs.extend(build_world(seed, entities).documents)
    return docs


def _key(worlds: Iterable[tuple[int, int]]) -> str:
    return "-".join(f"w{s}x{n}" for s, n in sorted(set(worlds)))


def synthetic_index(
    worlds: Iterable[tuple[int, int]], kind: str, encoder: str | None, progress: bool | None = None
) -> Path:
    """An index directory over `worlds`' documents, built with `encoder` (None: `DEFAULT_ENCODER`) on first
    use and reused afterwards (progress bars follow `agentrl.core.progress.progress_enabled` unless
    `progress` says otherwise)."""
    from agentrl.core.progress import progress_enabled
    from retrievers.build import BuildConfig, build_index
    from retrievers.index_meta import META_FILE

    worlds = sorted(set(worlds))
    encoder = encoder or DEFAULT_ENCODER
    slug = encoder.replace(":", "-").replace("/", "--")
    root = cache_dir() / "indexes"
    out = root / f"synthetic-{_key(worlds)}-{kind}-{slug}"
    if (out / META_FILE).is_file():
        return out
    corpus = root / f"synthetic-{_key(worlds)}.jsonl"
    if not corpus.is_file():
        with atomic_open(corpus) as f:
            for doc in synthetic_documents(worlds):
                f.write(json.dumps({"id": doc["id"], "title": doc["title"], "text": doc["text"]}) + "\n")
    show = progress_enabled() if progress is None else progress
    build_index(BuildConfig(corpus=str(corpus), out=str(out), kind=kind, encoder=encoder, progress=show))
    return out
