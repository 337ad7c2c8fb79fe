"""Peak memory and time of chunked vs naive log-prob/entropy/C(p), forward + backward through the output head.

Each variant runs in its own fresh subprocess so its peak resident memory (VmHWM from /proc, or CUDA peak
memory when a GPU is present) is clean. Reported memory is the peak above the resident size once the inputs
exist, i.e. what the computation itself adds. Both variants compute log π(y), entropy and C(p) and
backpropagate through log π and the entropy.

    python bench/bench_chunked_logprobs.py                 # 8 x 1024 tokens, vocab 49152, hidden 576
    python bench/bench_chunked_logprobs.py --batch 2 --length 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _child(args: argparse.Namespace) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    import torch

    from trainers.logprobs import naive_token_stats, token_stats

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    hidden = torch.randn(args.batch, args.length, args.hidden, device=device) * 0.5
    weight = (torch.randn(args.vocab, args.hidden, device=device) * 0.05).requires_grad_()
    hidden.requires_grad_()
    targets = torch.randint(0, args.vocab, (args.batch, args.length), device=device)
    adv = torch.randn(args.batch, args.length, device=device)

    def step() -> None:
        if args.variant == "chunked":
            stats = token_stats(hidden, weight, targets, chunk_size=args.chunk_size)
        else:
            stats = naive_token_stats(hidden, weight, targets)
        loss = (stats.logprobs * adv).sum() + 1e-3 * stats.entropy.sum()
        loss.backward()
        hidden.grad = None
        weight.grad = None

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kib("VmRSS") * 1024
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss_kib("VmHWM") * 1024
    return {"peak_bytes": float(peak - base), "seconds": min(times), "device": device}


def _run_variant(args: argparse.Namespace, variant: str) -> dict[str, float]:
    cmd = [
        sys.executable, __file__, "--child", "--variant", variant,
        "--batch", str(args.batch), "--length", str(args.length), "--vocab", str(args.vocab),
        "--hidden", str(args.hidden), "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats),
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variant", choices=["chunked", "naive"], default="chunked")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    naive = _run_variant(args, "naive")
    chunked = _run_variant(args, "chunked")
    gib = 1024**3
    print(
        f"shape: batch={args.batch} length={args.length} vocab={args.vocab} hidden={args.hidden} "
        f"chunk={args.chunk_size} device={naive['device']} (forward+backward, best of {args.repeats} run(s))"
    )
    print(f"naive  : peak +{naive['peak_bytes'] / gib:6.2f} GiB  time {naive['seconds']:6.2f} s")
    print(f"chunked: peak +{chunked['peak_bytes'] / gib:6.2f} GiB  time {chunked['seconds']:6.2f} s")
    print(
        f"ratio chunked/naive: memory {chunked['peak_bytes'] / naive['peak_bytes']:.3f}x  "
        f"time {chunked['seconds'] / naive['seconds']:.3f}x"
    )


if __name__ == "__main__":
    main()
