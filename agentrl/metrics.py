"""Metrics writer (always JSONL, optionally TensorBoard and Weights & Biases) and the pass@k estimator.

    with MetricsWriter("runs/x", tensorboard=True) as writer:
        writer.log({"reward/mean": 0.4, "loss": 1.2}, step=3)

Each `log` call appends one line `{"step": 3, "time": ..., "reward/mean": 0.4, ...}` to `metrics.jsonl` and
flushes it, so a crashed run keeps every step it logged.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Append scalar metrics to `<out_dir>/metrics.jsonl` and mirror them to optional backends.

    Args:
        out_dir: run directory (created if missing).
        tensorboard: also write TensorBoard event files under `<out_dir>/tb` (needs `tensorboard`).
        wandb_project: also log to this W&B project (needs `wandb`; offline mode works without network).
        config: run config recorded by the W&B backend.
        wandb_id: continue this W&B run (a resumed training run keeps its curves); see `wandb_run_id`.
    """

    def __init__(
        self,
        out_dir: str | Path,
        tensorboard: bool = False,
        wandb_project: str | None = None,
        config: dict[str, Any] | None = None,
        filename: str = "metrics.jsonl",
        wandb_id: str | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / filename
        self._file = self.path.open("a", encoding="utf-8")
        self._tb: Any = None
        self._wandb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError("tensorboard logging needs `pip install tensorboard`") from exc
            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tb"))
        if wandb_project:
            try:
                import wandb
            except ImportError as exc:
                raise RuntimeError("W&B logging needs `pip install wandb`") from exc
            self._wandb = wandb.init(
                project=wandb_project, dir=str(self.out_dir), config=config or {}, id=wandb_id, resume="allow"
            )

    @property
    def wandb_run_id(self) -> str | None:
        return None if self._wandb is None else str(self._wandb.id)

    def log(self, metrics: dict[str, Any], step: int, global_step: int | None = None) -> None:
        """Record `metrics` (scalars; tensors and numpy scalars are converted) at `step`.

        `global_step` (default `step`) is the x-axis of TensorBoard and W&B, which need one increasing step
        across phases (SFT steps, then RL steps); the JSONL row keeps both.
        """
        row: dict[str, Any] = {"step": step, "time": time.time()}
        if global_step is not None:
            row["global_step"] = global_step
        axis = step if global_step is None else global_step
        row.update({k: _scalar(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row, allow_nan=True) + "\n")
        self._file.flush()
        skip = ("step", "time", "global_step")
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in skip}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, axis)
        if self._wandb is not None:
            self._wandb.log(numeric, step=axis)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics JSONL file, in order."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _scalar(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct: 1 - C(n-c, k) / C(n, k).

    The probability that a random k-subset of the n samples holds at least one correct one (Chen et al.,
    2021). Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials, so it stays
    exact to float precision for any n.
    """
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass@k needs n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n = {n} samples per question")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss
