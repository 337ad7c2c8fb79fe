"""`agentrl index build|import|search|info|eval`: build or adopt retrieval indexes and check what they
return."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agentrl.cli.errors import user_errors

app = typer.Typer(
    help="Build, inspect, query and evaluate retrieval indexes (dense FAISS, BM25, hybrid).",
    no_args_is_help=True,
)

_FAMILY_HELP = (
    "Encoder family, which fixes prefixes, pooling and normalization: auto (inferred from the model name), "
    "e5 ('query: '/'passage: ', mean pooling), e5-instruct (multilingual-e5-*-instruct: 'Instruct: ...\\n"
    "Query: ' on queries, mean), e5-mistral ('Instruct: ...\\nQuery: ', last-token pooling), bge-m3 (CLS, "
    "no instruction), bge (v1.5 English: CLS, English query instruction), bge-zh (v1.5 Chinese: CLS, Chinese "
    "query instruction), sentence-transformers (the model's own pooling)."
)


def _errors():  # type: ignore[no-untyped-def]
    return user_errors(ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError)


@app.command("build")
def build(
    corpus: Annotated[
        Path | None,
        typer.Option(help="Corpus file (or OTT-QA directory) to index. Required unless --config."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output index directory. Required unless --config.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML file with build settings (configs/index/*.yaml); options override it."),
    ] = None,
    corpus_format: Annotated[
        str | None,
        typer.Option(
            help="auto, searchr1, dpr, jsonl, parquet, hotpotqa, 2wiki or ottqa. auto looks at the file."
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(help="dense (FAISS), bm25 (bm25s) or hybrid (both, fused by reciprocal rank)."),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="Encoder: bundled:all-minilm-l6-v2, a local directory or a hub id (intfloat/e5-base-v2)."
        ),
    ] = None,
    family: Annotated[str | None, typer.Option(help=_FAMILY_HELP)] = None,
    query_prefix: Annotated[
        str | None, typer.Option(help="Text put before every query, replacing the family's (recorded).")
    ] = None,
    passage_prefix: Annotated[
        str | None, typer.Option(help="Text put before every passage, replacing the family's (recorded).")
    ] = None,
    pooling: Annotated[
        str | None,
        typer.Option(help="mean, cls, lasttoken or model (the model's own), replacing the family's pooling."),
    ] = None,
    normalize: Annotated[
        bool | None,
        typer.Option(
            "--normalize/--no-normalize",
            help="L2-normalize vectors (inner product = cosine), replacing the family's choice.",
        ),
    ] = None,
    index_type: Annotated[
        str | None,
        typer.Option(
            help="FAISS index_factory string: Flat (exact), HNSW32, IVF4096,PQ64 (trained on a sample), ..."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Passages per encoder forward pass (default 64).")
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(help="Max tokens per passage and query; longer text is truncated (default 256)."),
    ] = None,
    shard_size: Annotated[
        int | None,
        typer.Option(
            help="Passages per embedding shard (default 8192); an interrupted build resumes per shard."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Encoding device: auto (GPU when present), cpu, cuda:0.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished index already at --out.")] = False,
    restart: Annotated[
        bool, typer.Option(help="Discard an unfinished build of --out instead of resuming it.")
    ] = False,
    keep_shards: Annotated[bool, typer.Option(help="Keep the embedding shards (.npy) in the index.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Build an index over a corpus. Rerunning an interrupted build resumes it, reusing finished shards."""
    from retrievers.build import build_index, config_from_dict

    with _errors():
        data = _load_yaml(config) if config else {}
        options = {
            "corpus": str(corpus) if corpus else None,
            "out": str(out) if out else None,
            "corpus_format": corpus_format,
            "kind": kind,
            "encoder": encoder,
            "family": family,
            "query_prefix": query_prefix,
            "passage_prefix": passage_prefix,
            "pooling": pooling,
            "normalize": normalize,
            "index_type": index_type,
            "batch_size": batch_size,
            "max_length": max_length,
            "shard_size": shard_size,
            "device": device,
            "overwrite": overwrite or None,
            "restart": restart or None,
            "keep_shards": keep_shards or None,
            "progress": progress,
        }
        cfg = config_from_dict(data, source=str(config) if config else "--corpus/--out options", **options)
        report = build_index(cfg)
    rate = report.encoded / report.seconds if report.seconds else 0.0
    typer.echo(
        f"built {cfg.kind} index {report.out}: {report.num_docs} documents; "
        f"encoded {report.encoded} passages "
        f"({rate:.0f}/s), reused {report.reused_shards} shards, {report.seconds:.1f}s"
    )


@app.command("import")
def import_(
    faiss_index: Annotated[
        Path, typer.Option(help="Existing FAISS index file (inner product), e.g. Search-R1's e5_Flat.index.")
    ],
    corpus: Annotated[
        Path, typer.Option(help="The corpus it was built from (document i = row i), e.g. wiki-18.jsonl.")
    ],
    encoder: Annotated[
        str, typer.Option(help="The model that encoded the passages, e.g. intfloat/e5-base-v2.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Index directory for meta.json and docs.sqlite (default: the FAISS file's)."),
    ] = None,
    corpus_format: Annotated[str, typer.Option(help="auto, searchr1, dpr, jsonl, parquet, ...")] = "auto",
    family: Annotated[str, typer.Option(help=_FAMILY_HELP)] = "auto",
    max_length: Annotated[int, typer.Option(help="Max tokens per query (Search-R1 uses 256).")] = 256,
    query_prefix: Annotated[
        str | None, typer.Option(help="Text put before every query, replacing the family's (recorded).")
    ] = None,
    pooling: Annotated[
        str | None, typer.Option(help="mean, cls, lasttoken or model, replacing the family's pooling.")
    ] = None,
    normalize: Annotated[
        bool | None,
        typer.Option("--normalize/--no-normalize", help="L2-normalize query vectors (overrides the family)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the index metadata already at --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Adopt an existing FAISS index + corpus without re-encoding: writes meta.json and docs.sqlite, and
    leaves the FAISS file where it is. Then: agentrl serve-retriever DIR."""
    from retrievers.import_faiss import ImportConfig, import_faiss_index

    with _errors():
        cfg = ImportConfig(
            faiss_index=str(faiss_index),
            corpus=str(corpus),
            encoder=encoder,
            out=str(out) if out else None,
            corpus_format=corpus_format,
            family=family,
            max_length=max_length,
            query_prefix=query_prefix,
            pooling=pooling,
            normalize=normalize,
            overwrite=overwrite,
            progress=progress,
        )
        report = import_faiss_index(cfg)
    typer.echo(
        f"imported {report.faiss_type} ({report.num_docs} vectors of dimension {report.dim}) as dense index "
        f"{report.out} in {report.seconds:.1f}s; nothing was re-encoded"
    )


def _load_yaml(path: Path) -> dict[str, object]:
    """Build settings from a YAML file: the top level, or its `index:` section when it has one."""
    from agentrl.core.config import read_yaml

    data = read_yaml(path)
    return data["index"] if isinstance(data.get("index"), dict) else data


@app.command("search")
def search(
    index: Annotated[str, typer.Argument(help="Index directory or http(s):// server URL.")],
    queries: Annotated[list[str], typer.Argument(help="One or more queries.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Hits per query.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON lines.")] = False,
    device: Annotated[str, typer.Option(help="Query encoding device for dense indexes.")] = "auto",
) -> None:
    """Print the top K hits of each query."""
    from retrievers.factory import open_retriever

    with _errors():
        retriever = open_retriever(
            index, **({} if index.startswith("http") else _dense_kwargs(index, device))
        )
        results = retriever.search(list(queries), k)
    for query, hits in zip(queries, results, strict=True):
        if as_json:
            typer.echo(json.dumps({"query": query, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
            continue
        typer.echo(f"query: {query}")
        for rank, hit in enumerate(hits, start=1):
            snippet = hit.text.replace("\n", " ")
            snippet = snippet[:160] + ("..." if len(snippet) > 160 else "")
            typer.echo(f"  {rank}. [{hit.score:.4f}] {hit.title} (id {hit.id})\n     {snippet}")


def _dense_kwargs(index: str, device: str) -> dict[str, object]:
    from retrievers.index_meta import read_meta

    return {"device": device} if "encoder" in read_meta(index) else {}


@app.command("info")
def info(index: Annotated[Path, typer.Argument(help="Index directory.")]) -> None:
    """Print an index's metadata (kind, documents, corpus, encoder conventions, FAISS type) as JSON."""
    from retrievers.index_meta import read_meta

    with _errors():
        meta = read_meta(index)
    size = sum(f.stat().st_size for f in index.rglob("*") if f.is_file())
    typer.echo(json.dumps({**meta, "size_bytes": size}, indent=2, ensure_ascii=False))


@app.command("eval")
def evaluate(
    index: Annotated[str, typer.Argument(help="Index directory or http(s):// server URL.")],
    questions: Annotated[
        Path, typer.Option(help="HotpotQA or 2WikiMultihopQA questions (JSONL) with supporting_facts.")
    ],
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N questions.")] = None,
    batch_size: Annotated[int, typer.Option(help="Questions per search call.")] = 64,
    as_json: Annotated[
        bool,
        typer.Option("--json", help='Print only {"recall@1", "recall@3", "recall@10", "num_questions"}.'),
    ] = False,
    device: Annotated[str, typer.Option(help="Query encoding device for dense indexes.")] = "auto",
) -> None:
    """Recall@1/3/10 of gold supporting titles: per question, the fraction of its supporting titles among the
    titles of the top-k hits for the question text, averaged over questions."""
    from retrievers.evaluate import read_questions, recall_at_k
    from retrievers.factory import open_retriever

    with _errors():
        gold = list(read_questions(questions, limit=limit))
        retriever = open_retriever(
            index, **({} if index.startswith("http") else _dense_kwargs(index, device))
        )
        report = recall_at_k(retriever, gold, batch_size=batch_size)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"{report['num_questions']} questions from {questions}")
    for key, value in report.items():
        if key.startswith("recall@"):
            typer.echo(f"  {key:<10} {value:.4f}")
