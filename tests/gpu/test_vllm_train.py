"""Two real training steps with vLLM engines on a small model, with LoRA (adapter synced under a new name per
version) and with full weights (CUDA IPC into colocated engines): after each sync the engines' log-probs of a
fixed batch match the trainer's. Prints the gaps it measured."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentrl.core.config import load_config
from agentrl.core.generator import SamplingParams
from agentrl.experiment import ExperimentConfig
from agentrl.train.display import TrainDisplay
from agentrl.train.loop import Trainer

MODEL = "bundled:smollm2-135m-instruct"
FIXED_PROMPTS = ["Who wrote the Iliad?", "What is 17 times 3?", "Name a river in France.", "Define entropy."]
MAX_GAP = 0.02  # mean |log p_engine - log p_trainer| over sampled tokens, fp32 on both sides


def gpu_config(out: Path, mode: str) -> ExperimentConfig:
    return load_config(
        ExperimentConfig, None,
        [
            f"model.name={MODEL}", "model.dtype=float32", f"finetune.mode={mode}", "env.max_turns=2",
            "env.kwargs.world_entities=40", "retriever.kind=memory", "data.num_tasks=8",
            "rollout.backend=vllm", "rollout.group_size=4", "rollout.max_new_tokens=48",
            "rollout.max_total_tokens=1024", "rollout.vllm.num_engines=1", "rollout.vllm.placement=colocated",
            "rollout.vllm.gpu_memory_utilization=0.3", "rollout.vllm.enforce_eager=true",
            "trainer.num_workers=1", "trainer.steps=2", "trainer.batch_size=2", "trainer.learning_rate=1e-4",
            "trainer.micro_batch_tokens=4096", "sft.enabled=false", "eval.enabled=false",
            f"output.dir={out}", "output.plots=false",
        ],
    )  # fmt: skip


def fixed_batch_gap(trainer: Trainer) -> float:
    """Sample the fixed prompts on the engines (temperature 1, seeded) and compare each sampled token's
    log-prob with the trainer workers' recomputation."""
    tok = trainer.tokenizer
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
        for p in FIXED_PROMPTS
    ]
    with trainer.generator.awake():
        completions = trainer.generator.generate(prompts, SamplingParams(max_new_tokens=32, seed=0))
    rows = [list(p) + c.token_ids for p, c in zip(prompts, completions, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id or 0)
    attn = torch.zeros_like(ids)
    mask = torch.zeros(ids.shape)
    sampled = torch.zeros(ids.shape)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[i, : len(rows[i])] = torch.tensor(rows[i])
        attn[i, : len(rows[i])] = 1
        mask[i, len(p) : len(rows[i])] = 1
        sampled[i, len(p) : len(rows[i])] = torch.tensor(c.logprobs)
    stats = trainer.worker.compute_stats({"input_ids": ids, "attention_mask": attn, "loss_mask": mask})
    m = mask.bool()
    return float((stats["logprobs"][m] - sampled[m]).abs().mean())


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_two_steps_on_vllm_keep_sampler_and_trainer_together(mode: str, tmp_path: Path) -> None:
    trainer = Trainer(gpu_config(tmp_path, mode), display=TrainDisplay(live=False))
    trainer.build()
    try:
        gaps = [fixed_batch_gap(trainer)]
        for step in (1, 2):
            metrics = trainer.rl_step(step)
            assert metrics["episode/policy_version_min"] == step - 1
            assert trainer.generator.version == trainer.worker.steps
            gaps.append(fixed_batch_gap(trainer))
        print(f"\n{mode}: fixed-batch log-prob gap before training and after each sync: {gaps}")
        assert trainer.worker.steps == 2
        assert max(gaps) < MAX_GAP, gaps
    finally:
        trainer.close()
