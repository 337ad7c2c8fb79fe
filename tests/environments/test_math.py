"""Math format parsing, exact and equivalence answer checks, and the math environment."""

from __future__ import annotations

import gymnasium as gym
import pytest

import environments  # noqa: F401
from agentrl.types import Task
from environments.math_answers import canonical_math_answer, math_equal, parse_math_response

FORMAT = [
    ("<think>2+2=4</think>\nAnswer: 4", True, "4"),
    ("<think>r</think> Answer: 4", True, "4"),
    ("  <think>r</think>Answer:4  ", True, "4"),
    ("<think>multi\nline</think>\n\nAnswer: \\frac{1}{2}", True, "\\frac{1}{2}"),
    ("Answer: 4", False, "4"),
    ("<think>r</think>", False, None),
    ("<think>r</think> The answer is 4", False, None),
    ("<think></think> Answer: 4", False, "4"),
    ("<think>   </think> Answer: 4", False, "4"),
    ("<think>r</think> Answer:", False, None),
    ("<think>r</think> Answer:   ", False, None),
    ("<think>r Answer: 4", False, "4"),
    ("r</think> Answer: 4", False, "4"),
    ("preamble <think>r</think> Answer: 4", False, "4"),
    ("<think>a<think>b</think> Answer: 4", False, "4"),
    ("<think>r</think> Answer: 4 </think>", False, "4 </think>"),
    ("<think>r</think> Answer: 3\nAnswer: 4", False, "4"),
    ("<think>r</think><think>s</think> Answer: 4", False, "4"),
    ("", False, None),
    ("<think>r</think> answer: 4", False, "4"),
    ("<think>é ∑ 中文</think> Answer: ∞", True, "∞"),
    ("<think>r</think>\nAnswer: 12 apples", True, "12 apples"),
]

EQUIVALENT = [
    ("4", "4", True),
    ("4.0", "4", True),
    ("0.75", "3/4", True),
    ("3/4", "\\frac{3}{4}", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("\\frac34", "0.75", True),
    ("\\boxed{12}", "12", True),
    ("$12$", "12", True),
    ("\\(12\\)", "12", True),
    ("1,000", "1000", True),
    ("1,234,567.5", "1234567.5", True),
    ("12 cm", "12", True),
    ("5 dollars", "5", True),
    ("\\$5", "5", True),
    ("90^\\circ", "90", True),
    ("50\\%", "50", True),
    ("x = 7", "7", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{14}{3}", "14/3", True),
    ("\\text{(B)}", "(B)", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("4.5", "9/2", True),
    ("0.333", "1/3", False),
    ("5", "6", False),
    ("12 cm", "13", False),
    ("1,00", "100", False),
    ("", "0", False),
    ("\\frac{1}{0}", "1", False),
]


@pytest.mark.parametrize(("response", "format_ok", "answer"), FORMAT)
def test_format_table(response: str, format_ok: bool, answer: str | None) -> None:
    parsed = parse_math_response(response)
    assert parsed.format_ok is format_ok
    assert parsed.answer == answer
    assert (parsed.error is None) is format_ok


@pytest.mark.parametrize(("prediction", "gold", "expected"), EQUIVALENT)
def test_math_equivalence_table(prediction: str, gold: str, expected: bool) -> None:
    assert math_equal(prediction, gold, "math") is expected


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("4", "4", True),
        (" 4. ", "4", True),
        ("4.0", "4", False),
        ("0.75", "3/4", False),
        ("\\frac{1}{2}", "\\frac{1}{2}", True),
        ("\\frac{1}{2}", "\\frac12", False),
        (None, "4", False),
        ("1  000", "1 000", True),
    ],
)
def test_exact_mode(prediction: str | None, gold: str, expected: bool) -> None:
    assert math_equal(prediction, gold, "exact") is expected


def test_tables_have_twenty_cases() -> None:
    assert len(FORMAT) >= 20 and len(EQUIVALENT) >= 20


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="exact"):
        math_equal("1", "1", "fuzzy")


def test_canonical_is_exact_rational() -> None:
    from fractions import Fraction

    assert canonical_math_answer("\\boxed{\\frac{6}{8}}") == Fraction(3, 4)


def _env(**kwargs: object) -> gym.Env[str, str]:
    return gym.make("agentrl/Math-v0", **kwargs)


def test_math_env_episode() -> None:
    env = _env()
    task = Task(id="t", question="What is 2 + 2?", answers=["4"], dataset="toy")
    obs, info = env.reset(seed=0, options={"task": task})
    assert obs == info["messages"][-1]["content"]
    assert obs.startswith("What is 2 + 2?") and "<think>...</think>" in obs and "Answer:" in obs
    assert env.unwrapped.stop_strings == []
    obs, reward, terminated, truncated, info = env.step("<think>2+2</think>\nAnswer: 4")
    assert (obs, reward, terminated, truncated) == ("", 1.0, True, False)
    assert info["turn_format_ok"] and info["answer_correct"] and info["episode"]["format_ok"]


@pytest.mark.parametrize(
    ("response", "reward", "fmt", "correct"),
    [
        ("Answer: 4", 0.0, False, True),
        ("<think>x</think> Answer: 5", 0.0, True, False),
        ("<think>x</think> Answer: 4.0", 0.0, True, False),
        ("", 0.0, False, False),
    ],
)
def test_math_env_flags_are_separate(response: str, reward: float, fmt: bool, correct: bool) -> None:
    env = _env()
    env.reset(options={"task": {"id": "t", "question": "2+2?", "answers": ["4"]}})
    _, r, terminated, _, info = env.step(response)
    assert (r, info["turn_format_ok"], info["answer_correct"], terminated) == (reward, fmt, correct, True)


def test_math_env_equivalence_mode_and_system_prompt() -> None:
    env = _env(equivalence="math", system_prompt="Be careful.")
    _, info = env.reset(options={"task": Task(id="t", question="q", answers=["\\frac{3}{4}"])})
    assert info["messages"][0] == {"role": "system", "content": "Be careful."}
    assert env.step("<think>x</think> Answer: 0.75")[1] == 1.0


def test_math_env_default_tasks_are_seeded() -> None:
    env = _env()
    assert env.reset(seed=3)[0] == env.reset(seed=3)[0]
    assert len({env.reset(seed=s)[0] for s in range(20)}) > 10
    with pytest.raises(ValueError, match="equivalence"):
        _env(equivalence="nope")
