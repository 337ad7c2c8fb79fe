"""How each training recipe would weigh a batch of rollouts: advantages and gradient masses per preset.

Used by the trainer (its per-step advantages and logs) to show, for the same rewards, the success mass m_S and
failure mass m_F (FADE eq. 3) that each preset's advantage scheme assigns.
"""

from __future__ import annotations

from typing import Any

import torch

from agentrl.types import Trajectory


def batch_rewards(trajectories: list[Trajectory]) -> tuple[torch.Tensor, torch.Tensor]:
    """([N] float64 rewards, [N] int64 group ids) of a list of trajectories."""
    rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float64)
    groups = torch.tensor([t.group_id for t in trajectories], dtype=torch.int64)
    return rewards, groups


def scheme_advantages(
    trajectories: list[Trajectory], scheme: str, params: dict[str, Any] | None = None, fade_state: Any = None
) -> torch.Tensor:
    """[N] advantages of `scheme`. FADE advances `fade_state` (a fresh one when None) with the batch's mean
    token entropy; `t2t` reads each episode's number of agent tokens as its length."""
    from trainers.advantages import FadeState, compute_advantages

    rewards, groups = batch_rewards(trajectories)
    params = dict(params or {})
    if scheme == "fade" and "state" not in params:
        params["state"] = fade_state if fade_state is not None else FadeState()
        params.setdefault("entropy", mean_negative_logprob(trajectories))
    if scheme == "t2t" and "lengths" not in params:
        params["lengths"] = torch.tensor([t.num_agent_tokens for t in trajectories], dtype=torch.float64)
    return compute_advantages(scheme, rewards, groups, **params)


def mean_negative_logprob(trajectories: list[Trajectory]) -> float:
    """Batch mean of per-sequence mean -log π over sampled tokens (FADE's H_t)."""
    per_sequence = []
    for t in trajectories:
        sampled = [-lp for lp, m in zip(t.logprobs, t.loss_mask, strict=True) if m]
        if sampled:
            per_sequence.append(sum(sampled) / len(sampled))
    return sum(per_sequence) / len(per_sequence) if per_sequence else 0.0


def preset_masses(trajectories: list[Trajectory], threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """`{preset: {"scheme", "m_S", "m_F", "nonzero"}}` for every registered preset on these rewards.

    `threshold` splits successes from failures for the masses (rewards are continuous in search QA).
    """
    from trainers.diagnostics import gradient_masses
    from trainers.presets import PRESETS, get_preset

    rewards, groups = batch_rewards(trajectories)
    report: dict[str, dict[str, Any]] = {}
    for name in PRESETS.names():
        preset = get_preset(name)
        adv = scheme_advantages(trajectories, preset.scheme, preset.scheme_params)
        masses = gradient_masses(adv, rewards, groups, threshold=threshold)
        report[name] = {
            "scheme": preset.scheme,
            "m_S": masses["adv/m_S"],
            "m_F": masses["adv/m_F"],
            "nonzero": float((adv != 0).double().mean()),
        }
    return report
