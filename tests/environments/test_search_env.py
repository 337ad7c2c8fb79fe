"""The search QA environment: protocol, rewards, per-turn signals and bad input."""

from __future__ import annotations

import json
import time

import gymnasium as gym
import pytest

import environments  # noqa: F401
from agentrl.core.types import Task
from environments.search_env import SEARCH_SYSTEM_PROMPT, SearchQAEnv
from retrievers.base import Hit
from retrievers.memory import InMemoryRetriever

DOCS = [
    {"id": "1", "title": "Lofo", "text": "Lofo is a city in Vaegoia founded in 1817."},
    {"id": "2", "title": "Muzix", "text": "Muzix is a city in Trostia."},
    {"id": "3", "title": "Orla Venmark", "text": "Orla Venmark was born in Lofo."},
]
TASK = Task(id="t1", question="In which country was Orla Venmark born?", answers=["Vaegoia"], dataset="toy")
THINK = "<think>Plan.</think>"


def make(**kwargs: object) -> SearchQAEnv:
    kwargs.setdefault("retriever", InMemoryRetriever(DOCS))
    env = gym.make("agentrl/SearchQA-v0", **kwargs)
    env.reset(seed=0, options={"task": TASK})
    return env


class Raising:
    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        raise ConnectionError("index offline")


class Slow:
    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        time.sleep(2)
        return [[]]


class Recording:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        self.queries.extend(queries)
        return [[Hit("1", "Lofo", "Lofo is in Vaegoia.", 1.0)]]


def test_reset_contract() -> None:
    env = gym.make("agentrl/SearchQA-v0", retriever=InMemoryRetriever(DOCS))
    obs, info = env.reset(seed=0, options={"task": TASK.to_dict()})
    assert info["messages"][0] == {"role": "system", "content": SEARCH_SYSTEM_PROMPT}
    assert info["messages"][-1]["role"] == "user" and obs == info["messages"][-1]["content"]
    assert TASK.question in obs
    assert env.unwrapped.stop_strings == ["</search>", "</answer>"]
    assert env.unwrapped.observation_role == "user"


def test_full_episode_signals_and_reward() -> None:
    env = make()
    obs, reward, terminated, truncated, info = env.step(f"{THINK}\n<search> Orla Venmark </search>")
    assert obs.startswith(
        "<information>Doc 1 (Title: Orla Venmark) Orla Venmark was born in Lofo.\nDoc 2 (Title: "
    )
    assert obs.endswith("</information>")
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["action_type"] == "search" and info["tool_calls"] == 1 and info["turn_format_ok"]
    assert info["error"] is None and info["gold_in_observation"] is True  # the Lofo doc mentions Vaegoia
    obs, reward, terminated, truncated, info = env.step(f"{THINK} <answer> Vaegoia </answer>")
    assert (obs, reward, terminated, truncated) == ("", 1.0, True, False)
    episode = info["episode"]
    assert episode["f1"] == 1.0 and episode["em"] == 1.0 and episode["format_ok"]
    assert episode["num_turns"] == 2 and episode["num_tool_calls"] == 1 and episode["invalid_turns"] == 0
    json.dumps(info)


def test_format_covers_every_turn() -> None:
    env = make()
    env.step("<search> Orla Venmark </search>")  # no <think>: runs, but fails the format check
    _, reward, *_, info = env.step(f"{THINK}<answer>Vaegoia</answer>")
    assert info["episode"]["format_ok"] is False
    assert reward == pytest.approx(1 / 1.3)


@pytest.mark.parametrize(
    ("mode", "weight", "answer", "expected"),
    [
        ("f1", 0.3, "Vaegoia", 1.0),
        ("f1", 0.3, "Vaegoia Trostia", (0.3 + 2 / 3) / 1.3),
        ("em", 0.3, "Vaegoia Trostia", 0.3 / 1.3),
        ("subem", 0.3, "Vaegoia Trostia", 1.0),
        ("f1", 0.0, "Lofo", 0.0),
        ("f1", 0.3, "Lofo", 0.3 / 1.3),
    ],
)
def test_reward_modes(mode: str, weight: float, answer: str, expected: float) -> None:
    env = make(reward=mode, format_weight=weight)
    assert env.step(f"{THINK}<answer>{answer}</answer>")[1] == pytest.approx(expected)


def test_unknown_reward_names_closest() -> None:
    with pytest.raises(KeyError, match="f1"):
        SearchQAEnv(reward="f2")


def test_max_turns_truncates() -> None:
    env = make(max_turns=2)
    assert env.step(f"{THINK}<search>Lofo</search>")[3] is False
    obs, reward, terminated, truncated, info = env.step(f"{THINK}<search>Muzix</search>")
    assert (obs, reward, terminated, truncated) == ("", 0.0, False, True)
    assert info["episode"]["finish_reason"] == "max_turns" and info["episode"]["answer"] is None
    with pytest.raises(RuntimeError, match="ended"):
        env.step("again")


@pytest.mark.parametrize(
    ("action", "error"),
    [
        ("", "no <search> or <answer> tag"),
        ("I think the answer is Vaegoia.", "no <search> or <answer> tag"),
        (f"{THINK}<search> Lofo", "unclosed <search> tag"),
        (f"{THINK}<answer> Vaegoia", "unclosed <answer> tag"),
        (f"{THINK}<search> a <search> b </search>", "nested tags inside <search>"),
        (f"{THINK}<answer><search>x</search></answer>", "nested tags inside <answer>"),
        (f"{THINK}<search>   </search>", "empty <search>"),
        ("</search> Lofo </answer>", "no <search> or <answer> tag"),
    ],
)
def test_invalid_turns(action: str, error: str) -> None:
    env = make()
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["action_type"] == "invalid" and info["error"] == error and not info["turn_format_ok"]
    assert obs.startswith("Invalid turn") and error in obs
    assert (reward, terminated, truncated) == (0.0, False, False)
    *_, info = env.step(f"{THINK}<answer>Vaegoia</answer>")
    assert info["episode"]["invalid_turns"] == 1 and info["episode"]["format_ok"] is False


def test_several_actions_first_wins() -> None:
    retriever = Recording()
    env = make(retriever=retriever)
    _obs, _, terminated, _, info = env.step(
        f"{THINK}<search>first</search><search>second</search><answer>x</answer>"
    )
    assert retriever.queries == ["first"] and not terminated
    assert info["action_type"] == "search" and not info["turn_format_ok"]
    _, _, terminated, _, info = env.step(f"{THINK}<answer>Vaegoia</answer><search>more</search>")
    assert terminated and info["episode"]["answer"] == "Vaegoia"


def test_huge_query_is_truncated() -> None:
    retriever = Recording()
    env = make(retriever=retriever, max_query_chars=1000)
    _, _, _, _, info = env.step(f"{THINK}<search>{'lofo ' * 20_000}</search>")
    assert len(retriever.queries[0]) == 1000 and info["query_truncated"] is True


def test_unicode_and_control_characters() -> None:
    retriever = Recording()
    env = make(retriever=retriever)
    obs, _, _, _, info = env.step(
        "<think>naïve 中文 \x00</think><search>Lofo\x00\x07 café\x1b ∑ 中文\n\ttab</search>"
    )
    assert retriever.queries == ["Lofo café ∑ 中文 tab"]
    assert info["turn_format_ok"] and env.observation_space.contains(obs)
    _, reward, *_ = env.step(f"{THINK}<answer>Vaegoia\x00</answer>")
    assert reward == 1.0


def test_retriever_that_raises() -> None:
    env = make(retriever=Raising())
    obs, reward, terminated, truncated, info = env.step(f"{THINK}<search>Lofo</search>")
    assert "Search failed" in obs and "ConnectionError" in info["error"] and "index offline" in info["error"]
    assert (reward, terminated, truncated) == (0.0, False, False)
    *_, info = env.step(f"{THINK}<answer>Vaegoia</answer>")
    assert info["episode"]["retrieval_errors"] == 1 and info["episode"]["f1"] == 1.0


def test_retriever_that_times_out() -> None:
    env = make(retriever=Slow(), retriever_timeout=0.2)
    start = time.perf_counter()
    obs, _, terminated, _, info = env.step(f"{THINK}<search>Lofo</search>")
    assert time.perf_counter() - start < 1.5
    assert "TimeoutError" in info["error"] and "Search failed" in obs and not terminated


@pytest.mark.parametrize("action", [None, 3, b"<answer>x</answer>", ["<answer>x</answer>"]])
def test_non_string_action(action: object) -> None:
    env = make()
    with pytest.raises(TypeError, match="expects the generated turn as a str, got"):
        env.step(action)  # type: ignore[arg-type]


def test_step_before_reset() -> None:
    with pytest.raises(RuntimeError, match="before reset"):
        SearchQAEnv(retriever=InMemoryRetriever(DOCS)).step("x")


def test_observation_char_budget() -> None:
    docs = [{"id": str(i), "title": f"Doc{i}", "text": "lofo " * 500} for i in range(3)]
    env = make(retriever=InMemoryRetriever(docs), max_obs_chars=300)
    obs, *_, info = env.step(f"{THINK}<search>lofo</search>")
    assert len(obs) <= 300 and obs.startswith("<information>") and obs.endswith(" ...</information>")
    assert info["observation_truncated"] is True


class WordTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.words = text.split(" ")
        return list(range(len(self.words)))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(self.words[i] for i in ids)


def test_observation_token_budget() -> None:
    docs = [{"id": "1", "title": "Lofo", "text": "lofo " * 100}]
    env = make(
        retriever=InMemoryRetriever(docs), max_obs_tokens=10, tokenizer=WordTokenizer(), max_obs_chars=None
    )
    obs, *_ = env.step(f"{THINK}<search>lofo</search>")
    assert obs == "<information>Doc 1 (Title: Lofo) lofo lofo lofo lofo lofo lofo ...</information>"
    with pytest.raises(ValueError, match="tokenizer"):
        SearchQAEnv(max_obs_tokens=10)


def _own_corpus_task(task_id: str = "own", text: str = "Zed lives here.") -> Task:
    return Task(id=task_id, question="q", answers=["Zed"], corpus=[{"id": "a", "title": "Zed", "text": text}])


def test_task_corpus_mode_searches_the_task_documents() -> None:
    env = gym.make("agentrl/SearchQA-v0", retriever=InMemoryRetriever(DOCS), corpus="task")
    env.reset(options={"task": _own_corpus_task()})
    obs, *_ = env.step(f"{THINK}<search>Zed</search>")
    assert obs == "<information>Doc 1 (Title: Zed) Zed lives here.</information>"
    with pytest.raises(ValueError, match="corpus"):
        SearchQAEnv(corpus="everything")


@pytest.mark.parametrize("retriever", [None, InMemoryRetriever(DOCS)])
def test_task_corpus_mode_refuses_a_task_without_corpus(retriever: InMemoryRetriever | None) -> None:
    env = gym.make("agentrl/SearchQA-v0", retriever=retriever, corpus="task")
    with pytest.raises(ValueError, match=r"task 't1' \(dataset 'toy'\) has no corpus.*task_or_default"):
        env.reset(options={"task": TASK})
    with pytest.raises(ValueError, match="has no corpus"):
        SearchQAEnv(retriever=retriever, corpus="task", tasks=[_own_corpus_task(), TASK])


def test_task_or_default_falls_back_to_the_retriever() -> None:
    env = gym.make("agentrl/SearchQA-v0", retriever=InMemoryRetriever(DOCS), corpus="task_or_default")
    env.reset(options={"task": _own_corpus_task()})
    assert "Zed lives here." in env.step(f"{THINK}<search>Zed</search>")[0]
    env.reset(options={"task": TASK})
    assert "Vaegoia" in env.step(f"{THINK}<search>Lofo</search>")[0]


def test_task_index_cache_is_keyed_by_corpus_content() -> None:
    env = gym.make("agentrl/SearchQA-v0", retriever=InMemoryRetriever(DOCS), corpus="task")
    for text in ("Zed lives in Lofo.", "Zed lives in Muzix."):
        env.reset(options={"task": _own_corpus_task("same-id", text)})
        assert text in env.step(f"{THINK}<search>Zed</search>")[0]


def test_synthetic_world_serves_only_synthetic_tasks() -> None:
    env = gym.make("agentrl/SearchQA-v0")
    real = Task(id="5a7f", question="Who?", answers=["A"], dataset="hotpotqa")
    with pytest.raises(ValueError, match=r"'5a7f' comes from dataset 'hotpotqa'.*synthetic world"):
        env.reset(options={"task": real})
    env.reset(options={"task": Task(id="adhoc", question="Where is Lofo?", answers=["x"])})
    with_own = gym.make("agentrl/SearchQA-v0", corpus="task_or_default")
    with pytest.raises(ValueError, match="synthetic world"):
        with_own.reset(options={"task": real})
    with_own.reset(options={"task": Task(**{**_own_corpus_task().to_dict(), "dataset": "hotpotqa"})})


def test_default_world_and_custom_task_pool() -> None:
    env = gym.make("agentrl/SearchQA-v0")
    obs, info = env.reset(seed=5)
    assert info["dataset"] == "synthetic" and obs == env.reset(seed=5)[0]
    env = gym.make("agentrl/SearchQA-v0", tasks=[TASK], retriever=InMemoryRetriever(DOCS), system_prompt=None)
    _, info = env.reset(seed=1)
    assert info["task_id"] == "t1" and len(info["messages"]) == 1


def test_tool_observation_role_and_render() -> None:
    env = make(observation_role="tool", render_mode="ansi")
    assert env.unwrapped.observation_role == "tool"
    env.step(f"{THINK}<search>Lofo</search>")
    assert "[tool]\n<information>" in env.render()


def test_yes_no_gold_has_no_observation_signal() -> None:
    env = gym.make("agentrl/SearchQA-v0", retriever=InMemoryRetriever(DOCS))
    env.reset(options={"task": Task(id="yn", question="Is Lofo a city?", answers=["yes"])})
    _, _, _, _, info = env.step(f"{THINK}<search>Lofo</search>")
    assert info["gold_in_observation"] is None


class Fixed:
    """Returns the same hits for every query."""

    def __init__(self, hits: list[object]) -> None:
        self.hits = hits

    def search(self, queries: list[str], k: int) -> list[list[object]]:
        return [list(self.hits[:k]) for _ in queries]


PARIS_HITS = [
    Hit("w1", "Paris", "Paris is the capital and largest city of France.", 0.9),
    Hit("w2", "Eiffel Tower", "The Eiffel Tower is on the Champ de Mars.\nIt opened in 1889.", 0.8),
    Hit("w3", "", "An untitled passage. ", 0.7),
]
# What Search-R1's rollout loop sends back for these three hits, written out by hand from its rules: each
# hit is `Doc {i}(Title: {first line of contents}) {remaining lines}` plus a newline, contents being
# `"Title"\ntext`; the listing is stripped and placed in `<information>` with two newlines on each side.
SEARCHR1_PARIS_OBSERVATION = (
    '\n\n<information>Doc 1(Title: "Paris") Paris is the capital and largest city of France.\n'
    'Doc 2(Title: "Eiffel Tower") The Eiffel Tower is on the Champ de Mars.\nIt opened in 1889.\n'
    'Doc 3(Title: "") An untitled passage.</information>\n\n'
)


def test_searchr1_observation_format_is_byte_identical() -> None:
    env = make(retriever=Fixed(PARIS_HITS), observation_format="searchr1")
    obs, *_ = env.step(f"{THINK}<search>paris</search>")
    assert obs == SEARCHR1_PARIS_OBSERVATION
    as_served = [{"document": {"id": h.id, "contents": h.contents}, "score": h.score} for h in PARIS_HITS]
    env = make(retriever=Fixed(as_served), observation_format="searchr1")
    obs, *_ = env.step(f"{THINK}<search>paris</search>")
    assert obs == SEARCHR1_PARIS_OBSERVATION


def test_searchr1_format_without_hits_and_on_errors() -> None:
    env = make(retriever=Fixed([]), observation_format="searchr1")
    obs, *_ = env.step(f"{THINK}<search>paris</search>")
    assert obs == "\n\n<information></information>\n\n"
    env = make(retriever=Raising(), observation_format="searchr1")
    obs, *_ = env.step(f"{THINK}<search>paris</search>")
    assert obs.startswith("\n\n<information>Search failed") and obs.endswith("</information>\n\n")


def test_agentrl_format_stays_the_default() -> None:
    obs, *_ = make(retriever=Fixed(PARIS_HITS[:1])).step(f"{THINK}<search>paris</search>")
    listing = "Doc 1 (Title: Paris) Paris is the capital and largest city of France."
    assert obs == f"<information>{listing}</information>"
    with pytest.raises(ValueError, match="observation_format must be one of"):
        SearchQAEnv(observation_format="search-r1")


def test_searchr1_format_keeps_the_char_budget() -> None:
    env = make(retriever=Fixed(PARIS_HITS), observation_format="searchr1", max_obs_chars=80)
    obs, *_, info = env.step(f"{THINK}<search>paris</search>")
    assert len(obs) <= 80 and obs.startswith("\n\n<information>Doc 1(Title: \"Paris\")")
    assert obs.endswith(" ...</information>\n\n") and info["observation_truncated"] is True
