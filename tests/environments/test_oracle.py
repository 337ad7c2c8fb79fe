"""The scripted oracle agent reaches the acceptance F1 on the synthetic world and the HotpotQA sample."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym

import environments  # noqa: F401
from environments.datasets import load_tasks
from environments.oracle import OracleAgent, evaluate_oracle, run_oracle_episode
from environments.synthetic_world import build_world


def test_oracle_on_synthetic_world() -> None:
    env = gym.make("agentrl/SearchQA-v0")
    result = evaluate_oracle(env, build_world(0).tasks[:200])
    assert result["episodes"] == 200
    assert result["f1"] >= 0.9 and result["format_ok"] == 1.0


def test_oracle_on_hotpotqa_distractor(data_dir: Path) -> None:
    tasks = load_tasks("hotpotqa", data_dir / "hotpotqa" / "hotpotqa_dev_distractor.public.jsonl")
    env = gym.make("agentrl/SearchQA-v0", corpus="task")
    result = evaluate_oracle(env, tasks)
    assert result["episodes"] == len(tasks) > 0
    assert result["f1"] >= 0.8


def test_oracle_answers_unknown_without_evidence() -> None:
    world = build_world(0)
    task = next(t for t in world.tasks if t.answers[0] not in ("yes", "no"))
    agent = OracleAgent(task)
    assert "<search>" in agent.act(None)
    assert agent.answer() == "unknown"
    env = gym.make("agentrl/SearchQA-v0")
    episode = run_oracle_episode(env, task)
    assert episode["f1"] == 1.0 and episode["num_tool_calls"] == len(task.metadata["supporting_titles"])
