"""Every shell command in README.md and docs/train.md runs.

`agentrl train / sft / quickstart` commands run as written with overrides appended that shrink them to
seconds (a tiny random model, one step, tiny synthetic worlds); `agentrl index build` runs on the first
records of the same corpus file; `make` lines name a Makefile target; everything else runs unchanged.
Commands of one file run in order in one scratch output directory, so a `--resume auto` continues the run
before it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentrl.cli.main import app
from tests.conftest import requires_minilm

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "docs" / "train.md"]
TRAINING = ("train", "sft", "quickstart")


def shell_commands(markdown: Path) -> list[str]:
    """The commands of the ```bash blocks of `markdown`, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def speed_overrides(model: Path, out: Path, args: list[str]) -> list[str]:
    extra = [
        f"model.name={model}", "model.device=cpu", "trainer.steps=1", "trainer.batch_size=1",
        "rollout.group_size=2", "rollout.max_new_tokens=40", "sft.steps=1", "sft.batch_size=2",
        "sft.data.num_tasks=2", "eval.data.num_tasks=2", f"output.dir={out}", "output.plots=false",
    ]  # fmt: skip
    if not any("quickstart_math" in a for a in args):
        extra.append("env.kwargs.world_entities=40")
    return extra


def small_corpus(args: list[str], tmp: Path) -> list[str]:
    """`--corpus F` replaced by the first 30 records of F."""
    i = args.index("--corpus") + 1
    source = REPO / args[i]
    head = tmp / source.name
    with source.open(encoding="utf-8") as f:
        head.write_text("".join(line for _, line in zip(range(30), f, strict=False)), encoding="utf-8")
    return [*args[:i], str(head), *args[i + 1 :]]


@requires_minilm
@pytest.mark.parametrize("markdown", DOCS, ids=lambda p: p.name)
def test_every_command_runs(markdown: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    model = tiny_model_dir
    monkeypatch.setenv("AGENTRL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AGENTRL_PROGRESS", "0")
    monkeypatch.chdir(REPO)
    makefile = (REPO / "Makefile").read_text()
    commands = shell_commands(markdown)
    assert commands, f"{markdown} has no bash commands"
    for command in commands:
        words = shlex.split(command)
        if words[0] == "make":
            assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), command
            continue
        assert words[0] == "agentrl", f"unexpected command {command!r}"
        args = words[1:]
        if args[0] in TRAINING:
            args = [*args, *speed_overrides(model, tmp_path / "runs", args)]
        if args[:2] == ["index", "build"]:
            args = small_corpus(args, tmp_path)
            out = args.index("--out") + 1
            args[out] = str(tmp_path / "indexes" / Path(args[out]).name)
        if args[:2] == ["index", "eval"]:
            args = [*args[:2], str(tmp_path / "indexes" / Path(args[2]).name), *args[3:], "--limit", "5"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"{command}\n{result.output}"
