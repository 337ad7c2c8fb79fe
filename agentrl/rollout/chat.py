"""Token ids for prompts and observations, derived from the tokenizer's chat template.

Only text the engine itself adds is tokenized here (prompts, closing tokens of a turn, observations); the
policy's sampled ids are never decoded and re-encoded. In message mode, the ids appended after a turn are the
difference between two renderings of the conversation, so the episode's ids equal the template's rendering of
the whole conversation whenever the sampled ids are the tokenizer's own encoding of the turn's text.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, str]
_PROBE = "\x00agentrl-probe\x00"


def render_text(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode(tokenizer: Any, text: str) -> list[int]:
    """Ids of `text` with no BOS/EOS added (special-token text such as `<|im_end|>` maps to its id)."""
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def prompt_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """[P] ids of the opening messages plus the generation prompt."""
    return encode(tokenizer, render_text(tokenizer, messages, add_generation_prompt=True))


def turn_suffix(
    tokenizer: Any,
    messages: list[Message],
    assistant_text: str,
    observation: Message | None,
    eos_text: str | None,
) -> str:
    """Text the template puts after an assistant turn: its closing tokens, then (if given) the observation
    message and the next generation prompt.

    Args:
        messages: the conversation before the assistant turn.
        assistant_text: the turn's decoded text (without a trailing EOS).
        observation: the next message, or None when the episode ends.
        eos_text: the EOS token's text when the turn ended by sampling it; it is already in the episode, so it
            is not repeated when the closing text starts with it.
    """
    assistant = {"role": "assistant", "content": assistant_text}
    head = render_text(tokenizer, messages, add_generation_prompt=True) + assistant_text
    closed = render_text(tokenizer, [*messages, assistant], add_generation_prompt=False)
    if closed.startswith(head):
        close = closed[len(head) :]
        after = ""
        if observation is not None:
            opened = render_text(tokenizer, [*messages, assistant, observation], add_generation_prompt=True)
            after = opened[len(closed) :] if opened.startswith(closed) else None  # type: ignore[assignment]
        if after is not None:
            return _drop_eos(close, eos_text) + after
    return _probe_suffix(tokenizer, observation, eos_text)


def _probe_suffix(tokenizer: Any, observation: Message | None, eos_text: str | None) -> str:
    """Fallback for templates that rewrite earlier turns: the suffix measured on a one-turn probe."""
    probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _PROBE}]
    closed = render_text(tokenizer, probe, add_generation_prompt=False)
    close = closed[closed.index(_PROBE) + len(_PROBE) :]
    if observation is None:
        return _drop_eos(close, eos_text)
    opened = render_text(tokenizer, [*probe, observation], add_generation_prompt=True)
    return _drop_eos(close, eos_text) + opened[len(closed) :]


def _drop_eos(close: str, eos_text: str | None) -> str:
    if eos_text and close.startswith(eos_text):
        return close[len(eos_text) :]
    return close
