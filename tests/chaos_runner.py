"""Run scripts/chaos.py in a process of its own (it builds its own database, sandbox and
qcluster workers) and return the figures it wrote, failing with its output when it fails."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_chaos(tmp_path: Path, *args: str, timeout: float = 170) -> dict:
    figures_file = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "scripts/chaos.py", *args, "--json", str(figures_file)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = (result.stdout[-6000:] + "\n" + result.stderr[-6000:]).strip()
    assert figures_file.exists(), output
    figures = json.loads(figures_file.read_text())
    assert result.returncode == 0, f"{figures.get('failures')}\n{output}"
    return figures


def postgres_url() -> str | None:
    """A PostgreSQL server to make throwaway databases on, or None when none answers."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    try:
        import psycopg

        psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", connect_timeout=3).close()
    except Exception:
        return None
    return url


def redis_url(db: int) -> str | None:
    url = f"redis://127.0.0.1:6379/{db}"
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception:
        return None
    return url
