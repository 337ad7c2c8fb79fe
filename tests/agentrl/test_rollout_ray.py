"""`executor: ray` against `executor: local`: identical trajectories per seed; crashes stay per episode."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from agentrl.generation.base import SamplingParams  # noqa: E402
from agentrl.generation.hf import HFGenerator  # noqa: E402
from agentrl.rollout import EngineConfig, RolloutEngine, build_executor  # noqa: E402
from agentrl.rollout.executors import SharedRetriever  # noqa: E402
from tests.agentrl import test_rollout  # noqa: E402
from tests.agentrl.test_rollout import SEARCH, SEARCH_KWARGS, _tasks, crash_run  # noqa: E402


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
