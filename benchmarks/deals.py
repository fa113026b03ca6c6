"""B3's world: kashforce running as in production beside the sandbox, a salesperson closing deals
at random moments, and a watcher timing each deal to its KashFlow invoice and its write-back.

kashforce runs in two processes of its own, as README's "Running in production" says: gunicorn
(the Outbound Message webhook) and one `manage.py qcluster` with the schedules migrate installed.
The salesperson and the watcher live in this (the driver's) process, beside the simulators: the
salesperson goes through Salesforce's REST API like any user; the watcher reads the simulators'
own state, which costs no API call and is what a person would see in either system.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import requests
from urllib3.exceptions import InsecureRequestWarning

from benchmarks.harness import Lab, Service, free_port

WATCH_EVERY = 0.25  # seconds between two looks at the simulators
# README "Running in production"; no control socket: its default path is shared per user.
GUNICORN = ["--workers", "3", "--timeout", "60", "--no-control-socket"]


def run(lab: Lab, mode: str, closed: int, window: float, seed: str = "b3") -> dict:
    """One fresh kashforce, `closed` deals closed over `window` seconds; what was seen."""
    port = free_port()
    lab.fresh(
        f"b3-{mode}",
        webhook_base=f"http://127.0.0.1:{port}" if mode == "push" else None,
        realtime="pubsub" if mode == "pubsub" else None,
    )
    lab.measure("sync", "customers")  # not measured: a running installation has them
    lab.measure("sync", "products")
    database = lab.var_dir / "kashforce.sqlite3"
    interval = _poll_interval(database)
    web = lab.serve(
        f"b3-{mode}-gunicorn",
        *("-m", "gunicorn", "kashforce.wsgi", "--bind", f"127.0.0.1:{port}", *GUNICORN),
    )
    cluster = lab.serve(f"b3-{mode}-qcluster", "manage.py", "qcluster")
    services = [web, cluster]
    if mode == "pubsub":  # no webhook reachable: the subscriber streams the changes instead
        services.append(lab.serve(f"b3-{mode}-subscriber", "manage.py", "subscribe"))
    try:
        _wait_for_http(f"http://127.0.0.1:{port}/health/", web, timeout=60)
        cluster.wait_for_log("ready for work", timeout=60)
        # Steady state: the scheduler has polled once (its first look is ~30 s after start).
        _wait_for(lambda: _scheduled_invoice_runs(database), services, interval + 90, "a poll")
        if mode == "pubsub":
            _wait_for(lambda: _stream_live(database), services, 60, "the change stream")
        chosen = _open_opportunities(lab, closed, random.Random(seed))
        lab.reset_stats()
        salesperson = Salesperson(lab, chosen, window, random.Random(seed))
        salesperson.start()
        watched = _watch(lab, salesperson, services, timeout=window + 2 * interval + 120)
        calls = lab.stats()
        salesperson.join()
    except BaseException:
        for service in services:
            print(f"--- {service.name} ({service.log_path}) ends:\n{service.tail()}", flush=True)
        raise
    finally:
        for service in services:
            service.stop()
    return _outcome(lab, salesperson, watched, calls, interval, database)


# The salesperson ---------------------------------------------------------------------------------


class Salesperson(threading.Thread):
    """Closes each chosen Opportunity won at its own random moment in the window, through the
    REST API with a token from the OAuth endpoint, and notes when Salesforce answered."""

    def __init__(self, lab: Lab, opportunity_ids: list[str], window: float, rng: random.Random):
        super().__init__(name="b3-salesperson", daemon=True)
        offsets = sorted(rng.uniform(0, window) for _ in opportunity_ids)
        self.plan = list(zip(offsets, opportunity_ids, strict=True))
        self.creds = lab.server.info["salesforce"]
        self.closed_at: dict[str, float] = {}
        self.calls = 0  # its own Salesforce calls (token, PATCHes): not kashforce's
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            session, base = self._session()
            started = time.monotonic()
            for offset, opportunity_id in self.plan:
                time.sleep(max(0.0, started + offset - time.monotonic()))
                response = session.patch(
                    f"{base}/sobjects/Opportunity/{opportunity_id}",
                    json={"StageName": "Closed Won"},
                    timeout=30,
                )
                self.calls += 1
                response.raise_for_status()
                self.closed_at[opportunity_id] = time.time()
        except BaseException as exc:
            self.error = exc

    @property
    def finished(self) -> bool:
        return not self.is_alive()

    def _session(self) -> tuple[requests.Session, str]:
        creds = self.creds
        session = requests.Session()
        session.trust_env = False
        session.verify = creds["ca_file"]
        token = session.post(
            f"{creds['login_url']}/services/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": creds["consumer_key"],
                "client_secret": creds["consumer_secret"],
                "username": creds["username"],
                "password": creds["password"] + creds["security_token"],
            },
            timeout=30,
        )
        self.calls += 1
        token.raise_for_status()
        answer = token.json()
        session.headers["Authorization"] = f"Bearer {answer['access_token']}"
        return session, f"{answer['instance_url']}/services/data/v{creds['api_version']}"


def _open_opportunities(lab: Lab, count: int, rng: random.Random) -> list[str]:
    """`count` open Opportunities with products (so with an amount), chosen at random."""
    store = lab.server.salesforce.store
    with store.lock:
        open_ids = sorted(
            record["Id"]
            for record in store.all("Opportunity")
            if not record["IsClosed"] and not record["IsDeleted"] and record.get("Amount")
        )
    if len(open_ids) < count:
        raise RuntimeError(f"the seed has {len(open_ids)} open Opportunities, {count} wanted")
    return rng.sample(open_ids, count)


# The watcher -------------------------------------------------------------------------------------


def _watch(lab: Lab, salesperson: Salesperson, services: list[Service], timeout: float) -> dict:
    """When each deal's invoice appeared in KashFlow and its number on the Opportunity."""
    ids = [opportunity_id for _, opportunity_id in salesperson.plan]
    invoiced: dict[str, float] = {}
    written_back: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while not (salesperson.finished and len(written_back) == len(invoiced) == len(ids)):
        now = time.time()
        references = _invoice_references(lab)
        for opportunity_id in ids:
            if opportunity_id not in invoiced and references[opportunity_id]:
                invoiced[opportunity_id] = now
        for opportunity_id in _written_back(lab, [i for i in ids if i not in written_back]):
            written_back[opportunity_id] = now
        if salesperson.error:
            raise RuntimeError(f"closing a deal failed: {salesperson.error}")
        for service in services:
            service.check()
        if time.monotonic() > deadline:
            break  # reported as deals without an invoice or a write-back
        time.sleep(max(0.0, now + WATCH_EVERY - time.time()))
    return {"invoiced": invoiced, "written_back": written_back}


def _invoice_references(lab: Lab) -> Counter:
    """KashFlow invoices per CustomerReference (kashforce puts the Opportunity Id there)."""
    store = lab.server.kashflow.store
    with store.lock:
        rows = store.db.execute(
            "SELECT customer_reference, COUNT(*) FROM invoices GROUP BY customer_reference"
        ).fetchall()
    return Counter({reference: count for reference, count in rows})


def _written_back(lab: Lab, opportunity_ids: list[str]) -> list[str]:
    store = lab.server.salesforce.store
    with store.lock:
        return [
            opportunity_id
            for opportunity_id in opportunity_ids
            if (store.get("Opportunity", opportunity_id) or {}).get("KashFlow_Invoice_Number__c")
        ]


# kashforce's side, read-only ----------------------------------------------------------------------


def _read(database: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=20) as connection:
        return connection.execute(sql).fetchall()


def _poll_interval(database: Path) -> float:
    """Seconds between the invoices flow's scheduled polls, as installed."""
    (minutes,) = _read(
        database, "SELECT minutes FROM django_q_schedule WHERE name = 'kashforce: sync invoices'"
    )[0]
    return 60.0 * (minutes or 1)


def _scheduled_invoice_runs(database: Path) -> int:
    return _read(
        database,
        "SELECT COUNT(*) FROM integration_syncrun WHERE flow = 'invoices' "
        "AND trigger = 'schedule' AND finished_at IS NOT NULL",
    )[0][0]


def _stream_live(database: Path) -> bool:
    """The subscriber is streaming (it has heard from Salesforce and stored a position)."""
    return bool(
        _read(
            database,
            "SELECT COUNT(*) FROM integration_changestream WHERE state = 'live' "
            "AND replay_id != ''",
        )[0][0]
    )


def _ledger(database: Path) -> dict:
    runs = _read(
        database,
        "SELECT trigger, status, COUNT(*) FROM integration_syncrun WHERE flow = 'invoices' "
        "GROUP BY trigger, status",
    )
    events = _read(
        database,
        "SELECT status, COUNT(*) FROM integration_syncevent WHERE flow = 'invoices' "
        "GROUP BY status",
    )
    return {
        "invoice_runs": {f"{trigger} {status}": n for trigger, status, n in runs},
        "invoice_events": dict(events),
    }


# Waiting and the outcome ----------------------------------------------------------------------------


def _wait_for(condition, services: list[Service], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for service in services:
            service.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def _wait_for_http(url: str, service: Service, timeout: float) -> None:
    session = requests.Session()
    session.trust_env = False

    def answers() -> bool:
        try:
            return session.get(url, timeout=2).status_code > 0
        except requests.RequestException:
            return False

    _wait_for(answers, [service], timeout, f"{url} to answer")


def _outcome(lab, salesperson, watched, calls, interval, database) -> dict:
    closed_at = salesperson.closed_at
    references = _invoice_references(lab)
    invoice_latency = _latencies(closed_at, watched["invoiced"])
    write_back_latency = _latencies(closed_at, watched["written_back"])
    salesforce = calls["salesforce"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)
        outbound = lab.control("salesforce", "outbound")["deliveries"]
    return {
        "poll_interval_seconds": interval,
        "closed": len(closed_at),
        "invoices": sum(references[i] for i in closed_at),
        "duplicates": sum(n - 1 for n in references.values() if n > 1),
        "other_invoices": sum(n for ref, n in references.items() if ref not in closed_at),
        "invoice_latency": invoice_latency,
        "write_back_latency": write_back_latency,
        "not_invoiced": sorted(set(closed_at) - set(watched["invoiced"])),
        "not_written_back": sorted(set(closed_at) - set(watched["written_back"])),
        # The salesperson's token and PATCHes are Salesforce calls too, but not kashforce's.
        "calls": {
            "kashflow": calls["kashflow"]["total"],
            "salesforce": salesforce["total"] - salesperson.calls,
        },
        "calls_by_route": {side: snapshot["calls"] for side, snapshot in calls.items()},
        "outbound_deliveries": len(outbound),
        "outbound_attempts": sum(d["attempts"] for d in outbound),
        "ledger": _ledger(database),
    }


def _latencies(closed_at: dict[str, float], seen_at: dict[str, float]) -> list[float]:
    return [round(seen_at[i] - closed_at[i], 3) for i in closed_at if i in seen_at]
