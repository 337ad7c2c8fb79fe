"""Tasks for a rollout: from a dataset loader, or drawn from the environment's own default source."""

from __future__ import annotations

from typing import Any

from agentrl.core.types import Task


def env_default_tasks(
    env_id: Any, num_tasks: int, seed: int = 0, env_kwargs: dict[str, Any] | None = None
) -> list[Task]:
    """`num_tasks` distinct tasks the env draws itself on `reset(seed=seed + i)` (e.g. the synthetic world's
    questions for search envs)."""
    from agentrl.rollout.executors import make_env

    env = make_env(env_id, dict(env_kwargs or {}))
    tasks: list[Task] = []
    seen: set[str] = set()
    attempt = 0
    try:
        while len(tasks) < num_tasks and attempt < 20 * num_tasks + 100:
            env.reset(seed=seed + attempt)
            attempt += 1
            task = env.unwrapped.task
            if task is not None and task.id not in seen:
                seen.add(task.id)
                tasks.append(task)
    finally:
        env.close()
    if len(tasks) < num_tasks:
        raise ValueError(
            f"the env's default source gave only {len(tasks)} distinct tasks, {num_tasks} requested"
        )
    return tasks


def load_rollout_tasks(
    dataset: str | None,
    path: str | None,
    num_tasks: int | None,
    seed: int = 0,
    env_id: Any = None,
    env_kwargs: dict[str, Any] | None = None,
    split: str = "test",
    options: dict[str, Any] | None = None,
) -> list[Task]:
    """Tasks from `environments.datasets.load_tasks(dataset, path)`; `synthetic` draws questions of the seeded
    synthetic world (`options: world_seed, world_entities`); None or "env" asks the env's default source.
    `num_tasks` None means every task (the env's default source needs a number)."""
    if dataset == "synthetic" and path is None:
        from agentrl.rollout.synthetic import synthetic_tasks

        return synthetic_tasks(dict(options or {}), num_tasks, seed, env_kwargs)
    if dataset in (None, "", "env") and path is None:
        if num_tasks is None:
            raise ValueError("tasks from the env's default source need a number (data.num_tasks)")
        return env_default_tasks(env_id, num_tasks, seed, env_kwargs)
    from environments.datasets import load_tasks

    tasks = load_tasks(dataset, path, split=split, limit=num_tasks, **(options or {}))
    if not tasks:
        raise ValueError(f"dataset {dataset!r} at {path!r} gave no tasks")
    return tasks
