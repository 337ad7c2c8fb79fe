"""Named recipes bundling an advantage scheme, token filters and loss settings.

`get_preset("wapo")` returns a fresh `Preset` (plain typed dataclass fields, so it maps one-to-one onto a YAML
block; `Preset.from_dict(yaml.safe_load(...))` reads one back). Shared optimisation defaults follow WAPO
Table 3 (learning rate 1e-5, 8 rollouts per prompt, mini-batch 64, max grad norm 1.0, max response length 4096
for math); clip ranges follow the paper each recipe comes from:

* grpo: WAPO App. E's tuned baseline uses ε = 9.0 (clip(ρ, 1-ε, 1+ε), effectively unclipped);
  seq-mean-token-mean aggregation, std-normalized advantages.
* dapo: mean-centred advantages, token-mean aggregation, clip(ρ, 0.9, 9.0) as WAPO App. E writes it
  (ε_low = 0.1, ε_high = 8.0 in 1 ± ε form).
* gspo: sequence ratio with ε = 0.2 (WAPO App. E).
* wapo: positive-only advantages, upper-only clip, fixed_length (G·T_max) normalization over groups that have
  a positive advantage (WAPO eq. 8).
* stapo: GRPO advantages, S2T mask (τ_p = 2e-3, top-20% entropy), clip range [0.8, 1.28], loss renormalized
  over kept tokens (STAPO eq. 1 and its hyperparameter table).
* cw_grpo: GRPO with covariance Gaussian reweighting (CW-GRPO sec. 2.3).
* fade: FADE advantages with PPO ε = 0.2 (FADE Algorithm 2).
* grpo_n / gspo_n: negative-only advantages; clip 0.2, KL 1e-3, entropy bonus 1e-4 (two-stage paper App. C.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from agentrl.registry import Registry
from trainers.losses import LossConfig


@dataclass
class Preset:
    """A training recipe.

    Attributes:
        name: preset name.
        scheme: advantage scheme name (see `trainers.advantages.SCHEMES`).
        scheme_params: options passed to `compute_advantages`.
        filters: token filters (names or `{"name": ..., **options}`; see `trainers.filters.FILTERS`).
        renormalize: loss denominators count only tokens kept by the filters.
        loss: policy-loss settings.
        group_size: rollouts per prompt (G).
        learning_rate: optimizer learning rate.
        max_grad_norm: gradient clipping norm.
        minibatch_size: rollouts per optimizer step.
        micro_batch_size: rollouts per forward/backward (gradient accumulation inside a minibatch).
        max_response_length: T_max.
    """

    name: str
    scheme: str
    scheme_params: dict[str, Any] = field(default_factory=dict)
    filters: list[Any] = field(default_factory=list)
    renormalize: bool = True
    loss: LossConfig = field(default_factory=LossConfig)
    group_size: int = 8
    learning_rate: float = 1e-5
    max_grad_norm: float = 1.0
    minibatch_size: int = 64
    micro_batch_size: int = 1
    max_response_length: int = 4096

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<preset>") -> Preset:
        """Build from a mapping (a YAML block), checking every key and type like any agentrl config.

        Raises `agentrl.config.ConfigError` naming an unknown key and the closest valid one.
        """
        from agentrl.config import from_dict

        return from_dict(cls, data, source=source)


PRESETS: Registry[Callable[[], Preset]] = Registry("preset")


def get_preset(name: str, **overrides: Any) -> Preset:
    """A fresh copy of a named preset, with top-level fields overridden."""
    preset = PRESETS.get(name)()
    known = {f.name for f in fields(Preset)}
    for key, value in overrides.items():
        if key not in known:
            raise TypeError(f"preset {name!r} has no field {key!r}; valid fields are {sorted(known)}")
        setattr(preset, key, value)
    return preset


@PRESETS.register("grpo")
def _grpo() -> Preset:
    return Preset("grpo", "grpo", {"std": "population"}, loss=LossConfig(eps_low=9.0, eps_high=9.0))


@PRESETS.register("dapo")
def _dapo() -> Preset:
    return Preset("dapo", "dr_grpo", loss=LossConfig(eps_low=0.1, eps_high=8.0, aggregation="token_mean"))


@PRESETS.register("gspo")
def _gspo() -> Preset:
    return Preset(
        "gspo", "grpo", loss=LossConfig(ratio="sequence", eps_low=0.2, eps_high=0.2, dual_clip=None)
    )


@PRESETS.register("wapo")
def _wapo() -> Preset:
    loss = LossConfig(
        ratio="wapo", eps_high=0.2, dual_clip=None, aggregation="fixed_length", max_length=4096,
        active_groups_only=True,
    )  # fmt: skip
    return Preset("wapo", "wapo", loss=loss)


@PRESETS.register("stapo")
def _stapo() -> Preset:
    return Preset(
        "stapo", "grpo",
        filters=[{"name": "stapo", "tau_p": 2e-3, "entropy_top_fraction": 0.2}],
        renormalize=True,
        loss=LossConfig(eps_low=0.2, eps_high=0.28, aggregation="renormalized_kept"),
    )  # fmt: skip


@PRESETS.register("cw_grpo")
def _cw_grpo() -> Preset:
    return Preset("cw_grpo", "grpo", filters=["cov_gaussian"], loss=LossConfig(eps_low=0.2, eps_high=0.2))


@PRESETS.register("fade")
def _fade() -> Preset:
    params = {"beta": 0.02, "alpha_max": 3.0, "delta_min": 0.3}
    return Preset(
        "fade", "fade", params, loss=LossConfig(eps_low=0.2, eps_high=0.2, aggregation="token_mean")
    )


@PRESETS.register("grpo_n")
def _grpo_n() -> Preset:
    return Preset(
        "grpo_n", "grpo_n", loss=LossConfig(eps_low=0.2, eps_high=0.2, kl_coef=1e-3, entropy_coef=1e-4)
    )


@PRESETS.register("gspo_n")
def _gspo_n() -> Preset:
    loss = LossConfig(
        ratio="sequence", eps_low=0.2, eps_high=0.2, dual_clip=None, kl_coef=1e-3, entropy_coef=1e-4
    )
    return Preset("gspo_n", "gspo_n", loss=loss)
