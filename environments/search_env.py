"""Multi-turn search QA environment: the Search-R1 protocol with WAPO's reward (appendix F.2).

Each turn the agent reasons in `<think>...</think>` and then either searches with
`<search> query </search>` (the environment answers with the top-k documents between `<information>` and
`</information>`) or answers with `<answer> ... </answer>`, which ends the episode. Other turns get a short
corrective observation and count as invalid. After `max_turns` turns without an answer the episode is
truncated.

Reward on the final step: (w * R_fmt + score) / (1 + w), with `score` the answer's F1 (or EM / sub-EM) against
the gold answers and R_fmt = 1 when every assistant turn was well-formed and the episode ended with an answer;
w = `format_weight` = 0.3 gives WAPO's (0.3 R_fmt + F1) / 1.3.

What is searched never changes silently: `corpus="task"` needs every task to carry its own documents, and the
synthetic world (the default retriever) only serves synthetic tasks; anything else is an error at `reset`
naming the task. `corpus="task_or_default"` is the explicit opt-in to search the env's retriever for tasks
without a corpus.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agentrl.core.types import Task
from environments.base import Message, StepResult, TextEnv
from environments.observations import (
    OBSERVATION_FORMATS,
    TokenizerLike,
    format_hits,
    information_block,
    truncate,
)
from environments.parsing import clean_text, parse_turn
from environments.rewards import (
    QA_SCORERS,
    answer_in_text,
    normalize_answer,
    qa_em,
    qa_f1,
    qa_reward,
    qa_subem,
)
from environments.synthetic_world import build_world
from environments.timeouts import call_with_timeout
from retrievers.base import Retriever
from retrievers.memory import InMemoryRetriever

SEARCH_SYSTEM_PROMPT = """You are a helpful assistant who answers complex questions by searching for \
information and reasoning step by step.

In every response, first reason inside <think> and </think>. Your reasoning should analyse the question, \
lay out a plan, and settle sub-questions using the information you already have.

To look something up, call the search engine by writing <search> query </search> once you have a good query. \
The top results will be returned to you between <information> and </information>.

Base your answer only on what the search engine returns; never use information it has not given you. You may \
search as many times as you need.

When you have gathered enough information, give a precise and concise answer to the original question inside \
<answer> and </answer>."""

INVALID_TURN_MESSAGE = (
    "Invalid turn: {error}. Reason inside <think>...</think>, then either search with "
    "<search> query </search> or give the final answer with <answer> answer </answer>."
)
CORPUS_MODES = ("default", "task", "task_or_default")
SYNTHETIC_DATASETS = frozenset({"", "synthetic"})
TASK_INDEX_CACHE_SIZE = 64
_SPECIAL_ANSWERS = frozenset({"yes", "no", "noanswer"})


@functools.lru_cache(maxsize=4)
def world_retriever(seed: int = 0, num_entities: int = 3000) -> InMemoryRetriever:
    """A BM25 retriever over the synthetic world's documents (cached per world)."""
    return InMemoryRetriever(build_world(seed, num_entities).documents)


def corpus_key(corpus: Sequence[Mapping[str, Any]]) -> str:
    """A digest of a task corpus's content (every document's fields), the key of the per-corpus index cache:
    two tasks share an index only when their documents are identical, whatever their ids."""
    payload = json.dumps(list(corpus), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


class SearchQAEnv(TextEnv):
    """Search-R1 style multi-hop QA.

    Args:
        retriever: any `Retriever`; None uses BM25 over the synthetic world (`world_seed`, `world_entities`),
            which then serves only synthetic tasks (`Task.dataset` "synthetic" or empty): resetting with a
            task of another dataset raises instead of searching fictional documents.
        corpus: "default" searches `retriever`; "task" searches the task's own `corpus` (HotpotQA distractor
            paragraphs) with an in-memory BM25 index and raises at `reset` for a task without one;
            "task_or_default" is the opt-in fallback: the task's corpus when it has one, else `retriever`.
            Task indexes are cached by corpus content (`corpus_key`), the last `TASK_INDEX_CACHE_SIZE` ones.
        top_k: documents per search (default 3, as in the paper).
        max_turns: agent turns before truncation (default 10).
        reward: "f1" (default), "em" or "subem": the answer score in the reward.
        format_weight: w in (w * R_fmt + score) / (1 + w); 0 gives the bare answer score.
        max_obs_chars: character budget of one observation (the document listing is cut, the tags kept).
        max_obs_tokens, tokenizer: optional token budget of one observation.
        max_query_chars: longer queries are cut before they reach the retriever.
        retriever_timeout: seconds to wait for a search (None: no limit). A search that raises or times out
            yields an error observation, is recorded in `info["error"]`, and the episode goes on.
        system_prompt: the system message (None for none).
        tasks: the task pool `reset` draws from without a task option (default: the synthetic world's
        questions). world_seed, world_entities: which synthetic world backs the defaults.
        observation_role: chat role of observations in message mode.
        observation_format: "agentrl" (default) renders
            `<information>Doc 1 (Title: Paris) text</information>`; "searchr1" renders exactly what
            Search-R1's rollout loop does, `Doc 1(Title: "Paris") text` lines in an information block with
            two newlines on each side.
    """

    def __init__(
        self,
        retriever: Retriever | None = None,
        corpus: str = "default",
        top_k: int = 3,
        max_turns: int = 10,
        reward: str = "f1",
        format_weight: float = 0.3,
        max_obs_chars: int | None = 4000,
        max_obs_tokens: int | None = None,
        tokenizer: TokenizerLike | None = None,
        max_query_chars: int = 1000,
        retriever_timeout: float | None = 30.0,
        system_prompt: str | None = SEARCH_SYSTEM_PROMPT,
        tasks: Sequence[Task] | None = None,
        world_seed: int = 0,
        world_entities: int = 3000,
        observation_role: str = "user",
        render_mode: str | None = None,
        observation_format: str = "agentrl",
    ) -> None:
        super().__init__(render_mode=render_mode, observation_role=observation_role)
        if observation_format not in OBSERVATION_FORMATS:
            raise ValueError(
                f"observation_format must be one of {OBSERVATION_FORMATS}, got {observation_format!r}"
            )
        self.observation_format = observation_format
        if corpus not in CORPUS_MODES:
            raise ValueError(f"corpus must be one of {CORPUS_MODES}, got {corpus!r}")
        self.scorer = QA_SCORERS.get(reward)
        if top_k < 1 or max_turns < 1:
            raise ValueError(f"top_k and max_turns must be >= 1, got top_k={top_k}, max_turns={max_turns}")
        if max_obs_tokens is not None and tokenizer is None:
            raise ValueError("max_obs_tokens needs a tokenizer")
        self.stop_strings = ["</search>", "</answer>"]
        self.world_seed, self.world_entities = world_seed, world_entities
        self._retriever = retriever
        self._synthetic_only = retriever is None
        self.corpus = corpus
        self.top_k, self.max_turns = top_k, max_turns
        self.reward_name, self.format_weight = reward, format_weight
        self.max_obs_chars, self.max_obs_tokens, self.tokenizer = max_obs_chars, max_obs_tokens, tokenizer
        self.max_query_chars = max_query_chars
        self.retriever_timeout = retriever_timeout
        self.system_prompt = system_prompt
        self._tasks = list(tasks) if tasks is not None else None
        self._task_retrievers: OrderedDict[str, InMemoryRetriever] = OrderedDict()
        for task in self._tasks or []:
            self._check_searchable(task)

    @property
    def retriever(self) -> Retriever:
        """The shared retriever (built lazily: BM25 over the synthetic world when none was given)."""
        if self._retriever is None:
            self._retriever = world_retriever(self.world_seed, self.world_entities)
        return self._retriever

    def default_task(self, rng: np.random.Generator) -> Task:
        pool = (
            self._tasks
            if self._tasks is not None
            else build_world(self.world_seed, self.world_entities).tasks
        )
        if not pool:
            raise ValueError("the task pool is empty; pass tasks=[...] or reset with options={'task': task}")
        return pool[int(rng.integers(len(pool)))]

    def initial_messages(self, task: Task) -> list[Message]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*messages, {"role": "user", "content": f"Question: {task.question.strip()}"}]

    def start(self, task: Task) -> None:
        self.turn_formats: list[bool] = []
        self.num_searches = 0
        self.invalid_turns = 0
        self.retrieval_errors = 0
        self.gold_retrieved = False
        self.episode_retriever = self._retriever_for(task)

    def _uses_task_corpus(self, task: Task) -> bool:
        return self.corpus == "task" or (self.corpus == "task_or_default" and bool(task.corpus))

    def _check_searchable(self, task: Task) -> None:
        """Raise when `task` cannot be searched as configured (see the module docstring)."""
        if self._uses_task_corpus(task):
            if not task.corpus:
                raise ValueError(
                    f"task {task.id!r} (dataset {task.dataset!r}) has no corpus, but corpus='task' searches "
                    "each task's own documents; load tasks that carry them (e.g. HotpotQA distractor, not "
                    "fullwiki or evidence-only files) or pass corpus='task_or_default' to search the env's "
                    "retriever for such tasks"
                )
        elif self._synthetic_only and task.dataset not in SYNTHETIC_DATASETS:
            raise ValueError(
                f"task {task.id!r} comes from dataset {task.dataset!r}, but no retriever was given, so it "
                "would be searched in the synthetic world's fictional documents; pass retriever=... (an "
                "index or server over its corpus) or corpus='task' for tasks that carry their own documents"
            )

    def _retriever_for(self, task: Task) -> Retriever:
        self._check_searchable(task)
        if not self._uses_task_corpus(task):
            return self.retriever
        assert task.corpus is not None
        key = corpus_key(task.corpus)
        if key not in self._task_retrievers:
            self._task_retrievers[key] = InMemoryRetriever(task.corpus)
            if len(self._task_retrievers) > TASK_INDEX_CACHE_SIZE:
                self._task_retrievers.popitem(last=False)
        self._task_retrievers.move_to_end(key)
        return self._task_retrievers[key]

    def _search(self, query: str) -> list[Any]:
        results = call_with_timeout(
            self.episode_retriever.search, [query], self.top_k, timeout=self.retriever_timeout
        )
        if not isinstance(results, list | tuple) or len(results) != 1:
            raise TypeError(
                f"retriever returned {type(results).__name__}, expected a list with one list of hits"
            )
        return list(results[0])

    def _gold_in(self, text: str) -> bool | None:
        assert self.task is not None
        golds = [g for g in self.task.answers if normalize_answer(g) not in _SPECIAL_ANSWERS]
        return answer_in_text(text, golds) if golds else None

    def turn(self, action: str) -> StepResult:
        parsed = parse_turn(action, ("search", "answer"))
        self.turn_formats.append(parsed.format_ok)
        info = parsed.step_info()
        if parsed.action == "answer":
            assert parsed.content is not None
            answer, _ = clean_text(parsed.content, len(parsed.content))
            return self._finish("", answer, info, terminated=True)
        if parsed.action == "search":
            assert parsed.content is not None
            observation = self._search_observation(parsed.content, info)
        else:
            self.invalid_turns += 1
            observation = INVALID_TURN_MESSAGE.format(error=parsed.error)
        if self.num_turns >= self.max_turns:
            return self._finish("", None, info, terminated=False)
        return observation, 0.0, False, False, info

    def _search_observation(self, raw_query: str, info: dict[str, Any]) -> str:
        query, cut = clean_text(raw_query, self.max_query_chars)
        self.num_searches += 1
        info.update(tool_calls=1, query=query, query_truncated=cut)
        try:
            hits = self._search(query)
        except Exception as exc:
            self.retrieval_errors += 1
            info["error"] = f"retriever failed: {type(exc).__name__}: {exc}"
            return information_block(
                f"Search failed ({type(exc).__name__}); try again or answer.", self.observation_format
            )
        listing = format_hits(hits, self.observation_format)
        frame = len(information_block("", self.observation_format))
        budget = None if self.max_obs_chars is None else max(0, self.max_obs_chars - frame)
        listing, obs_cut = truncate(listing, budget, self.max_obs_tokens, self.tokenizer)
        gold = self._gold_in(listing)
        self.gold_retrieved = self.gold_retrieved or bool(gold)
        info.update(gold_in_observation=gold, observation_truncated=obs_cut, num_hits=len(hits))
        return information_block(listing, self.observation_format)

    def _finish(
        self, observation: str, answer: str | None, info: dict[str, Any], terminated: bool
    ) -> StepResult:
        assert self.task is not None
        golds = self.task.answers
        answered = answer is not None
        text = answer or ""
        scores = {
            "em": qa_em(text, golds) if answered else 0.0,
            "subem": qa_subem(text, golds) if answered else 0.0,
            "f1": qa_f1(text, golds) if answered else 0.0,
        }
        score = self.scorer(text, golds) if answered else 0.0
        format_ok = answered and all(self.turn_formats)
        reward = qa_reward(score, format_ok, self.format_weight)
        info["episode"] = {
            "reward": reward,
            "format_ok": format_ok,
            **scores,
            "score": score,
            "answer": answer,
            "num_turns": self.num_turns,
            "num_tool_calls": self.num_searches,
            "invalid_turns": self.invalid_turns,
            "retrieval_errors": self.retrieval_errors,
            "gold_retrieved": self.gold_retrieved,
            "finish_reason": "answer" if terminated else "max_turns",
        }
        return observation, reward, terminated, not terminated, info
