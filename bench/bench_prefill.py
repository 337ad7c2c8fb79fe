"""Prefill and decode of the HF generator: forward size (`prefill_tokens`) and sampler precision.

The bundled SmolLM2-135M-Instruct prefills 64 prompts of 150-330 tokens (no reuse: `prefix_cache_tokens=0`)
and samples one token each, with prefills run as one forward per 256-column chunk over all rows (the
baseline: `prefill_tokens` unbounded) and as forwards over groups of rows of at most `prefill_tokens`
rows x columns; then the same prompts sample `--new-tokens` tokens each in float32 and in bfloat16 (what
`rollout.sampler_dtype` picks). Prints prefill tokens/s, the ratio to the baseline, and the ratio to the
compute limit (2 x params FLOPs a token against the GEMM peak of the dtype measured here).

    python bench/bench_prefill.py                  # --threads 2
    python bench/bench_prefill.py --budgets 4096,1024 --dtypes bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import gemm_peak

from agentrl.core.cpu_features import NO_NATIVE_BF16, cpu_flags, native_bf16
from agentrl.core.generator import SamplingParams
from agentrl.core.models import load_model
from agentrl.generation.hf import HFGenerator

UNBOUNDED = 1 << 40


def prompts(rows: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(150, 330, (rows,), generator=g).tolist()
    return [torch.randint(100, 40000, (n,), generator=g).tolist() for n in lengths]


def timed(
    model: Any, tokenizer: Any, batch: list[list[int]], budget: int | None, new_tokens: int, repeats: int
) -> tuple[float, dict[str, int]]:
    """Median seconds of `repeats` calls, and the generator's stats of the last one."""
    runs: list[float] = []
    gen: HFGenerator | None = None
    for _ in range(repeats):
        gen = HFGenerator(
            model, tokenizer, max_batch_size=len(batch), prefix_cache_tokens=0, prefill_tokens=budget
        )
        start = time.perf_counter()
        gen.generate(batch, SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0))
        runs.append(time.perf_counter() - start)
    assert gen is not None
    return statistics.median(runs), gen.stats


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=64, help="prompts prefilled together")
    parser.add_argument("--budgets", default="8192,4096,2048,1024", help="prefill_tokens values to time")
    parser.add_argument(
        "--dtypes", default=None,
        help="comma-separated (default float32,bfloat16; float32 alone on a CPU that emulates bf16)",
    )  # fmt: skip
    parser.add_argument(
        "--new-tokens", type=int, default=32, help="tokens sampled per prompt in the decode run"
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = prompts(args.rows, seed=0)
    budgets = [int(b) for b in args.budgets.split(",")]
    decode: dict[str, float] = {}
    print(f"SmolLM2-135M, {args.rows} prompts of 150-330 tokens, {args.threads} thread(s)")
    dtypes = args.dtypes or "float32,bfloat16"
    if args.dtypes is None and native_bf16(cpu_flags()) is False:
        dtypes = "float32"
        print(f"bfloat16 skipped: this CPU emulates bf16 ({NO_NATIVE_BF16}); --dtypes float32,bfloat16 times "
              "it anyway")  # fmt: skip
    for dtype in dtypes.split(","):
        model, tokenizer = load_model("bundled:smollm2-135m-instruct", dtype=dtype, device="cpu")
        params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
        peak = gemm_peak(args.threads, dtype=dtype)
        base, stats = timed(model, tokenizer, batch, UNBOUNDED, 1, args.repeats)
        tokens = stats["prefill_tokens"]
        print(f"{dtype}: GEMM peak {peak / 1e9:.0f} GFLOP/s")
        rate = tokens / base
        print(
            f"  prefill, one forward per chunk over all rows: {rate:6.0f} tok/s "
            f"({2 * params * rate / peak:.2f} of peak)"
        )
        for budget in budgets:
            seconds, _ = timed(model, tokenizer, batch, budget, 1, args.repeats)
            rate = tokens / seconds
            print(
                f"  prefill_tokens={budget:<5}: {rate:6.0f} tok/s = {base / seconds:.2f}x the baseline "
                f"({2 * params * rate / peak:.2f} of peak)"
            )
        seconds, stats = timed(model, tokenizer, batch, None, args.new_tokens, 1)
        decode[dtype] = seconds
        print(
            f"  prefill + {args.new_tokens} sampled tokens a prompt (default prefill_tokens): {seconds:.1f} s"
        )
    if {"float32", "bfloat16"} <= decode.keys():
        print(f"bfloat16 sampler vs float32: {decode['float32'] / decode['bfloat16']:.2f}x faster")


if __name__ == "__main__":
    main()
