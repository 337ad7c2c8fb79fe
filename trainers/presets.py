"""Named recipes bundling an advantage scheme, token filters, loss settings and the paper's optimiser
defaults.

`get_preset("wapo")` returns a fresh `Preset` (plain typed dataclass fields, so it maps one-to-one onto a YAML
block; `Preset.from_dict(yaml.safe_load(...))` reads one back). A preset is faithful to the paper that defines
it: its advantage scheme, ratio and clip bounds, aggregation (normaliser), a dual clip only where the paper's
formula or its published verl recipe sets one, and the learning rate for full fine-tuning and for LoRA. The
response budget T_max of `fixed_length` / `token_budget` normalisers is not part of a preset: it is the run's
maximum response length (`algorithm.max_response_length`, WAPO Table 3: 4096 for math, 1024 for multi-hop QA),
so the normaliser can never disagree with the recipe it runs in.

Original methods keep their plain names; a paper's *tuned baseline* of another method is named for what it is:

* grpo: std-normalised group advantages, token ratio clipped at 0.2, seq-mean-token-mean (WAPO App. E's GRPO
  formula with the GRPO paper's ε = 0.2); no dual clip, no KL.
* dapo: clip-higher ε_low 0.2 / ε_high 0.28, token-mean aggregation, std-normalised group advantages, dynamic
  sampling on; dual clip c = 10 as in the verl DAPO recipe (`clip_ratio_c=10.0`).
* gspo: sequence ratio (geometric mean of token ratios) clipped to [1 - 3e-4, 1 + 4e-4] (the GSPO paper and
  its verl recipe), seq-mean-token-mean.
* wapo: positive-only advantages, upper-only clip 0.2, fixed_length (G·T_max) normalisation over groups that
  have a positive advantage (WAPO eq. 8); LoRA learning rate 1e-5 (WAPO Table 3).
* stapo: GRPO advantages, S2T mask (τ_p = 2e-3, top-20% entropy), clip range [0.8, 1.28], loss renormalised
  over kept tokens (STAPO eq. 1 and its hyperparameter table); learning rate 1e-6.
* cw_grpo: GRPO with covariance Gaussian reweighting (CW-GRPO sec. 2.3); learning rate 1e-6.
* fade: FADE advantages (Algorithm 2) in eq. 20's PPO loss with ε = 0.2 and no dual clip, normalised by the
  constant token budget T_max per rollout (App. 11.1); learning rate 1e-7 (Table 2's baseline).
* grpo_n / gspo_n: negative-only advantages; clip 0.2, KL 1e-3, entropy bonus 1e-4, learning rate 1e-6
  (two-stage paper, App. C.2).
* wapo_grpo_baseline / wapo_dapo_baseline / wapo_gspo_baseline: WAPO App. E's tuned baselines (GRPO with
  ε = 9.0; DAPO with mean-centred advantages and clip(ρ, 0.9, 9.0); GSPO with ε = 0.2), LoRA learning rate
  1e-5.

Learning rates: `learning_rate` is for full fine-tuning, `lora_learning_rate` for LoRA runs (10x, the rule
WAPO cites for LoRA RL). `trainer.learning_rate` in an experiment config overrides both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from agentrl.core.registry import Registry
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
        learning_rate: learning rate of the paper's full fine-tuning runs.
        lora_learning_rate: learning rate with LoRA adapters.
        max_grad_norm: gradient clipping norm.
        dynamic_sampling: drop groups whose rewards are all equal and refill the batch (DAPO).
        source: where the recipe comes from (paper and section).
    """

    name: str
    scheme: str
    scheme_params: dict[str, Any] = field(default_factory=dict)
    filters: list[Any] = field(default_factory=list)
    renormalize: bool = True
    loss: LossConfig = field(default_factory=LossConfig)
    learning_rate: float = 1e-6
    lora_learning_rate: float = 1e-5
    max_grad_norm: float = 1.0
    dynamic_sampling: bool = False
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<preset>", prefix: str = "") -> Preset:
        """Build from a mapping (a YAML block), checking every key and type like any agentrl config.

        Raises `agentrl.core.config.ConfigError` naming an unknown key and the closest valid one.
        """
        from agentrl.core.config import from_dict

        return from_dict(cls, data, source=source, prefix=prefix)


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
    return Preset(
        "grpo", "grpo", {"std": "population"}, loss=LossConfig(eps_low=0.2, eps_high=0.2),
        source="GRPO (Shao et al. 2024) as WAPO App. E writes it",
    )  # fmt: skip


@PRESETS.register("dapo")
def _dapo() -> Preset:
    loss = LossConfig(eps_low=0.2, eps_high=0.28, dual_clip=10.0, aggregation="token_mean")
    return Preset(
        "dapo", "grpo", {"std": "population"}, loss=loss, dynamic_sampling=True,
        source="DAPO (Yu et al. 2025): clip-higher, token-mean, dynamic sampling; verl recipe's dual clip",
    )  # fmt: skip


@PRESETS.register("gspo")
def _gspo() -> Preset:
    loss = LossConfig(ratio="sequence", eps_low=3e-4, eps_high=4e-4)
    return Preset("gspo", "grpo", {"std": "population"}, loss=loss, source="GSPO (Zheng et al. 2025)")


@PRESETS.register("wapo")
def _wapo() -> Preset:
    loss = LossConfig(ratio="wapo", eps_high=0.2, aggregation="fixed_length", active_groups_only=True)
    return Preset("wapo", "wapo", loss=loss, source="WAPO eq. 6-8, Table 3")


@PRESETS.register("stapo")
def _stapo() -> Preset:
    return Preset(
        "stapo", "grpo", {"std": "population"},
        filters=[{"name": "stapo", "tau_p": 2e-3, "entropy_top_fraction": 0.2}],
        renormalize=True,
        loss=LossConfig(eps_low=0.2, eps_high=0.28, aggregation="renormalized_kept"),
        source="STAPO eq. 1, Remark 3.5, App. D",
    )  # fmt: skip


@PRESETS.register("cw_grpo")
def _cw_grpo() -> Preset:
    return Preset(
        "cw_grpo", "grpo", {"std": "population"}, filters=["cov_gaussian"],
        loss=LossConfig(eps_low=0.2, eps_high=0.2), source="Covariance-aware GRPO sec. 2.3, Table 5",
    )  # fmt: skip


@PRESETS.register("fade")
def _fade() -> Preset:
    params = {"beta": 0.02, "alpha_max": 3.0, "delta_min": 0.3}
    return Preset(
        "fade", "fade", params, loss=LossConfig(eps_low=0.2, eps_high=0.2, aggregation="token_budget"),
        learning_rate=1e-7, lora_learning_rate=1e-6, source="FADE eq. 11, 20, Algorithm 2, App. 11.1",
    )  # fmt: skip


@PRESETS.register("grpo_n")
def _grpo_n() -> Preset:
    loss = LossConfig(eps_low=0.2, eps_high=0.2, kl_coef=1e-3, entropy_coef=1e-4)
    return Preset("grpo_n", "grpo_n", loss=loss, source="Two-stage dynamic view, sec. 4 and App. C.2")


@PRESETS.register("gspo_n")
def _gspo_n() -> Preset:
    loss = LossConfig(ratio="sequence", eps_low=0.2, eps_high=0.2, kl_coef=1e-3, entropy_coef=1e-4)
    return Preset("gspo_n", "gspo_n", loss=loss, source="Two-stage dynamic view, sec. 4 and App. C.2")


@PRESETS.register("wapo_grpo_baseline")
def _wapo_grpo_baseline() -> Preset:
    return Preset(
        "wapo_grpo_baseline", "grpo", {"std": "population"}, loss=LossConfig(eps_low=9.0, eps_high=9.0),
        source="WAPO App. E and sec. 5: GRPO tuned to eps = 9.0",
    )  # fmt: skip


@PRESETS.register("wapo_dapo_baseline")
def _wapo_dapo_baseline() -> Preset:
    loss = LossConfig(eps_low=0.1, eps_high=8.0, aggregation="token_mean")
    return Preset(
        "wapo_dapo_baseline", "dr_grpo", loss=loss,
        source="WAPO App. E and sec. 5: DAPO with clip(rho, 0.9, 9.0), mean-centred advantages",
    )  # fmt: skip


@PRESETS.register("wapo_gspo_baseline")
def _wapo_gspo_baseline() -> Preset:
    loss = LossConfig(ratio="sequence", eps_low=0.2, eps_high=0.2)
    return Preset(
        "wapo_gspo_baseline", "grpo", {"std": "population"}, loss=loss,
        source="WAPO App. E and sec. 5: GSPO with eps = 0.2",
    )  # fmt: skip
