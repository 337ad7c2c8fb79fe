"""QA rewards against hand-computed tables, including the official HotpotQA normalization edge cases."""

from __future__ import annotations

import pytest

from environments.rewards import (
    answer_in_text,
    f1_precision_recall,
    normalize_answer,
    qa_em,
    qa_f1,
    qa_reward,
    qa_subem,
)

NORMALIZE = [
    ("The Beatles", "beatles"),
    ("  A  cat\tand\nan owl ", "cat and owl"),
    ("U.S.A.", "usa"),
    ("rock-n-roll", "rocknroll"),
    ("Theater", "theater"),
    ("an", ""),
    ("the the", ""),
    ("Hello, World!", "hello world"),
    ("café", "café"),
    ("“quoted”", "“quoted”"),
    ("A.B", "ab"),
    ("", ""),
]

EM = [
    ("Paris", "paris", 1.0),
    ("the Paris", "Paris", 1.0),
    ("Paris.", "Paris", 1.0),
    ("Paris, France", "Paris", 0.0),
    ("paris", ["London", "Paris"], 1.0),
    ("Berlin", ["London", "Paris"], 0.0),
    ("", "", 1.0),
    ("", "Paris", 0.0),
    ("yes", "Yes", 1.0),
    ("no", "yes", 0.0),
    ("An Apple", "apple", 1.0),
    ("apples", "apple", 0.0),
    ("1,000", "1000", 1.0),
    ("1 000", "1000", 0.0),
    ("New  York", "new york", 1.0),
    ("New-York", "new york", 0.0),
    ("The The", "", 1.0),
    ("Dr. Who", "dr who", 1.0),
    ("x", [], 0.0),
    ("José", "jose", 0.0),
    ("a b c", "b c", 1.0),
    ("Theatre", "atre", 0.0),
]

F1 = [
    ("Paris", "Paris", 1.0),
    ("Paris France", "Paris", 2 * 0.5 * 1.0 / 1.5),
    ("the city of Paris", "Paris", 2 * (1 / 3) * 1.0 / (4 / 3)),
    ("New York City", "New York", 2 * (2 / 3) * 1.0 / (2 / 3 + 1)),
    ("London", "Paris", 0.0),
    ("yes", "yes", 1.0),
    ("yes", "no", 0.0),
    ("yes indeed", "yes", 0.0),
    ("yes", "yes indeed", 0.0),
    ("no way", "no", 0.0),
    ("noanswer", "noanswer", 1.0),
    ("noanswer", "something", 0.0),
    ("", "Paris", 0.0),
    ("", "", 0.0),
    ("a b b", "b b c", 2 * 1.0 * (2 / 3) / (5 / 3)),  # "a" is an article
    ("b b b", "b", 2 * (1 / 3) * 1.0 / (4 / 3)),
    ("The Lord of the Rings", "Lord of Rings", 1.0),
    ("Paris", ["London", "Paris France"], 2 * 1.0 * 0.5 / 1.5),
    ("x y", ["x", "x y"], 1.0),
    ("Claudio Javier López", "Claudio López", 2 * (2 / 3) * 1.0 / (2 / 3 + 1)),
    ("1998", "1998", 1.0),
    ("May 1998", "1998", 2 * 0.5 * 1.0 / 1.5),
    ("Paris", [], 0.0),
]

SUBEM = [
    ("It is Paris, France", "Paris", 1.0),
    ("Paris", "Paris France", 0.0),
    ("in 1954", "1954", 1.0),
    ("1954", "1", 1.0),
    ("anything", "", 0.0),
    ("the answer is yes", ["no", "yes"], 1.0),
]


@pytest.mark.parametrize(("text", "expected"), NORMALIZE)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(("prediction", "golds", "expected"), EM)
def test_qa_em(prediction: str, golds: str | list[str], expected: float) -> None:
    assert qa_em(prediction, golds) == expected


@pytest.mark.parametrize(("prediction", "golds", "expected"), F1)
def test_qa_f1(prediction: str, golds: str | list[str], expected: float) -> None:
    assert qa_f1(prediction, golds) == pytest.approx(expected)


@pytest.mark.parametrize(("prediction", "golds", "expected"), SUBEM)
def test_qa_subem(prediction: str, golds: str | list[str], expected: float) -> None:
    assert qa_subem(prediction, golds) == expected


def test_tables_have_twenty_cases() -> None:
    assert len(EM) >= 20 and len(F1) >= 20


def test_precision_recall() -> None:
    f1, precision, recall = f1_precision_recall("x b c d", "c d e")
    assert (precision, recall) == (0.5, pytest.approx(2 / 3))
    assert f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


@pytest.mark.parametrize(
    ("score", "fmt", "weight", "expected"),
    [
        (1.0, True, 0.3, 1.0),
        (0.0, True, 0.3, 0.3 / 1.3),
        (1.0, False, 0.3, 1 / 1.3),
        (0.5, True, 0.3, 0.8 / 1.3),
        (0.0, False, 0.3, 0.0),
        (0.5, True, 0.0, 0.5),
        (1.0, True, 1.0, 1.0),
        (0.0, True, 1.0, 0.5),
    ],
)
def test_qa_reward(score: float, fmt: bool, weight: float, expected: float) -> None:
    assert qa_reward(score, fmt, weight) == pytest.approx(expected)


def test_answer_in_text_is_whole_token() -> None:
    assert answer_in_text("Born in 1954 in Lofo.", ["1954"])
    assert not answer_in_text("Born in 19541.", ["1954"])
    assert answer_in_text("THE Beatles were a band", "beatles")
