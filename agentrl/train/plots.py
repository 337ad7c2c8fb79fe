"""PNG plots of a training run's curves from its `metrics.jsonl` rows (matplotlib, the `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CURVES = (
    ("reward/mean", "reward (mean)"),
    ("eval/em", "held-out EM (greedy)"),
    ("episode/format_rate", "format rate"),
    ("entropy/mean", "token entropy"),
    ("episode/response_tokens", "response length (agent tokens)"),
    ("episode/searches", "searches per episode"),
)
EVAL_PREFIX = "eval/"
BEFORE_COLD_START = "before SFT"


def series(rows: list[dict[str, Any]], key: str, phase: str = "rl") -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the rows of `phase`; `eval/` keys read the evaluation rows from the
    policy RL starts from onwards (the base model before an SFT cold start is left out)."""
    if key.startswith(EVAL_PREFIX):
        phase = "eval"
    points = [
        (int(r["step"]), float(r[key])) for r in rows
        if r.get("phase", phase) == phase and key in r and r.get("eval/label") != BEFORE_COLD_START
    ]  # fmt: skip
    return [p[0] for p in points], [p[1] for p in points]


def plot_training(rows: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """One PNG per curve of `CURVES` that has data, plus `training.png` with all of them; returns the paths.

    Returns [] when matplotlib is not installed (`pip install agentrl[plot]`).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    available = [(k, title) for k, title in CURVES if series(rows, k)[0]]
    written: list[Path] = []
    for key, title in available:
        steps, values = series(rows, key)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(steps, values, marker="o", linewidth=1.5)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / (key.replace("/", "_") + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if available:
        cols = min(3, len(available))
        rows_n = (len(available) + cols - 1) // cols
        fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.0 * rows_n), squeeze=False)
        for ax, (key, title) in zip(axes.flat, available, strict=False):
            steps, values = series(rows, key)
            ax.plot(steps, values, marker="o", linewidth=1.5)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(available) :]:
            ax.axis("off")
        fig.tight_layout()
        path = out / "training.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
