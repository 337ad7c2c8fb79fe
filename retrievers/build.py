"""Build an index directory: corpus -> document store -> embedding shards -> FAISS / BM25 -> `meta.json`.

Work happens in `.<name>.partial/` beside the output directory:
1. the corpus is streamed into `docs.sqlite`;
2. passages are encoded `shard_size` at a time, each shard saved as `shards/shard-NNNNN.npy` (temp file +
   rename), so a killed build resumes at the first missing shard without re-encoding finished ones;
3. FAISS is trained on a sample and filled shard by shard; BM25 is indexed from the store;
4. `meta.json` is written last and the directory renamed to its final name.
A resumed build must use the same settings; `restart=True` discards the partial work instead.

Replacing a finished index (`overwrite=True`) swaps the new directory in with two renames and then moves back
every file of the old directory that the index does not own (`INDEX_FILES`), so a user's notes beside the
index survive; a corpus inside the output directory is refused, since the build reads it while it runs.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agentrl.core.files import atomic_open, disk_full_error
from agentrl.core.progress import make_progress
from agentrl.core.registry import Registry
from retrievers.corpora import detect_format, read_corpus
from retrievers.docstore import DocStore, DocStoreWriter
from retrievers.encoders import Encoder, EncoderSpec
from retrievers.index_meta import (
    BM25_DIR,
    DOCS_FILE,
    FAISS_FILE,
    META_FILE,
    meta_header,
    write_json_atomic,
)

STATE_FILE = "build.json"
SHARD_DIR = "shards"
CRASH_ENV = "AGENTRL_INDEX_CRASH_AFTER_SHARDS"  # testing hook: SIGKILL the build after N new shards
INDEX_FILES = frozenset({META_FILE, DOCS_FILE, FAISS_FILE, BM25_DIR, STATE_FILE, SHARD_DIR})

INDEX_KINDS: Registry[tuple[bool, bool]] = Registry("index kind")  # name -> (needs dense, needs bm25)
INDEX_KINDS.add("dense", (True, False))
INDEX_KINDS.add("bm25", (False, True))
INDEX_KINDS.add("hybrid", (True, True))


@dataclass
class BuildConfig:
    """Settings of one index build; maps one-to-one onto `configs/index/*.yaml` and `agentrl index build`."""

    corpus: str
    out: str
    corpus_format: str = "auto"
    kind: str = "dense"
    encoder: str = "bundled:all-minilm-l6-v2"
    family: str = "auto"
    query_prefix: str | None = None
    passage_prefix: str | None = None
    pooling: str | None = None
    normalize: bool | None = None
    index_type: str = "Flat"
    max_length: int = 256
    batch_size: int = 64
    shard_size: int = 8192
    train_size: int = 262_144
    device: str = "auto"
    dtype: str = "auto"
    use_gpu_faiss: bool = True
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    keep_shards: bool = False
    overwrite: bool = False
    restart: bool = False
    progress: bool = True


@dataclass
class BuildReport:
    out: Path
    num_docs: int
    encoded: int  # passages encoded by this run (0 when every shard was reused)
    reused_shards: int
    seconds: float


def build_index(cfg: BuildConfig) -> BuildReport:
    """Build (or resume building) the index described by `cfg`; returns what this run did."""
    start = time.perf_counter()
    needs_dense = INDEX_KINDS.get(cfg.kind)[0]
    if cfg.shard_size < 1 or cfg.batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be >= 1")
    out = Path(cfg.out)
    corpus = Path(cfg.corpus)
    if not corpus.exists():
        raise FileNotFoundError(f"corpus {corpus} does not exist")
    _check_out_path(out)
    if (out / META_FILE).exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already holds a finished index; pass --overwrite to replace it")
    if out.exists() and not (out / META_FILE).exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not an agentrl index; choose another --out")
    _check_corpus_outside(corpus, out)
    _check_no_interrupted_swap(out)
    fmt = detect_format(corpus) if cfg.corpus_format == "auto" else cfg.corpus_format
    spec = (
        EncoderSpec.create(cfg.encoder, cfg.family, cfg.max_length, cfg.dtype, **encoder_overrides(cfg))
        if needs_dense
        else None
    )

    work = out.parent / f".{out.name}.partial"
    discard = functools.partial(shutil.rmtree, work, ignore_errors=True)
    with disk_full_error(out.parent, cleanup=discard, what=f"index {out} (the unfinished build {work})"):
        num_docs, encoded, reused = _build_in(work, out, cfg, corpus, fmt, spec, start)
    return BuildReport(out, num_docs, encoded, reused, time.perf_counter() - start)


def _build_in(
    work: Path, out: Path, cfg: BuildConfig, corpus: Path, fmt: str, spec: EncoderSpec | None, start: float
) -> tuple[int, int, int]:
    """Build in `work`, then move it to `out`; returns (documents, passages encoded, shards reused)."""
    needs_dense, needs_bm25 = INDEX_KINDS.get(cfg.kind)
    state = _open_state(work, _fingerprint(cfg, corpus, fmt, spec), cfg.restart)
    console = _console()
    if not state.get("docs_done"):
        count = store_corpus(corpus, fmt, work / DOCS_FILE, console, cfg.progress)
        state.update(docs_done=True, num_docs=count)
        write_json_atomic(work / STATE_FILE, state)
    num_docs = int(state["num_docs"])
    docs = DocStore(work / DOCS_FILE)

    meta = meta_header(cfg.kind, num_docs, corpus, fmt)
    encoded = reused = 0
    if needs_dense and spec is not None:
        from retrievers.dense import check_index_type

        encoder = Encoder.from_spec(spec, device=cfg.device)
        check_index_type(cfg.index_type, num_docs, encoder.spec.dim)  # before hours of encoding, not after
        shards, encoded, reused = encode_shards(encoder, docs, work / SHARD_DIR, cfg, console)
        _write_faiss(cfg, shards, encoder.spec.dim, work / FAISS_FILE, console)
        meta["encoder"] = encoder.spec.to_dict()
        meta["encoder_overrides"] = encoder_overrides(cfg)
        meta["dense"] = {"index_type": cfg.index_type, "metric": "inner_product", "file": FAISS_FILE}
    if needs_bm25:
        bm25_dir = work / BM25_DIR
        shutil.rmtree(bm25_dir, ignore_errors=True)
        with console.status("indexing BM25"):
            from retrievers.bm25 import build_bm25

            build_bm25(docs, bm25_dir, k1=cfg.bm25_k1, b=cfg.bm25_b, progress=False)
        meta["bm25"] = {"k1": cfg.bm25_k1, "b": cfg.bm25_b, "dir": BM25_DIR, "library": "bm25s"}
    if cfg.kind == "hybrid":
        meta["hybrid"] = {"fusion": "rrf", "rrf_k": 60.0}
    docs.close()
    seconds = time.perf_counter() - start
    meta["build"] = {"seconds": round(seconds, 3), "encoded_this_run": encoded, "shard_size": cfg.shard_size}
    if not cfg.keep_shards:
        shutil.rmtree(work / SHARD_DIR, ignore_errors=True)
    (work / STATE_FILE).unlink(missing_ok=True)
    write_json_atomic(work / META_FILE, meta)
    _move_into_place(work, out)
    return num_docs, encoded, reused


def store_corpus(corpus: Path, fmt: str, target: Path, console: Any, progress: bool = True) -> int:
    """Stream the documents of `corpus` into a new document store at `target`; returns how many."""
    writer = DocStoreWriter(target)
    with make_progress(console=console, enabled=progress) as bar:
        task = bar.add_task("reading corpus", total=None)
        for doc in read_corpus(corpus, fmt):
            writer.add(doc)
            if writer.count % 1000 == 0:
                bar.update(task, completed=writer.count)
        bar.update(task, completed=writer.count)
    writer.close()
    if writer.count == 0:
        raise ValueError(f"corpus {corpus} holds no documents")
    return writer.count


class EncoderConventions(Protocol):
    """The encoder-convention fields a build (`BuildConfig`) or import (`ImportConfig`) config carries."""

    query_prefix: str | None
    passage_prefix: str | None
    pooling: str | None
    normalize: bool | None


def encoder_overrides(cfg: EncoderConventions) -> dict[str, Any]:
    """The encoder conventions a build or import config sets explicitly (`--query-prefix`,
    `--passage-prefix`, `--pooling`, `--normalize`), which replace the family's; recorded in `meta.json`."""
    chosen = {
        "query_prefix": cfg.query_prefix,
        "passage_prefix": cfg.passage_prefix,
        "pooling": cfg.pooling,
        "normalize": cfg.normalize,
    }
    return {name: value for name, value in chosen.items() if value is not None}


def _fingerprint(cfg: BuildConfig, corpus: Path, fmt: str, spec: EncoderSpec | None) -> dict[str, Any]:
    stat = corpus.stat()
    return {
        "corpus": str(corpus.resolve()),
        "corpus_size": stat.st_size,
        "corpus_mtime_ns": stat.st_mtime_ns,
        "corpus_format": fmt,
        "encoder": spec.to_dict() if spec else None,
        "shard_size": cfg.shard_size,
    }


def _check_out_path(out: Path) -> None:
    """`--out` must name a directory (existing or not) whose nearest existing ancestor is a directory."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass the path of a directory for the index")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileExistsError(f"--out {out}: {parent} is a file, not a directory")
            return


def _check_corpus_outside(corpus: Path, out: Path) -> None:
    """The corpus must not lie inside `--out`, which the finished build replaces."""
    if corpus.resolve().is_relative_to(out.resolve()):
        raise ValueError(
            f"corpus {corpus} lies inside the output directory {out}, which the build replaces; "
            "move the corpus out of it or choose another --out"
        )


def _old_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.old"


def _check_no_interrupted_swap(out: Path) -> None:
    """Refuse to build while `.<name>.old` still holds a user's files from a swap that was cut short."""
    old = _old_dir(out)
    foreign = sorted(p.name for p in old.iterdir() if p.name not in INDEX_FILES) if old.is_dir() else []
    if foreign:
        raise FileExistsError(
            f"{old} holds files moved out of {out} by an interrupted build ({', '.join(foreign[:5])}); "
            f"move them back into {out} (or delete them) and rerun"
        )


def _open_state(work: Path, fingerprint: dict[str, Any], restart: bool) -> dict[str, Any]:
    """The state of the partial build in `work`, resumed when its settings match `fingerprint`.

    A partial build with other settings is refused only when it holds finished embedding shards, the one
    thing worth keeping; one that stopped earlier (say at a bad corpus line, since fixed) is started over.
    """
    path = work / STATE_FILE
    if restart and work.exists():
        shutil.rmtree(work)
    state = _read_state(path)
    if state is not None and state.get("fingerprint") == fingerprint:
        return state
    if state is not None and _finished_shards(work):
        changed = sorted(k for k in fingerprint if state.get("fingerprint", {}).get(k) != fingerprint[k])
        raise ValueError(
            f"an unfinished build in {work} used different settings ({', '.join(changed)}); "
            "rerun with the same settings to resume it, or pass --restart to discard it"
        )
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    state = {"fingerprint": fingerprint, "docs_done": False}
    write_json_atomic(path, state)
    return state


def _finished_shards(work: Path) -> list[Path]:
    return sorted((work / SHARD_DIR).glob("shard-*.npy"))


def _read_state(path: Path) -> dict[str, Any] | None:
    """A partial build's `build.json`; None when it is missing or was cut short."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def shard_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"shard-{index:05d}.npy"


def encode_shards(
    encoder: Encoder, docs: DocStore, shard_dir: Path, cfg: BuildConfig, console: Any = None
) -> tuple[list[Path], int, int]:
    """Encode every passage into `[<=shard_size, dim]` float32 shards, skipping shards already on disk.

    Returns (shard paths in row order, passages encoded now, shards reused).
    """
    shard_dir.mkdir(parents=True, exist_ok=True)
    num_docs = len(docs)
    num_shards = (num_docs + cfg.shard_size - 1) // cfg.shard_size
    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
    paths = [shard_path(shard_dir, i) for i in range(num_shards)]
    encoded = reused = written = 0
    with make_progress(console=console or _console(), enabled=cfg.progress) as bar:
        task = bar.add_task("encoding passages", total=num_docs)
        for i, path in enumerate(paths):
            lo, hi = i * cfg.shard_size, min((i + 1) * cfg.shard_size, num_docs)
            if path.exists():
                reused += 1
                bar.update(task, advance=hi - lo)
                continue
            texts = [_passage_text(d.title, d.text) for d in docs.iter_range(lo, hi)]
            vectors = encoder.encode_passages(texts, batch_size=cfg.batch_size)
            _save_npy_atomic(path, vectors)
            encoded += len(texts)
            written += 1
            bar.update(task, advance=hi - lo)
            if crash_after and written >= crash_after:
                os.kill(os.getpid(), signal.SIGKILL)
    return paths, encoded, reused


def _passage_text(title: str, text: str) -> str:
    """What a passage looks like to the encoder: Search-R1's `"Title"\\ntext` contents."""
    return f'"{title}"\n{text}' if title else text


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array)


def _write_faiss(cfg: BuildConfig, shards: list[Path], dim: int, target: Path, console: Any) -> None:
    import faiss

    from retrievers.dense import build_faiss, gpu_count

    use_gpu = cfg.use_gpu_faiss and gpu_count() > 0
    with console.status(f"building FAISS {cfg.index_type} over {len(shards)} shard(s)"):
        index = build_faiss(cfg.index_type, shards, dim, train_size=cfg.train_size, use_gpu=use_gpu)
    tmp = target.with_name(f".{target.name}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, target)


def _move_into_place(work: Path, out: Path) -> None:
    """Rename `work` to `out`; an index already at `out` is swapped out whole, then the files it does not own
    are moved into the new directory and only the index's own files are deleted."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, out)
        return
    old = _old_dir(out)
    _check_no_interrupted_swap(out)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(work, out)
    for entry in sorted(old.iterdir()):
        if entry.name not in INDEX_FILES:
            os.replace(entry, out / entry.name)
    _remove_index_files(old)


def _remove_index_files(directory: Path) -> None:
    """Delete the files an index owns in `directory`, then the directory itself when nothing else is left."""
    for name in INDEX_FILES:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if not any(directory.iterdir()):
        directory.rmdir()


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def config_from_dict(
    data: dict[str, Any], source: str = "index build settings", **overrides: Any
) -> BuildConfig:
    """A `BuildConfig` from a YAML mapping plus non-None `overrides`, checked like every agentrl config:
    unknown keys name the closest valid key, wrong types and missing `corpus` / `out` name the key."""
    from agentrl.core.config import from_dict

    merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return from_dict(BuildConfig, merged, source=source)


def config_to_dict(cfg: BuildConfig) -> dict[str, Any]:
    return asdict(cfg)
