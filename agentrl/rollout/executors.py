"""Where environment steps run: in-process (`local`) or on a pool of Ray actors (`ray`).

An executor owns one environment per episode slot and answers batched `reset` / `step` requests with plain
dicts, so both executors return the same values for the same requests. A call that raises, or that
overruns the executor's `step_timeout`, becomes a reply with `error` set (that episode ends with finish reason
`error`); other episodes are unaffected.

Reply dicts: `obs`, `reward`, `terminated`, `truncated`, `info`, `error` (str or None) and `timed_out` (the
call overran `step_timeout`); reset replies also carry `messages`, `stop_strings` and `observation_role`.

Both executors keep running totals in `executor.counters` (since the executor was made; read them after
each run for metrics): `step_timeouts`, env calls (reset or step) that overran `step_timeout`, and
`actor_restarts`, Ray env actors replaced (always 0 for `local`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from agentrl.core.registry import Registry
from agentrl.core.types import Task

Reply = dict[str, Any]

DEFAULT_STEP_TIMEOUT = 300.0
RAY_CALL_GRACE = 30.0  # seconds a Ray actor's batch of steps may take beyond step_timeout x steps


class Executor(Protocol):
    """What the rollout engine steps environments through; `counters` holds fault totals for metrics."""

    counters: dict[str, int]

    def reset(self, slots: list[int], tasks: list[Task], seeds: list[int]) -> list[Reply]: ...

    def step(self, slots: list[int], actions: list[str]) -> list[Reply]: ...

    def close(self) -> None: ...


EXECUTORS: Registry[Callable[..., Executor]] = Registry("rollout executor")


EnvSpec = str | Callable[..., Any]


def make_env(env_id: EnvSpec, env_kwargs: dict[str, Any], registration: Any = None) -> Any:
    """`gymnasium.make(env_id, **env_kwargs)` with the agentrl ids registered; callables are called.

    `registration` is the gymnasium `EnvSpec` of an id registered at runtime in another process (see
    `registration_for`); it is added to this process's registry first.
    """
    import gymnasium

    if callable(env_id):
        return env_id(**env_kwargs)
    if env_id.startswith("agentrl/"):
        import environments  # noqa: F401  (registers the agentrl ids)
    if registration is not None:
        gymnasium.registry.setdefault(registration.id, registration)
    try:
        return gymnasium.make(env_id, **env_kwargs)
    except TypeError as exc:
        raise ValueError(f"cannot make env {env_id!r} with kwargs {sorted(env_kwargs)}: {exc}") from exc


def registration_for(env_id: EnvSpec) -> Any:
    """The gymnasium `EnvSpec` a fresh process needs to make `env_id`, or None when it needs none.

    An id registered by the user's own code (`gym.register(...)` in a script or module) exists only in the
    process that ran that code; Ray workers get its spec and register it before making the env. agentrl ids,
    `module:Env-v0` ids (gymnasium imports `module` itself) and callables need nothing.
    """
    if not isinstance(env_id, str) or env_id.startswith("agentrl/") or ":" in env_id:
        return None
    import gymnasium

    try:
        return gymnasium.spec(env_id)
    except gymnasium.error.Error:
        return None  # unknown here as well: the worker's `gymnasium.make` error names the id


def check_step_timeout(step_timeout: float | None) -> float | None:
    """`step_timeout` if it is None or a positive number of seconds; a ValueError naming it otherwise."""
    if step_timeout is not None and not step_timeout > 0:
        raise ValueError(f"step_timeout must be a positive number of seconds or None, got {step_timeout!r}")
    return step_timeout


def _reply(obs: Any, reward: float, terminated: bool, truncated: bool, info: Any) -> Reply:
    return {
        "obs": obs,
        "reward": float(reward),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "info": info,
        "error": None,
        "timed_out": False,
    }


def _error_reply(exc: BaseException) -> Reply:
    reply = _reply("", 0.0, False, False, {"traceback": traceback.format_exc(limit=8)})
    reply["error"] = f"{type(exc).__name__}: {exc}"
    return reply


def _timeout_reply(message: str) -> Reply:
    reply = _reply("", 0.0, False, False, {})
    reply["error"] = f"TimeoutError: {message}"
    reply["timed_out"] = True
    return reply


class _Overran(Exception):
    """The call was still running when its time was up (its thread is abandoned)."""


_Request = tuple[Callable[[], Any], dict[str, Any], threading.Event]


class _CallThread:
    """A daemon thread that runs calls one at a time, each waited for at most `timeout` seconds.

    Python cannot stop a thread, so a call that overruns keeps running in the background: the caller gets
    `_Overran` and should start a new `_CallThread`; the abandoned one exits once its call returns.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True, name="agentrl-env-calls").start()

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            fn, outcome, done = request
            try:
                outcome["value"] = fn()
            except BaseException as exc:
                outcome["error"] = exc
            done.set()

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """`fn()` on this thread; raises `_Overran` after `timeout` s. Exceptions from `fn` propagate."""
        outcome: dict[str, Any] = {}
        done = threading.Event()
        self._requests.put((fn, outcome, done))
        if not done.wait(timeout):
            self._requests.put(None)  # ends the thread once the hung call returns, if ever
            raise _Overran
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


class EnvSlots:
    """Environments by slot, created on first use and reused across runs (the per-process worker state).

    With a `step_timeout`, each `reset` / `step` runs on a helper thread and is given up after that many
    seconds: the reply is a timeout error and the slot's env is dropped (a fresh one is made on the slot's
    next reset), but the hung call itself keeps running in this process, counted in `hung_calls`. Env
    construction runs on the calling thread and is not timed.
    """

    def __init__(
        self,
        env_id: EnvSpec,
        env_kwargs: dict[str, Any],
        step_timeout: float | None = None,
        registration: Any = None,
    ) -> None:
        self.env_id = env_id
        self.env_kwargs = env_kwargs
        self.step_timeout = check_step_timeout(step_timeout)
        self.registration = registration
        self.envs: dict[int, Any] = {}
        self.hung_calls = 0
        self._thread: _CallThread | None = None

    def env(self, slot: int) -> Any:
        if slot not in self.envs:
            self.envs[slot] = make_env(self.env_id, self.env_kwargs, self.registration)
        return self.envs[slot]

    def _guarded(self, slot: int, call: str, fn: Callable[[Any], Reply]) -> Reply:
        """`fn(env of slot)` as a reply: exceptions and overruns become error replies."""
        try:
            env = self.env(slot)
            if self.step_timeout is None:
                return fn(env)
            if self._thread is None:
                self._thread = _CallThread()
            return self._thread.call(lambda: fn(env), self.step_timeout)
        except _Overran:
            self.envs.pop(slot, None)
            self._thread = None
            self.hung_calls += 1
            return _timeout_reply(f"env {call} did not return within {self.step_timeout:g} s")
        except Exception as exc:
            return _error_reply(exc)

    def reset_one(self, slot: int, task: Task, seed: int) -> Reply:
        def reset(env: Any) -> Reply:
            obs, info = env.reset(seed=seed, options={"task": task})
            raw = env.unwrapped
            reply = _reply(obs, 0.0, False, False, info)
            reply["messages"] = list(info["messages"])
            reply["stop_strings"] = list(getattr(raw, "stop_strings", []) or [])
            reply["observation_role"] = getattr(raw, "observation_role", "user") or "user"
            return reply

        return self._guarded(slot, "reset", reset)

    def step_one(self, slot: int, action: str) -> Reply:
        return self._guarded(slot, "step", lambda env: _reply(*env.step(action)))

    def reset_many(self, slots: list[int], tasks: list[Task], seeds: list[int]) -> list[Reply]:
        return [self.reset_one(s, t, x) for s, t, x in zip(slots, tasks, seeds, strict=True)]

    def step_many(self, slots: list[int], actions: list[str]) -> list[Reply]:
        return [self.step_one(s, a) for s, a in zip(slots, actions, strict=True)]

    def close(self) -> None:
        for env in self.envs.values():
            with contextlib.suppress(Exception):
                env.close()
        self.envs.clear()


def _new_counters() -> dict[str, int]:
    return {"step_timeouts": 0, "actor_restarts": 0}


@EXECUTORS.register("local")
class LocalExecutor:
    """Steps environments in the calling process, one after another (debugging, tiny runs, tests).

    Args:
        env_id, env_kwargs: the environment, as for `gymnasium.make` (or a callable making one).
        step_timeout: seconds one env `reset` / `step` may take (None: no limit). An overrunning call ends
            its episode with an error; Python cannot kill a thread, so the hung call is abandoned and keeps
            running in the background, and the slot gets a fresh env at its next reset. Use the `ray` executor
            when hung tools must be killed.

    Attributes:
        counters: `step_timeouts` and `actor_restarts` (always 0 here), totals since construction.
    """

    def __init__(
        self,
        env_id: EnvSpec,
        env_kwargs: dict[str, Any] | None = None,
        step_timeout: float | None = DEFAULT_STEP_TIMEOUT,
        **_: Any,
    ) -> None:
        self.slots = EnvSlots(env_id, dict(env_kwargs or {}), step_timeout)
        self.counters = _new_counters()

    def _counted(self, replies: list[Reply]) -> list[Reply]:
        self.counters["step_timeouts"] += sum(bool(r["timed_out"]) for r in replies)
        return replies

    def reset(self, slots: list[int], tasks: list[Task], seeds: list[int]) -> list[Reply]:
        return self._counted(self.slots.reset_many(slots, tasks, seeds))

    def step(self, slots: list[int], actions: list[str]) -> list[Reply]:
        return self._counted(self.slots.step_many(slots, actions))

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


class _RaySession:
    """Starts Ray for the executors that need it and shuts it down when the last of them closes.

    A Ray that was already initialized when an executor started (by the user, or another library) is used as
    is and never shut down by agentrl.
    """

    users = 0

    @classmethod
    def acquire(cls, address: str | None, num_cpus: int | None) -> bool:
        """Make sure Ray is up; True when this executor shares a Ray that agentrl started."""
        import ray

        if ray.is_initialized():
            if cls.users == 0:
                return False
            cls.users += 1
            return True
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        cls.users = 1
        return True

    @classmethod
    def release(cls) -> None:
        import ray

        cls.users = max(cls.users - 1, 0)
        if cls.users == 0:
            ray.shutdown()


def acquire_ray(address: str | None, num_cpus: int | None) -> bool:
    """Make sure Ray is up (see `_RaySession`); True when the caller must `release_ray()` when done."""
    return _RaySession.acquire(address, num_cpus)


def release_ray() -> None:
    """Drop one user of the Ray that agentrl started; the last one shuts it down."""
    _RaySession.release()


@EXECUTORS.register("ray")
class RayExecutor:
    """Steps environments on `num_workers` Ray actors; slot s lives on actor s % num_workers.

    Actors step their own episodes while the other actors step theirs, so slow tools and retrieval overlap.
    A `retriever` object among `env_kwargs` is hosted once in its own actor and every env reaches it through
    `SharedRetriever`, instead of each actor holding a copy. An id registered by the caller's own code (not an
    `agentrl/` id) is registered in every actor too.

    Failures stay per actor and do not outlive a run:
    - an actor whose process dies (a tool that segfaults, the OOM killer) is replaced at once: its episodes
      of that call end with an error, and a reset sent to a dead actor is retried once on its replacement;
    - an env call that overruns `step_timeout` ends its episode with an error; the actor moves on to its
      other episodes, and is killed (with the hung call) and replaced before the next reset;
    - an actor whose whole batch of steps overruns `step_timeout` x steps + 30 s (a call that blocks while
      holding the GIL, so the actor cannot time it out itself) is killed and replaced, ending all its
      episodes of that turn with a timeout error.

    Args:
        env_id, env_kwargs: the environment, as for `gymnasium.make` (or a picklable callable making one).
        num_workers: env actors.
        address: a Ray cluster address (`ray://...` or `auto`); None starts Ray locally.
        num_cpus: CPUs of a locally started Ray (None: all).
        step_timeout: seconds one env `reset` / `step` may take (None: no limit).

    Attributes:
        counters: `actor_restarts` (actors replaced, for any reason above) and `step_timeouts` (env calls
            that overran), totals since construction.

    `close()` kills the actors, and shuts Ray down when this executor started it (a Ray that was already
    running is left as it was).
    """

    def __init__(
        self,
        env_id: EnvSpec,
        env_kwargs: dict[str, Any] | None = None,
        num_workers: int = 2,
        address: str | None = None,
        num_cpus: int | None = None,
        step_timeout: float | None = DEFAULT_STEP_TIMEOUT,
        **_: Any,
    ) -> None:
        import ray

        self.step_timeout = check_step_timeout(step_timeout)
        self.counters = _new_counters()
        self._owns_ray = _RaySession.acquire(address, num_cpus)
        kwargs = dict(env_kwargs or {})
        self._host = None
        if kwargs.get("retriever") is not None:
            self._host = ray.remote(num_cpus=0)(_RetrieverHost).remote(kwargs["retriever"])
            kwargs["retriever"] = SharedRetriever(self._host)
        self._actor = ray.remote(num_cpus=0)(EnvSlots)
        self._spawn_args = (env_id, kwargs, self.step_timeout, registration_for(env_id))
        self.workers = [self._spawn() for _ in range(max(1, num_workers))]
        self._hung: set[int] = set()

    def _spawn(self) -> Any:
        return self._actor.remote(*self._spawn_args)

    def _replace(self, w: int) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self.workers[w])
        self.workers[w] = self._spawn()
        self._hung.discard(w)
        self.counters["actor_restarts"] += 1

    def _scatter(self, slots: list[int], method: str, *columns: list[Any]) -> list[Reply]:
        """Send each actor its slots' requests; the replies, in request order."""
        groups: dict[int, list[int]] = {}
        for position, slot in enumerate(slots):
            groups.setdefault(slot % len(self.workers), []).append(position)

        def submit(w: int) -> Any:
            ps = groups[w]
            rows = [[column[p] for p in ps] for column in columns]
            return getattr(self.workers[w], method).remote([slots[p] for p in ps], *rows)

        started = time.monotonic()
        futures = {w: submit(w) for w in groups}
        replies: list[Reply] = [{}] * len(slots)
        for w, future in futures.items():
            deadline = None
            if method == "step_many" and self.step_timeout is not None:
                deadline = started + self.step_timeout * len(groups[w]) + RAY_CALL_GRACE
            retry = (lambda w=w: submit(w)) if method == "reset_many" else None
            answers = self._collect(w, future, len(groups[w]), deadline, retry)
            for p, reply in zip(groups[w], answers, strict=True):
                replies[p] = reply
        self.counters["step_timeouts"] += sum(bool(r["timed_out"]) for r in replies)
        return replies

    def _collect(
        self, w: int, future: Any, n: int, deadline: float | None, retry: Callable[[], Any] | None
    ) -> list[Reply]:
        """Actor `w`'s n replies; a dead actor is replaced (and `retry` resubmitted to the new one, once), an
        actor past `deadline` (time.monotonic) is killed and replaced."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            answers: list[Reply] = ray.get(future, timeout=timeout)
        except RayActorError as exc:
            self._replace(w)
            if retry is not None:
                return self._collect(w, retry(), n, deadline, None)
            return [_error_reply(exc) for _ in range(n)]
        except GetTimeoutError:
            self._replace(w)
            message = f"env worker did not answer its {n} steps within step_timeout x {n} + grace; killed"
            return [_timeout_reply(message) for _ in range(n)]
        except Exception as exc:
            return [_error_reply(exc) for _ in range(n)]
        if any(a["timed_out"] for a in answers):
            self._hung.add(w)
        return answers

    def reset(self, slots: list[int], tasks: list[Task], seeds: list[int]) -> list[Reply]:
        for w in sorted(self._hung):
            self._replace(w)
        return self._scatter(slots, "reset_many", tasks, seeds)

    def step(self, slots: list[int], actions: list[str]) -> list[Reply]:
        return self._scatter(slots, "step_many", actions)

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            for actor in [*self.workers, self._host]:
                if actor is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
        self.workers = []
        self._host = None
        if self._owns_ray:
            self._owns_ray = False
            _RaySession.release()


def build_executor(
    name: str, env_id: EnvSpec, env_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> Executor:
    return EXECUTORS.get(name)(env_id, env_kwargs, **kwargs)
