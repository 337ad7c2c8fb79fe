"""The multi-turn rollout engine: tasks x G samples in, token-exact `Trajectory`s out.

Every turn, the next action of every live episode is generated in one batch, the environments step (through an
executor), and each episode's observation ids are appended with loss mask 0. Sampled ids go into the episode
unchanged; only text the engine adds (prompt, closing tokens, observations) is tokenized.

Observation modes:
- `message`: the assistant turn is closed with the template's end-of-turn tokens, the observation becomes a
  message of the env's `observation_role`, and the next generation prompt follows; all derived from
  chat-template renderings (`agentrl.rollout.chat`). A turn ended by EOS keeps that sampled EOS (mask 1); the
  rest of the closing text is added by the engine (mask 0).
- `inline`: the observation text, formatted by `inline_format` (default `"\\n\\n{observation}\\n\\n"`),
  continues the assistant message (Search-R1); the next turn continues right after it.

Finish reasons: `answer` (env terminated), `max_turns` (env truncated or the engine's turn cap), `max_tokens`
(no room left under `max_total_tokens`), `length` (a turn hit the per-turn cap and the env did not end the
episode), `eos` (inline mode: the model ended its message, the episode went on), `error` (the env raised).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agentrl.core.generator import Completion, Generator, SamplingParams
from agentrl.core.seeding import derive_seed
from agentrl.core.types import Task, Trajectory
from agentrl.rollout.chat import Message, encode, prompt_ids, turn_suffix
from agentrl.rollout.executors import Executor, Reply


@dataclass
class EngineConfig:
    """Budgets and formatting of one rollout.

    Attributes:
        sampling: temperature, top-p/top-k, per-turn `max_new_tokens`, seed (stops come from the env).
        max_turns: agent turns per episode (the env may truncate earlier).
        max_total_tokens: cap on an episode's ids (prompt + turns + observations); the closing tokens of the
            last turn may add a few more.
        max_observation_tokens: an observation's content is cut to this many tokens.
        observation_mode: `message` or `inline`.
        inline_format: how inline observations are wrapped.
        end_on_length: end the episode when a turn hits `max_new_tokens` and the env goes on.
        seed: seeds env resets (seed + episode index) and sampling (derived per generate call);
            `run(seed=...)` overrides it for one call.
    """

    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_turns: int = 4
    max_total_tokens: int = 1536
    max_observation_tokens: int = 256
    observation_mode: Literal["message", "inline"] = "message"
    inline_format: str = "\n\n{observation}\n\n"
    end_on_length: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.observation_mode not in ("message", "inline"):
            raise ValueError(f"observation_mode must be 'message' or 'inline', got {self.observation_mode!r}")
        if self.max_turns < 1 or self.max_total_tokens < 2:
            raise ValueError("max_turns must be >= 1 and max_total_tokens >= 2")

    @classmethod
    def from_section(cls, rollout: Any, max_turns: int = 4) -> EngineConfig:
        """From `agentrl.experiment.RolloutSection` (and the env's `max_turns`)."""
        sampling = SamplingParams(
            temperature=rollout.temperature,
            top_p=rollout.top_p,
            top_k=rollout.top_k,
            max_new_tokens=rollout.max_new_tokens,
            seed=rollout.seed,
        )
        return cls(
            sampling=sampling,
            max_turns=max_turns,
            max_total_tokens=rollout.max_total_tokens,
            max_observation_tokens=rollout.max_observation_tokens,
            observation_mode=rollout.observation_mode,
            inline_format=rollout.inline_format,
            end_on_length=rollout.end_on_length,
            seed=rollout.seed,
        )


@dataclass
class _Episode:
    task: Task
    group_id: int
    slot: int
    messages: list[Message] = field(default_factory=list)
    stop: tuple[str, ...] = ()
    role: str = "user"
    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    turn_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_length: int = 0
    turn_rewards: list[float] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    num_tool_calls: int = 0
    episode_info: dict[str, Any] = field(default_factory=dict)
    finish_reason: str = ""
    error: str | None = None
    policy_version: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)

    def extend(self, ids: list[int], turn: int, sampled: bool, logprobs: list[float] | None = None) -> None:
        self.token_ids.extend(ids)
        self.loss_mask.extend([1 if sampled else 0] * len(ids))
        self.turn_ids.extend([turn] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    def trajectory(self) -> Trajectory:
        info: dict[str, Any] = {"turns": self.turns, "episode": self.episode_info}
        if self.error is not None:
            info["error"] = self.error
        return Trajectory(
            task_id=self.task.id,
            group_id=self.group_id,
            token_ids=self.token_ids,
            loss_mask=self.loss_mask,
            turn_ids=self.turn_ids,
            logprobs=self.logprobs,
            prompt_length=self.prompt_length,
            reward=float(sum(self.turn_rewards)),
            turn_rewards=self.turn_rewards,
            num_turns=len(self.turns),
            num_tool_calls=self.num_tool_calls,
            finish_reason=self.finish_reason,
            info=info,
            policy_version=self.policy_version,
            sampling=dict(self.sampling),
        )


@dataclass
class RolloutStats:
    """Wall time split and token counts of one `run` (what the CLI summary and the bench print)."""

    generate_seconds: float = 0.0
    env_seconds: float = 0.0
    total_seconds: float = 0.0
    sampled_tokens: int = 0
    observation_tokens: int = 0
    generate_calls: int = 0


class RolloutEngine:
    """Runs episodes of one environment with one generator.

    Args:
        generator: any `agentrl.generation.Generator`.
        tokenizer: the policy's tokenizer (chat template, observation encoding, decoding EOS text).
        executor: where env steps run (`agentrl.rollout.executors`).
        config: budgets, observation mode and seeds.
    """

    def __init__(
        self, generator: Generator, tokenizer: Any, executor: Executor, config: EngineConfig
    ) -> None:
        self.generator = generator
        self.tokenizer = tokenizer
        self.executor = executor
        self.config = config
        self.stats = RolloutStats()
        self._run_seed = config.seed
        self._eos_ids = set(getattr(generator, "eos_ids", set()) or ())
        if tokenizer.eos_token_id is not None:
            self._eos_ids.add(tokenizer.eos_token_id)

    def run(
        self,
        tasks: list[Task],
        group_size: int = 1,
        group_offset: int = 0,
        on_finish: Callable[[int], None] | None = None,
        seed: int | None = None,
        policy_version: int = 0,
    ) -> list[Trajectory]:
        """Roll out `group_size` episodes per task; returns them task-major ([task0 x G, task1 x G, ...]).

        Group ids are `group_offset + task index`. `on_finish(n)` is called as n more episodes end.
        `seed` replaces `config.seed` for this call: env resets use `seed + slot` and each generate call a
        seed derived from (`seed`, call index), so a trainer that passes a fresh seed per step (derived from
        its run seed and the step) draws fresh tokens every step and the same ones again on resume.
        `policy_version` is recorded on every trajectory.
        """
        cfg = self.config
        self.stats = RolloutStats()
        self._run_seed = cfg.seed if seed is None else seed
        started = time.perf_counter()
        sp = cfg.sampling
        sampling = {"temperature": sp.temperature, "top_p": sp.top_p, "top_k": sp.top_k}
        episodes = [
            _Episode(
                task=task, group_id=group_offset + t, slot=t * group_size + g,
                policy_version=policy_version, sampling=sampling,
            )
            for t, task in enumerate(tasks)
            for g in range(group_size)
        ]  # fmt: skip
        notify = on_finish or (lambda n: None)
        t0 = time.perf_counter()
        seeds = [self._run_seed + e.slot for e in episodes]
        replies = self.executor.reset([e.slot for e in episodes], [e.task for e in episodes], seeds)
        self.stats.env_seconds += time.perf_counter() - t0
        for ep, reply in zip(episodes, replies, strict=True):
            self._start(ep, reply)
        notify(sum(e.done for e in episodes))
        turn = 0
        while True:
            live = [e for e in episodes if not e.done]
            ready = []
            for ep in live:
                if cfg.max_total_tokens - len(ep.token_ids) < 1:
                    self._finish(ep, "max_tokens", turn)
                else:
                    ready.append(ep)
            notify(len(live) - len(ready))
            if not ready:
                break
            completions = self._generate(ready)
            for ep, c in zip(ready, completions, strict=True):
                ep.extend(c.token_ids, turn, sampled=True, logprobs=c.logprobs)
            t0 = time.perf_counter()
            replies = self.executor.step([e.slot for e in ready], [c.text for c in completions])
            self.stats.env_seconds += time.perf_counter() - t0
            for ep, c, reply in zip(ready, completions, replies, strict=True):
                self._after_step(ep, c, reply, turn)
            notify(sum(e.done for e in ready))
            turn += 1
        self.stats.total_seconds = time.perf_counter() - started
        return [e.trajectory() for e in episodes]

    def _start(self, ep: _Episode, reply: Reply) -> None:
        if reply["error"] is not None:
            ep.error = reply["error"]
            ep.finish_reason = "error"
            return
        ep.messages = [dict(m) for m in reply["messages"]]
        ep.stop = tuple(reply["stop_strings"])
        ep.role = reply["observation_role"]
        ids = prompt_ids(self.tokenizer, ep.messages)
        ep.extend(ids, -1, sampled=False)
        ep.prompt_length = len(ids)

    def _generate(self, ready: list[_Episode]) -> list[Completion]:
        cfg = self.config
        seed = None
        if cfg.sampling.seed is not None:
            seed = derive_seed(self._run_seed, "generate", self.stats.generate_calls)
        params = [
            replace(
                cfg.sampling,
                max_new_tokens=min(cfg.sampling.max_new_tokens, cfg.max_total_tokens - len(ep.token_ids)),
                stop=ep.stop,
                seed=seed,
            )
            for ep in ready
        ]
        t0 = time.perf_counter()
        completions = self.generator.generate([ep.token_ids for ep in ready], params)
        self.stats.generate_seconds += time.perf_counter() - t0
        self.stats.generate_calls += 1
        self.stats.sampled_tokens += sum(len(c.token_ids) for c in completions)
        return completions

    def _after_step(self, ep: _Episode, c: Completion, reply: Reply, turn: int) -> None:
        cfg = self.config
        info = dict(reply["info"] or {})
        episode_info = info.pop("episode", None)
        info["finish_reason"] = c.finish_reason
        ep.turns.append(info)
        ep.turn_rewards.append(float(reply["reward"]))
        ep.num_tool_calls += int(info.get("tool_calls") or 0)
        ep.messages.append({"role": "assistant", "content": c.text})
        eos = self._eos_text(c)
        if reply["error"] is not None:
            ep.error = reply["error"]
            self._finish(ep, "error", turn, eos)
            return
        if reply["terminated"] or reply["truncated"]:
            ep.episode_info = episode_info or {}
            self._finish(ep, "answer" if reply["terminated"] else "max_turns", turn, eos)
            return
        if c.finish_reason == "length" and cfg.end_on_length:
            self._finish(ep, "length", turn, eos)
            return
        if c.finish_reason == "eos" and cfg.observation_mode == "inline":
            self._finish(ep, "eos", turn, eos)
            return
        if len(ep.turns) >= cfg.max_turns:
            self._finish(ep, "max_turns", turn, eos)
            return
        observation = self._clip(str(reply["obs"] or ""), info)
        if cfg.observation_mode == "inline":
            ids = encode(self.tokenizer, cfg.inline_format.format(observation=observation))
        else:
            message = {"role": ep.role, "content": observation}
            ids = encode(self.tokenizer, turn_suffix(self.tokenizer, ep.messages[:-1], c.text, message, eos))
        if len(ep.token_ids) + len(ids) >= cfg.max_total_tokens:
            self._finish(ep, "max_tokens", turn, eos)
            return
        ep.extend(ids, turn, sampled=False)
        self.stats.observation_tokens += len(ids)
        if cfg.observation_mode == "message":
            ep.messages.append(message)

    def _clip(self, observation: str, info: dict[str, Any]) -> str:
        limit = self.config.max_observation_tokens
        ids = encode(self.tokenizer, observation)
        if len(ids) <= limit:
            return observation
        info["observation_clipped"] = True
        return self.tokenizer.decode(ids[:limit], skip_special_tokens=False)

    def _eos_text(self, c: Completion) -> str | None:
        if c.finish_reason == "eos" and c.token_ids:
            return self.tokenizer.decode([c.token_ids[-1]], skip_special_tokens=False)
        return None

    def _finish(self, ep: _Episode, reason: str, turn: int, eos: str | None = None) -> None:
        """End the episode; in message mode a still-open assistant turn gets the template's closing tokens."""
        ep.finish_reason = reason
        if self.config.observation_mode != "message" or not ep.messages:
            return
        if ep.messages[-1]["role"] != "assistant":
            return
        close = turn_suffix(self.tokenizer, ep.messages[:-1], ep.messages[-1]["content"], None, eos)
        ep.extend(encode(self.tokenizer, close), turn, sampled=False)


def rollout(
    generator: Generator,
    tokenizer: Any,
    executor: Executor,
    tasks: list[Task],
    group_size: int,
    config: EngineConfig | None = None,
) -> list[Trajectory]:
    """One-call form of `RolloutEngine(...).run(tasks, group_size)`."""
    return RolloutEngine(generator, tokenizer, executor, config or EngineConfig()).run(tasks, group_size)
