"""The subscriber as it runs in production: `manage.py subscribe` processes of their own, on a
kashforce database of their own (SQLite under a temporary KASHFORCE_VAR_DIR), against the
sandbox's Pub/Sub server over a real socket. The test reads that database directly.

- a SIGKILLed subscriber's successor resumes after the stored replay id: nothing lost, nothing
  recorded twice;
- two subscribers started together hold one stream, and the other takes over when the holder
  is killed.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures_sandbox import control
from tests.test_pubsub import Salesperson, open_deals, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SEED = "customers=2,accounts=4,products=8,opportunities=40,won_uninvoiced=0"


class Home:
    """A kashforce installation in a temporary directory, connected to the sandbox."""

    def __init__(self, tmp_path: Path, sandbox, realtime: str = "pubsub"):
        self.var = tmp_path / "var"
        self.var.mkdir()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
            "KASHFORCE_VAR_DIR": str(self.var),
            "PYTHONUNBUFFERED": "1",
            # The production lease: a killed holder is not waited for (its process is gone).
            "KASHFORCE_PUBSUB_LEASE_SECONDS": "30",
            "KASHFORCE_PUBSUB_MAX_BACKOFF": "2",
        }
        self.processes: list[subprocess.Popen] = []
        self.manage("migrate", "--noinput")
        self.manage(
            "sandbox_connect",
            f"--state-dir={sandbox.state_dir}",
            "--auth=jwt",
            "--webhook-base=http://127.0.0.1:9",  # nothing listens: no webhook reaches us
            f"--realtime={realtime}",
        )
        control(sandbox.info["control"]["salesforce"], "outbound", {"enabled": False})

    def manage(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def subscriber(self, name: str) -> subprocess.Popen:
        log = open(self.var / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [sys.executable, "manage.py", "subscribe"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def query(self, sql: str) -> list[tuple]:
        with sqlite3.connect(self.var / "kashforce.sqlite3", timeout=20) as db:
            return db.execute(sql).fetchall()

    def stream(self) -> dict:
        rows = self.query("SELECT replay_id, holder, state FROM integration_changestream")
        return dict(zip(("replay_id", "holder", "state"), rows[0], strict=True)) if rows else {}

    def live(self) -> bool:
        stream = self.stream()
        return stream.get("state") == "live" and bool(stream.get("replay_id"))

    def recorded(self) -> dict[str, int]:
        rows = self.query(
            "SELECT source_id, COUNT(*) FROM integration_syncevent "
            "WHERE source_object = 'salesforce.Opportunity' GROUP BY source_id"
        )
        return dict(rows)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.fixture
def home(tmp_path, sandbox):
    sandbox.reset(SEED)
    control(sandbox.info["control"]["salesforce"], "pubsub", {"pubsub_keepalive_seconds": 1})
    installation = Home(tmp_path, sandbox)
    yield installation
    installation.stop()


def pubsub_status(sandbox) -> dict:
    return control(sandbox.info["control"]["salesforce"], "pubsub")


def test_a_killed_subscriber_is_resumed_from_its_replay_id_with_nothing_lost_or_doubled(
    home, sandbox
):
    first = home.subscriber("first")
    wait_for(home.live, timeout=60, what="the first subscriber's stream")
    salesperson = Salesperson(sandbox.info["salesforce"])
    deals = open_deals(sandbox, 12)

    def close(some):
        for deal in some:
            salesperson.close_won(deal)
            time.sleep(0.05)

    closing = threading.Thread(target=close, args=(deals[:8],))
    closing.start()
    wait_for(lambda: len(home.recorded()) >= 3, what="some deals recorded")
    os.kill(first.pid, signal.SIGKILL)  # while deals are still being closed
    first.wait(timeout=10)
    closing.join()
    close(deals[8:])  # while no subscriber runs
    stored = home.stream()["replay_id"]
    assert len(home.recorded()) < len(deals)

    restarted = time.monotonic()
    home.subscriber("second")
    wait_for(lambda: len(home.recorded()) == len(deals), timeout=60, what="every deal")
    assert time.monotonic() - restarted < 20  # no wait for the dead holder's 30-second lease
    assert home.recorded() == dict.fromkeys(deals, 1)  # each once
    resumed = [s for s in pubsub_status(sandbox)["subscriptions"] if s["replay_id"] == stored]
    assert resumed and resumed[-1]["preset"] == "CUSTOM"  # after the stored id, not LATEST
    assert home.query("SELECT COUNT(*) FROM integration_syncrun WHERE trigger = 'poll'") == [
        (0,)
    ]  # the stream alone brought them all


def test_two_subscribers_started_together_hold_one_stream_and_hand_over(home, sandbox):
    processes = {p.pid: p for p in (home.subscriber("a"), home.subscriber("b"))}
    wait_for(home.live, timeout=60, what="a live stream")
    time.sleep(3)
    assert pubsub_status(sandbox)["open_streams"] == 1
    holder_pid = int(home.stream()["holder"].rsplit(":", 1)[1])
    assert holder_pid in processes
    os.kill(holder_pid, signal.SIGKILL)
    processes[holder_pid].wait(timeout=10)
    (other,) = set(processes) - {holder_pid}
    wait_for(
        lambda: home.stream()["holder"].endswith(f":{other}") and home.live(),
        timeout=30,
        what="the other subscriber to take over",
    )
    wait_for(lambda: pubsub_status(sandbox)["open_streams"] == 1, what="one stream")
    deal = open_deals(sandbox, 1)[0]
    Salesperson(sandbox.info["salesforce"]).close_won(deal)
    wait_for(lambda: home.recorded().get(deal) == 1, what="the deal")


@pytest.mark.parametrize("mode", ["poll", "outbound"])
def test_a_connection_not_set_to_pubsub_opens_no_stream(tmp_path, sandbox, mode):
    sandbox.reset(SEED)
    installation = Home(tmp_path, sandbox, realtime=mode)
    try:
        subscriber = installation.subscriber("idle")
        log = installation.var / "idle.log"
        wait_for(lambda: "started" in log.read_text(), what="the subscriber to start")
        time.sleep(3)  # a Pub/Sub connection is live well within this (the tests above)
        assert subscriber.poll() is None  # it waits for the mode to change, it does not exit
        assert pubsub_status(sandbox)["open_streams"] == 0
        assert installation.query("SELECT COUNT(*) FROM integration_changestream") == [(0,)]
    finally:
        installation.stop()
