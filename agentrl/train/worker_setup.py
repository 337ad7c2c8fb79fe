"""The worker config of each training phase, from the experiment config: one builder for RL and SFT."""

from __future__ import annotations

from agentrl.experiment import ExperimentConfig
from agentrl.train.recipe import Recipe
from trainers.logprobs import Processing
from trainers.losses import LossConfig
from trainers.optim import OptimConfig
from trainers.worker import WorkerConfig


def worker_config(cfg: ExperimentConfig, recipe: Recipe | None = None) -> WorkerConfig:
    """RL (`recipe` given): the recipe's learning rate, clip and loss, a schedule over the run's
    `trainer.steps` training steps (moved once per step, so it ends at the last step whatever number of
    optimizer steps each took) and the sampler's processing for recomputed log-probs.
    SFT (`recipe` None): the `sft` section's optimizer over `sft.steps`, the default loss and processing
    (its batches are of kind `sft`). Both take the `trainer` section's batching."""
    t, s, r = cfg.trainer, cfg.sft, cfg.rollout
    if recipe is None:
        optim = OptimConfig(
            learning_rate=s.learning_rate, total_steps=s.steps, warmup_ratio=s.warmup_ratio,
            max_grad_norm=s.max_grad_norm, weight_decay=t.weight_decay,
        )  # fmt: skip
        loss, processing = LossConfig(), Processing()
    else:
        optim = OptimConfig(
            learning_rate=recipe.learning_rate, total_steps=t.steps, warmup_ratio=t.warmup_ratio,
            schedule=t.lr_schedule, weight_decay=t.weight_decay, betas=list(t.adam_betas),
            max_grad_norm=recipe.max_grad_norm, schedule_unit="update",
        )  # fmt: skip
        loss, processing = recipe.loss, Processing(r.temperature, r.top_k, r.top_p)
    return WorkerConfig(
        optim=optim, loss=loss, processing=processing, micro_batch_tokens=t.micro_batch_tokens,
        chunk_size=t.logprob_chunk_size, share_prompts=t.share_prompts, compute_dtype=t.compute_dtype,
    )  # fmt: skip
