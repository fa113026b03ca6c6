"""`manage.py sandbox` as a process: serves, publishes its descriptor, stops on SIGTERM.

Runs the command under minimal settings (only the sandbox app), so it does not depend on the
rest of the project's configuration.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

RUN_COMMAND = """
import sys
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["sandbox"], BASE_DIR=".", KASHFORCE={})
django.setup()
from django.core.management import call_command
call_command("sandbox", *sys.argv[1:])
"""


def command(*args, **kwargs):
    root = Path(__file__).resolve().parents[2]
    return subprocess.Popen(
        [sys.executable, "-c", RUN_COMMAND, *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_serves_until_sigterm_and_info_prints_the_descriptor(tmp_path):
    state = str(tmp_path)
    server = command(
        "--state-dir",
        state,
        "--seed",
        "customers=3",
        "--salesforce-port",
        "0",
        "--kashflow-port",
        "0",
    )
    try:
        descriptor = tmp_path / "sandbox.json"
        deadline = time.monotonic() + 20
        while not descriptor.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        info = command("--info", "--state-dir", state)
        out, _ = info.communicate(timeout=20)
        printed = json.loads(out)
        sf = printed["salesforce"]
        assert sf["instance_url"].startswith("https://127.0.0.1:")
        session = requests.Session()
        session.trust_env = False
        token = session.post(
            sf["login_url"] + "/services/oauth2/token",
            verify=sf["ca_file"],
            data={
                "grant_type": "password",
                "client_id": sf["consumer_key"],
                "client_secret": sf["consumer_secret"],
                "username": sf["username"],
                "password": sf["password"],
            },
        )
        assert token.status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    assert "Sandbox stopped." in out
    assert not (tmp_path / "sandbox.json").exists()


def test_info_without_a_running_sandbox_exits_1(tmp_path):
    info = command("--info", "--state-dir", str(tmp_path))
    _, err = info.communicate(timeout=20)
    assert info.returncode == 1
    assert "No sandbox is running" in err
