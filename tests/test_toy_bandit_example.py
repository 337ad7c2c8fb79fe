"""Paper 002, Algorithm C.1 (the example script docs/examples/toy_bandit.py): the two-stage dynamic under
mean-centred advantages, none under negative-only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "examples" / "toy_bandit.py"
_spec = importlib.util.spec_from_file_location("toy_bandit", SCRIPT)
assert _spec is not None and _spec.loader is not None
toy_bandit = importlib.util.module_from_spec(_spec)
sys.modules["toy_bandit"] = toy_bandit  # dataclasses resolve their module by name
_spec.loader.exec_module(toy_bandit)
INIT_PROBS, advantages, simulate = toy_bandit.INIT_PROBS, toy_bandit.advantages, toy_bandit.simulate
expected_dynamics, summarize = toy_bandit.expected_dynamics, toy_bandit.summarize


def test_fast_advantages_match_registered_scheme() -> None:
    r = torch.rand(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for scheme in toy_bandit.SCHEMES:
        torch.testing.assert_close(toy_bandit._fast_advantages(r, scheme), advantages(r, scheme))


def test_mean_centered_expected_dynamic_is_two_stage() -> None:
    probs = expected_dynamics("mean_centered", steps=2000)
    s = summarize(probs)
    a1, a2 = probs[:, 0], probs[:, 1]
    peak = int(s["a1_peak_step"])
    assert 0 < peak < 2000
    assert s["a1_peak"] > INIT_PROBS[0] + 0.3  # stage 1: the explored good action is exploited
    assert a2[peak] < 0.15  # ... while the optimal action is barely touched
    assert s["a1_final"] < 0.1 and s["a2_final"] > 0.9  # stage 2: a2 takes over, a1 falls
    assert torch.all(a1[1 : peak + 1] >= a1[:peak] - 1e-12)
    assert torch.all(a1[peak + 1 :] <= a1[peak:-1] + 1e-12)


def test_mean_centered_sampled_runs_show_the_same_dynamic() -> None:
    run = simulate("mean_centered", steps=1500, runs=48, seed=0)
    s = summarize(run.mean)
    assert s["a1_peak"] > 0.7 and 100 < s["a1_peak_step"] < 1200
    assert s["a1_final"] < 0.35 and s["a2_final"] > 0.6


def test_negative_only_has_no_stage_switch() -> None:
    probs = expected_dynamics("negative_only", steps=2000)
    a1, a2 = probs[:, 0], probs[:, 1]
    assert torch.all(a1[1:] >= a1[:-1] - 1e-12)  # a1 only rises: no exploration stage
    assert float(a2[-1]) < INIT_PROBS[1]
    sampled = summarize(simulate("negative_only", steps=1500, runs=48, seed=1).mean)
    assert sampled["a1_final"] > 0.85 and sampled["a2_final"] < INIT_PROBS[1]


def test_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="mean_centered"):
        simulate("grpo", steps=1)


def test_script_saves_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bandit.png"
    toy_bandit.main(["--out", str(out), "--steps", "30", "--runs", "4"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "mean_centered" in printed and "negative_only" in printed
