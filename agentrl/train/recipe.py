"""From an experiment config to the exact recipe a run trains with, checked before any model loads.

`resolve_recipe(cfg)` applies the `algorithm` section to its preset (scheme, filters, loss fields, T_max) and
picks the learning rate, gradient clip and dynamic sampling. `check_config(cfg, source)` raises a
`ConfigError` naming the key, the config file and the closest valid value for every mistake it can find
without loading a model: unknown presets, schemes, filters, env ids, bundled models and index directories;
numbers outside their range (NaN included); batch sizes that do not split into minibatches; a micro-batch
budget an episode cannot fit; greedy sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from agentrl.core.config import ConfigError
from agentrl.core.registry import closest
from agentrl.experiment import ExperimentConfig
from trainers.losses import LossConfig
from trainers.presets import Preset

PER_SEQUENCE_RATIOS = ("sequence",)


@dataclass
class Recipe:
    """What the trainer runs with.

    preset: the preset with the config's changes applied and `loss.max_length` = T_max.
    learning_rate, max_grad_norm, dynamic_sampling: resolved from the trainer section or the preset.
    """

    preset: Preset
    learning_rate: float
    max_grad_norm: float
    dynamic_sampling: bool

    @property
    def loss(self) -> LossConfig:
        return self.preset.loss


def response_budget(cfg: ExperimentConfig) -> int:
    """T_max: `algorithm.max_response_length`, else the most agent tokens an episode can hold."""
    if cfg.algorithm.max_response_length is not None:
        return int(cfg.algorithm.max_response_length)
    return min(cfg.env.max_turns * cfg.rollout.max_new_tokens, cfg.rollout.max_total_tokens)


def resolve_recipe(cfg: ExperimentConfig, source: str = "<config>") -> Recipe:
    from trainers.presets import get_preset

    section = cfg.algorithm
    try:
        preset = get_preset(section.preset)
    except KeyError as exc:
        raise ConfigError(f"{source}: algorithm.preset: {exc.args[0]}") from None
    data = preset.to_dict()
    if section.scheme:
        data["scheme"], data["scheme_params"] = section.scheme, {}
    data["scheme_params"] = {**data["scheme_params"], **section.scheme_params}
    if section.filters is not None:
        data["filters"] = list(section.filters)
    data["loss"] = {**data["loss"], **section.loss}
    try:
        resolved = Preset.from_dict(data, source=source, prefix="algorithm")
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{source}: algorithm.loss: {exc}") from None
    if resolved.loss.max_length is None:
        resolved.loss.max_length = response_budget(cfg)
    lora = cfg.finetune.mode == "lora"
    lr = cfg.trainer.learning_rate
    if lr is None:
        lr = resolved.lora_learning_rate if lora else resolved.learning_rate
    clip = cfg.trainer.max_grad_norm if cfg.trainer.max_grad_norm is not None else resolved.max_grad_norm
    dynamic = cfg.trainer.dynamic_sampling
    return Recipe(resolved, float(lr), float(clip), resolved.dynamic_sampling if dynamic is None else dynamic)


def _unknown(source: str, key: str, value: str, valid: list[str]) -> ConfigError:
    hint = closest(value, valid)
    suggestion = f"; did you mean {hint!r}?" if hint else ""
    listing = ", ".join(sorted(valid))
    return ConfigError(f"{source}: {key}: unknown value {value!r}{suggestion} Valid: {listing}")


def check_config(cfg: ExperimentConfig, source: str = "<config>", training: bool = True) -> Recipe:
    """Every check that needs no model; returns the resolved recipe."""
    from trainers.advantages import SCHEMES, scheme_params
    from trainers.filters import FILTERS

    recipe = resolve_recipe(cfg, source)
    preset = recipe.preset
    if preset.scheme not in SCHEMES:
        raise _unknown(source, "algorithm.scheme", preset.scheme, SCHEMES.names())
    valid_params = scheme_params(preset.scheme)
    for name in preset.scheme_params:
        if name not in valid_params and name not in ("state", "entropy", "lengths"):
            raise _unknown(source, f"algorithm.scheme_params.{name}", name, valid_params or ["(none)"])
    for spec in preset.filters:
        name = spec if isinstance(spec, str) else spec.get("name", "")
        if name not in FILTERS:
            raise _unknown(source, "algorithm.filters", str(name), FILTERS.names())
    _check_ranges(_sampling_ranges(cfg) + (_training_ranges(cfg) if training else []), source)
    _check_env(cfg, source)
    _check_model(cfg, source)
    _check_device(cfg, source)
    _check_retriever(cfg, source)
    _check_eval(cfg, source)
    if training:
        _check_batches(cfg, recipe, source)
    return recipe


Range = tuple[str, float | None, bool, str]  # key, value, whether it is valid, the valid range in words


def _sampling_ranges(cfg: ExperimentConfig) -> list[Range]:
    """The numeric settings every rollout (training, evaluation, filtering) depends on."""
    r = cfg.rollout
    return [
        ("threads", cfg.threads, cfg.threads is None or cfg.threads >= 1, ">= 1 (or unset)"),
        ("env.max_turns", cfg.env.max_turns, cfg.env.max_turns >= 1, ">= 1"),
        ("retriever.topk", cfg.retriever.topk, cfg.retriever.topk >= 1, ">= 1"),
        ("rollout.temperature", r.temperature, 0 <= r.temperature < math.inf, "a finite number >= 0"),
        ("rollout.top_p", r.top_p, 0 < r.top_p <= 1, "in (0, 1]"),
        ("rollout.top_k", r.top_k, r.top_k >= 0, ">= 0 (0: off)"),
        ("rollout.group_size", r.group_size, r.group_size >= 1, ">= 1"),
        ("rollout.max_new_tokens", r.max_new_tokens, r.max_new_tokens >= 1, ">= 1"),
        ("rollout.max_total_tokens", r.max_total_tokens, r.max_total_tokens >= 1, ">= 1"),
        ("rollout.batch_size", r.batch_size, r.batch_size >= 1, ">= 1"),
    ]


def _training_ranges(cfg: ExperimentConfig) -> list[Range]:
    """The numeric settings of the trainer and, when it runs, the SFT cold start."""
    t, s = cfg.trainer, cfg.sft
    ranges: list[Range] = [
        ("trainer.minibatches", t.minibatches, t.minibatches >= 1, ">= 1"),
        ("trainer.learning_rate", t.learning_rate, t.learning_rate is None or _positive(t.learning_rate),
         "a finite number > 0 (or unset: the preset's)"),
        ("trainer.max_grad_norm", t.max_grad_norm, t.max_grad_norm is None or _positive(t.max_grad_norm),
         "a finite number > 0 (or unset: the preset's)"),
        ("trainer.warmup_ratio", t.warmup_ratio, 0 <= t.warmup_ratio <= 1, "in [0, 1]"),
        ("trainer.weight_decay", t.weight_decay, 0 <= t.weight_decay < math.inf, "a finite number >= 0"),
    ]  # fmt: skip
    if s.enabled:
        ranges += [
            ("sft.steps", s.steps, s.steps >= 1, ">= 1"),
            ("sft.batch_size", s.batch_size, s.batch_size >= 1, ">= 1"),
            ("sft.samples_per_task", s.samples_per_task, s.samples_per_task >= 1, ">= 1"),
            ("sft.learning_rate", s.learning_rate, _positive(s.learning_rate), "a finite number > 0"),
            ("sft.max_grad_norm", s.max_grad_norm, _positive(s.max_grad_norm), "a finite number > 0"),
            ("sft.warmup_ratio", s.warmup_ratio, 0 <= s.warmup_ratio <= 1, "in [0, 1]"),
        ]
    return ranges


def _positive(value: float) -> bool:
    return 0 < value < math.inf


def _check_ranges(ranges: list[Range], source: str) -> None:
    """A ConfigError for the first setting outside its range (a NaN compares false, so it is caught too)."""
    for key, value, valid, expected in ranges:
        if not valid:
            raise ConfigError(f"{source}: {key}={value}: must be {expected}")


def _check_env(cfg: ExperimentConfig, source: str) -> None:
    import gymnasium

    from agentrl.rollout.setup import import_env_module

    try:
        env_id = import_env_module(cfg.env.id)
    except ImportError as exc:
        raise ConfigError(f"{source}: env.id: cannot import the module of {cfg.env.id!r}: {exc}") from None
    if env_id not in gymnasium.registry:
        raise _unknown(source, "env.id", env_id, [k for k in gymnasium.registry if k.startswith("agentrl/")])
    _check_env_kwargs(cfg, source)


def _check_env_kwargs(cfg: ExperimentConfig, source: str) -> None:
    """Every `env.kwargs` key must be a parameter of the env's constructor (where it can be read), or every
    episode would end in the env's TypeError."""
    from agentrl.rollout.setup import env_parameters

    params = env_parameters(cfg.env.id)
    if params is None:
        return
    for key in cfg.env.kwargs:
        if key not in params:
            hint = closest(key, sorted(params))
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(
                f"{source}: env.kwargs.{key}: {cfg.env.id} takes no argument {key!r}{suggestion} Valid: "
                f"{', '.join(sorted(p for p in params if p != 'self'))}"
            )


def _check_model(cfg: ExperimentConfig, source: str) -> None:
    from agentrl.core.models import BUNDLED_MODELS, BUNDLED_PREFIX

    name = cfg.model.name
    if name.startswith(BUNDLED_PREFIX):
        bundled = name[len(BUNDLED_PREFIX) :]
        choices = [n for n, e in BUNDLED_MODELS.items() if e.kind == "causal_lm"]
        if bundled not in choices:
            raise _unknown(source, "model.name", name, [BUNDLED_PREFIX + c for c in choices])
        return
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise ConfigError(f"{source}: model.name: directory {name!r} does not exist")


def _check_device(cfg: ExperimentConfig, source: str) -> None:
    import torch

    device = cfg.model.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{source}: model.device={device}: CUDA is not available on this machine; use model.device=cpu "
            "(or auto)"
        )


def _check_retriever(cfg: ExperimentConfig, source: str) -> None:
    section = cfg.retriever
    if section.kind in ("dense", "bm25", "hybrid") and section.index_dir:
        meta = Path(section.index_dir).expanduser() / "meta.json"
        if not meta.is_file():
            raise ConfigError(
                f"{source}: retriever.index_dir: {section.index_dir!r} is not an agentrl index (no "
                "meta.json); build one with `agentrl index build`"
            )
        _check_index_encoder(section.encoder, meta, source)
    if section.kind == "http" and not section.url:
        raise ConfigError(f"{source}: retriever.url is required with retriever.kind=http")


def _check_index_encoder(named: str | None, meta_path: Path, source: str) -> None:
    """A named `retriever.encoder` must be the one the index was built with (queries are encoded by it)."""
    import json

    if named is None:
        return
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: retriever.index_dir: cannot read {meta_path}: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("encoder") or {}, dict):
        raise ConfigError(
            f"{source}: retriever.index_dir: {meta_path} must hold a JSON object with an 'encoder' object; "
            "rebuild the index with `agentrl index build`"
        )
    encoder = (meta.get("encoder") or {}).get("model")
    if encoder is not None and encoder != named:
        raise ConfigError(
            f"{source}: retriever.encoder: {named!r} is named, but the index at {meta_path.parent} was built "
            f"with {encoder!r} (its meta.json); queries must be encoded with the index's encoder, so name "
            f"retriever.encoder={encoder} or leave retriever.encoder unset to use the index's own"
        )


def _check_eval(cfg: ExperimentConfig, source: str) -> None:
    from agentrl.evaluation.evaluator import EvalSettings

    if not cfg.eval.enabled:
        return
    try:
        EvalSettings.from_config(cfg).validate()
    except ValueError as exc:
        raise ConfigError(f"{source}: eval: {exc}") from None


def _check_batches(cfg: ExperimentConfig, recipe: Recipe, source: str) -> None:
    t, r = cfg.trainer, cfg.rollout
    if t.steps < 1 or t.batch_size < 1 or t.epochs < 1 or r.group_size < 1:
        raise ConfigError(
            f"{source}: trainer.steps, trainer.batch_size, trainer.epochs and rollout.group_size must be >= 1"
        )
    if t.batch_size % t.minibatches:
        episodes = t.batch_size * r.group_size
        raise ConfigError(
            f"{source}: trainer.batch_size x rollout.group_size = {t.batch_size} x {r.group_size} = "
            f"{episodes} episodes ({t.batch_size} groups) cannot be split into "
            f"trainer.minibatches={t.minibatches} minibatches of whole groups; make batch_size divisible by "
            "minibatches"
        )
    if t.micro_batch_tokens < r.max_total_tokens:
        raise ConfigError(
            f"{source}: trainer.micro_batch_tokens={t.micro_batch_tokens} cannot hold one episode of "
            f"rollout.max_total_tokens={r.max_total_tokens} tokens; raise micro_batch_tokens to at least "
            f"{r.max_total_tokens}"
        )
    if r.temperature <= 0:
        raise ConfigError(
            f"{source}: rollout.temperature={r.temperature}: greedy episodes carry no sampled log-probs, so "
            "RL has no behaviour policy to correct against; sample with temperature > 0 (top_p = 1 is "
            "recommended)"
        )
    if cfg.trainer.turn_credit == "per_turn" and recipe.loss.ratio in PER_SEQUENCE_RATIOS:
        raise ConfigError(
            f"{source}: trainer.turn_credit=per_turn gives per-token advantages, but preset "
            f"{recipe.preset.name!r} uses a sequence ratio that needs one advantage per episode"
        )
    _check_workers(cfg, source)
    if cfg.sft.enabled and cfg.sft.source == "trajectories" and not cfg.sft.path:
        raise ConfigError(f"{source}: sft.source=trajectories needs sft.path (a trajectories JSONL file)")
    for reason in t.exclude_finish_reasons:
        if reason not in FINISH_REASONS:
            raise _unknown(source, "trainer.exclude_finish_reasons", reason, list(FINISH_REASONS))


def _check_workers(cfg: ExperimentConfig, source: str) -> None:
    t, r = cfg.trainer, cfg.rollout
    if t.num_workers < 0:
        raise ConfigError(
            f"{source}: trainer.num_workers={t.num_workers}: use 0 (in-process) or N >= 1 Ray workers"
        )
    if t.num_workers and t.log_rank1:
        raise ConfigError(
            f"{source}: trainer.log_rank1 reads the output head in the trainer's process; it needs "
            "trainer.num_workers=0"
        )
    if r.backend == "vllm" and r.sampler_dtype is not None:
        raise ConfigError(
            f"{source}: rollout.sampler_dtype={r.sampler_dtype} sets the hf sampler's precision; with "
            "rollout.backend=vllm set rollout.vllm.dtype instead"
        )
    if r.backend == "vllm" and r.packed_weights:
        raise ConfigError(
            f"{source}: rollout.packed_weights=true packs the hf sampler's weights; rollout.backend=vllm "
            "has its own kernels (leave packed_weights unset)"
        )
    sampler_dtype = r.sampler_dtype or cfg.model.dtype
    if r.backend == "hf" and r.packed_weights and sampler_dtype in ("bfloat16", "float16"):
        raise ConfigError(
            f"{source}: rollout.packed_weights=true packs float32 weights, but the hf sampler computes in "
            f"{sampler_dtype} (model.dtype / rollout.sampler_dtype)"
        )
    if r.backend == "vllm" and t.num_workers and cfg.sft.enabled:
        raise ConfigError(
            f"{source}: sft.enabled with rollout.backend=vllm and trainer.num_workers={t.num_workers}: the "
            "SFT cold start trains in the `agentrl train` process; use trainer.num_workers=0 (one engine "
            "beside the in-process trainer), or run `agentrl sft` first and start RL from its checkpoint "
            "(model.name=<run dir>)"
        )
    v = r.vllm
    if (
        r.backend == "vllm"
        and t.num_workers
        and v.placement == "colocated"
        and (v.num_engines != t.num_workers or v.tensor_parallel_size != 1)
    ):
        raise ConfigError(
            f"{source}: rollout.vllm.placement=colocated puts one engine on each trainer GPU: set "
            f"rollout.vllm.num_engines={t.num_workers} (= trainer.num_workers) and "
            "rollout.vllm.tensor_parallel_size=1, or use placement=separate"
        )
    if v.num_engines < 1 or v.tensor_parallel_size < 1:
        raise ConfigError(
            f"{source}: rollout.vllm.num_engines and rollout.vllm.tensor_parallel_size must be >= 1"
        )
    if not 0.0 < v.gpu_memory_utilization < 1.0:
        raise ConfigError(
            f"{source}: rollout.vllm.gpu_memory_utilization={v.gpu_memory_utilization} must lie in (0, 1)"
        )
    if v.kv_cache_gib is not None and not v.kv_cache_gib > 0:
        raise ConfigError(f"{source}: rollout.vllm.kv_cache_gib={v.kv_cache_gib} must be > 0 (or null)")
    if v.cpu_reserved_cores is not None and v.cpu_reserved_cores < 0:
        raise ConfigError(
            f"{source}: rollout.vllm.cpu_reserved_cores={v.cpu_reserved_cores} must be >= 0 (or null)"
        )


FINISH_REASONS = ("answer", "max_turns", "max_tokens", "length", "eos", "error")
