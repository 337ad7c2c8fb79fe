"""One GRPO step (rollout + update) with agentrl and with TRL's GRPOTrainer, in one run, on the same model.

Setting: single-turn math (the Math-v0 arithmetic problems with WAPO's format instruction), the bundled
SmolLM2-135M-Instruct, 2 prompts x 4 generations x at most 48 new tokens, full fine-tuning, GRPO (no KL, one
optimizer step per batch), fp32 on the CPU (`--dtype bfloat16`: agentrl samples from a bf16 copy and trains
under bf16 autocast, TRL runs with `bf16=True`). Both run warm-up steps first; the reported time is the mean
of the timed steps. TRL computes the loss of every row, so agentrl's timed steps train every row too: each
group's rewards are spread (0, 1, 0, 1) before the update (`--skip-rows-without-signal` times agentrl's own
rule, which skips rows whose advantage is zero). `--backend vllm` samples agentrl's episodes with vLLM's CPU
engine.

Then, on one batch where every row trains: agentrl's update alone (chunked log-probs, global denominators)
against a naive update that materialises the full logits; the update in fp32 and under bf16 autocast
(`trainer.compute_dtype`), with the log-prob gap between the two (what a bf16 sampler and an fp32 trainer, or
the reverse, disagree by); and each update's FLOP/s (6 x params x tokens) against the GEMM peak of its dtype
measured here. TRL runs without gradient checkpointing (its default trades compute for memory a 135M model
does not need). TRL runs first, on the C library's malloc; agentrl then keeps the memory torch frees
(`retain_freed_memory`, process-wide), or not with `--system-malloc`.

    pip install -e ".[bench]"            # TRL
    python bench/bench_train_step.py     # --threads 2 --steps 3
    python bench/bench_train_step.py --threads 2 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from agentrl.core.cpu_features import NO_NATIVE_BF16, cpu_flags, gemm_flops, native_bf16  # noqa: E402

PROMPTS = 2
GENERATIONS = 4
NEW_TOKENS = 48


def gemm_peak(threads: int, size: int = 1024, repeats: int = 8, dtype: str = "float32") -> float:
    """FLOP/s of a square matmul in `dtype` with `threads` torch threads (the best of `repeats`)."""
    import torch

    torch.set_num_threads(threads)
    return gemm_flops(dtype, size=size, repeats=repeats)


def agentrl_trainer(  # type: ignore[no-untyped-def]
    threads: int, steps: int, out: Path, backend: str = "hf", dtype: str = "float32", retain: bool = True
):
    from agentrl.core.config import load_config
    from agentrl.experiment import ExperimentConfig
    from agentrl.train.display import TrainDisplay
    from agentrl.train.loop import Trainer

    overrides = [
        "model.name=bundled:smollm2-135m-instruct", "model.device=cpu", f"threads={threads}",
        "env.id=agentrl/Math-v0", "env.max_turns=1", "data.dataset=env", "data.num_tasks=64",
        f"rollout.group_size={GENERATIONS}", f"rollout.max_new_tokens={NEW_TOKENS}",
        "rollout.max_total_tokens=256", f"trainer.batch_size={PROMPTS}", f"trainer.steps={steps}",
        "trainer.learning_rate=1e-6",
        "finetune.mode=full", "finetune.train_layers=all", "algorithm.preset=grpo", "eval.enabled=false",
        "sft.enabled=false", f"output.dir={out}", "output.plots=false", "output.save_trajectories=false",
        f"rollout.backend={backend}", f"trainer.compute_dtype={dtype}",
        f"retain_freed_memory={str(retain).lower()}",
    ]  # fmt: skip
    if dtype != "float32" and backend == "hf":
        overrides.append(f"rollout.sampler_dtype={dtype}")
    trainer = Trainer(load_config(ExperimentConfig, None, overrides), display=TrainDisplay(live=False))
    trainer.build()
    return trainer


def spread_rewards(episodes) -> None:  # type: ignore[no-untyped-def]
    """Rewards 0, 1, 0, 1, ... within each group, so every episode has a nonzero GRPO advantage."""
    seen: dict[int, int] = {}
    for t in episodes:
        seen[t.group_id] = seen.get(t.group_id, -1) + 1
        t.reward = float(seen[t.group_id] % 2)
        if t.turn_rewards:
            t.turn_rewards[-1] = t.reward


def train_every_row(trainer) -> None:  # type: ignore[no-untyped-def]
    """Make every sampled group of `trainer` carry a signal before its update (as TRL trains every row)."""
    sample = trainer.sampler.sample

    def sample_with_signal(*args, **kwargs):  # type: ignore[no-untyped-def]
        sampled = sample(*args, **kwargs)
        spread_rewards(sampled.trajectories)
        return sampled

    trainer.sampler.sample = sample_with_signal


def time_agentrl(  # type: ignore[no-untyped-def]
    trainer, steps: int, warmup: int
) -> tuple[list[float], list[float], float]:
    """(step seconds, update seconds, share of episodes with a nonzero advantage) of the timed steps."""
    step_s, update_s, signal = [], [], []
    for step in range(1, warmup + steps + 1):
        start = time.perf_counter()
        metrics = trainer.rl_step(step)
        if step > warmup:
            step_s.append(time.perf_counter() - start)
            update_s.append(metrics["perf/update_s"])
            signal.append(metrics.get("adv/nonzero_fraction", 0.0))
    return step_s, update_s, statistics.mean(signal)


def time_trl(threads: int, steps: int, warmup: int, out: Path, bf16: bool = False) -> list[float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agentrl.core.models import resolve_model_path
    from environments.math_answers import MATH_INSTRUCTION, math_equal, parse_math_response
    from environments.math_env import arithmetic_task

    torch.set_num_threads(threads)
    path = resolve_model_path("bundled:smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rng = __import__("numpy").random.default_rng(0)
    tasks = [arithmetic_task(rng) for _ in range(64)]
    rows = [
        {"prompt": [{"role": "user", "content": f"{t.question}\n\n{MATH_INSTRUCTION}"}], "answer": a}
        for t in tasks
        for a in t.answers[:1]
    ]
    data = Dataset.from_list(rows)

    def reward(completions, answer, **_):  # type: ignore[no-untyped-def]
        out = []
        for completion, gold in zip(completions, answer, strict=True):
            text = completion[0]["content"] if isinstance(completion, list) else completion
            parsed = parse_math_response(text)
            out.append(float(parsed.format_ok and math_equal(parsed.answer, gold, "math")))
        return out

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            times.append(time.perf_counter() - self.start)

    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=PROMPTS * GENERATIONS, num_generations=GENERATIONS,
        max_completion_length=NEW_TOKENS, max_steps=warmup + steps, learning_rate=1e-6, beta=0.0,
        num_iterations=1, temperature=1.0, top_p=1.0, use_cpu=True, bf16=bf16, report_to=[],
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, gradient_checkpointing=False,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=config, train_dataset=data, processing_class=tokenizer,
        callbacks=[Clock()],
    )  # fmt: skip
    trainer.train()
    return times[warmup:]


def update_timings(trainer, repeats: int, with_bf16: bool = True) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """On one sampled batch: agentrl's update seconds in fp32 (`fp32`) and, `with_bf16`, under bf16 autocast
    (`bf16`), the naive full-logits update (`naive`), the FLOPs of one forward + backward (`flops`) and the
    fp32-vs-bf16 log-prob gap over its agent tokens (`gap_mean`, `gap_max`).

    FLOPs follow the 6 x params x tokens convention over the weights that multiply activations: every
    parameter but the input embedding (a lookup, not a GEMM), the output head's vocab x hidden included
    (the naive update computes logits at every position); tokens are the batch's non-padding positions.
    """
    from agentrl.train.step_batch import policy_minibatch, step_tensors
    from trainers.losses import policy_loss

    sampled = trainer.sampler.sample(999, 0)
    preset = trainer.recipe.preset
    episodes = sampled.trajectories
    spread_rewards(episodes)  # every row runs in both updates
    st = step_tensors(episodes, preset, trainer.tokenizer.pad_token_id or 0)
    batch, _ = policy_minibatch(st, list(range(st.size)), preset, st.tensors["old_logprobs"], None)
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    configured = trainer.worker.config.compute_dtype

    def under(dtype: str) -> None:
        trainer.worker.config.compute_dtype = dtype
        try:
            trainer.worker.forward_backward(batch)
            trainer.worker.optimizer.zero_grad(set_to_none=True)
        finally:
            trainer.worker.config.compute_dtype = configured

    def ours() -> None:
        under("float32")

    def naive() -> None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
        logp = logits.log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        mask = batch.loss_mask[:, 1:]
        loss, _ = policy_loss(
            preset.loss, batch.normalizer, logp, batch.old_logprobs[:, 1:], batch.advantages, mask,
            group_ids=batch.group_ids,
        )  # fmt: skip
        loss.backward()
        for p in params:
            p.grad = None

    def ours_bf16() -> None:
        under("bfloat16")

    timings = {}
    timed = [("ours", ours), ("naive", naive)] + ([("ours_bf16", ours_bf16)] if with_bf16 else [])
    for name, fn in timed:
        fn()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        timings[name] = statistics.median(runs)
    tokens = int(batch.attention_mask.sum())
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters() if p is not embedding and p is not head)
    flops = 6 * (body + head.numel()) * tokens
    if not with_bf16:
        return {"fp32": timings["ours"], "naive": timings["naive"], "flops": float(flops)}
    keys = ("input_ids", "attention_mask", "loss_mask", "prompt_lengths")
    logprobs = {}
    for dtype in ("float32", "bfloat16"):
        trainer.worker.config.compute_dtype = dtype
        logprobs[dtype] = trainer.worker.compute_stats({k: st.tensors[k] for k in keys})["logprobs"]
    trainer.worker.config.compute_dtype = configured
    mask = st.tensors["loss_mask"].bool()
    gap = (logprobs["float32"] - logprobs["bfloat16"])[mask].abs()
    return {
        "fp32": timings["ours"], "naive": timings["naive"], "bf16": timings["ours_bf16"],
        "flops": float(flops), "gap_mean": float(gap.mean()), "gap_max": float(gap.max()),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per framework (after warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-trl", action="store_true", help="time agentrl only")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="agentrl's rollout backend")
    parser.add_argument(
        "--skip-rows-without-signal", action="store_true",
        help="time agentrl's own rule (rows with a zero advantage are not run) instead of training every row",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32",
        help="bfloat16: agentrl samples from a bf16 copy (rollout.sampler_dtype) and trains under bf16 "
        "autocast (trainer.compute_dtype), TRL runs with bf16=True; the update-alone lines time both dtypes",
    )  # fmt: skip
    parser.add_argument(
        "--system-malloc", action="store_true",
        help="agentrl with retain_freed_memory=false: the C library's malloc, as TRL runs (TRL runs first)",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trl_step: list[float] = []
        if not args.skip_trl:  # first: agentrl's `retain_freed_memory` changes malloc for the whole process
            try:
                trl_step = time_trl(
                    args.threads, args.steps, args.warmup, Path(tmp) / "trl", args.dtype == "bfloat16"
                )
            except ImportError:
                print("TRL is not installed (pip install -e '.[bench]'); timing agentrl only")
        steps = args.warmup + args.steps + 1
        trainer = agentrl_trainer(
            args.threads, steps, Path(tmp) / "agentrl", args.backend, args.dtype, not args.system_malloc
        )
        if not args.skip_rows_without_signal:
            train_every_row(trainer)
        ours_step, ours_update, signal = time_agentrl(trainer, args.steps, args.warmup)
        emulated = native_bf16(cpu_flags()) is False
        timings = update_timings(trainer, repeats=3, with_bf16=args.dtype == "bfloat16" or not emulated)
        update, naive, flops = timings["fp32"], timings["naive"], timings["flops"]
        trainer.close()
    ours = statistics.mean(ours_step)
    malloc = "on it too (--system-malloc)" if args.system_malloc else "keeping freed memory"
    print(
        f"setting: SmolLM2-135M, {PROMPTS} prompts x {GENERATIONS} generations x <= {NEW_TOKENS} new tokens, "
        f"GRPO, full fine-tune, {args.dtype}, {args.threads} thread(s), agentrl rollout backend "
        f"{args.backend}, mean of {args.steps} steps; TRL on the C library's malloc, agentrl {malloc}"
    )
    rows = "rows without signal skipped" if args.skip_rows_without_signal else "every row trained"
    print(
        f"agentrl step  {ours:7.2f} s (update {statistics.mean(ours_update):.2f} s; {rows}: {signal:.0%} of "
        "episodes had a nonzero advantage)"
    )
    if trl_step:
        theirs = statistics.mean(trl_step)
        print(
            f"TRL GRPOTrainer step {theirs:7.2f} s   ratio agentrl/TRL = {ours / theirs:.2f}x (goal <= 0.35x)"
        )
    peak32 = gemm_peak(args.threads)
    print(
        f"update alone: agentrl {update:.2f} s vs naive full-logits {naive:.2f} s = {update / naive:.2f}x; "
        f"agentrl at {flops / update / 1e9:.1f} GFLOP/s = {flops / update / peak32:.2f} of the fp32 GEMM "
        f"peak ({peak32 / 1e9:.1f} GFLOP/s), naive at {flops / naive / peak32:.2f}"
    )
    if "bf16" not in timings:
        print(f"update under bf16 autocast skipped: this CPU emulates bf16 ({NO_NATIVE_BF16}); --dtype "
              "bfloat16 times it anyway")  # fmt: skip
        return
    peak16 = gemm_peak(args.threads, dtype="bfloat16")
    bf16 = timings["bf16"]
    print(
        f"update fp32 {update:.2f} s vs bf16 autocast {bf16:.2f} s = {bf16 / update:.2f}x; bf16 at "
        f"{flops / bf16 / 1e9:.1f} GFLOP/s = {flops / bf16 / peak16:.2f} of the bf16 GEMM peak "
        f"({peak16 / 1e9:.1f} GFLOP/s = {peak16 / peak32:.2f}x fp32's); fp32-vs-bf16 log-prob gap over agent "
        f"tokens: mean {timings['gap_mean']:.2e}, max {timings['gap_max']:.2e}"
    )


if __name__ == "__main__":
    main()
