"""Retrieval benchmark: agentrl's index build and search against raw sentence-transformers + faiss, one run.

Prints, on the same passages and queries:
- build throughput (passages/s) of `retrievers.build.build_index` against raw `model.encode` +
  `IndexFlatIP.add`
  (target: ratio >= 1.0);
- search QPS of the in-process `DenseRetriever` and of the HTTP server (through `HttpRetriever`) against raw
  encode + `index.search` (target: overhead <= 20%).
Every timing is the best of `--rounds`, with the contenders interleaved, so a busy machine hurts all alike.

    .venv/bin/python bench/bench_retrieval.py --passages 1000 --queries 256
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentrl.core.models import resolve_encoder_path  # noqa: E402
from retrievers.build import BuildConfig, build_index  # noqa: E402
from retrievers.client import HttpRetriever  # noqa: E402
from retrievers.corpora import read_corpus  # noqa: E402
from retrievers.dense import DenseRetriever  # noqa: E402
from retrievers.evaluate import read_questions  # noqa: E402
from retrievers.server import ServerConfig, ServerThread  # noqa: E402

HOTPOT = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpotqa_dev_distractor.public.jsonl"
MODEL = "bundled:all-minilm-l6-v2"


def best_of(rounds: int, runs: dict[str, object]) -> dict[str, float]:
    """Best wall time in seconds of each callable over `rounds` interleaved rounds."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()  # type: ignore[operator]
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=HOTPOT, help="HotpotQA file: paragraphs and questions")
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="queries per search call")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--build-only", action="store_true", help="measure the index build only")
    args = parser.parse_args()

    import faiss
    from sentence_transformers import SentenceTransformer

    work = Path(tempfile.mkdtemp(prefix="agentrl-bench-"))
    docs = list(itertools.islice(read_corpus(args.corpus, "hotpotqa"), args.passages))
    corpus = work / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps({"id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    texts = [doc.contents for doc in docs]
    queries = [q.question for q in itertools.islice(read_questions(args.corpus), args.queries)]
    batches = [queries[i : i + args.batch] for i in range(0, len(queries), args.batch)]
    path = resolve_encoder_path(MODEL)
    print(
        f"{len(docs)} passages, {len(queries)} queries in batches of {args.batch}, "
        f"max_length {args.max_length}"
    )

    raw_index: list[object] = []

    def raw_build() -> None:
        model = SentenceTransformer(path, device="cpu")
        model.max_seq_length = args.max_length
        vectors = model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        raw_index[:] = [index, model]

    counter = itertools.count()

    def our_build() -> None:
        out = work / f"index-{next(counter)}"
        build_index(
            BuildConfig(str(corpus), str(out), max_length=args.max_length, device="cpu", progress=False)
        )

    build = best_of(args.rounds, {"raw encode + add": raw_build, "agentrl index build": our_build})
    raw_rate, our_rate = len(docs) / build["raw encode + add"], len(docs) / build["agentrl index build"]
    print("\nindex build (passages/s, model load included)")
    print(f"  raw sentence-transformers + faiss  {raw_rate:8.1f}")
    print(
        f"  agentrl index build                {our_rate:8.1f}   "
        f"ratio {our_rate / raw_rate:.3f} (target >= 1.0)"
    )

    if args.build_only:
        return
    index, model = raw_index
    retriever = DenseRetriever.load(work / "index-0", device="cpu")

    def raw_search() -> None:
        for batch in batches:
            vectors = model.encode(batch, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
            index.search(vectors, args.k)  # type: ignore[attr-defined]

    def local_search() -> None:
        for batch in batches:
            retriever.search(batch, args.k)

    with ServerThread(retriever, ServerConfig(port=0)) as server:
        client = HttpRetriever(server.url, max_batch=args.batch)
        client.search(queries[:2], args.k)

        def server_search() -> None:
            client.search(queries, args.k)

        search = best_of(
            args.rounds + 1,
            {"raw": raw_search, "in-process": local_search, "server": server_search},
        )
    raw_qps = len(queries) / search["raw"]
    print(f"\nsearch (queries/s, k={args.k})")
    print(f"  raw sentence-transformers + faiss  {raw_qps:8.1f}")
    for name in ("in-process", "server"):
        qps = len(queries) / search[name]
        print(f"  agentrl {name:<26} {qps:8.1f}   overhead {1 - qps / raw_qps:+.1%} (target <= 20%)")


if __name__ == "__main__":
    main()
