"""Encoder families: inference from names, metadata round trips and bit-for-bit query encoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrievers.build import BuildConfig, build_index
from retrievers.dense import DenseRetriever
from retrievers.encoders import ENCODER_FAMILIES, EncoderSpec, infer_family
from tests.conftest import requires_minilm

MINILM = "bundled:all-minilm-l6-v2"
QUERIES = ["who wrote the novel dune?", "Which river flows through Valencia?"]


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("intfloat/e5-base-v2", "e5"),
        ("intfloat/multilingual-e5-large", "e5"),
        ("/models/e5-small-v2", "e5"),
        ("BAAI/bge-m3", "bge-m3"),
        ("BAAI/bge-base-en-v1.5", "bge"),
        ("BAAI/bge-large-zh-v1.5", "bge-zh"),
        ("BAAI/bge-small-zh", "bge-zh"),
        ("intfloat/multilingual-e5-large-instruct", "e5-instruct"),
        ("intfloat/e5-mistral-7b-instruct", "e5-mistral"),
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers"),
        (MINILM, "sentence-transformers"),
        ("some/model-e52", "sentence-transformers"),
    ],
)
def test_family_is_inferred_from_the_model_name(model: str, family: str) -> None:
    assert infer_family(model) == family


def test_family_conventions() -> None:
    e5 = EncoderSpec.create("intfloat/e5-base-v2", dtype="float32")
    assert (e5.query_prefix, e5.passage_prefix, e5.pooling, e5.normalize) == (
        "query: ",
        "passage: ",
        "mean",
        True,
    )
    m3 = EncoderSpec.create("BAAI/bge-m3", dtype="float32")
    assert (m3.query_prefix, m3.passage_prefix, m3.pooling, m3.normalize) == ("", "", "cls", True)
    bge = EncoderSpec.create("BAAI/bge-large-en-v1.5", dtype="float32")
    assert bge.query_prefix.startswith("Represent this sentence") and bge.pooling == "cls"
    assert EncoderSpec.create(MINILM, family="minilm").pooling == "model"
    with pytest.raises(KeyError, match="Did you mean 'e5'"):
        EncoderSpec.create(MINILM, family="e6")
    assert "bge-m3" in ENCODER_FAMILIES


def test_instruction_tuned_and_chinese_family_conventions() -> None:
    instruct = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: "
    me5 = EncoderSpec.create("intfloat/multilingual-e5-large-instruct", dtype="float32")
    assert (me5.family, me5.query_prefix, me5.passage_prefix) == ("e5-instruct", instruct, "")
    assert me5.pooling == "mean"
    mistral = EncoderSpec.create("intfloat/e5-mistral-7b-instruct", dtype="float32")
    assert (mistral.query_prefix, mistral.passage_prefix, mistral.pooling) == (instruct, "", "lasttoken")
    zh = EncoderSpec.create("BAAI/bge-large-zh-v1.5", dtype="float32")
    assert (zh.family, zh.pooling) == ("bge-zh", "cls")
    assert zh.query_prefix == "为这个句子生成表示以用于检索相关文章："
    en = EncoderSpec.create("BAAI/bge-large-en-v1.5", dtype="float32")
    assert en.query_prefix == "Represent this sentence for searching relevant passages: "


def test_explicit_conventions_replace_the_familys() -> None:
    spec = EncoderSpec.create(
        "intfloat/e5-base-v2", dtype="float32", query_prefix="q> ", pooling="cls", normalize=False
    )
    assert (spec.family, spec.query_prefix, spec.passage_prefix) == ("e5", "q> ", "passage: ")
    assert (spec.pooling, spec.normalize) == ("cls", False)
    with pytest.raises(ValueError, match="pooling must be one of"):
        EncoderSpec.create("intfloat/e5-base-v2", dtype="float32", pooling="first")


def test_spec_round_trips_and_rejects_unknown_fields() -> None:
    spec = EncoderSpec.create("intfloat/e5-base-v2", max_length=512, dtype="float32")
    assert EncoderSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="unknown encoder metadata fields"):
        EncoderSpec.from_dict({**spec.to_dict(), "pooling_mode": "cls"})


def _reference_model(path: str, pooling: str, max_length: int):  # type: ignore[no-untyped-def]
    """The encoder assembled by hand: transformer, the family's pooling, L2 normalization."""
    from sentence_transformers import SentenceTransformer

    from retrievers.encoders import _st_modules

    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = max_length
    if pooling == "model":
        return model  # all-MiniLM-L6-v2 ships Transformer, mean Pooling and Normalize modules
    modules = _st_modules()
    return SentenceTransformer(modules=[model[0], modules.Pooling(384, pooling_mode=pooling)], device="cpu")


@requires_minilm
@pytest.mark.parametrize("family", ["e5", "bge-m3", "sentence-transformers"])
def test_search_path_encodes_queries_bit_for_bit(family: str, wiki_subset: Path, tmp_path: Path) -> None:
    from agentrl.core.models import resolve_encoder_path

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(wiki_subset.read_text(encoding="utf-8").splitlines(True)[:40]), encoding="utf-8"
    )
    out = tmp_path / "index"
    build_index(
        BuildConfig(
            corpus=str(corpus), out=str(out), family=family, max_length=96, device="cpu", progress=False
        )
    )
    meta = json.loads((out / "meta.json").read_text())
    spec = EncoderSpec.from_dict(meta["encoder"])
    assert spec.family == family and spec.dim == 384 and spec.max_length == 96

    retriever = DenseRetriever.load(out, device="cpu")
    searched = retriever.encode_queries(QUERIES)
    reference = _reference_model(resolve_encoder_path(MINILM), spec.pooling, 96)
    direct = reference.encode(
        [spec.query_prefix + q for q in QUERIES],
        convert_to_numpy=True,
        normalize_embeddings=spec.pooling != "model",
    )
    assert searched.dtype == np.float32 and searched.shape == (2, 384)
    assert np.array_equal(searched, direct.astype(np.float32)), (
        "query vectors differ from the family's encoding"
    )

    hit = retriever.search(QUERIES[:1], k=1)[0][0]
    passage = reference.encode([spec.passage_prefix + f'"{hit.title}"\n{hit.text}'], convert_to_numpy=True)
    passage = passage / np.linalg.norm(passage, axis=1, keepdims=True)
    assert hit.score == pytest.approx(float(direct[0] @ passage[0]), abs=1e-5)


@requires_minilm
def test_families_really_encode_differently(tmp_path: Path) -> None:
    from retrievers.encoders import Encoder

    vectors = {
        family: Encoder.from_spec(EncoderSpec.create(MINILM, family, 64, "float32"), "cpu").encode_queries(
            QUERIES
        )
        for family in ("e5", "bge-m3", "sentence-transformers")
    }
    assert not np.allclose(vectors["e5"], vectors["sentence-transformers"])
    assert not np.allclose(vectors["bge-m3"], vectors["sentence-transformers"])
    for v in vectors.values():
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


@requires_minilm
def test_mean_pooling_matches_plain_transformers() -> None:
    """Independent check of the e5 conventions: AutoModel, masked mean over tokens, L2 normalization."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from agentrl.core.models import resolve_encoder_path
    from retrievers.encoders import Encoder

    path = resolve_encoder_path(MINILM)
    ours = Encoder.from_spec(EncoderSpec.create(MINILM, "e5", 64, "float32"), "cpu").encode_queries(QUERIES)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(
        ["query: " + q for q in QUERIES], padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    assert np.allclose(ours, expected, atol=1e-5)


@requires_minilm
def test_last_token_pooling_matches_plain_transformers() -> None:
    """`lasttoken` pooling is the hidden state of each text's last non-padding token, L2-normalized."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from agentrl.core.models import resolve_encoder_path
    from retrievers.encoders import Encoder

    path = resolve_encoder_path(MINILM)
    spec = EncoderSpec.create(MINILM, "e5-mistral", 64, "float32")
    ours = Encoder.from_spec(spec, "cpu").encode_queries(QUERIES)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    texts = [spec.query_prefix + q for q in QUERIES]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    last = batch["attention_mask"].sum(1) - 1
    expected = torch.nn.functional.normalize(states[torch.arange(len(texts)), last], dim=-1).numpy()
    assert np.allclose(ours, expected, atol=1e-5)


@requires_minilm
def test_build_cli_overrides_are_recorded_and_used(world_corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from agentrl.cli.main import app

    corpus = tmp_path / "corpus.jsonl"
    lines = world_corpus.read_text(encoding="utf-8").splitlines(True)[:12]
    corpus.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "index"
    args = ["index", "build", "--corpus", str(corpus), "--out", str(out), "--max-length", "64"]
    args += ["--device", "cpu", "--no-progress", "--query-prefix", "search: ", "--passage-prefix", "doc: "]
    result = CliRunner().invoke(app, [*args, "--pooling", "cls", "--no-normalize"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["encoder_overrides"] == {
        "query_prefix": "search: ",
        "passage_prefix": "doc: ",
        "pooling": "cls",
        "normalize": False,
    }
    encoder = meta["encoder"]
    assert (encoder["query_prefix"], encoder["passage_prefix"]) == ("search: ", "doc: ")
    assert (encoder["pooling"], encoder["normalize"]) == ("cls", False)
    assert encoder["family"] == "sentence-transformers"

    retriever = DenseRetriever.load(out, device="cpu")
    vectors = retriever.encode_queries(QUERIES)
    reference = _reference_model(resolve_minilm(), "cls", 64)
    direct = reference.encode(["search: " + q for q in QUERIES], convert_to_numpy=True)
    assert np.allclose(vectors, direct, atol=1e-5)
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def resolve_minilm() -> str:
    from agentrl.core.models import resolve_encoder_path

    return resolve_encoder_path(MINILM)


@requires_minilm
def test_passages_are_batched_by_exact_token_count() -> None:
    """Digits cost a token per 2 characters, "hello " one per 6: character order would pair unlike lengths."""
    from retrievers.encoders import Encoder

    texts = ["7 " * 30, "hello " * 20, "7 " * 25, "hello " * 3]
    encoder = Encoder.from_spec(EncoderSpec.create(MINILM, max_length=64, dtype="float32"), "cpu")
    assert encoder.token_lengths(texts).tolist() == [32, 22, 27, 5]
    shapes: list[tuple[int, int]] = []
    forward = encoder.model.forward

    def spy(features, **kwargs):  # type: ignore[no-untyped-def]
        shapes.append(tuple(features["input_ids"].shape))
        return forward(features, **kwargs)

    encoder.model.forward = spy
    vectors = encoder.encode_passages(texts, batch_size=2)
    assert sorted(shapes) == [(2, 22), (2, 32)]  # {32, 27} and {22, 5}; by characters: {22, 32} and {27, 5}
    alone = np.concatenate([encoder._encode([t], 1) for t in texts])
    assert vectors.shape == (4, 384) and np.allclose(vectors, alone, atol=1e-5)
