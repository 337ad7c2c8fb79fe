"""The human side of an evaluation report: `report.md`, the pass@k plot and the side-by-side comparison.

`report.json` (the metrics of `agentrl.evaluation.metrics.report_metrics` plus the manifest) is the source of
everything here, so a comparison can be drawn from finished evaluation directories alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.core.files import atomic_open

SCORE_COLUMNS = ("em", "f1", "accuracy", "format_rate")


def pass_at_k_items(report: dict[str, Any]) -> list[tuple[int, float]]:
    """(k, pass@k) sorted by k (report.json stores k as a string key)."""
    return sorted((int(k), float(v)) for k, v in report.get("pass_at_k", {}).items())


def with_ci(report: dict[str, Any], name: str) -> str:
    """`0.412 [0.350, 0.471]`: the value and its bootstrap interval when the report has one."""
    value = report.get(name) if name != "pass@1" else dict(pass_at_k_items(report)).get(1)
    if value is None:
        return "-"
    bounds = report.get("ci", {}).get(name)
    return f"{value:.3f} [{bounds['low']:.3f}, {bounds['high']:.3f}]" if bounds else f"{value:.3f}"


def model_label(report: dict[str, Any]) -> str:
    return str(report.get("manifest", {}).get("model", {}).get("spec", "?"))


def report_markdown(report: dict[str, Any]) -> str:
    """report.md: headline scores with CIs, pass@k, behaviour (searches, retrieval, lengths, finish reasons),
    the per-group breakdown and the manifest's main entries."""
    manifest = report.get("manifest", {})
    data = manifest.get("dataset", {})
    level = round(100 * float(report.get("ci_level", 0.95)))
    lines = [
        f"# Evaluation of {model_label(report)}",
        "",
        f"{report['num_questions']} questions from {data.get('name')} ({data.get('path') or 'generated'}), "
        f"n = {report['n']} sample(s) per question, {manifest.get('env', {}).get('id')}.",
        "",
        f"| metric | value [{level}% bootstrap CI] |",
        "|---|---|",
    ]
    for name in (*SCORE_COLUMNS, "pass@1"):
        if name == "pass@1" or name in report:
            lines.append(f"| {name} | {with_ci(report, name)} |")
    n = report["n"]
    if f"avg@{n}" in report:
        lines.append(f"| avg@{n} | {report[f'avg@{n}']:.3f} |")
    for k, value in pass_at_k_items(report):
        if k > 1:
            lines.append(f"| pass@{k} | {value:.3f} |")
    for name in ("searches", "answer_in_retrieval", "turns", "response_tokens"):
        if name in report:
            lines.append(f"| {name} | {report[name]:.3f} |")
    reasons = ", ".join(f"{r} {v:.2f}" for r, v in report.get("finish_reasons", {}).items())
    lines.append(f"| finish reasons | {reasons} |")
    groups = report.get("by_group", {})
    if groups:
        score = next((s for s in ("f1", "accuracy", "score", "reward") if s in report), "reward")
        lines += ["", "## By question group", "", f"| group | questions | em | {score} | format_rate |"]
        lines.append("|---|---|---|---|---|")
        for name, part in groups.items():
            em = f"{part['em']:.3f}" if "em" in part else "-"
            value, rate = part.get(score, 0.0), part["format_rate"]
            lines.append(f"| {name} | {part['count']} | {em} | {value:.3f} | {rate:.3f} |")
    lines += ["", "## Manifest", ""]
    model = manifest.get("model", {})
    lines.append(f"- model: `{model.get('spec')}` ({model.get('kind')}, sha256 {model.get('sha256')})")
    lines.append(f"- dataset questions sha256: {data.get('questions_sha256')}")
    retriever = manifest.get("retriever", {})
    lines.append(f"- retriever: {retriever.get('kind')}, top-k {retriever.get('topk')}")
    lines.append(f"- sampling: {manifest.get('sampling')}")
    lines.append(f"- seed: {manifest.get('seed')}")
    return "\n".join(lines) + "\n"


def plot_pass_at_k(reports: Sequence[dict[str, Any]], labels: Sequence[str], path: Path) -> None:
    """pass@k against k (log2 axis), one line per report, written atomically to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for report, label in zip(reports, labels, strict=True):
        items = pass_at_k_items(report)
        ax.plot([k for k, _ in items], [v for _, v in items], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ks = sorted({k for report in reports for k, _ in pass_at_k_items(report)})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)
    finally:
        plt.close(fig)


def comparison_rows(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[dict[str, str]]:
    """One row per report: the label, questions, n, scores with CIs, pass@k, searches."""
    ks = sorted({k for r in reports for k, _ in pass_at_k_items(r)})
    rows = []
    for report, label in zip(reports, labels, strict=True):
        row = {"model": label, "questions": str(report["num_questions"]), "n": str(report["n"])}
        for name in (*SCORE_COLUMNS, "pass@1"):
            if any(name == "pass@1" or name in r for r in reports):
                row[name] = with_ci(report, name)
        passes = dict(pass_at_k_items(report))
        for k in ks:
            if k > 1:
                row[f"pass@{k}"] = f"{passes[k]:.3f}" if k in passes else "-"
        row["searches"] = f"{report.get('searches', 0.0):.2f}"
        rows.append(row)
    return rows


def comparison_markdown(rows: list[dict[str, str]], flags: list[str]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "-") for c in columns) + " |" for row in rows]
    if flags:
        lines += ["", "Settings that differ between these reports (compare with care):", ""]
        lines += [f"- {flag}" for flag in flags]
    return "\n".join(lines) + "\n"
