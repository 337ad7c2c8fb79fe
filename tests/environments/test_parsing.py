"""The turn parser shared by the search and tool environments: tags quoted inside <think> do not count."""

from __future__ import annotations

import gymnasium as gym
import pytest

import environments  # noqa: F401
from agentrl.core.types import Task
from environments.parsing import parse_turn
from retrievers.memory import InMemoryRetriever


@pytest.mark.parametrize(
    ("turn", "action", "content"),
    [
        ("<think>I will use the <answer> tag later</think> <search>X</search>", "search", "X"),
        ("<think>maybe <search>q</search> first?</think><answer>Paris</answer>", "answer", "Paris"),
        ("<think>an <answer> without a close</think>\n<search> Lofo </search>", "search", "Lofo"),
        ("<think>quote </information> and <result></think><answer>4</answer>", "answer", "4"),
    ],
)
def test_tags_quoted_in_reasoning_neither_act_nor_break_the_format(
    turn: str, action: str, content: str
) -> None:
    parsed = parse_turn(turn)
    assert (parsed.action, parsed.content, parsed.error) == (action, content, None)
    assert parsed.format_ok and parsed.format_error is None


@pytest.mark.parametrize(
    ("turn", "action", "format_error"),
    [
        ("<think>a <think> b</think><answer>4</answer>", "answer", "empty or nested <think>"),
        ("<think>a</think><think>b</think><answer>4</answer>", "answer", "empty or nested <think>"),
        ("<search>q</search><think>r</think>", "search", "expected <think>...</think> before"),
        ("<think>never closed <answer>4</answer>", "answer", "expected <think>...</think> before"),
        ("<think>r</think> aside <answer>4</answer>", "answer", "expected <think>...</think> before"),
    ],
)
def test_malformed_reasoning_still_fails_the_format(turn: str, action: str, format_error: str) -> None:
    parsed = parse_turn(turn)
    assert parsed.action == action and not parsed.format_ok
    assert parsed.format_error is not None and parsed.format_error.startswith(format_error)


def test_action_quoted_only_in_reasoning_is_no_action() -> None:
    parsed = parse_turn("<think>I should <search>Lofo</search> next</think> nothing here")
    assert parsed.action == "invalid" and parsed.error == "no <search> or <answer> tag"


def test_search_env_runs_the_search_after_the_reasoning() -> None:
    docs = [{"id": "1", "title": "X", "text": "X is a river."}]
    env = gym.make("agentrl/SearchQA-v0", retriever=InMemoryRetriever(docs))
    env.reset(options={"task": Task(id="t", question="What is X?", answers=["a river"])})
    turn = "<think>I will use the <answer> tag later</think> <search>X</search>"
    obs, _, terminated, _, info = env.step(turn)
    assert not terminated and info["action_type"] == "search"
    assert info["turn_format_ok"] and info["query"] == "X" and "X is a river." in obs


def test_tool_env_answers_after_the_reasoning() -> None:
    env = gym.make("agentrl/Calculator-v0")
    env.reset(options={"task": Task(id="c", question="6 * 7?", answers=["42"])})
    _, reward, terminated, _, info = env.step("<think>no <tool> needed</think><answer>42</answer>")
    assert terminated and reward == 1.0 and info["episode"]["format_ok"]
