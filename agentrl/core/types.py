"""Records shared by every package: tasks going in, trajectories coming out.

A `Task` is what a dataset loader yields and an environment is reset with. A `Trajectory` is one finished
episode as the rollout engine records it and the trainer consumes it. Both are plain dataclasses that
round-trip through JSON (`to_dict` / `from_dict`) so they can be written to JSONL and read back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Task:
    """One problem to solve.

    Attributes:
        id: unique within its dataset.
        question: the problem or question text shown to the agent.
        answers: gold answers; any match counts (QA takes the max score over them).
        dataset: name of the source dataset (`hotpotqa`, `math500`, `synthetic`, ...).
        metadata: dataset-specific extras (supporting titles, level, question type, ...).
        corpus: optional per-task documents (HotpotQA distractor paragraphs), each `{"id", "title", "text"}`.
    """

    id: str
    question: str
    answers: list[str] = field(default_factory=list)
    dataset: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    corpus: list[dict[str, str]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Task field(s) {unknown}; valid fields are {sorted(known)}")
        return cls(**data)


@dataclass
class Trajectory:
    """One episode, token-exact.

    All per-token lists have the same length L (prompt + every turn + every observation):

    Attributes:
        task_id: id of the task the episode solved.
        group_id: integer shared by the G samples of one task (advantages are computed within a group).
        token_ids: [L] the full episode's token ids; agent tokens are exactly the ids the policy sampled.
        loss_mask: [L] 1 on tokens the policy sampled, 0 on prompt and observation tokens.
        turn_ids: [L] turn index of each token (-1 for the prompt, t for turn t's action and observation).
        logprobs: [L] log-probability of each sampled token under the sampling distribution that drew it
            (temperature and top-p/top-k applied); 0.0 where loss_mask is 0.
        prompt_length: number of leading prompt tokens.
        reward: final scalar reward of the episode.
        turn_rewards: one reward per agent turn (the env's per-step rewards).
        num_turns: agent turns taken.
        num_tool_calls: searches or tool calls issued.
        finish_reason: why the episode ended (`answer`, `max_turns`, `max_tokens`, `length`, `eos`, `error`).
        info: the env's final info plus per-turn signals, JSON-serializable.
        policy_version: optimizer steps the policy had taken when it sampled this episode (0 = initial).
        sampling: the sampling distribution the tokens were drawn from (`temperature`, `top_p`, `top_k`);
            empty for episodes not sampled from a policy (scripted or oracle turns).
    """

    task_id: str
    group_id: int
    token_ids: list[int]
    loss_mask: list[int]
    turn_ids: list[int]
    logprobs: list[float]
    prompt_length: int
    reward: float
    turn_rewards: list[float] = field(default_factory=list)
    num_turns: int = 0
    num_tool_calls: int = 0
    finish_reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    policy_version: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        for name in ("loss_mask", "turn_ids", "logprobs"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Trajectory {self.task_id!r}: {name} has length {len(getattr(self, name))}, "
                    f"token_ids has {n}"
                )

    @property
    def num_agent_tokens(self) -> int:
        return sum(self.loss_mask)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
