"""An evaluation's output directory, written so that a killed evaluation continues where it stopped.

    manifest.json       what is evaluated (written first; a rerun must match it to resume)
    predictions.jsonl   one line per question, appended a chunk at a time and flushed to disk
    report.json         metrics + CIs + manifest (written at the end)
    report.md           the same for people
    pass_at_k.png       pass@k against k

On a rerun, the questions already in `predictions.jsonl` are read back (a line cut short by the kill is
dropped) and only the chunks they do not complete are rolled out; at the end `predictions.jsonl` is
rewritten in question order, so a resumed evaluation leaves the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from agentrl.core.files import atomic_open
from agentrl.evaluation.manifest import manifest_differences
from agentrl.evaluation.records import QuestionRecord

MANIFEST = "manifest.json"
PREDICTIONS = "predictions.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PASS_AT_K_PNG = "pass_at_k.png"
OUTPUTS = (MANIFEST, PREDICTIONS, REPORT_JSON, REPORT_MD, PASS_AT_K_PNG)


def write_json(path: Path, data: Any) -> None:
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from None


def is_eval_dir(path: str | Path) -> bool:
    """Whether `path` holds a finished evaluation (report.json beside predictions.jsonl)."""
    p = Path(path)
    return (p / REPORT_JSON).is_file() and (p / PREDICTIONS).is_file()


def check_output_dir(path: str | Path) -> None:
    """Refuse an output directory that is not empty and holds no evaluation of ours (no `manifest.json`), so
    that a user's own files there are never replaced."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FileExistsError(f"--output {p} is a file; pass the path of a directory for the evaluation")
    if p.is_dir() and not (p / MANIFEST).is_file() and any(p.iterdir()):
        found = ", ".join(sorted(entry.name for entry in p.iterdir())[:5])
        raise FileExistsError(
            f"--output {p} is not empty ({found}) and holds no agentrl evaluation ({MANIFEST}); "
            "choose a new or empty directory"
        )


def read_predictions(path: Path) -> dict[int, QuestionRecord]:
    """The question records of a predictions file by index (a later line for the same index wins); lines
    that are not complete records (a write cut short) are skipped."""
    records: dict[int, QuestionRecord] = {}
    if not path.is_file():
        return records
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                record = QuestionRecord.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue
            records[record.index] = record
    return records


class EvalStore:
    """The files of one evaluation in `out`."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)

    def path(self, name: str) -> Path:
        return self.out / name

    def open(self, manifest: dict[str, Any], overwrite: bool = False) -> dict[int, QuestionRecord]:
        """Start or resume: returns the records already written under the same manifest.

        An existing manifest that differs is an error naming the differences, unless `overwrite`, which
        removes the earlier evaluation's files first. A non-empty directory without a manifest is refused.
        """
        check_output_dir(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        existing = self.path(MANIFEST)
        if existing.is_file():
            differences = manifest_differences(read_json(existing), manifest)
            if differences and not overwrite:
                listing = "\n  ".join(differences[:12])
                more = f"\n  ... and {len(differences) - 12} more" if len(differences) > 12 else ""
                raise ValueError(
                    f"{self.out} holds an evaluation with other settings, so it cannot be resumed:\n  "
                    f"{listing}{more}\npass --overwrite to replace it, or choose another --output"
                )
            if differences:
                self.clear()
        write_json(self.path(MANIFEST), manifest)
        return read_predictions(self.path(PREDICTIONS))

    def clear(self) -> None:
        for name in OUTPUTS:
            self.path(name).unlink(missing_ok=True)
        shutil.rmtree(self.out / "compare", ignore_errors=True)

    def append(self, records: list[QuestionRecord]) -> None:
        """Append a chunk's records in one write and flush them to disk; a failed write is cut off again."""
        data = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        fd = os.open(self.path(PREDICTIONS), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            _write_all(fd, data, size)
        finally:
            os.close(fd)

    def finish(self, questions: list[QuestionRecord], report: dict[str, Any]) -> None:
        """Rewrite predictions.jsonl in question order and write report.json."""
        with atomic_open(self.path(PREDICTIONS)) as f:
            for record in questions:
                f.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
        write_json(self.path(REPORT_JSON), report)

    def questions(self) -> list[QuestionRecord]:
        records = read_predictions(self.path(PREDICTIONS))
        return [records[i] for i in sorted(records)]

    def report(self) -> dict[str, Any]:
        return dict(read_json(self.path(REPORT_JSON)))


def _write_all(fd: int, data: bytes, size: int) -> None:
    """Write `data` at the end of the file (`size` bytes long) and fsync it; on failure cut the file back to
    `size` bytes, so that no half-written line is left behind."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        os.ftruncate(fd, size)
        raise
