"""The experiment config: one dataclass per YAML section of `configs/*.yaml`.

`configs/quickstart.yaml` is the CPU run on the embedded defaults; paper recipes live beside it. Every field
here is a YAML key; `agentrl config show CONFIG key.sub=value ...` prints the resolved result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelSection:
    """The policy. `name` is `bundled:smollm2-135m-instruct`, a local directory or a hub id."""

    name: str = "bundled:smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = "auto"


@dataclass
class DataSection:
    """Where tasks come from: a dataset loader by name, reading `path` (file or hub name) when given."""

    dataset: str = "synthetic"
    path: str | None = None
    split: str = "train"
    num_tasks: int = 8
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetrieverSection:
    """The search backend of search environments.

    kind: `memory` (BM25 over the task corpus or synthetic world, no files), `dense` / `bm25` / `hybrid`
    (an index directory built by `agentrl index build`), or `http` (a `agentrl serve-retriever` URL).
    """

    kind: Literal["memory", "dense", "bm25", "hybrid", "http"] = "memory"
    index_dir: str | None = None
    url: str | None = None
    topk: int = 3


@dataclass
class EnvSection:
    """The environment, by gymnasium id, with constructor keyword arguments."""

    id: str = "agentrl/SearchQA-v0"
    max_turns: int = 4
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutSection:
    """How episodes are sampled: group size, sampling, budgets, observation mode and executor.

    `max_new_tokens` is per turn; `end_on_length` ends an episode whose turn hits it (otherwise the env
    answers the cut-off turn and the episode goes on); `inline_format` wraps observations in inline mode.
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
    executor: Literal["local", "ray"] = "local"
    num_workers: int = 2
    ray_address: str | None = None
    batch_size: int = 32
    seed: int = 0


@dataclass
class AlgorithmSection:
    """The training recipe: a preset of `trainers.presets` (grpo, dapo, gspo, wapo, stapo, cw_grpo, fade,
    grpo_n, gspo_n); `scheme` swaps in another advantage scheme of `trainers.advantages.SCHEMES` and
    `scheme_params` sets its options (`alpha`, `delta`, `k`, ...)."""

    preset: str = "grpo"
    scheme: str | None = None
    scheme_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputSection:
    """Where runs write trajectories, metrics and checkpoints."""

    dir: str = "runs/quickstart"
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "agentrl"


@dataclass
class ExperimentConfig:
    """A whole run; each field is a top-level YAML section."""

    name: str = "quickstart"
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    env: EnvSection = field(default_factory=EnvSection)
    retriever: RetrieverSection = field(default_factory=RetrieverSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    output: OutputSection = field(default_factory=OutputSection)
