"""What every scenario stands on: a sandbox with injected latency, a throwaway kashforce, and a
way to run one measured step in a child process.

The sandbox runs in this (the driver's) process; kashforce runs in child processes with their own
`KASHFORCE_VAR_DIR` (SQLite there), so the peak RSS we report is the peak of the process that did
the sync: the child reads its own VmHWM, and the driver's memory never counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from urllib3.exceptions import InsecureRequestWarning

from sandbox.runner import SandboxServer

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("salesforce", "kashflow")
# The naive baseline makes one Salesforce call per record: far beyond a Developer org's 15,000 a
# day at N = 10,000. The simulator's allocation is raised so that the baseline is not cut short.
DAILY_API_LIMIT = 100_000_000


@dataclass
class Step:
    """One measured child process: what it printed, how long it took, its peak memory."""

    output: dict
    seconds: float  # the child's own measurement of the work (without Python/Django start-up)
    process_seconds: float  # the whole child process, start-up included
    peak_rss_mb: float  # the child's own VmHWM, reported by the child (see worker.peak_rss_mb)
    calls: dict[str, dict] = field(default_factory=dict)  # side -> sandbox stats snapshot
    rss_timeline: list[tuple[float, int]] = field(default_factory=list)  # (s, MB) on each 20 MB

    def total_calls(self, side: str) -> int:
        return self.calls[side]["total"]


class Lab:
    """A sandbox plus a template kashforce database; `fresh()` gives a clean kashforce."""

    def __init__(self, latency_ms: float, workdir: Path | None = None, keep: bool = False):
        self.latency_ms = latency_ms
        self.keep = keep
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kashforce-bench-"))
        self.sandbox_dir = self.workdir / "sandbox"
        self.template_dir = self.workdir / "template-var"
        self.var_dir: Path | None = None
        self.server: SandboxServer | None = None
        self.services: list[Service] = []
        self._http = requests.Session()
        self._http.trust_env = False

    # Lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Lab:
        self.server = SandboxServer(
            self.sandbox_dir, seed="empty", reset=True, daily_api_limit=DAILY_API_LIMIT
        ).start()
        self.template_dir.mkdir(parents=True, exist_ok=True)
        self.manage("migrate", "--noinput", var_dir=self.template_dir)
        # The children run with DEBUG off, as in production, where static files are served
        # from collectstatic's manifest: without it every page is a 500 ("Missing staticfiles
        # manifest entry"). The template's static/ is copied into each fresh kashforce.
        self.manage("collectstatic", "--noinput", var_dir=self.template_dir, env={"DEBUG": "false"})
        return self

    def stop(self) -> None:
        for service in self.services:
            service.stop()
        if self.server:
            self.server.stop()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def seed(self, seed: str) -> float:
        """Reseed both simulators, then set latency again (a reset clears faults); seconds taken."""
        started = time.perf_counter()
        self.server.reset(seed)
        self.control("salesforce", "limits", {"daily_api_limit": DAILY_API_LIMIT})
        self.set_latency(self.latency_ms)
        return time.perf_counter() - started

    def fresh(
        self,
        name: str,
        env: dict | None = None,
        webhook_base: str | None = None,
        realtime: str | None = None,
    ) -> Path:
        """A new kashforce (copied from the migrated template) connected to the sandbox. With a
        DATABASE_URL in `env`, that (empty) database is migrated and used instead of SQLite.

        Outbound Messages go to `webhook_base` when given; otherwise they are switched off, since
        no web server of ours listens (sandbox_connect's default address may be someone else's).
        """
        self.var_dir = self.workdir / f"var-{name}"
        shutil.rmtree(self.var_dir, ignore_errors=True)
        shutil.copytree(self.template_dir, self.var_dir)
        if (env or {}).get("DATABASE_URL"):
            self.manage("migrate", "--noinput", env=env)
        hook = ["--webhook-base", webhook_base] if webhook_base else []
        hook += ["--realtime", realtime] if realtime else []  # outbound, pubsub or poll
        self.manage("sandbox_connect", "--state-dir", str(self.sandbox_dir), *hook, env=env)
        if not webhook_base:
            self.control("salesforce", "outbound", {"url": "", "enabled": False})
        return self.var_dir

    # The sandbox's control API -------------------------------------------------------------------

    def control(self, side: str, path: str, payload: dict | None = None) -> dict:
        url = self.server.info["control"][side].rstrip("/") + "/" + path
        with warnings.catch_warnings():
            # The control API is on the simulator's own port (self-signed CA for Salesforce).
            warnings.simplefilter("ignore", InsecureRequestWarning)
            if payload is None:
                response = self._http.get(url, timeout=30, verify=False)
            else:
                response = self._http.post(url, json=payload, timeout=30, verify=False)
        response.raise_for_status()
        return response.json()

    def set_latency(self, latency_ms: float) -> None:
        for side in SIDES:
            self.control(side, "faults", {"latency_ms": latency_ms, "jitter_ms": 0, "rules": []})

    def reset_stats(self) -> None:
        for side in SIDES:
            self.control(side, "stats/reset", {})

    def stats(self) -> dict[str, dict]:
        return {side: self.control(side, "stats") for side in SIDES}

    # Children ------------------------------------------------------------------------------------

    def env(self, var_dir: Path | None = None) -> dict:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "kashforce.settings",
            "KASHFORCE_VAR_DIR": str(var_dir or self.var_dir),
            "KASHFORCE_SANDBOX_DIR": str(self.sandbox_dir),
            # The embedded default (SQLite in the var dir), whatever this shell points at; a
            # scenario that measures PostgreSQL passes its own DATABASE_URL.
            "DATABASE_URL": "",
            "REDIS_URL": "",
            "CACHE_URL": "",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }

    def manage(self, *args: str, var_dir: Path | None = None, env: dict | None = None) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**self.env(var_dir), **(env or {})},
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def serve(self, name: str, *argv: str, env: dict | None = None) -> Service:
        """Start a long-running kashforce process (`-m gunicorn ...`, `manage.py qcluster`) on
        the current kashforce; its output goes to NAME.log in the work directory."""
        service = Service(
            name,
            [sys.executable, *argv],
            {**self.env(), "LOG_LEVEL": "INFO", **(env or {})},
            self.workdir / f"{name}.log",
        )
        self.services.append(service)
        return service.start()

    def measure(self, *args: str, env: dict | None = None) -> Step:
        """Run `python -m benchmarks.worker ARGS` with fresh sandbox stats; measure it."""
        self.reset_stats()
        # DEBUG off, as in production: with it on, Django keeps the last 9,000 statements of a
        # process in memory, and a batch's statements carry its payloads (B6's 260 MB).
        step = run_child(
            [sys.executable, "-m", "benchmarks.worker", *args],
            {**self.env(), "DEBUG": "false", **(env or {})},
        )
        step.calls = self.stats()
        return step


@contextmanager
def postgres_database(server_url: str, name: str):
    """A throwaway PostgreSQL database on the server of `server_url`; yields its URL and drops
    it afterwards, whatever happened."""
    import psycopg

    base = server_url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_server(url: str | None) -> str | None:
    """`url` (or DATABASE_URL) when it is a PostgreSQL server that answers, else None."""
    url = url or os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return None
    try:
        import psycopg

        psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", connect_timeout=3).close()
    except Exception:
        return None
    return url


class Service:
    """A process that runs until stopped, in its own process group, so that stopping it also
    ends what it forked (gunicorn's workers, qcluster's sentinel, pusher, monitor and workers)."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        if self.process is not None and not self.alive():
            raise RuntimeError(
                f"{self.name} exited {self.process.returncode}; its log ends:\n{self.tail()}"
            )

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.tail(200_000):
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not say {text!r}; its log ends:\n{self.tail()}"
                )
            time.sleep(0.2)

    def stop(self, grace: float = 10) -> None:
        """SIGTERM to the main process only (gunicorn and qcluster both stop gracefully on it;
        SIGTERM to a qcluster's whole group can hang it), then SIGKILL whatever is left in the
        group. Safe to call twice."""
        if self.process is None:
            return
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the group is ours: start_new_session
        self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_child(argv: list[str], env: dict) -> Step:
    """Run a worker child; its last stdout line is JSON with at least {"seconds": ...}."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log)
        timeline: list[tuple[float, int]] = []
        watcher = threading.Thread(target=_watch_rss, args=(child.pid, started, timeline))
        watcher.start()
        out = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            log.seek(0)
            raise RuntimeError(
                f"{' '.join(argv[2:])} exited {child.returncode}:\n{log.read().decode()[-4000:]}"
            )
    lines = out.decode().strip().splitlines()
    output = json.loads(lines[-1]) if lines else {}
    watcher.join()
    # The child's own VmHWM. ru_maxrss (kilobytes on Linux) would include this driver's resident
    # size at the fork, and the driver holds the sandbox's records; kept for comparison only.
    output["ru_maxrss_mb"] = usage.ru_maxrss / 1024
    step = Step(output, output.get("seconds", elapsed), elapsed, output["peak_rss_mb"])
    step.rss_timeline = timeline
    return step


def _watch_rss(pid: int, started: float, timeline: list) -> None:
    """Note when the child's resident memory moves by 20 MB or more, to show when it peaks
    (VmHWM says how high, not when)."""
    last = 0
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return
        if "zombie" in text:  # exited, not yet waited for
            return
        rss = next(
            (
                int(line.split()[1]) // 1024
                for line in text.splitlines()
                if line.startswith("VmRSS:")
            ),
            0,
        )
        if abs(rss - last) >= 20:
            timeline.append((round(time.perf_counter() - started, 1), rss))
            last = rss
        time.sleep(0.2)
