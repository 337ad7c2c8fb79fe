"""Bundled SmolLM2 load time: first load (GGUF dequantized and cached) against the cached load.

Each load runs in a fresh Python process sharing one empty temporary cache, so the numbers do not depend on
what earlier runs left behind; library imports happen before the clock starts. Prints both times and the
speed-up of the cached load.

    python bench/bench_model_load.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

LOAD = (
    "import time, transformers, torch; from agentrl.core.models import load_model;"
    "t = time.perf_counter(); load_model({spec!r}, device='cpu');"
    "print(time.perf_counter() - t)"
)


def timed_load_in_subprocess(spec: str, cache: str) -> float:
    env = dict(os.environ, AGENTRL_CACHE_DIR=cache, TQDM_DISABLE="1")
    out = subprocess.run(
        [sys.executable, "-c", LOAD.format(spec=spec)], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=2, help="cached loads to time (the best is reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentrl-bench-cache-") as cache:
        first = timed_load_in_subprocess(args.spec, cache)
        cached = min(timed_load_in_subprocess(args.spec, cache) for _ in range(args.repeats))
    print(f"model load  {args.spec}")
    print(f"  first load (convert + cache): {first:8.2f} s")
    print(f"  cached load:                  {cached:8.2f} s")
    print(f"  speed-up:                     {first / cached:8.1f}x")


if __name__ == "__main__":
    main()
