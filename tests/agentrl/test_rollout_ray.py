"""`executor: ray` against `executor: local`: identical trajectories per seed; crashes stay per episode;
dead and hung actors are replaced and counted; ids registered by the caller work in the actors; `close()`
shuts down only the Ray it started."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from agentrl.core.generator import SamplingParams  # noqa: E402
from agentrl.generation.hf import HFGenerator  # noqa: E402
from agentrl.rollout import EngineConfig, RolloutEngine, build_executor, executors  # noqa: E402
from agentrl.rollout.executors import SharedRetriever  # noqa: E402
from tests.agentrl import test_rollout  # noqa: E402
from tests.agentrl.fault_envs import PROBE_ID  # noqa: E402

PROBE_BY_MODULE = f"tests.agentrl.fault_envs:{PROBE_ID}"  # importable in any process
from tests.agentrl.test_rollout import (  # noqa: E402
    SEARCH,
    SEARCH_KWARGS,
    _tasks,
    crash_run,
    probe_run,
    probe_tasks,
)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(test_rollout)
    yield
    ray.shutdown()


def _run(tokenizer, model, executor_name: str, retriever) -> list[dict]:
    executor = build_executor(executor_name, SEARCH, {**SEARCH_KWARGS, "retriever": retriever}, num_workers=3)
    if executor_name == "ray":
        assert executor._host is not None
    sp = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=10, seed=4)
    config = EngineConfig(sampling=sp, max_turns=3, end_on_length=False, seed=9)
    try:
        engine = RolloutEngine(HFGenerator(model, tokenizer), tokenizer, executor, config)
        return [t.to_dict() for t in engine.run(_tasks(3), group_size=2)]
    finally:
        executor.close()


def test_ray_and_local_give_identical_trajectories(tokenizer, tiny_model) -> None:
    from environments.search_env import world_retriever

    retriever = world_retriever(0, SEARCH_KWARGS["world_entities"])
    local = _run(tokenizer, tiny_model, "local", retriever)
    remote = _run(tokenizer, tiny_model, "ray", retriever)
    assert local == remote
    assert max(t["num_turns"] for t in local) == 3


def test_shared_retriever_answers_like_the_retriever() -> None:
    from retrievers.memory import InMemoryRetriever

    docs = [
        {"id": "1", "title": "Orvane", "text": "Orvane is a river."},
        {"id": "2", "title": "B", "text": "hill"},
    ]
    host = ray.remote(num_cpus=0)(
        type(
            "Host",
            (),
            {"__init__": lambda s, r: setattr(s, "r", r), "search": lambda s, q, k: s.r.search(q, k)},
        )
    )
    shared = SharedRetriever(host.remote(InMemoryRetriever(docs)))
    assert shared.search(["river"], 1) == InMemoryRetriever(docs).search(["river"], 1)


def test_a_crashing_env_step_on_ray_fails_only_its_episodes(tokenizer) -> None:
    crash_id = _tasks(3)[1].id
    remote = crash_run(tokenizer, "ray", crash_id)
    local = crash_run(tokenizer, "local", crash_id)
    for r, loc in zip(remote, local, strict=True):
        assert r.finish_reason == loc.finish_reason
        assert r.token_ids == loc.token_ids
        assert (r.finish_reason == "error") == (r.task_id == crash_id)
    assert "tool exploded" in next(t for t in remote if t.task_id == crash_id).info["error"]


@pytest.mark.parametrize("env_id", [PROBE_ID, PROBE_BY_MODULE])
def test_an_env_registered_in_the_callers_module_runs_on_ray_workers(env_id: str) -> None:
    executor = build_executor("ray", env_id, num_workers=1)
    try:
        replies = executor.reset([0, 1], probe_tasks(2), [0, 1])
        assert [r["error"] for r in replies] == [None, None]
        assert [r["obs"] for r in replies] == ["question 0?", "question 1?"]
        steps = executor.step([0, 1], ["<answer>1</answer>"] * 2)
        assert all(s["terminated"] and s["reward"] == 1.0 for s in steps)
    finally:
        executor.close()
    assert ray.is_initialized()  # a Ray the executor did not start is left running


def kill_and_wait(actor, timeout: float = 60.0) -> None:
    """`ray.kill(actor)` and wait until the actor is gone: the kill is asynchronous, so on a loaded machine a
    call sent right after it can still run on the actor, which then dies in the middle of the next rollout."""
    from ray.exceptions import GetTimeoutError, RayActorError

    ray.kill(actor)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=5)
        except RayActorError:
            return
        except GetTimeoutError:
            continue
        time.sleep(0.05)
    raise AssertionError(f"actor still answers {timeout} s after ray.kill")


def test_a_killed_worker_is_replaced_and_the_next_rollout_is_whole(tokenizer) -> None:
    executor = build_executor("ray", PROBE_BY_MODULE, num_workers=2)
    try:
        first = probe_run(tokenizer, executor, {"t1": "<die/>"})
        assert first[1].finish_reason == "error" and "ActorDiedError" in first[1].info["error"]
        assert first[0].finish_reason == first[2].finish_reason == "answer"  # the other actor's episodes
        second = probe_run(tokenizer, executor, {})
        assert [t.finish_reason for t in second] == ["answer"] * 4
        assert executor.counters == {"actor_restarts": 1, "step_timeouts": 0}
        kill_and_wait(executor.workers[0])  # dies between runs (the OOM killer)
        third = probe_run(tokenizer, executor, {})
        assert [t.finish_reason for t in third] == ["answer"] * 4
        assert executor.counters == {"actor_restarts": 2, "step_timeouts": 0}
    finally:
        executor.close()


def test_a_hung_step_on_ray_ends_its_episode_and_its_actor_is_replaced(tokenizer) -> None:
    executor = build_executor("ray", PROBE_BY_MODULE, num_workers=2, step_timeout=1.0)
    try:
        started = time.monotonic()
        first = probe_run(tokenizer, executor, {"t1": "<hang/>"})
        assert time.monotonic() - started < 60  # the hung step blocks for 120 s
        assert [t.finish_reason for t in first] == ["answer", "error", "answer", "answer"]
        assert "did not return within 1 s" in first[1].info["error"]
        assert executor.counters == {"actor_restarts": 0, "step_timeouts": 1}
        second = probe_run(tokenizer, executor, {})
        assert [t.finish_reason for t in second] == ["answer"] * 4
        assert executor.counters == {"actor_restarts": 1, "step_timeouts": 1}
    finally:
        executor.close()


def test_an_actor_stuck_holding_the_gil_is_killed(tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(executors, "RAY_CALL_GRACE", 0.5)
    executor = build_executor("ray", PROBE_BY_MODULE, num_workers=2, step_timeout=0.5)
    try:
        first = probe_run(tokenizer, executor, {"t1": "<spin/>"})
        assert [t.finish_reason for t in first] == ["answer", "error", "answer", "error"]
        assert "within step_timeout x 2 + grace; killed" in first[1].info["error"]
        assert executor.counters == {"actor_restarts": 1, "step_timeouts": 2}
        assert [t.finish_reason for t in probe_run(tokenizer, executor, {})] == ["answer"] * 4
    finally:
        executor.close()


CLOSE_SCRIPT = """
import psutil, ray
from agentrl.rollout import build_executor
from tests.agentrl.fault_envs import PROBE_ID

executor = build_executor("ray", "tests.agentrl.fault_envs:" + PROBE_ID, num_workers=1, num_cpus=1)
assert executor.reset([0], [None], [0])[0]["error"] is None
assert ray.is_initialized()
executor.close()
print("initialized:", ray.is_initialized())
print("children:", [p.name() for p in psutil.Process().children(recursive=True) if p.is_running()])
"""


def test_close_shuts_down_the_ray_it_started() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CLOSE_SCRIPT],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "initialized: False" in out.stdout
    assert "children: []" in out.stdout
