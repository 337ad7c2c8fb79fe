"""Float64 per-group statistics over a flat batch with a group index.

Trajectories of one group need not be contiguous, groups may have different sizes, and group ids may be any
integers. Every statistic is computed with `index_add_` / `scatter_reduce_` / one stable sort, never with a
Python loop over groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class GroupIndex:
    """Dense group index for a flat batch of N trajectories.

    Attributes:
        inverse: [N] long, dense group number of each trajectory (0..num_groups-1).
        ids: [num_groups] the original group ids, in sorted order.
        size: [num_groups] float64, number of trajectories per group.
    """

    inverse: Tensor
    ids: Tensor
    size: Tensor

    @classmethod
    def from_ids(cls, group_ids: Tensor) -> GroupIndex:
        ids, inverse = torch.unique(group_ids, return_inverse=True)
        size = torch.zeros(ids.numel(), dtype=torch.float64).index_add_(
            0, inverse, torch.ones(inverse.numel(), dtype=torch.float64)
        )
        return cls(inverse=inverse, ids=ids, size=size)

    @property
    def num_groups(self) -> int:
        return int(self.ids.numel())

    def sum(self, x: Tensor) -> Tensor:
        """[N] -> [num_groups] per-group sum (float64)."""
        return torch.zeros(self.num_groups, dtype=torch.float64).index_add_(0, self.inverse, x.double())

    def mean(self, x: Tensor) -> Tensor:
        """[N] -> [num_groups] per-group mean."""
        return self.sum(x) / self.size

    def per_item(self, g: Tensor) -> Tensor:
        """[num_groups] -> [N] broadcast a group statistic back to its trajectories."""
        return g[self.inverse]

    def reduce(self, x: Tensor, op: str) -> Tensor:
        """[N] -> [num_groups] with op in {"amax", "amin"}."""
        init = float("-inf") if op == "amax" else float("inf")
        out = torch.full((self.num_groups,), init, dtype=torch.float64)
        return out.scatter_reduce_(0, self.inverse, x.double(), reduce=op, include_self=True)

    def std(self, x: Tensor, kind: str = "population") -> Tensor:
        """[N] -> [num_groups] standard deviation; kind "population" (1/G) or "sample" (1/(G-1)).

        Groups of one have sample std 0 (not NaN).
        """
        if kind not in ("population", "sample"):
            raise ValueError(f"std must be 'population' or 'sample', got {kind!r}")
        centered = x.double() - self.per_item(self.mean(x))
        ss = self.sum(centered * centered)
        denom = self.size if kind == "population" else (self.size - 1).clamp_min(1)
        return (ss / denom).sqrt()

    def constant(self, x: Tensor) -> Tensor:
        """[num_groups] bool: every value of the group is identical (includes groups of one)."""
        return self.reduce(x, "amax") == self.reduce(x, "amin")

    def sorted_within(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Values sorted inside each group.

        Returns:
            values: [N] float64, the batch reordered so each group is contiguous and ascending.
            start: [num_groups] long, offset of each group's first element in `values`.
        """
        xd = x.double()
        by_value = torch.sort(xd, stable=True).indices
        by_group = torch.sort(self.inverse[by_value], stable=True).indices
        order = by_value[by_group]
        counts = self.size.long()
        start = torch.cumsum(counts, 0) - counts
        return xd[order], start

    def quantile(self, x: Tensor, tau: float) -> Tensor:
        """[N] -> [num_groups] lower tau-quantile: the ceil(tau*G)-th smallest value (the minimum at tau=0).

        This is the inverse empirical CDF, inf{v : F(v) >= tau}; at tau=0.5 it is the lower median, so a
        binary group with p = 1/2 has median 0 (FADE App. 8.6: med(r) = 1[p > 1/2]).
        """
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        values, start = self.sorted_within(x)
        rank = torch.ceil(self.size * tau - 1e-9).long().sub(1).clamp(min=0)
        rank = torch.minimum(rank, self.size.long() - 1)
        return values[start + rank]
