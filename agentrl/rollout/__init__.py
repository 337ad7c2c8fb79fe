"""Multi-turn rollouts: the engine, env executors (local, Ray), collation for the trainer and JSONL I/O."""

from agentrl.rollout.collate import collate
from agentrl.rollout.engine import EngineConfig, RolloutEngine, RolloutStats, rollout
from agentrl.rollout.executors import EXECUTORS, LocalExecutor, RayExecutor, build_executor
from agentrl.rollout.io import read_trajectories, write_trajectories

__all__ = [
    "EXECUTORS",
    "EngineConfig",
    "LocalExecutor",
    "RayExecutor",
    "RolloutEngine",
    "RolloutStats",
    "build_executor",
    "collate",
    "read_trajectories",
    "rollout",
    "write_trajectories",
]
