"""Per-question evaluation records: what one line of `predictions.jsonl` holds.

A `QuestionRecord` is one question with its gold answers, the group it is broken down by (question type for
multi-hop QA, level for math, hop count for the synthetic world) and one `SampleRecord` per sampled episode:
the answer given, the env's scores, whether it counts as correct for pass@k, searches, turns, agent tokens,
finish reason and whether a gold answer appeared in any retrieved passage. Every metric of a report is
computed from these records alone, so a report can be rebuilt from `predictions.jsonl` without the
trajectories.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agentrl.core.types import Task, Trajectory

GROUP_FIELDS = ("type", "level", "hop")
UNFINDABLE_ANSWERS = frozenset({"yes", "no", "noanswer"})


@dataclass
class SampleRecord:
    """One sampled episode of a question.

    Attributes:
        answer: the final answer the env parsed (None when the episode ended without one).
        correct: counts as solved for pass@k (see `is_correct`).
        scores: `reward`, `format_ok` and the env's answer scores (`em`, `f1`, `accuracy`, `score`).
        searches: search or tool calls; turns: agent turns; response_tokens: tokens the policy sampled.
        gold_retrieved: a gold answer string appeared in a retrieved passage (None: not applicable, e.g. no
            retrieval in this env or a yes/no question).
        finish_reason: why the episode ended (`answer`, `max_turns`, `max_tokens`, `length`, `eos`, `error`).
    """

    answer: str | None
    correct: bool
    scores: dict[str, float]
    searches: int
    turns: int
    response_tokens: int
    gold_retrieved: bool | None
    finish_reason: str

    @property
    def score(self) -> float:
        """The main answer score: F1 for QA, accuracy for math, the env's score for tool envs, else reward."""
        for key in ("f1", "accuracy", "score", "reward"):
            if key in self.scores:
                return self.scores[key]
        return 0.0


@dataclass
class QuestionRecord:
    """One question: `index` is its position in the evaluated task list, `group` its breakdown key."""

    index: int
    id: str
    question: str
    golds: list[str]
    group: str | None
    samples: list[SampleRecord] = field(default_factory=list)

    @property
    def num_correct(self) -> int:
        return sum(s.correct for s in self.samples)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for sample, raw in zip(self.samples, data["samples"], strict=True):
            raw["score"] = sample.score
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuestionRecord:
        samples = [
            SampleRecord(**{k: v for k, v in s.items() if k != "score"}) for s in data.get("samples", [])
        ]
        return cls(
            index=int(data["index"]), id=str(data["id"]), question=str(data["question"]),
            golds=[str(g) for g in data["golds"]], group=data.get("group"), samples=samples,
        )  # fmt: skip


def episode_scores(t: Trajectory) -> dict[str, float]:
    """`reward`, `format_ok` and whichever of f1 / em / accuracy / score the env reported (absent for an
    episode that ended before the env scored it, e.g. out of tokens)."""
    episode = t.info.get("episode") or {}
    out = {"reward": float(t.reward), "format_ok": float(bool(episode.get("format_ok", False)))}
    for key, name in (("f1", "f1"), ("em", "em"), ("answer_correct", "accuracy"), ("score", "score")):
        if key in episode:
            out[name] = float(episode[key] or 0.0)
    return out


def is_correct(scores: dict[str, float]) -> bool:
    """Solved, for pass@k: exact match for QA, a correct answer for math, a full score for tool envs, and
    reward 1 for envs that report none of these."""
    for key in ("em", "accuracy", "score", "reward"):
        if key in scores:
            return scores[key] >= 1.0
    return False


def answer_findable(golds: list[str]) -> bool:
    """Whether a gold answer can appear verbatim in a passage (yes / no answers cannot)."""
    from environments.rewards import normalize_answer

    return any(normalize_answer(g) not in UNFINDABLE_ANSWERS for g in golds)


def gold_retrieved(t: Trajectory, findable: bool) -> bool | None:
    """True when a turn's observation held a gold answer, False when the env looked and found none, None
    when the env does not look (no retrieval) or the golds cannot be found verbatim."""
    if not findable:
        return None
    seen = [turn.get("gold_in_observation") for turn in t.info.get("turns", [])]
    if any(value is True for value in seen):
        return True
    episode = t.info.get("episode") or {}
    if any(value is False for value in seen) or "gold_retrieved" in episode:
        return bool(episode.get("gold_retrieved", False))
    return None


def group_of(task: Task) -> str | None:
    """The breakdown key of a task: its question type, math level or hop count, when the dataset has one."""
    for name in GROUP_FIELDS:
        value = task.metadata.get(name)
        if value is not None and value != "":
            return f"level {value}" if name == "level" else str(value)
    return None


def sample_record(t: Trajectory, findable: bool) -> SampleRecord:
    scores = episode_scores(t)
    episode = t.info.get("episode") or {}
    answer = episode.get("answer")
    return SampleRecord(
        answer=None if answer is None else str(answer),
        correct=is_correct(scores),
        scores=scores,
        searches=int(t.num_tool_calls),
        turns=int(t.num_turns),
        response_tokens=int(t.num_agent_tokens),
        gold_retrieved=gold_retrieved(t, findable),
        finish_reason=t.finish_reason,
    )


def question_records(
    tasks: list[Task], trajectories: list[Trajectory], start: int = 0
) -> list[QuestionRecord]:
    """Records of `tasks` (positions `start`, `start + 1`, ...) from the engine's task-major trajectories."""
    if not tasks:
        return []
    if len(trajectories) % len(tasks):
        raise ValueError(f"{len(trajectories)} trajectories do not split into {len(tasks)} equal groups")
    samples = len(trajectories) // len(tasks)
    records = []
    for i, task in enumerate(tasks):
        episodes = trajectories[i * samples : (i + 1) * samples]
        if any(t.task_id != task.id for t in episodes):
            raise ValueError(f"trajectories of question {start + i} do not belong to task {task.id!r}")
        findable = answer_findable(task.answers)
        record = QuestionRecord(
            index=start + i, id=task.id, question=task.question, golds=list(task.answers),
            group=group_of(task), samples=[sample_record(t, findable) for t in episodes],
        )  # fmt: skip
        records.append(record)
    return records
