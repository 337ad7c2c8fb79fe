"""What one optimizer step sees: a `PolicyBatch` of plain padded tensors, split into minibatches of whole
groups and packed into micro-batches under a padded-token budget.

Tensors are token-aligned and right-padded: index i of a row is token i of the episode. `loss_mask[b, i]` is 1
when token i carries loss (a sampled agent token the filters kept); `old_logprobs[b, i]` is the log-prob of
token i under the policy that is being improved on (the sampler's, or the trainer's recomputation before the
update). Prompt, observation, template and padding tokens carry mask 0 and therefore no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from trainers.losses import LossNormalizer

Tensor = torch.Tensor
TOKEN_FIELDS = (
    "attention_mask", "loss_mask", "old_logprobs", "token_weights", "ref_logprobs", "count_mask",
    "behaviour_logprobs",
)  # fmt: skip


@dataclass
class PolicyBatch:
    """One minibatch for `PolicyWorker.forward_backward` (picklable: plain tensors and a normalizer).

    Attributes:
        input_ids: [B, L] long, right-padded episodes.
        attention_mask: [B, L] long, 1 on real tokens.
        loss_mask: [B, L] float, 1 on tokens carrying loss.
        old_logprobs: [B, L] float, log π_old of each token (0 off the loss mask).
        advantages: [B] per-episode or [B, L] per-token advantages (unused by `sft`).
        group_ids: [B] long.
        normalizer: the step-global denominators, built on the whole minibatch (`LossNormalizer.build`).
        token_weights: optional [B, L] multiplicative weights (covariance reweighting).
        ref_logprobs: optional [B, L] reference-policy log-probs (KL penalty).
        count_mask: optional [B, L] tokens each episode's length counts under `seq_mean_token_mean` after
            token filters (`FilterResult.count_mask`; default: `loss_mask`).
        prompt_lengths: optional [B] leading prompt tokens (episodes of one task share them, so the forward
            can run each prompt once).
        kind: `policy` (the configured RL loss) or `sft` (negative log-likelihood of the loss tokens).
        behaviour_logprobs: optional [B, L] sampler log-probs when `old_logprobs` were recomputed by the
            trainer and the loss corrects off-policy samples (`LossConfig.offpolicy`). Without them, a
            correcting loss takes the sampler's log-probs from `old_logprobs` and π_old from the forward
            itself (one optimizer step per batch: the weights are π_old's).
    """

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor
    old_logprobs: Tensor
    advantages: Tensor
    group_ids: Tensor
    normalizer: LossNormalizer
    token_weights: Tensor | None = None
    ref_logprobs: Tensor | None = None
    count_mask: Tensor | None = None
    prompt_lengths: Tensor | None = None
    kind: str = "policy"
    behaviour_logprobs: Tensor | None = None

    def __post_init__(self) -> None:
        b, length = self.input_ids.shape
        for name in TOKEN_FIELDS:
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b, length):
                raise ValueError(f"PolicyBatch.{name} has shape {tuple(value.shape)}, expected {(b, length)}")
        if self.advantages.shape[0] != b or self.group_ids.shape[0] != b:
            raise ValueError("PolicyBatch.advantages and group_ids need one row per episode")
        if self.kind not in ("policy", "sft"):
            raise ValueError(f"PolicyBatch.kind must be 'policy' or 'sft', got {self.kind!r}")

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> Tensor:
        """[B] unpadded lengths."""
        return self.attention_mask.sum(-1)

    def select(self, rows: list[int] | Tensor) -> PolicyBatch:
        """The sub-batch of `rows`, cut to its longest episode."""
        index = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.attention_mask.index_select(0, index).sum(-1).max()) if index.numel() else 0
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, Tensor):
                continue
            value = value.index_select(0, index)
            if value.dim() == 2:
                value = value[:, :width]
            changes[f.name] = value
        return replace(self, **changes)


def pack_micro_batches(lengths: list[int] | Tensor, token_budget: int) -> list[list[int]]:
    """Row indices per micro-batch: rows sorted longest first, packed while rows x longest <= token_budget.

    Sorting by length keeps padding small. Raises when one row alone exceeds the budget.
    """
    values = [int(x) for x in torch.as_tensor(lengths).tolist()]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if values[i] > token_budget:
            raise ValueError(
                f"an episode of {values[i]} tokens does not fit trainer.micro_batch_tokens={token_budget}; "
                f"raise micro_batch_tokens to at least rollout.max_total_tokens"
            )
        new_width = max(width, values[i])
        if current and new_width * (len(current) + 1) > token_budget:
            batches.append(current)
            current, new_width = [], values[i]
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return batches


def split_minibatches(group_ids: Tensor, num_minibatches: int, generator: torch.Generator) -> list[list[int]]:
    """Row indices of `num_minibatches` minibatches made of whole groups, groups shuffled by `generator`.

    Raises when the groups cannot be split evenly (the error names the numbers).
    """
    unique = torch.unique(group_ids)
    if num_minibatches < 1 or unique.numel() % num_minibatches:
        raise ValueError(
            f"{unique.numel()} groups cannot be split into trainer.minibatches={num_minibatches} equal "
            f"minibatches; choose trainer.batch_size divisible by trainer.minibatches"
        )
    order = unique[torch.randperm(unique.numel(), generator=generator)]
    per = unique.numel() // num_minibatches
    out = []
    for k in range(num_minibatches):
        chosen = order[k * per : (k + 1) * per]
        rows = torch.isin(group_ids, chosen).nonzero().squeeze(1)
        out.append(rows.tolist())
    return out
