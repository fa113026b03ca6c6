"""After a full run of every flow against the sandbox with faults injected (expired tokens, 500s,
writes whose answer is lost), connection checks with wrong credentials and Outbound Messages
that are refused, no password, security token, consumer secret, private key, memorable word,
Outbound secret or session/access token appears in plain text: not in the database file's raw
bytes, not in anything logged, not in any stored error (SyncEvent.message, SyncRun.summary,
Connection.last_check_message, django-q's Failure rows) and not in the audit trail."""

import logging
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.apps import apps
from django.db import connection as db
from django.test import Client
from django.utils import timezone
from django_q.models import Failure

from integration.clients import http
from integration.clients.check import check_connection
from integration.mapping_defaults import install_default_mappings
from integration.models import AuditEntry, Connection, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.factories import KashFlowConnectionFactory
from tests.sandbox_connections import connect_both, salesforce_connection, set_faults
from tests.test_webhooks import envelope

SEED = "customers=8,accounts=6,products=12,opportunities=30,won_uninvoiced=6,invoices=12"
OUTBOUND_SECRET = "Outb0und-path-secret-that-is-long-enough"


def a_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def pem_lines(pem: str) -> list[str]:
    """A PEM's base64 lines: any one of them in plain text would be a leak."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


@pytest.fixture
def sessions(monkeypatch):
    """Every session or access token kashforce obtains during the test."""
    seen = []
    save = Connection.save_session

    def remember(self, session):
        seen.extend(
            value
            for key, value in session.items()
            if isinstance(value, str) and ("token" in key or "session" in key)
        )
        save(self, session)

    monkeypatch.setattr(Connection, "save_session", remember)
    return seen


def run_flow(name: str) -> SyncRun:
    run = engine.start_run(name, Trigger.MANUAL)
    engine.execute_run(run.pk, hand_over=False)
    run.refresh_from_db()
    return run


def wrong_connections(sandbox) -> tuple[list[Connection], list[str]]:
    """Inactive connections to the sandbox with wrong secrets, and those secrets."""
    info = sandbox.info
    wrong_key = a_private_key()
    wrong = {
        "kf": {"password": "Wr0ng-KashFlow-Password", "memorable_word": "wrongmemorable"},
        "sf_password": {"password": "Wr0ng-SF-Password", "security_token": "WRONGtoken12345"},
        "sf_client_credentials": {"consumer_secret": "WRONG" + "C0NSUMER" * 6},
        "sf_jwt": {"private_key": wrong_key},
    }
    made = [
        KashFlowConnectionFactory(
            name="Wrong KashFlow",
            is_active=False,
            base_url=info["kashflow"]["base_url"] + "/v2",
            username=info["kashflow"]["username"],
            secrets=wrong["kf"],
        )
    ]
    for method in ("sf_password", "sf_client_credentials", "sf_jwt"):
        connection = salesforce_connection(
            sandbox, method=method, name=f"Wrong {method}", is_active=False
        )
        connection.set_secrets(**wrong[method])
        connection.save()
        made.append(connection)
    values = [v for secrets in wrong.values() for v in secrets.values() if v != wrong_key]
    values += pem_lines(wrong_key)
    return made, values


def known_secrets(sandbox, salesforce, kashflow) -> list[str]:
    kf, sf = sandbox.info["kashflow"], sandbox.info["salesforce"]
    values = [
        kf["password"],
        kf["memorable_word"],
        sf["password"],
        sf["security_token"],
        sf["consumer_secret"],
        OUTBOUND_SECRET,
    ]
    values += pem_lines(Path(sf["jwt_private_key_file"]).read_text())
    return values


def database_bytes(tmp_path) -> bytes:
    """The test database as a file: SQLite's backup API copies it page by page."""
    db.ensure_connection()
    copy = sqlite3.connect(tmp_path / "copy.sqlite3")
    db.connection.backup(copy)
    copy.close()
    return (tmp_path / "copy.sqlite3").read_bytes()


@pytest.mark.slow
def test_no_secret_in_the_database_file_the_logs_or_any_stored_error(
    transactional_db, sandbox, sessions, caplog, monkeypatch, tmp_path
):
    if db.vendor != "sqlite":
        pytest.skip("reads the SQLite file's raw bytes")
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(http, "sleep", lambda seconds: None)
    # An earlier transactional test may have flushed the default mappings migration 0004 made.
    install_default_mappings(apps)
    sandbox.reset(SEED)
    salesforce, kashflow = connect_both(sandbox)
    salesforce.organization_id = sandbox.info["salesforce"]["organization_id"]
    salesforce.set_secrets(outbound_secret=OUTBOUND_SECRET)
    salesforce.save()

    # Faults: tokens expire mid-run, 500s, and writes that commit but whose answer is lost.
    set_faults(
        sandbox,
        "kashflow",
        ("GET /v2/customers", "expire_token", 0.3),
        ("GET /v2/invoices", "500", 0.3),
        ("POST /v2/invoices", "ambiguous", 0.5),
        ("PUT", "500", 0.2),
    )
    set_faults(
        sandbox,
        "salesforce",
        ("GET /services/data", "expire_token", 0.2),
        ("PATCH", "ambiguous", 0.3),
        ("POST /services/data", "500", 0.2),
    )
    for flow in ("customers", "products", "invoices", "payments"):
        run_flow(flow)
    # And again with the faults gone, so that retries happen and succeed.
    set_faults(sandbox, "kashflow")
    set_faults(sandbox, "salesforce")
    SyncEvent.objects.retrying().update(next_attempt_at=timezone.now())
    for flow in ("customers", "products", "invoices", "payments"):
        run_flow(flow)

    # Checks with wrong credentials produce error messages from both systems.
    wrong, wrong_values = wrong_connections(sandbox)
    for connection in [*wrong, salesforce, kashflow]:
        check_connection(connection)
    assert Connection.objects.filter(status=Connection.Status.FAILING).count() >= 4

    # Outbound Messages refused on the right path (bad XML, another org), so errors are logged.
    path = f"/hooks/salesforce/outbound/{OUTBOUND_SECRET}/"
    client = Client()
    assert client.post(path, b"<not-xml", content_type="text/xml").status_code == 400
    other_org = envelope(("04l1", "0065g00000Opp01AAA"), org="00D000000000001AAA")
    assert client.post(path, other_org, content_type="text/xml").status_code == 403

    forbidden = [
        *known_secrets(sandbox, salesforce, kashflow),
        *wrong_values,
        *sessions,
    ]
    assert len(sessions) >= 2, "the run signed in to both systems"
    forbidden = sorted({value for value in forbidden if len(value) >= 8})

    raw = database_bytes(tmp_path)
    stored = [
        *SyncEvent.objects.values_list("message", flat=True),
        *SyncRun.objects.values_list("summary", flat=True),
        *Connection.objects.values_list("last_check_message", flat=True),
        *AuditEntry.objects.values_list("summary", flat=True),
        *(f"{f.result} {f.args} {f.kwargs}" for f in Failure.objects.all()),
    ]
    # Everything logged but factory_boy's own debug lines (test code, echoing the factories'
    # arguments); exceptions with their tracebacks included.
    handler = logging.StreamHandler()
    logged = [
        handler.format(record) for record in caplog.records if not record.name.startswith("factory")
    ]
    # Django logs each refused request with its path, which holds the Outbound secret: the
    # redaction filter on the log handler must have replaced it.
    assert any("outbound/[redacted]/" in text for text in logged)
    # The run did meet the faults, and the wrong credentials produced their messages.
    assert SyncEvent.objects.filter(status=SyncEvent.Status.SUCCEEDED).count() >= 8
    assert SyncEvent.objects.filter(attempts__gt=1).exists()  # failed once, then retried
    assert any("rejected" in text for text in stored)
    for value in forbidden:
        assert value.encode() not in raw, f"a secret is in the database file: {value[:4]}…"
        for text in stored:
            assert value not in text, f"a secret is in a stored error: {text[:200]}"
        for text in logged:
            assert value not in text, f"a secret is in the log: {text[:200]}"
