"""Math format parsing, exact and equivalence answer checks, and the math environment."""

from __future__ import annotations

from fractions import Fraction

import gymnasium as gym
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import environments  # noqa: F401
from agentrl.core.types import Task
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


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("3 and 4", "3"),
        ("2 or 3", "2"),
        ("5 sqrt 2", "5"),
        ("3 or more", "3"),
        ("5 x", "5"),
        ("5 pi", "5"),
        ("12 cm or 13 cm", "12"),
        ("\\boxed{3} or \\boxed{4}", "4"),
        ("42 since six times seven gives the required total, see above", "42"),
    ],
)
def test_hedged_answers_do_not_match(prediction: str, gold: str) -> None:
    assert math_equal(prediction, gold, "math") is False


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("12 square feet", "12"),
        ("5 m^2", "5"),
        ("60 km per hour", "60"),
        ("3/4 cup", "0.75"),
        ("The answer is \\boxed{4}.", "4"),
        ("\\boxed{4}, that is \\boxed{ 4 }", "4"),
        ("\\boxed{\\fbox{7}}", "7"),
    ],
)
def test_units_and_repeated_boxes_still_match(prediction: str, gold: str) -> None:
    assert math_equal(prediction, gold, "math") is True


def _adversarial_answers(n: int = 10_000) -> dict[str, str]:
    """Strings that made the old units / number patterns backtrack, or overflow int parsing (each <= ~n)."""
    return {
        "wordy": "42 since six times seven gives the required total, see above",
        "short letters": "1 " + "a" * 26 + "!",
        "letters": "1 " + "a" * n + "!",
        "words": "1 " + "ab " * (n // 3) + "!",
        "digits then letter": "1" * n + "x",
        "digits then unit and bang": "1" * n + " cm!",
        "decimal then letter": "1." + "1" * n + "x",
        "open frac": "\\frac{" + "1" * n,
        "plain fraction then letter": "1" * (n // 2) + "/" + "1" * (n // 2 - 10) + "x",
        "thousands": "1" + ",000" * (n // 4),
        "huge fraction": "1" * 4500 + "/" + "7" * 4500,
        "huge boxed frac": "\\boxed{\\frac{" + "3" * 4400 + "}{" + "7" * 4400 + "}}",
        "unclosed boxes": "\\boxed{" * (n // 7),
        "nested boxes": "\\boxed{" * (n // 16) + "4" + "}" * (n // 16),
        "open braces": "{" * n,
        "balanced braces": "{" * (n // 2) + "}" * (n // 2),
        "text commands": "\\text{" * (n // 6),
        "assignments": "x = " * (n // 4),
        "dollars": "$" * n,
        "spaces": "1" + " " * n + "x",
        "think tags": "<think>" * (n // 7),
        "closing think tags": "</think>" * (n // 8),
        "answer markers": "Answer:" * (n // 7),
    }


def _check_adversarial_answers_quickly() -> None:
    import time

    slow = {}
    for name, text in _adversarial_answers().items():
        start = time.perf_counter()
        parse_math_response(f"<think>r</think> Answer: {text}")
        math_equal(text, "42", "math")
        math_equal(text, "\\frac{3}{4}", "exact")
        if (elapsed := time.perf_counter() - start) > 1.0:
            slow[name] = elapsed
    assert not slow, f"answer checking is not linear-time on {slow}"


def test_answer_checking_is_linear_time_on_adversarial_strings() -> None:
    """Runs in a forked child so that a backtracking pattern (which holds the GIL) fails the test, not the
    suite; the generous bounds only detect hangs."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=_check_adversarial_answers_quickly)
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("answer checking did not finish within 30 s on adversarial strings")
    assert child.exitcode == 0


def test_huge_numbers_compare_as_text_without_raising() -> None:
    huge = "1" * 4500
    assert math_equal(huge, huge, "math") is True
    assert math_equal(f"{huge}/7", "1/7", "math") is False
    assert canonical_math_answer(f"\\boxed{{{huge}}}") == huge


@pytest.mark.parametrize("env_id", ["agentrl/Math-v0", "agentrl/Calculator-v0"])
def test_step_does_not_raise_on_huge_fractions(env_id: str) -> None:
    math_env = env_id == "agentrl/Math-v0"
    env = gym.make(env_id, **({"equivalence": "math"} if math_env else {}))
    env.reset(options={"task": Task(id="t", question="q", answers=["\\frac{1}{7}"])})
    answer = "1" * 4500 + "/" + "7" * 4500
    action = "<think>r</think> " + (f"Answer: {answer}" if math_env else f"<answer>{answer}</answer>")
    _, reward, terminated, _, _ = env.step(action)
    assert (reward, terminated) == (0.0, True)


_WORDS = (
    "\\boxed{ \\fbox{ \\frac \\dfrac \\text{ { } 1 42 0 . , ,000 / - + cm and or x = $ \\( \\) ^ \\circ "
    "% \\% Answer: <think> </think> ٣ 𝟙 é \\left( \\right) sqrt"
)
_TOKENS = [*_WORDS.split(), " ", "\n"]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(max_size=200), st.lists(st.sampled_from(_TOKENS), max_size=60).map("".join)),
    st.sampled_from(["42", "\\frac{3}{4}", "0.75", "x = 1", "\\boxed{12}", "12 cm"]),
)
def test_answer_checking_is_total(answer: str, gold: str) -> None:
    parsed = parse_math_response(f"<think>r</think> Answer: {answer}")
    assert parsed.answer is None or isinstance(parsed.answer, str)
    for mode in ("exact", "math"):
        assert isinstance(math_equal(answer, gold, mode), bool)
    assert isinstance(canonical_math_answer(answer), Fraction | str)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([*_TOKENS, " Answer: ", "<answer>", "</answer>", "<tool>"]), max_size=40))
def test_step_never_raises(tokens: list[str]) -> None:
    text = "".join(tokens)
    task = Task(id="t", question="q", answers=["\\frac{3}{4}"])
    for env_id, kwargs, action in [
        ("agentrl/Math-v0", {"equivalence": "math"}, f"<think>r</think> Answer: {text}"),
        ("agentrl/Math-v0", {}, text),
        ("agentrl/Calculator-v0", {}, f"<think>r</think><answer>{text}</answer>"),
    ]:
        env = gym.make(env_id, **kwargs)
        env.reset(options={"task": task})
        _, reward, *_ = env.step(action)
        assert 0.0 <= reward <= 1.0
