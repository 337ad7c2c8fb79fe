"""The rollout engine on the real search and math environments: token-exact masks against the chat template,
sampling log-probs against a full forward pass, budgets, errors, collation and JSONL."""

from __future__ import annotations

import time

import gymnasium
import pytest
import torch

from agentrl.core.generator import SamplingParams, process_logits
from agentrl.core.types import Task
from agentrl.generation.hf import HFGenerator
from agentrl.rollout import (
    EngineConfig,
    LocalExecutor,
    RolloutEngine,
    collate,
    read_trajectories,
    write_trajectories,
)
from agentrl.rollout.tasks import env_default_tasks
from tests.agentrl import fault_envs
from tests.agentrl.conftest import ScriptedGenerator

SEARCH = "agentrl/SearchQA-v0"
SEARCH_KWARGS = {"world_entities": 200, "max_turns": 4}


def search_script(prompt: str, turn: int) -> str:
    """Varied, well-formed and malformed turns; some episodes answer, some run out of turns."""
    question = prompt.split("Question:", 1)[1].split("<|im_end|>", 1)[0].strip()
    style = sum(map(ord, question)) % 3
    if turn == 0:
        return f"<think>I need to look this up.</think>\n<search> {question[:60]} </search>"
    if turn == 1 and style != 2:
        return "<think>The results are not conclusive yet.</think>"  # no stop string: ends with EOS
    if style == 1:
        return "<think>One more search.</think> <search>something else entirely</search>"
    return "<think>I have it.</think>\n<answer> Orvane </answer>"


def _tasks(n: int, env_kwargs=SEARCH_KWARGS):
    return env_default_tasks(SEARCH, n, seed=0, env_kwargs=env_kwargs)


def _expected_mask(tokenizer, transcript, eos_turns: list[bool]) -> tuple[list[int], list[int]]:
    """Ids of the template's rendering of `transcript` and a mask found from character offsets: 1 on tokens
    inside assistant contents, plus the closing `<|im_end|>` of turns that ended by sampling EOS."""
    text = tokenizer.apply_chat_template(transcript, tokenize=False)
    ids = tokenizer.apply_chat_template(transcript, tokenize=True)["input_ids"]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids
    spans, pos, turn = [], 0, 0
    head = "<|im_start|>assistant\n"
    for message in transcript:
        if message["role"] != "assistant":
            continue
        start = text.index(head + message["content"], pos) + len(head)
        end = start + len(message["content"])
        if eos_turns[turn]:
            assert text[end:].startswith(tokenizer.eos_token)
            end += len(tokenizer.eos_token)
        spans.append((start, end))
        pos, turn = end, turn + 1
    mask = [int(any(s <= a and b <= e for s, e in spans)) for a, b in enc["offset_mapping"]]
    return ids, mask


def test_mask_oracle_search_env_message_mode(tokenizer) -> None:
    executor = LocalExecutor(SEARCH, SEARCH_KWARGS)
    config = EngineConfig(
        sampling=SamplingParams(max_new_tokens=64),
        max_turns=8,
        max_total_tokens=8192,
        max_observation_tokens=4096,
    )
    engine = RolloutEngine(ScriptedGenerator(tokenizer, search_script), tokenizer, executor, config)
    tasks = _tasks(6)
    trajectories = engine.run(tasks, group_size=2)
    assert len(trajectories) == 12
    reasons = {t.finish_reason for t in trajectories}
    assert reasons == {"answer", "max_turns"}
    assert max(t.num_turns for t in trajectories) >= 3
    for slot, traj in enumerate(trajectories):
        env = executor.slots.envs[slot].unwrapped
        assert traj.task_id == env.task.id and traj.group_id == slot // 2
        eos_turns = [info["finish_reason"] == "eos" for info in traj.info["turns"]]
        ids, mask = _expected_mask(tokenizer, env.transcript, eos_turns)
        assert traj.token_ids == ids
        assert traj.loss_mask == mask
        assert traj.turn_ids[: traj.prompt_length] == [-1] * traj.prompt_length
        assert traj.num_tool_calls == sum(i["action_type"] == "search" for i in traj.info["turns"])
        assert len(traj.turn_rewards) == traj.num_turns
        if traj.finish_reason == "answer":
            assert traj.reward == traj.turn_rewards[-1] == traj.info["episode"]["reward"]
    assert any(t.reward > 0 for t in trajectories)
    assert any(i["finish_reason"] == "eos" for t in trajectories for i in t.info["turns"])


def test_inline_mode_continues_the_assistant_message(tokenizer) -> None:
    executor = LocalExecutor(SEARCH, SEARCH_KWARGS)
    config = EngineConfig(sampling=SamplingParams(max_new_tokens=64), max_turns=8, observation_mode="inline")
    script = lambda prompt, turn: (  # noqa: E731
        "<think>look</think><search> capital </search>"
        if not prompt.endswith("</information>\n\n")
        else "<think>done</think><answer> x </answer>"
    )
    engine = RolloutEngine(ScriptedGenerator(tokenizer, script), tokenizer, executor, config)
    (traj,) = engine.run(_tasks(1), group_size=1)
    env = executor.slots.envs[0].unwrapped
    opening = tokenizer.apply_chat_template(env.transcript[:-3], tokenize=False, add_generation_prompt=True)
    action0, observation, action1 = (m["content"] for m in env.transcript[-3:])
    assert tokenizer.decode(traj.token_ids) == opening + action0 + "\n\n" + observation + "\n\n" + action1
    sampled = [i for i, m in zip(traj.token_ids, traj.loss_mask, strict=True) if m]
    assert sampled == tokenizer.encode(action0, add_special_tokens=False) + tokenizer.encode(
        action1, add_special_tokens=False
    )
    assert traj.finish_reason == "answer" and traj.num_turns == 2 and traj.num_tool_calls == 1
    assert sorted(set(traj.turn_ids)) == [-1, 0, 1]


def _check_logprobs(model, traj, sp: SamplingParams) -> None:
    ids = torch.tensor([traj.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    logp = process_logits(logits, sp.temperature, sp.top_k, sp.top_p)
    chosen = logp.gather(1, ids[0, 1:, None]).squeeze(1)
    mask = torch.tensor(traj.loss_mask[1:], dtype=torch.bool)
    recorded = torch.tensor(traj.logprobs[1:])
    assert mask.any()
    assert torch.allclose(chosen[mask], recorded[mask], atol=1e-4)
    assert (recorded[~mask] == 0).all()


@pytest.mark.parametrize("mode", ["message", "inline"])
def test_logprobs_match_a_forward_pass_multi_turn(tokenizer, tiny_model, mode) -> None:
    sp = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, max_new_tokens=12, seed=7)
    config = EngineConfig(
        sampling=sp, max_turns=3, end_on_length=False, observation_mode=mode, max_observation_tokens=64
    )
    engine = RolloutEngine(
        HFGenerator(tiny_model, tokenizer), tokenizer, LocalExecutor(SEARCH, SEARCH_KWARGS), config
    )
    trajectories = engine.run(_tasks(2), group_size=2)
    assert all(t.num_turns >= 2 for t in trajectories if t.finish_reason not in ("eos", "answer"))
    assert any(t.num_turns == 3 for t in trajectories)
    for traj in trajectories:
        _check_logprobs(tiny_model, traj, sp)


def test_logprobs_match_a_forward_pass_single_turn_math(tokenizer, tiny_model) -> None:
    sp = SamplingParams(temperature=1.2, top_p=0.9, max_new_tokens=16, seed=1)
    engine = RolloutEngine(
        HFGenerator(tiny_model, tokenizer),
        tokenizer,
        LocalExecutor("agentrl/Math-v0"),
        EngineConfig(sampling=sp, max_turns=1),
    )
    trajectories = engine.run(env_default_tasks("agentrl/Math-v0", 3), group_size=2)
    assert [t.group_id for t in trajectories] == [0, 0, 1, 1, 2, 2]
    for traj in trajectories:
        assert traj.num_turns == 1
        assert traj.finish_reason in ("answer", "length")
        _check_logprobs(tiny_model, traj, sp)


def test_budgets_end_episodes(tokenizer) -> None:
    script = lambda prompt, turn: "<think>again</think><search> capital city </search>"  # noqa: E731
    gen = ScriptedGenerator(tokenizer, script)
    executor = LocalExecutor(SEARCH, {**SEARCH_KWARGS, "max_turns": 10})
    tight = EngineConfig(sampling=SamplingParams(max_new_tokens=64), max_turns=10, max_total_tokens=700)
    trajectories = RolloutEngine(gen, tokenizer, executor, tight).run(_tasks(2), 1)
    for t in trajectories:
        assert t.finish_reason == "max_tokens"
        assert len(t.token_ids) <= 700 + 2
    clipped = EngineConfig(sampling=SamplingParams(max_new_tokens=64), max_turns=2, max_observation_tokens=20)
    (t,) = RolloutEngine(gen, tokenizer, executor, clipped).run(_tasks(1), 1)
    assert t.finish_reason == "max_turns" and t.num_turns == 2
    assert t.info["turns"][0]["observation_clipped"]
    observation = [
        i for i, (m, turn) in enumerate(zip(t.loss_mask, t.turn_ids, strict=True)) if turn == 0 and not m
    ]
    assert len(observation) <= 20 + 12  # content budget plus the template's turn markers


class CrashOnTask(gymnasium.Wrapper):
    """Raises on the first step of the task named `crash_id`."""

    def __init__(self, crash_id: str, **kwargs):
        import environments  # noqa: F401

        super().__init__(gymnasium.make(SEARCH, **kwargs))
        self.crash_id = crash_id

    def step(self, action):
        if self.env.unwrapped.task.id == self.crash_id:
            raise RuntimeError("tool exploded")
        return self.env.step(action)


def crash_run(tokenizer, executor_name: str, crash_id: str):
    from agentrl.rollout.executors import build_executor

    gen = ScriptedGenerator(tokenizer, search_script)
    executor = build_executor(
        executor_name, CrashOnTask, {"crash_id": crash_id, **SEARCH_KWARGS}, num_workers=2, num_cpus=2
    )
    try:
        return RolloutEngine(gen, tokenizer, executor, EngineConfig(max_turns=4)).run(_tasks(3), group_size=2)
    finally:
        executor.close()


def test_a_crashing_env_step_fails_only_its_episodes(tokenizer) -> None:
    crash_id = _tasks(3)[1].id
    trajectories = crash_run(tokenizer, "local", crash_id)
    for t in trajectories:
        if t.task_id == crash_id:
            assert t.finish_reason == "error"
            assert "tool exploded" in t.info["error"]
            assert t.num_turns == 1 and sum(t.loss_mask) > 0
            assert tokenizer.decode(t.token_ids).endswith("<|im_end|>\n")
        else:
            assert t.finish_reason in ("answer", "max_turns")


def probe_tasks(n: int) -> list[Task]:
    return [Task(id=f"t{i}", question=f"question {i}?") for i in range(n)]


def probe_run(tokenizer, executor, actions: dict[str, str]) -> list:
    """Four one-step episodes of the probe env (`tests.agentrl.fault_envs`); task id -> action (default: an
    answer)."""

    def script(prompt: str, turn: int) -> str:
        chosen = [action for task, action in actions.items() if f"question {task[1:]}?" in prompt]
        return chosen[0] if chosen else "<answer>1</answer>"

    generator = ScriptedGenerator(tokenizer, script)
    engine = RolloutEngine(generator, tokenizer, executor, EngineConfig(max_turns=2))
    return engine.run(probe_tasks(4), group_size=1)


@pytest.fixture
def hang_release():
    fault_envs.RELEASE.clear()
    yield
    fault_envs.RELEASE.set()  # lets the abandoned step threads finish


def test_a_hung_step_ends_only_its_episode_and_the_slot_gets_a_fresh_env(tokenizer, hang_release) -> None:
    executor = LocalExecutor(fault_envs.PROBE_ID, step_timeout=0.3)
    started = time.monotonic()
    first = probe_run(tokenizer, executor, {"t1": "<hang/>"})
    assert time.monotonic() - started < 60  # the hung step blocks for 120 s
    assert [t.finish_reason for t in first] == ["answer", "error", "answer", "answer"]
    assert first[1].info["error"] == "TimeoutError: env step did not return within 0.3 s"
    assert executor.counters == {"step_timeouts": 1, "actor_restarts": 0}
    assert 1 not in executor.slots.envs and executor.slots.hung_calls == 1
    kept = executor.slots.envs[0]
    second = probe_run(tokenizer, executor, {})
    assert [t.finish_reason for t in second] == ["answer"] * 4
    assert executor.slots.envs[0] is kept and 1 in executor.slots.envs
    assert executor.counters["step_timeouts"] == 1


def test_step_timeout_must_be_positive() -> None:
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="step_timeout"):
            LocalExecutor(fault_envs.PROBE_ID, step_timeout=bad)
    assert LocalExecutor(fault_envs.PROBE_ID, step_timeout=None).slots.step_timeout is None


def test_collate_pads_to_the_right(tokenizer) -> None:
    engine = RolloutEngine(
        ScriptedGenerator(tokenizer, search_script),
        tokenizer,
        LocalExecutor(SEARCH, SEARCH_KWARGS),
        EngineConfig(),
    )
    trajectories = engine.run(_tasks(2), group_size=2)
    batch = collate(trajectories, pad_token_id=tokenizer.pad_token_id)
    b, length = 4, max(len(t.token_ids) for t in trajectories)
    assert batch["input_ids"].shape == (b, length)
    for key in ("attention_mask", "loss_mask", "old_logprobs", "turn_ids"):
        assert batch[key].shape == (b, length)
    assert batch["rewards"].shape == batch["group_ids"].shape == (b,)
    assert batch["group_ids"].tolist() == [0, 0, 1, 1]
    for i, t in enumerate(trajectories):
        n = len(t.token_ids)
        assert batch["input_ids"][i, :n].tolist() == t.token_ids
        assert batch["attention_mask"][i].sum() == n
        assert batch["loss_mask"][i].sum() == sum(t.loss_mask)
        assert (batch["turn_ids"][i, n:] == -1).all()


def test_jsonl_round_trip(tokenizer, tmp_path) -> None:
    engine = RolloutEngine(
        ScriptedGenerator(tokenizer, search_script),
        tokenizer,
        LocalExecutor(SEARCH, SEARCH_KWARGS),
        EngineConfig(),
    )
    trajectories = engine.run(_tasks(2), group_size=1)
    path = tmp_path / "out" / "t.jsonl"
    assert write_trajectories(path, trajectories, tokenizer) == 2
    import json

    first = json.loads(path.read_text().splitlines()[0])
    for key in (
        "task_id",
        "group_id",
        "text",
        "token_ids",
        "loss_mask",
        "logprobs",
        "reward",
        "turn_rewards",
        "num_turns",
        "num_searches",
        "finish_reason",
    ):
        assert key in first
    assert all((lp is None) == (m == 0) for lp, m in zip(first["logprobs"], first["loss_mask"], strict=True))
    assert first["text"] == tokenizer.decode(trajectories[0].token_ids)
    assert [t.to_dict() for t in read_trajectories(path)] == [t.to_dict() for t in trajectories]


def test_smollm2_search_rollout_is_token_exact(tokenizer) -> None:
    """The bundled policy in message mode: the episode text is the template's rendering of the conversation,
    ids equal the template's ids where the sampled ids are the tokenizer's own encoding; log-probs match."""
    from agentrl.core.models import load_model

    model, tok = load_model("bundled:smollm2-135m-instruct", device="cpu")
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=24, seed=0)
    executor = LocalExecutor(SEARCH, {**SEARCH_KWARGS, "max_turns": 2})
    config = EngineConfig(sampling=sp, max_turns=2, end_on_length=False, max_observation_tokens=512)
    trajectories = RolloutEngine(HFGenerator(model, tok), tok, executor, config).run(_tasks(1), group_size=2)
    for slot, traj in enumerate(trajectories):
        transcript = executor.slots.envs[slot].unwrapped.transcript
        assert tok.decode(traj.token_ids) == tok.apply_chat_template(transcript, tokenize=False)
        canonical = all(
            tok.encode(m["content"], add_special_tokens=False)
            == [i for i, m_, turn in zip(traj.token_ids, traj.loss_mask, traj.turn_ids, strict=True)
                if m_ and turn == k and i != tok.eos_token_id]
            for k, m in enumerate(x for x in transcript if x["role"] == "assistant")
        )  # fmt: skip
        if canonical:
            assert traj.token_ids == tok.apply_chat_template(transcript, tokenize=True)["input_ids"]
        _check_logprobs(model, traj, sp)
