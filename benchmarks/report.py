"""Write what a benchmark run measured: benchmarks/results.json and the tables of
docs/benchmarks.md (machine, date, exact command, then one table per scenario)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    import django

    return {
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "sqlite": _sqlite_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit}{' (with uncommitted changes)' if dirty else ''}"


def header(command: str, options: dict) -> dict:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "commit": git_commit(),
        "machine": machine(),
        "options": options,
    }


def write(results: dict, json_path: Path, markdown_path: Path) -> None:
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(markdown(results))


def markdown(results: dict) -> str:
    head, m = results["header"], results["header"]["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Measured by `benchmarks/` against the local sandbox simulators, beside a naive baseline",
        "(`benchmarks/naive.py`: one KashFlow call and one simple-salesforce upsert per record and",
        "object, no cursor, no batching). Scripts, not tests: rerun them with the command below;",
        "`results.json` holds every raw figure, including the calls per endpoint.",
        "",
        f"- **Command:** `{head['command']}`",
        f"- **Date:** {head['date']}; **commit:** {head['commit']}",
        f"- **Machine:** {m['cpus']} CPUs ({m['cpu']}), {m['memory_gb']} GB RAM, {m['os']}; "
        f"Python {m['python']}, Django {m['django']}, SQLite {m['sqlite']}",
        f"- **Sandbox latency:** {head['options']['latency_ms']:g} ms added to every API call "
        "(no jitter); kashforce on SQLite (WAL) in a fresh directory per scenario.",
        "- **Wall time** is the worker's own time for the work (not Python and Django start-up);",
        "  **worker peak RSS** is the peak resident memory (VmHWM) of the child process that ran the sync, read by the child itself.",
        *[f"- **Amended:** {text}" for text in head.get("amended", [])],
        "",
    ]
    for scenario in results["scenarios"]:
        lines += _scenario(scenario)
    if results.get("not_measured"):
        lines += ["## Not measured in this run", ""]
        lines += [f"- **{item['id']}**: {item['why']}" for item in results["not_measured"]]
        lines.append("")
    notes = ROOT / "benchmarks/notes.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def _scenario(scenario: dict) -> list[str]:
    lines = [
        f"## {scenario['id']}: {scenario['title']}",
        "",
        "| Figure | kashforce | Naive | Ratio | Target | Verdict |",
        "|---|---:|---:|---:|---|---|",
    ]
    for f in scenario["figures"]:
        lines.append(
            f"| {f['name']} | {_value(f['value'], f['unit'])} | {_value(f['naive'], f['unit'])} "
            f"| {_ratio(f)} | {f['target'] or ''} | {_verdict(f)} |"
        )
    lines.append("")
    notes = [f["note"] for f in scenario["figures"] if f.get("note")]
    if scenario.get("note"):
        notes.append(scenario["note"])
    lines += [f"- {note}" for note in dict.fromkeys(notes)]
    if notes:
        lines.append("")
    return lines


def _value(value, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
    else:
        text = f"{value:,}"
    return f"{text} {unit}".strip() if unit not in ("calls",) else text


def _ratio(f: dict) -> str:
    ratio = f.get("ratio_to_naive")
    if ratio is None:
        return ""
    return f"{ratio:,.1f}×" if ratio < 100 else f"{ratio:,.0f}×"


def _verdict(f: dict) -> str:
    if f["ok"] is None:
        return ""
    if f["ok"]:
        return "PASS"
    return f"**MISS** ({f.get('miss') or 'see note'})" if f.get("miss") else "**MISS**"


if __name__ == "__main__":
    # Re-render docs/benchmarks.md from a results.json (after editing notes by hand, say).
    source = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "benchmarks/results.json")
    (ROOT / "docs/benchmarks.md").write_text(markdown(json.loads(source.read_text())))
