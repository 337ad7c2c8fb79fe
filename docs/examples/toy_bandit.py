"""The 3-action softmax bandit of the two-stage paper (002, Algorithm C.1), under two advantage schemes.

Actions: a1 (explored, reward 0.5), a2 (unexplored, reward 1.0: the potentially optimal one) and a3 (explored,
reward 0). Each step samples G actions from π = softmax(z), computes advantages, and ascends the relative
policy gradient g = Σ_i Â_i (e_{a_i} - π) with z ← z + η·g/G (G = 2, η = 0.1).

* `mean_centered`: Â_i = r_i - mean(r) (`dr_grpo`). The paper's two-stage dynamic: π(a1) first rises
  (exploitation: a3 is the relative negative) and then falls while π(a2) rises (exploration: once a1
  saturates, a1 becomes the relative negative whenever a2 is sampled).
* `negative_only`: Â_i = min(r_i - mean(r), 0) (the -N variant). Mass removed from the relative negative is
  redistributed in proportion to the current probabilities, so there is no switch of stage within the horizon:
  π(a1) keeps rising and π(a2) does not take over.

Algorithm C.1 labels its step "Adam update" but writes the plain step z ← z + η·g/G; the plain step is used.

    python docs/examples/toy_bandit.py --out bandit.png
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass

import torch

from trainers.advantages import compute_advantages

Tensor = torch.Tensor

REWARDS = (0.5, 1.0, 0.0)
INIT_PROBS = (0.45, 0.05, 0.5)
SCHEMES = ("mean_centered", "negative_only")


@dataclass
class BanditRun:
    """Probabilities over training: `mean` [steps+1, 3] (mean over runs) and `runs` [steps+1, runs, 3]."""

    scheme: str
    mean: Tensor
    runs: Tensor


def advantages(rewards: Tensor, scheme: str) -> Tensor:
    """rewards [R, G] -> advantages [R, G], each row one group: `dr_grpo`, clamped at 0 for negative-only."""
    runs, g = rewards.shape
    group_ids = torch.arange(runs).repeat_interleave(g)
    adv = compute_advantages("dr_grpo", rewards.reshape(-1), group_ids).reshape(runs, g)
    return adv.clamp(max=0.0) if scheme == "negative_only" else adv


def _fast_advantages(rewards: Tensor, scheme: str) -> Tensor:
    """Same values as `advantages` for rows of equal size, without the general group machinery."""
    adv = rewards - rewards.mean(-1, keepdim=True)
    return adv.clamp(max=0.0) if scheme == "negative_only" else adv


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown bandit scheme {scheme!r}; valid: {', '.join(SCHEMES)}")


def simulate(
    scheme: str,
    *,
    steps: int = 3000,
    runs: int = 64,
    group_size: int = 2,
    eta: float = 0.1,
    rewards: tuple[float, ...] = REWARDS,
    init_probs: tuple[float, ...] = INIT_PROBS,
    seed: int = 0,
) -> BanditRun:
    """Algorithm C.1 with sampling, `runs` independent runs at once."""
    _check_scheme(scheme)
    gen = torch.Generator().manual_seed(seed)
    r = torch.tensor(rewards, dtype=torch.float64)
    k = r.numel()
    z = torch.log(torch.tensor(init_probs, dtype=torch.float64)).expand(runs, k).clone()
    history = [torch.softmax(z, -1)]
    for _ in range(steps):
        pi = history[-1]
        u = torch.rand(runs, group_size, generator=gen, dtype=torch.float64)
        actions = torch.searchsorted(pi.cumsum(-1), u).clamp(max=k - 1)
        adv = _fast_advantages(r[actions], scheme)
        onehot = torch.nn.functional.one_hot(actions, k).double()
        grad = (adv[..., None] * (onehot - pi[:, None, :])).sum(1)
        z = z + eta * grad / group_size
        history.append(torch.softmax(z, -1))
    traj = torch.stack(history)
    return BanditRun(scheme, traj.mean(1), traj)


def expected_dynamics(
    scheme: str,
    *,
    steps: int = 3000,
    group_size: int = 2,
    eta: float = 0.1,
    rewards: tuple[float, ...] = REWARDS,
    init_probs: tuple[float, ...] = INIT_PROBS,
) -> Tensor:
    """[steps+1, 3] probabilities under the expected update E[g] (exact enumeration of the G-tuples)."""
    _check_scheme(scheme)
    r = torch.tensor(rewards, dtype=torch.float64)
    k = r.numel()
    tuples = torch.tensor(list(itertools.product(range(k), repeat=group_size)))
    adv = advantages(r[tuples], scheme)
    onehot = torch.nn.functional.one_hot(tuples, k).double()
    z = torch.log(torch.tensor(init_probs, dtype=torch.float64))
    history = [torch.softmax(z, -1)]
    for _ in range(steps):
        pi = history[-1]
        weight = pi[tuples].prod(-1)
        grad = (adv[..., None] * (onehot - pi)).sum(1)
        z = z + eta * (weight[:, None] * grad).sum(0) / group_size
        history.append(torch.softmax(z, -1))
    return torch.stack(history)


def summarize(probs: Tensor) -> dict[str, float]:
    """Peak of π(a1), the step it happens, and the final π(a1), π(a2)."""
    peak_step = int(probs[:, 0].argmax())
    return {
        "a1_initial": float(probs[0, 0]),
        "a1_peak": float(probs[peak_step, 0]),
        "a1_peak_step": float(peak_step),
        "a1_final": float(probs[-1, 0]),
        "a2_final": float(probs[-1, 1]),
    }


def plot(results: dict[str, tuple[Tensor, Tensor]], out: str) -> None:
    """Save one panel per scheme: sampled mean (solid) and expected dynamics (dashed) of each action."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), sharey=True)
    labels = ("a1 (r=0.5, explored)", "a2 (r=1, unexplored)", "a3 (r=0, explored)")
    for ax, (scheme, (sampled, expected)) in zip(axes, results.items(), strict=True):
        for a, label in enumerate(labels):
            (line,) = ax.plot(sampled[:, a].numpy(), label=label)
            ax.plot(expected[:, a].numpy(), linestyle="--", color=line.get_color(), alpha=0.7)
        ax.set_title(scheme.replace("_", " "))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("π(a)")
    axes[0].legend(loc="center right", fontsize=8)
    fig.suptitle("3-action bandit, G=2, η=0.1 (solid: mean of sampled runs, dashed: expected update)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Two-stage dynamic of the 3-action bandit (paper 002, Alg. C.1)."
    )
    parser.add_argument("--out", default="toy_bandit.png", help="where to save the plot (PNG)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = {}
    for scheme in SCHEMES:
        sampled = simulate(scheme, steps=args.steps, runs=args.runs, seed=args.seed).mean
        expected = expected_dynamics(scheme, steps=args.steps)
        results[scheme] = (sampled, expected)
        s = summarize(sampled)
        print(
            f"{scheme:>14}: pi(a1) {s['a1_initial']:.2f} -> peak {s['a1_peak']:.3f} at step "
            f"{int(s['a1_peak_step'])} -> final {s['a1_final']:.3f}; final pi(a2) {s['a2_final']:.3f}"
        )
    plot(results, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
