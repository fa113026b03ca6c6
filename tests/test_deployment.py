"""The commands README "Running several workers" gives, run as it gives them: gunicorn serving the
app with whitenoise's static files, and a qcluster master that finishes its in-flight task when
systemd (KillMode=mixed) sends it alone SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = ["--workers", "2", "--timeout", "30"]  # as README's "Running several workers"


def sleep_then_write(folder: str, seconds: float) -> str:
    """A task for the qcluster test: says it started, works a while, says it finished."""
    Path(folder, "started").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(folder, "finished").write_text("done")
    return "done"


def production_env(tmp_path: Path) -> dict:
    from cryptography.fernet import Fernet

    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": "deployment-test-" + "x" * 50,
        "KASHFORCE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "KASHFORCE_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": "",  # a SQLite file of its own in the var dir
        "REDIS_URL": "",
        "Q_WORKERS": "1",
        "Q_TIMEOUT": "20",
        "Q_RETRY": "30",
    }
    return env


def manage(env, *args):
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_gunicorn_serves_health_and_whitenoise_serves_static_files(tmp_path):
    env = production_env(tmp_path)
    manage(env, "migrate", "--noinput")
    manage(env, "collectstatic", "--noinput")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "kashforce.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            *GUNICORN,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        session = requests.Session()
        session.trust_env = False

        def health():
            try:
                return session.get(f"http://127.0.0.1:{port}/health/", timeout=2)
            except requests.ConnectionError:
                return None

        response = wait_for(health, 30, "gunicorn to answer")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ok"
        login = session.get(f"http://127.0.0.1:{port}/login/", timeout=5)
        stylesheet = next(
            part.split('"')[0]
            for part in login.text.split('href="')[1:]
            if part.split('"')[0].endswith(".css")
        )
        css = session.get(f"http://127.0.0.1:{port}{stylesheet}", timeout=5)
        assert css.status_code == 200
        assert "immutable" in css.headers.get("Cache-Control", "")  # whitenoise, hashed name
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.stderr.read().decode()[-2000:]


def test_sigterm_to_the_qcluster_master_finishes_the_task_in_hand(tmp_path):
    env = production_env(tmp_path)
    manage(env, "migrate", "--noinput")
    log = (tmp_path / "qcluster.log").open("w")
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        enqueue = (
            "from django_q.tasks import async_task; "
            f"async_task('tests.test_deployment.sleep_then_write', {str(tmp_path)!r}, 4)"
        )
        manage(env, "shell", "-c", enqueue)
        wait_for(lambda: (tmp_path / "started").exists(), 30, "the task to start")
        cluster.send_signal(signal.SIGTERM)  # the master only, as systemd's KillMode=mixed does
        assert cluster.wait(timeout=30) == 0
        assert (tmp_path / "finished").read_text() == "done"
    finally:
        if cluster.poll() is None:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait()
