"""Where environment steps run: in-process (`local`) or on a pool of Ray actors (`ray`).

An executor owns one environment per episode slot and answers batched `reset` / `step` requests with plain
dicts, so both executors return the same values for the same requests. A step that raises becomes a reply with
`error` set (that episode ends with finish reason `error`); other episodes are unaffected.

Reply dicts: `obs`, `reward`, `terminated`, `truncated`, `info`, `error` (str or None); reset replies also
carry `messages`, `stop_strings` and `observation_role`.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from agentrl.registry import Registry
from agentrl.types import Task

Reply = dict[str, Any]


class Executor(Protocol):
    def reset(self, slots: list[int], tasks: list[Task], seeds: list[int]) -> list[Reply]: ...

    def step(self, slots: list[int], actions: list[str]) -> list[Reply]: ...

    def close(self) -> None: ...


EXECUTORS: Registry[Callable[..., Executor]] = Registry("rollout executor")


EnvSpec = str | Callable[..., Any]


def make_env(env_id: EnvSpec, env_kwargs: dict[str, Any]) -> Any:
    """`gymnasium.make(env_id, **env_kwargs)` with the agentrl ids registered; callables are called."""
    import gymnasium

    if callable(env_id):
        return env_id(**env_kwargs)
    if env_id.startswith("agentrl/"):
        import environments  # noqa: F401  (registers the agentrl ids)
    return gymnasium.make(env_id, **env_kwargs)


def _error_reply(exc: BaseException) -> Reply:
    text = f"{type(exc).__name__}: {exc}"
    return {
        "obs": "",
        "reward": 0.0,
        "terminated": False,
        "truncated": False,
        "info": {"traceback": traceback.format_exc(limit=8)},
        "error": text,
    }


class EnvSlots:
    """Environments by slot, created on first use and reused across runs (the per-process worker state)."""

    def __init__(self, env_id: EnvSpec, env_kwargs: dict[str, Any]) -> None:
        self.env_id = env_id
        self.env_kwargs = env_kwargs
        self.envs: dict[int, Any] = {}

    def env(self, slot: int) -> Any:
        if slot not in self.envs:
            self.envs[slot] = make_env(self.env_id, self.env_kwargs)
        return self.envs[slot]

    def reset_one(self, slot: int, task: Task, seed: int) -> Reply:
        try:
            env = self.env(slot)
            obs, info = env.reset(seed=seed, options={"task": task})
            raw = env.unwrapped
            return {
                "obs": obs,
                "reward": 0.0,
                "terminated": False,
                "truncated": False,
                "info": info,
                "error": None,
                "messages": list(info["messages"]),
                "stop_strings": list(getattr(raw, "stop_strings", []) or []),
                "observation_role": getattr(raw, "observation_role", "user") or "user",
            }
        except Exception as exc:
            return _error_reply(exc)

    def step_one(self, slot: int, action: str) -> Reply:
        try:
            obs, reward, terminated, truncated, info = self.env(slot).step(action)
            return {
                "obs": obs,
                "reward": float(reward),
                "terminated": bool(terminated),
                "truncated": bool(truncated),
                "info": info,
                "error": None,
            }
        except Exception as exc:
            return _error_reply(exc)

    def reset_many(self, slots: list[int], tasks: list[Task], seeds: list[int]) -> list[Reply]:
        return [self.reset_one(s, t, x) for s, t, x in zip(slots, tasks, seeds, strict=True)]

    def step_many(self, slots: list[int], actions: list[str]) -> list[Reply]:
        return [self.step_one(s, a) for s, a in zip(slots, actions, strict=True)]

    def close(self) -> None:
        for env in self.envs.values():
            with contextlib.suppress(Exception):
                env.close()
        self.envs.clear()


@EXECUTORS.register("local")
class LocalExecutor:
    """Steps environments in the calling process, one after another (debugging, tiny runs, tests)."""

    def __init__(self, env_id: EnvSpec, env_kwargs: dict[str, Any] | None = None, **_: Any) -> None:
        self.slots = EnvSlots(env_id, dict(env_kwargs or {}))

    def reset(self, slots: list[int], tasks: list[Task], seeds: list[int]) -> list[Reply]:
        return self.slots.reset_many(slots, tasks, seeds)

    def step(self, slots: list[int], actions: list[str]) -> list[Reply]:
        return self.slots.step_many(slots, actions)

    def close(self) -> None:
        self.slots.close()


class SharedRetriever:
    """A `Retriever` that forwards `search` to one Ray actor, so every env worker shares a single index."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def search(self, queries: list[str], k: int) -> list[Any]:
        import ray

        return ray.get(self.actor.search.remote(queries, k))


class _RetrieverHost:
    def __init__(self, retriever: Any) -> None:
        self.retriever = retriever

    def search(self, queries: list[str], k: int) -> list[Any]:
        return self.retriever.search(queries, k)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local Ray instance (default) or connect to the cluster at `address`; no-op when already up."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)


@EXECUTORS.register("ray")
class RayExecutor:
    """Steps environments on `num_workers` Ray actors; slot s lives on actor s % num_workers.

    Actors step their own episodes while the other actors step theirs, so slow tools and retrieval overlap.
    A `retriever` object among `env_kwargs` is hosted once in its own actor and every env reaches it through
    `SharedRetriever`, instead of each actor holding a copy.

    Args:
        env_id, env_kwargs: the environment, as for `gymnasium.make` (or a picklable callable making one).
        num_workers: env actors.
        address: a Ray cluster address (`ray://...` or `auto`); None starts Ray locally.
        num_cpus: CPUs of a locally started Ray (None: all).
    """

    def __init__(
        self,
        env_id: EnvSpec,
        env_kwargs: dict[str, Any] | None = None,
        num_workers: int = 2,
        address: str | None = None,
        num_cpus: int | None = None,
        **_: Any,
    ) -> None:
        import ray

        init_ray(address, num_cpus)
        kwargs = dict(env_kwargs or {})
        self._host = None
        if kwargs.get("retriever") is not None:
            self._host = ray.remote(num_cpus=0)(_RetrieverHost).remote(kwargs["retriever"])
            kwargs["retriever"] = SharedRetriever(self._host)
        worker = ray.remote(num_cpus=0)(EnvSlots)
        self.workers = [worker.remote(env_id, kwargs) for _ in range(max(1, num_workers))]

    def _scatter(
        self, slots: list[int], call: Callable[[Any, list[int], list[Any]], Any], *columns: list[Any]
    ):
        import ray

        groups: dict[int, list[int]] = {}
        for position, slot in enumerate(slots):
            groups.setdefault(slot % len(self.workers), []).append(position)
        futures = {
            w: call(self.workers[w], [slots[p] for p in ps], *[[col[p] for p in ps] for col in columns])
            for w, ps in groups.items()
        }
        replies: list[Reply | None] = [None] * len(slots)
        for w, future in futures.items():
            try:
                answers = ray.get(future)
            except Exception as exc:
                answers = [_error_reply(exc)] * len(groups[w])
            for p, reply in zip(groups[w], answers, strict=True):
                replies[p] = reply
        return replies

    def reset(self, slots: list[int], tasks: list[Task], seeds: list[int]) -> list[Reply]:
        return self._scatter(slots, lambda w, s, t, x: w.reset_many.remote(s, t, x), tasks, seeds)

    def step(self, slots: list[int], actions: list[str]) -> list[Reply]:
        return self._scatter(slots, lambda w, s, a: w.step_many.remote(s, a), actions)

    def close(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        if self._host is not None:
            ray.kill(self._host)
        self.workers = []


def build_executor(
    name: str, env_id: EnvSpec, env_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> Executor:
    return EXECUTORS.get(name)(env_id, env_kwargs, **kwargs)
