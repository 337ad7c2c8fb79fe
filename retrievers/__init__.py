"""Retrievers: encoders, corpora, dense/BM25/hybrid indexes, an HTTP server and its client."""

from retrievers.base import Hit, Retriever
from retrievers.factory import open_retriever
from retrievers.memory import InMemoryRetriever

__all__ = ["Hit", "InMemoryRetriever", "Retriever", "open_retriever"]
