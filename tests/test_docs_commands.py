"""Every shell command in README.md and docs/*.md runs, unless its block is marked not runnable.

A ```bash block preceded by `<!-- not runnable: REASON -->` (it needs a GPU, the Hugging Face hub, a server
left running, ...) is skipped with its reason; every other block runs. `agentrl train / sft / quickstart`
commands run as written with overrides appended that shrink them to seconds (a tiny random model, one step,
tiny synthetic worlds); `agentrl eval` likewise (the tiny model for the bundled one, two questions, short
turns); `agentrl index build` runs on the first records of the same corpus file; paths under `runs/`,
`indexes/` and the plots scripts write go to a scratch directory; `make` lines name a Makefile target;
`python SCRIPT.py` calls the script's `main`. Commands of one file run in order, so a `--resume auto`
continues the run before it and an `agentrl eval` reads the checkpoint the `agentrl train` above it saved.

The docs name real data files by local paths under `data/` (how to fetch them: docs/environments.md, "Data
files"). `DOC_DATA` maps each onto a sample of the same dataset and format in `../shared/data`, next to the
repository where CI has it. Without those samples a block naming such a file is skipped, and so is a later
block that reads a `runs/` or `indexes/` path a skipped block writes; the file's other blocks still run, and
the test then reports the skipped blocks with the file each one lacks.
"""

from __future__ import annotations

import re
import runpy
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentrl.cli.main import app
from tests.conftest import SHARED_DATA, requires_minilm

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TRAINING = ("train", "sft", "quickstart")
SCRATCH_PREFIXES = ("runs/", "indexes/")
NOT_RUNNABLE = re.compile(r"<!--\s*not runnable:\s*(.*?)\s*-->\s*$")
BUNDLED_POLICY = "bundled:smollm2-135m-instruct"
DOC_DATA = {
    "data/hotpotqa/hotpot_dev_distractor.jsonl": "hotpotqa/hotpotqa_dev_distractor.public.jsonl",
    "data/hotpotqa/hotpot_train_sample.jsonl": "hotpotqa/hotpotqa_train_sample.public.jsonl",
    "data/2wikimultihopqa/dev.json": "2wikimultihopqa/2wikimultihopqa_dev.public.jsonl",
    "data/math500/math500_test.jsonl": "math500/math500_test.public.jsonl",
    "data/aime/aime_2024.jsonl": "aime/aime2024.public.jsonl",
}


@dataclass
class Block:
    """One ```bash block: its commands (continuation lines joined, comments dropped) and, when marked, why
    it does not run here."""

    markdown: Path
    line: int
    commands: list[str]
    skip_reason: str | None


def bash_blocks(markdown: Path) -> list[Block]:
    lines = markdown.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUNNABLE.search(previous)
        blocks.append(Block(markdown, start + 1, shell_commands("\n".join(body)), marker and marker.group(1)))
        i += 1
    return blocks


def shell_commands(block: str) -> list[str]:
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(" ".join(line.split()))
    return commands


def split_value(value: str) -> tuple[str, str]:
    """(`key=`, path) of a `key=path` argument; ("", value) otherwise."""
    key, eq, path = value.rpartition("=") if "=" in value else ("", "", value)
    return key + eq, path


def doc_data(value: str) -> str | None:
    """The docs' data path an argument names (also as `key=data/...`), or None."""
    path = split_value(value)[1]
    return path if path.startswith("data/") else None


def with_sample(value: str) -> str:
    """A docs' data path replaced by its sample file under ../shared/data."""
    key, path = split_value(value)
    return f"{key}{SHARED_DATA / DOC_DATA[path]}" if path in DOC_DATA else value


def scratch_paths(block: Block) -> set[str]:
    words = [split_value(w)[1] for command in block.commands for w in shlex.split(command)]
    return {w.rstrip("/") for w in words if w.startswith(SCRATCH_PREFIXES)}


def why_absent(block: Block, unwritten: dict[str, int]) -> str | None:
    """Why `block` cannot run here: a sample it needs is missing, or it reads what a skipped block writes."""
    named = [doc_data(w) for command in block.commands for w in shlex.split(command)]
    missing = [p for p in dict.fromkeys(named) if p in DOC_DATA and not (SHARED_DATA / DOC_DATA[p]).exists()]
    if missing:
        samples = ", ".join(str(SHARED_DATA / DOC_DATA[p]) for p in missing)
        return f"needs {', '.join(missing)}, and no sample is at {samples}"
    stale = sorted(scratch_paths(block) & unwritten.keys())
    if stale:
        return f"reads {stale[0]}, which the skipped block at line {unwritten[stale[0]]} writes"
    return None


def in_scratch(value: str, tmp: Path) -> str:
    """`runs/...` and `indexes/...` (also as `key=runs/...`) moved under the scratch directory."""
    key, path = split_value(value)
    return f"{key}{tmp / path}" if path.startswith(SCRATCH_PREFIXES) else value


def speed_overrides(model: Path, out: Path, args: list[str]) -> list[str]:
    named = next((a.split("=", 1)[1] for a in args if a.startswith("output.dir=")), None)
    extra = [
        f"model.name={model}", "model.device=cpu", "trainer.steps=1", "trainer.batch_size=1",
        "rollout.group_size=2", "rollout.max_new_tokens=40", "sft.steps=1", "sft.batch_size=2",
        "sft.data.num_tasks=2", "eval.data.num_tasks=2", f"output.dir={named or out}", "output.plots=false",
    ]  # fmt: skip
    if not any("quickstart_math" in a for a in args):
        extra.append("env.kwargs.world_entities=40")
    return extra


def eval_overrides(args: list[str], model: Path) -> list[str]:
    """The bundled policy replaced by the tiny model; two questions, short turns."""
    args = [str(model) if a == BUNDLED_POLICY else a for a in args]
    extra = ["--num-questions", "2", "model.device=cpu", "rollout.max_new_tokens=16", "threads=1"]
    if not any("quickstart_math" in a for a in args):
        extra.append("env.kwargs.world_entities=40")
    return [*args, *extra]


def small_corpus(args: list[str], tmp: Path) -> list[str]:
    """`--corpus F` replaced by the first 30 records of F."""
    i = args.index("--corpus") + 1
    source = REPO / args[i]
    head = tmp / source.name
    with source.open(encoding="utf-8") as f:
        head.write_text("".join(line for _, line in zip(range(30), f, strict=False)), encoding="utf-8")
    return [*args[:i], str(head), *args[i + 1 :]]


def run_command(command: str, model: Path, tmp: Path, makefile: str) -> None:
    words = shlex.split(command)
    if words[0] == "make":
        assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), command
        return
    if words[0] == "python" and words[1].endswith(".py"):
        args = list(words[2:])
        args[args.index("--out") + 1] = str(tmp / Path(args[args.index("--out") + 1]).name)
        runpy.run_path(str(REPO / words[1]))["main"]([*args, "--steps", "40", "--runs", "4"])
        return
    assert words[0] == "agentrl", f"unexpected command {command!r}"
    args = [with_sample(a) for a in words[1:]]
    if args[:2] == ["index", "build"]:
        args = small_corpus(args, tmp)
    args = [in_scratch(a, tmp) for a in args]
    if args[0] in TRAINING:
        args = [*args, *speed_overrides(model, tmp / "runs", args)]
    if args[0] == "eval":
        args = eval_overrides(args, model)
    if args[0] == "rollout":
        small = ["--num-tasks", "2", "--group-size", "2", "--max-new-tokens", "16", "--device", "cpu"]
        args = [*args, "--model", str(model), *small, "env.kwargs.world_entities=40"]
    if args[:2] == ["index", "eval"]:
        args = [*args, "--limit", "5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{command}\n{result.output}"


def cases() -> list:
    out = []
    for markdown in DOCS:
        blocks = bash_blocks(markdown)
        runnable = [b for b in blocks if b.skip_reason is None and b.commands]
        if runnable:
            out.append(pytest.param(markdown, runnable, id=markdown.name))
        for b in blocks:
            if b.skip_reason is not None:
                out.append(pytest.param(markdown, [b], id=f"{markdown.name}:{b.line}"))
    return out


@requires_minilm
@pytest.mark.parametrize("markdown,blocks", cases())
def test_docs_commands(
    markdown: Path, blocks: list[Block], tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The runnable blocks of a file, in order; or one block marked not runnable, skipped with its reason."""
    if blocks[0].skip_reason is not None:
        pytest.skip(f"{markdown.name} line {blocks[0].line} not runnable: {blocks[0].skip_reason}")
    monkeypatch.setenv("AGENTRL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AGENTRL_PROGRESS", "0")
    monkeypatch.chdir(REPO)
    makefile = (REPO / "Makefile").read_text()
    skipped: list[str] = []
    unwritten: dict[str, int] = {}
    for block in blocks:
        reason = why_absent(block, unwritten)
        if reason is not None:
            skipped.append(f"line {block.line} {reason}")
            unwritten |= dict.fromkeys(scratch_paths(block), block.line)
            continue
        for command in block.commands:
            run_command(command, tiny_model_dir, tmp_path, makefile)
    if skipped:
        ran = len(blocks) - len(skipped)
        pytest.skip(f"{markdown.name}: ran {ran} of {len(blocks)} blocks; skipped " + "; ".join(skipped))


def test_every_doc_block_is_run_or_marked() -> None:
    """Every ```bash block either runs or carries a reason; the docs hold some of each."""
    blocks = [b for m in DOCS for b in bash_blocks(m)]
    assert sum(b.skip_reason is None for b in blocks) >= 10
    for block in blocks:
        assert block.commands, f"{block.markdown.name} line {block.line}: an empty bash block"
        assert block.skip_reason is None or len(block.skip_reason) > 10, (block.markdown.name, block.line)


def test_the_docs_name_data_files_the_test_can_map() -> None:
    """Runnable blocks name data only by paths `DOC_DATA` maps; no doc sends a reader to ../shared."""
    for markdown in DOCS:
        assert "../shared" not in markdown.read_text(encoding="utf-8"), markdown.name
        for block in [b for b in bash_blocks(markdown) if b.skip_reason is None]:
            named = {doc_data(w) for c in block.commands for w in shlex.split(c)} - {None}
            assert named <= DOC_DATA.keys(), (markdown.name, block.line, named - DOC_DATA.keys())
    assert all(p.startswith("data/") for p in DOC_DATA)


def test_the_scheme_table_lists_every_scheme() -> None:
    from trainers.advantages import SCHEMES

    text = (REPO / "docs" / "algorithms.md").read_text(encoding="utf-8")
    table = text.split("### Choosing a scheme", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert named == set(SCHEMES.names())
    assert all(len([c for c in row.split("|")[1:-1] if c.strip()]) == 4 for row in rows)
