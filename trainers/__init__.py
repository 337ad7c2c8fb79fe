"""Advantage schemes, token filters, policy losses, chunked log-probs and diagnostics for RL post-training.

Entry points: `trainers.advantages.compute_advantages` and the `SCHEMES` registry, `trainers.filters`,
`trainers.losses`, `trainers.logprobs.token_stats`, `trainers.presets.get_preset`.
"""

from trainers.advantages import SCHEMES, compute_advantages

__all__ = ["SCHEMES", "compute_advantages"]
