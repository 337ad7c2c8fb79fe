"""Adopt an existing FAISS index and its corpus (Search-R1's `e5_Flat.index` + `wiki-18.jsonl`) as an agentrl
index without encoding a single passage.

Row i of the FAISS index must be document i of the corpus, as in every index built by Search-R1 or FlashRAG.
The corpus is streamed into a staged document store and checked against the FAISS index before it replaces
`docs.sqlite`, so a failed import leaves an index already at `--out` as it was; `meta.json` is written last,
recording the encoder conventions that queries will be encoded with. The FAISS file stays where it is:
`meta.json` names it (relative to the index directory when it lies inside it), so a 65 GB index is neither
copied nor rewritten.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from retrievers.build import encoder_overrides, store_corpus
from retrievers.corpora import detect_format
from retrievers.encoders import ENCODER_FAMILIES, EncoderSpec, infer_family
from retrievers.index_meta import DOCS_FILE, META_FILE, meta_header, write_json_atomic


@dataclass
class ImportConfig:
    """Settings of `agentrl index import`.

    Attributes:
        faiss_index: the FAISS index file (inner-product metric).
        corpus: the corpus whose document i is row i of the index.
        encoder: the model that encoded the passages (`intfloat/e5-base-v2` for Search-R1's index).
        out: index directory to write `meta.json` and `docs.sqlite` into; None means the FAISS file's own.
        corpus_format, family, max_length, dtype: as for `agentrl index build`.
        query_prefix, passage_prefix, pooling, normalize: explicit conventions replacing the family's.
        overwrite: replace the `meta.json` of an index already at `out`.
    """

    faiss_index: str
    corpus: str
    encoder: str
    out: str | None = None
    corpus_format: str = "auto"
    family: str = "auto"
    max_length: int = 256
    dtype: str = "auto"
    query_prefix: str | None = None
    passage_prefix: str | None = None
    pooling: str | None = None
    normalize: bool | None = None
    overwrite: bool = False
    progress: bool = True


@dataclass
class ImportReport:
    out: Path
    num_docs: int
    faiss_type: str
    dim: int
    seconds: float


def import_faiss_index(cfg: ImportConfig) -> ImportReport:
    """Write `meta.json` and `docs.sqlite` so that `cfg.faiss_index` + `cfg.corpus` open as a dense index."""
    start = time.perf_counter()
    faiss_path = Path(cfg.faiss_index).expanduser().resolve()
    corpus = Path(cfg.corpus).expanduser()
    if not faiss_path.is_file():
        raise FileNotFoundError(f"FAISS index file {cfg.faiss_index} does not exist")
    if not corpus.exists():
        raise FileNotFoundError(f"corpus {corpus} does not exist")
    out = Path(cfg.out).expanduser() if cfg.out else faiss_path.parent
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass the path of a directory for the index")
    if (out / META_FILE).exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already holds an index ({META_FILE}); pass --overwrite to replace it")

    faiss_type, dim, num_vectors = describe_faiss_file(faiss_path)
    check_family(cfg.encoder, cfg.family)
    spec = EncoderSpec.create(cfg.encoder, cfg.family, cfg.max_length, cfg.dtype, **encoder_overrides(cfg))
    encoder_dim = encoder_dimension(cfg.encoder)
    if encoder_dim is not None and encoder_dim != dim:
        raise ValueError(
            f"{faiss_path} holds {dim}-dimensional vectors but --encoder {cfg.encoder} encodes "
            f"{encoder_dim}-dimensional ones; pass the encoder the index was built with"
        )
    spec = replace(spec, dim=dim)
    fmt = detect_format(corpus) if cfg.corpus_format == "auto" else cfg.corpus_format

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".{DOCS_FILE}.importing"
    try:
        num_docs = _stage_docs(corpus, fmt, staging, cfg.progress)
        if num_docs != num_vectors:
            raise ValueError(
                f"{faiss_path} holds {num_vectors} vectors but corpus {corpus} has {num_docs} documents; "
                "row i of the index must be document i of the corpus it was built from"
            )
    except BaseException:
        staging.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    (out / META_FILE).unlink(missing_ok=True)
    os.replace(staging, out / DOCS_FILE)
    seconds = time.perf_counter() - start
    meta = {
        **meta_header("dense", num_docs, corpus, fmt),
        "encoder": spec.to_dict(),
        "encoder_overrides": encoder_overrides(cfg),
        "dense": {"index_type": faiss_type, "metric": "inner_product", "file": _file_entry(faiss_path, out)},
        "imported": {"faiss_index": str(faiss_path), "seconds": round(seconds, 3)},
    }
    write_json_atomic(out / META_FILE, meta)
    return ImportReport(out, num_docs, faiss_type, dim, time.perf_counter() - start)


def check_family(encoder: str, family: str) -> None:
    """Refuse an explicit `--family` that contradicts the one `encoder`'s name names (its queries would be
    encoded with another family's prefixes and pooling than the passages were)."""
    implied = infer_family(encoder)
    if family == "auto" or implied == "sentence-transformers":
        return
    if ENCODER_FAMILIES.get(family).name != ENCODER_FAMILIES.get(implied).name:
        raise ValueError(
            f"--family {family} contradicts --encoder {encoder}, whose family is {implied}; pass --family "
            f"{implied} (or auto), or set the prefixes and pooling explicitly"
        )


def encoder_dimension(encoder: str) -> int | None:
    """The embedding size of a local or bundled sentence encoder, read from its files (the last Dense layer's
    `out_features`, else the transformer's `hidden_size`); None when its files are not on this machine."""
    import json

    from agentrl.core.models import resolve_encoder_path

    root = Path(resolve_encoder_path(encoder))
    if not root.is_dir():
        return None
    dense = sorted(root.glob("*_Dense/config.json"))
    if dense:
        return int(json.loads(dense[-1].read_text(encoding="utf-8"))["out_features"])
    config = root / "config.json"
    if not config.is_file():
        return None
    size = json.loads(config.read_text(encoding="utf-8")).get("hidden_size")
    return int(size) if size is not None else None


def _stage_docs(corpus: Path, fmt: str, staging: Path, progress: bool) -> int:
    """Stream the corpus into a document store at `staging`; returns how many documents it holds."""
    from rich.console import Console

    return store_corpus(corpus, fmt, staging, Console(stderr=True), progress)


def describe_faiss_file(path: Path) -> tuple[str, int, int]:
    """(index class name, dimension, number of vectors) of a FAISS file; refuses non-inner-product indexes.

    Flat indexes are memory-mapped, so a 65 GB file is not read into memory to be described.
    """
    import faiss

    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ValueError(f"{path} is not a FAISS index file: {str(exc).strip()[:300]}") from None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(
            f"{path} is a {type(index).__name__} with metric {_metric_name(index.metric_type)}; agentrl "
            "serves inner-product indexes (higher score = better), as Search-R1's e5_Flat.index is"
        )
    return type(index).__name__, int(index.d), int(index.ntotal)


def _metric_name(metric: int) -> str:
    import faiss

    names = {getattr(faiss, n): n.removeprefix("METRIC_") for n in dir(faiss) if n.startswith("METRIC_")}
    return names.get(metric, str(metric))


def _file_entry(faiss_path: Path, out: Path) -> str:
    """The FAISS file as `meta.json` names it: relative to the index directory inside it, else absolute."""
    try:
        return str(faiss_path.relative_to(out.resolve()))
    except ValueError:
        return str(faiss_path)
