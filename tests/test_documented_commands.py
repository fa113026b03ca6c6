"""The README's short commands work on a fresh clone: `make run`'s script (moved ports, a port
in use, stopping on SIGTERM or Ctrl-C to its process group) and the dashboard part of
`make bench-small` at a tiny size. Each runs the real thing in a child process."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial_env(var_dir: Path, **ports: int) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kashforce.settings",
        "KASHFORCE_VAR_DIR": str(var_dir),
        "KASHFORCE_SANDBOX_DIR": str(var_dir / "sandbox"),
        "KASHFORCE_MAIL_SINK_DIR": str(var_dir / "mail"),
        "KASHFORCE_PYTHON": sys.executable,
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "CACHE_URL": "",
        **{name: str(port) for name, port in ports.items()},
    }


def test_a_port_in_use_gives_a_plain_message_naming_the_variable_to_move_it(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    with busy:
        env = trial_env(
            tmp_path,
            SANDBOX_SALESFORCE_PORT=free_port(),
            SANDBOX_KASHFLOW_PORT=port,
            KASHFORCE_MAIL_SINK_PORT=free_port(),
        )
        result = subprocess.run(
            ["bash", "scripts/run-local.sh", "127.0.0.1", str(free_port())],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "the KashFlow simulator" in result.stderr
    assert "make run SANDBOX_KASHFLOW_PORT=<port>" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_trial_s_process_group_stops_everything_within_seconds(
    tmp_path, signal_number
):
    web, sf, kf, mail = (free_port() for _ in range(4))
    env = trial_env(
        tmp_path,
        SANDBOX_SALESFORCE_PORT=sf,
        SANDBOX_KASHFLOW_PORT=kf,
        KASHFORCE_MAIL_SINK_PORT=mail,
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    log = tmp_path / "run.log"
    # A session of its own, as `make run` in a terminal is: the signal goes to the whole group.
    trial = subprocess.Popen(
        ["bash", "scripts/run-local.sh", "127.0.0.1", str(web)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{web}/login/", timeout=1)
                break
            except OSError:
                assert trial.poll() is None, log.read_text()
                time.sleep(0.5)
        time.sleep(2)  # the worker has started and taken its first scheduled tasks
        started = time.monotonic()
        os.killpg(trial.pid, signal_number)
        assert trial.wait(timeout=30) == 0, log.read_text()
        assert time.monotonic() - started < 15
    finally:
        if trial.poll() is None:
            os.killpg(trial.pid, signal.SIGKILL)
    output = log.read_text()
    assert "Traceback" not in output
    assert output.rstrip().endswith("kashforce stopped.")
    for port in (web, sf, kf, mail):  # nobody is left listening
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, port


def test_the_dashboard_benchmark_runs_with_debug_off_on_a_fresh_clone(tmp_path):
    """`make bench-small`'s dashboard part (B5), at a tiny size: every page answers 200 with
    DEBUG off, as in production (it failed for want of collectstatic's manifest)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--small",
            "--only",
            "B5",
            "--events",
            "60",
            "--requests",
            "1",
            "--output",
            str(tmp_path / "results.json"),
            "--markdown",
            str(tmp_path / "results.md"),
        ],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "B5 Overview" in result.stderr
