"""The policy worker: the one interface the training loop drives, and its in-process implementation.

    stats = worker.compute_stats(batch)            # no grad: log π, entropy, C(p) (+ reference log-probs)
    metrics = worker.forward_backward(minibatch)   # accumulate gradients over micro-batches
    metrics |= worker.optim_step()                 # clip, skip on NaN/inf, step AdamW (and the schedule)
    worker.advance_schedule()                      # once per training step (`OptimConfig.schedule_unit`)
    worker.sync_weights(generator)                 # the sampler sees the new weights
    worker.save(dir); worker.load(dir)             # weights or adapter, optimizer and schedule

Batches are plain tensors (`trainers.batching.PolicyBatch`) and every denominator arrives with the batch
(`LossNormalizer`), so the same calls work for a group of workers that each hold a shard of the minibatch.
`sync_weights` hands the worker to the generator's `update_policy` as its `PolicyWeights`
(`agentrl.core.generator`): `LocalPolicyWorker` runs in the caller's process, so a generator that shares its
module only drops its key/value cache.

Metrics come back as sums (`*_sum`, `tokens`), maxima (`*_max`) and minima (`*_min`) so shards and
micro-batches merge with `merge_metrics` before `finalize_metrics` turns them into means.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from agentrl.core.generator import Generator
from trainers.batching import PolicyBatch, pack_micro_batches
from trainers.filters import FilterInputs, taxonomy_masks
from trainers.forward import TokenWindow, policy_token_stats
from trainers.logprobs import Processing, TokenStats
from trainers.losses import LossConfig, policy_loss
from trainers.model_setup import trainable_parameters, trainable_weights_swapped
from trainers.optim import OptimConfig, build_optimizer, clip_and_check, set_learning_rate

Tensor = torch.Tensor
OPTIMIZER_FILE = "optimizer.pt"
TAXONOMY_CELLS = ("pos_peak", "pos_valley", "neg_peak", "neg_valley")
WEIGHTS_DIR = "model"
COMPUTE_DTYPES = ("float32", "bfloat16")


class PolicyWorker(Protocol):
    """What the training loop drives: `LocalPolicyWorker` or `trainers.ray_worker.RayWorkerGroup`.
    `steps` counts the optimizer steps taken (the policy version the generator is synced to)."""

    steps: int

    def compute_stats(self, batch: dict[str, Tensor], with_reference: bool = False) -> dict[str, Tensor]: ...

    def forward_backward(self, batch: PolicyBatch) -> dict[str, float]: ...

    def optim_step(self) -> dict[str, float]: ...

    def advance_schedule(self) -> None: ...

    def sync_weights(self, generator: Generator) -> None: ...

    def save(self, directory: str | Path) -> None: ...

    def load(self, directory: str | Path) -> None: ...

    def close(self) -> None: ...


@dataclass
class WorkerConfig:
    """What a worker needs besides the model.

    optim: optimizer and schedule of this training phase.
    loss: the policy loss (`PolicyBatch.kind == "policy"`).
    processing: the sampler's temperature / top-k / top-p, applied when recomputing log-probs.
    micro_batch_tokens: padded tokens per forward/backward.
    chunk_size: positions per chunk of the output-head statistics.
    share_prompts: run each distinct prompt of a micro-batch once (`trainers.forward`).
    compute_dtype: `float32` (the weights' own dtype) or `bfloat16` (forward and backward under bf16 autocast
        on the model's device; parameters, gradients and optimizer state keep their dtype).
    """

    optim: OptimConfig
    loss: LossConfig = field(default_factory=LossConfig)
    processing: Processing = field(default_factory=Processing)
    micro_batch_tokens: int = 8192
    chunk_size: int = 1024
    share_prompts: bool = True
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")


def merge_metrics(into: dict[str, float], other: dict[str, float]) -> dict[str, float]:
    """Combine metric dicts of shards or micro-batches: `_max` keys by max, `_min` by min, others summed."""
    for key, value in other.items():
        if key not in into:
            into[key] = value
        elif key.endswith("_max"):
            into[key] = max(into[key], value)
        elif key.endswith("_min"):
            into[key] = min(into[key], value)
        else:
            into[key] += value
    return into


def finalize_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Means over loss tokens under grouped names (`loss/...`, `ratio/...`, `kl/...`, `logprob_gap/...`)."""
    n = max(sums.get("tokens", 0.0), 1.0)
    out = {"loss/total": sums.get("loss", 0.0), "loss/tokens": sums.get("tokens", 0.0)}
    names = {
        "clip_low_sum": "loss/clip_frac_low",
        "clip_high_sum": "loss/clip_frac_high",
        "dual_sum": "loss/dual_clip_frac",
        "ratio_sum": "ratio/mean",
        "approx_kl_sum": "kl/old_new_k3",
        "ref_kl_sum": "kl/reference",
        "entropy_sum": "entropy/trained_tokens",
        "gap_sum": "logprob_gap/mean",
        "nll_sum": "sft/nll",
        "offpolicy_ratio_sum": "offpolicy/ratio_mean",
        "offpolicy_truncated_sum": "offpolicy/truncated_fraction",
        "offpolicy_masked_sum": "offpolicy/masked_fraction",
    }
    for key, name in names.items():
        if key in sums:
            out[name] = sums[key] / n
    for cell in TAXONOMY_CELLS:
        if f"taxonomy_{cell}_sum" in sums:
            out[f"taxonomy/{cell}"] = sums[f"taxonomy_{cell}_sum"] / n
    if "clip_low_sum" in sums:
        out["loss/clip_frac"] = (sums["clip_low_sum"] + sums["clip_high_sum"]) / n
    maxima = (("ratio_max", "ratio/max"), ("ratio_min", "ratio/min"), ("gap_max", "logprob_gap/max"),
              ("offpolicy_ratio_max", "offpolicy/ratio_max"))  # fmt: skip
    for key, name in maxima:
        if key in sums:
            out[name] = sums[key]
    out["loss/nonfinite_micro_batches"] = sums.get("nonfinite", 0.0)
    for key in ("rows_trained", "rows_skipped"):
        if key in sums:
            out[f"update/{key}"] = sums[key]
    return out


class LocalPolicyWorker:
    """A policy worker in the calling process.

    Args:
        model: the module to train, already prepared (`trainers.model_setup.prepare_for_training`).
        config: optimizer, loss, sampling processing and batching.
        reference: the KL penalty's reference policy: a frozen module, or a `trainable_snapshot` of `model`
            ({name: tensor} of its trainable parameters, e.g. taken after an SFT cold start; the frozen
            weights are shared). None with LoRA: the base model with adapters disabled.
    """

    def __init__(self, model: Any, config: WorkerConfig, reference: Any = None) -> None:
        self.model = model
        self.config = config
        self.reference = reference
        self.params = [p for _, p in trainable_parameters(model)]
        self.optimizer, self.scheduler = build_optimizer(self.params, config.optim)
        self.steps = 0
        self._nonfinite = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _stats(
        self, model: Any, ids: Tensor, attn: Tensor, mask: Tensor, prompt_lengths: Tensor | None
    ) -> tuple[TokenStats, TokenWindow]:
        c = self.config
        with self._autocast():
            return policy_token_stats(
                model, ids, attn, mask, prompt_lengths, c.processing, c.chunk_size, c.share_prompts
            )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.compute_dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _reference_context(self) -> Any:
        if isinstance(self.reference, dict):
            return self.model, trainable_weights_swapped(self.model, self.reference)
        disable = getattr(self.model, "disable_adapter", None)
        if self.reference is None and callable(disable):
            return self.model, disable()
        if self.reference is None:
            raise ValueError("a KL penalty needs a reference model (pass reference= for full fine-tuning)")
        return self.reference, contextlib.nullcontext()

    @torch.no_grad()
    def compute_stats(self, batch: dict[str, Tensor], with_reference: bool = False) -> dict[str, Tensor]:
        """Token-aligned [B, L] log π, entropy and C(p) of `batch["loss_mask"]` tokens under the current
        weights (and `ref_logprobs` under the reference policy), micro-batched, without gradient."""
        was_training = self.model.training
        self.model.eval()
        ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        plen = batch.get("prompt_lengths")
        out = {k: torch.zeros(ids.shape, dtype=torch.float32) for k in ("logprobs", "entropy", "collision")}
        if with_reference:
            out["ref_logprobs"] = torch.zeros(ids.shape, dtype=torch.float32)
        for rows in pack_micro_batches(attn.sum(-1), self.config.micro_batch_tokens):
            index = torch.tensor(rows)
            width = int(attn[index].sum(-1).max())
            args = [t[index, :width].to(self.device) for t in (ids, attn, mask)]
            rows_plen = None if plen is None else plen[index]
            stats, window = self._stats(self.model, *args, rows_plen)
            for key, value in (("logprobs", stats.logprobs), ("entropy", stats.entropy),
                               ("collision", stats.collision)):  # fmt: skip
                out[key][index, :width] = window.put(value.float(), width).cpu()
            if with_reference:
                ref_model, context = self._reference_context()
                with context:
                    ref, window = self._stats(ref_model, *args, rows_plen)
                out["ref_logprobs"][index, :width] = window.put(ref.logprobs.float(), width).cpu()
        self.model.train(was_training)
        return out

    def forward_backward(self, batch: PolicyBatch) -> dict[str, float]:
        """Accumulate the gradient of the minibatch loss (micro-batched). A micro-batch whose loss is not
        finite is not back-propagated and marks the step to be skipped by `optim_step`.

        Episodes whose advantages are all zero add exactly nothing to a policy loss without KL or entropy
        terms, so they are not run at all (`rows_skipped`); the parameters still get their (zero) gradient, so
        the optimizer step is the one the full batch would have given.
        """
        self.model.train()
        sums: dict[str, float] = {"rows_trained": 0.0, "rows_skipped": 0.0}
        active = signal_rows(batch, self.config.loss)
        sums["rows_skipped"] = float(batch.size - len(active))
        if not active:
            self._zero_grads()
            return sums
        batch = batch.select(active) if len(active) < batch.size else batch
        sums["rows_trained"] = float(batch.size)
        for index, rows in enumerate(pack_micro_batches(batch.lengths, self.config.micro_batch_tokens)):
            micro = batch.select(rows)
            metrics = self._micro_step(micro)
            if metrics.get("nonfinite"):
                metrics["nonfinite_first_min"] = float(index)
                self._nonfinite = True
            merge_metrics(sums, metrics)
        return sums

    def _micro_step(self, micro: PolicyBatch) -> dict[str, float]:
        dev = self.device
        ids, attn = micro.input_ids.to(dev), micro.attention_mask.to(dev)
        stats, window = self._stats(self.model, ids, attn, micro.loss_mask.to(dev), micro.prompt_lengths)

        def take(x: Tensor) -> Tensor:
            return window.take(x.to(dev))

        logp, m = stats.logprobs, take(micro.loss_mask)
        old = take(micro.old_logprobs)
        if micro.kind == "sft":
            weights = micro.normalizer.token_weights(m, micro.group_ids).to(logp.dtype)
            loss = -(weights * logp * m).sum()
            info: dict[str, Tensor] = {}
        else:
            adv = micro.advantages.to(dev)
            adv = take(adv) if adv.dim() == 2 else adv
            tw = None if micro.token_weights is None else take(micro.token_weights)
            ref = None if micro.ref_logprobs is None else take(micro.ref_logprobs)
            counted = None if micro.count_mask is None else take(micro.count_mask)
            behaviour, loss_old = None, old
            if self.config.loss.offpolicy != "none":
                if micro.behaviour_logprobs is not None:
                    behaviour = take(micro.behaviour_logprobs)
                else:
                    behaviour, loss_old = old, logp.detach()
            loss, info = policy_loss(
                self.config.loss, micro.normalizer, logp, loss_old, adv, m, group_ids=micro.group_ids.to(dev),
                token_weights=tw, ref_logp=ref, entropy=stats.entropy, count_mask=counted,
                behaviour_logp=behaviour,
            )  # fmt: skip
        metrics = _micro_metrics(logp.detach(), old, m, stats.entropy.detach(), info)
        if micro.kind == "sft":
            metrics["nll_sum"] = float(-(logp.detach()[m.bool()].double()).sum())
        else:
            inputs = FilterInputs(m, adv, logp.detach(), stats.entropy.detach(), stats.collision.detach())
            for name, cell in taxonomy_masks(inputs).items():
                if name in TAXONOMY_CELLS:
                    metrics[f"taxonomy_{name}_sum"] = float(cell.sum())
        if not torch.isfinite(loss):
            metrics["nonfinite"] = 1.0
            return metrics
        loss.backward()
        metrics["loss"] = float(loss.detach())
        return metrics

    def _zero_grads(self) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def optim_step(self) -> dict[str, float]:
        """Clip and apply the accumulated gradient; a NaN/inf loss or gradient skips the update instead."""
        norm, finite = clip_and_check(self.params, self.config.optim.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        skipped = self._nonfinite or not finite
        if not skipped:
            self.optimizer.step()
            if self.config.optim.schedule_unit == "optimizer_step":
                self.scheduler.step()
            self.steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self._nonfinite = False
        return {"optim/grad_norm": norm, "optim/lr": lr, "optim/skipped": float(skipped)}

    def advance_schedule(self) -> None:
        """One training step is over: a schedule counted in updates moves one step (with
        `schedule_unit="optimizer_step"` the optimizer steps have moved it already)."""
        if self.config.optim.schedule_unit == "update":
            self.scheduler.step()

    def sync_weights(self, generator: Generator) -> None:
        """Bring `generator` to this worker's weights at policy version `steps`."""
        self.model.eval()
        generator.update_policy(self, self.steps)

    def live_module(self) -> Any:
        """The trained module itself: it lives in this process."""
        return self.model

    def trainable_state(self) -> dict[str, Tensor]:
        """{name: CPU tensor} of the trainable parameters."""
        return {name: p.detach().to("cpu", copy=True) for name, p in trainable_parameters(self.model)}

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the LoRA adapter only (peft `save_pretrained`), for an engine that loads adapters by path."""
        self.model.save_pretrained(directory, safe_serialization=True)
        return Path(directory)

    def close(self) -> None:
        """Nothing outlives the worker in this process; present for the `PolicyWorker` interface."""

    def save(self, directory: str | Path) -> None:
        """Weights (full model or LoRA adapter, as safetensors loadable by transformers / peft) under
        `model/`, optimizer and schedule state in `optimizer.pt`."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(target / WEIGHTS_DIR, safe_serialization=True)
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "steps": self.steps}  # fmt: skip
        torch.save(state, target / OPTIMIZER_FILE)

    def load(self, directory: str | Path) -> None:
        """Restore what `save` wrote into this worker's model and optimizer. The learning rate is this
        worker's config's (a resumed run with another `trainer.learning_rate` trains with the new one), at
        the restored schedule position."""
        source = Path(directory)
        load_weights(self.model, source / WEIGHTS_DIR)
        state = torch.load(source / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_learning_rate(self.optimizer, self.scheduler, self.config.optim)
        self.steps = int(state["steps"])


def signal_rows(batch: PolicyBatch, loss: LossConfig) -> list[int]:
    """Rows whose loss can have a nonzero gradient: all rows for SFT or a loss with KL / entropy terms,
    otherwise the rows with a nonzero advantage on some loss token."""
    if batch.kind == "sft" or loss.kl_coef != 0 or loss.entropy_coef != 0:
        return list(range(batch.size))
    adv = batch.advantages
    live = adv != 0 if adv.dim() == 1 else ((adv != 0) & batch.loss_mask.bool()).any(dim=1)
    return live.nonzero().squeeze(1).tolist()


def load_weights(model: Any, directory: Path) -> None:
    """Load `save_pretrained` output (a full model or a peft adapter) into `model` in place."""
    from safetensors.torch import load_file

    adapter = directory / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(adapter))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{adapter}: unexpected adapter keys {unexpected[:5]}")
        return
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no safetensors weights")
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    really_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if really_missing or unexpected:
        raise ValueError(f"{directory}: missing {really_missing[:5]}, unexpected {unexpected[:5]}")


def _micro_metrics(
    logp: Tensor, old: Tensor, mask: Tensor, entropy: Tensor, info: dict[str, Tensor]
) -> dict[str, float]:
    m = mask.bool()
    n = int(m.sum())
    lp, ol = logp[m].double(), old[m].double()
    gap = (lp - ol).abs()
    finite_gap = gap[torch.isfinite(gap)]
    out = {
        "tokens": float(n),
        "entropy_sum": float(entropy[m].double().sum()),
        "gap_sum": float(finite_gap.sum()),
        "gap_max": float(finite_gap.max()) if finite_gap.numel() else 0.0,
        "outside_truncation": float((~torch.isfinite(lp)).sum()),
    }
    log_ratio = (lp - ol).clamp(-20, 20)
    out["approx_kl_sum"] = float((log_ratio.exp() - 1 - log_ratio).sum())
    if "ratio" in info:
        ratio = info["ratio"][m].double()
        out["ratio_sum"] = float(ratio.sum())
        out["ratio_max"] = float(ratio.max()) if n else 1.0
        out["ratio_min"] = float(ratio.min()) if n else 1.0
        out["clip_low_sum"] = float(info["clipped_low"][m].double().sum())
        out["clip_high_sum"] = float(info["clipped_high"][m].double().sum())
        if "dual_clipped" in info:
            out["dual_sum"] = float(info["dual_clipped"][m].double().sum())
    if "kl" in info:
        out["ref_kl_sum"] = float(info["kl"][m].double().sum())
    if "offpolicy_raw" in info:
        raw = info["offpolicy_raw"][m].double()
        out["offpolicy_ratio_sum"] = float(raw.sum())
        out["offpolicy_ratio_max"] = float(raw.max()) if n else 1.0
        out["offpolicy_truncated_sum"] = float(info["offpolicy_truncated"][m].double().sum())
        out["offpolicy_masked_sum"] = float(info["offpolicy_masked"][m].double().sum())
    if not math.isfinite(out["entropy_sum"]):
        out["entropy_sum"] = 0.0
    return out
