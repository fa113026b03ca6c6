"""A refused API sign-in (KashFlow or Salesforce) is tried once: runs stop signing in with those
credentials until an admin changes them or presses Test, and the overview says so.

Real sockets against the sandbox; the simulators count the sign-in attempts they answer."""

import pytest

from integration.clients.check import check_connection
from integration.forms import ConnectionForm
from integration.models import Connection, SyncRun, Trigger
from integration.sync import engine
from tests.fake_api import use_fast_retries
from tests.fixtures_sandbox import control
from tests.sandbox_connections import (
    calls,
    kashflow_connection,
    org_switches,
    salesforce_connection,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_retries(settings, monkeypatch):
    return use_fast_retries(settings, monkeypatch)


def scheduled_run(flow="payments") -> SyncRun:
    run = engine.start_run(flow, Trigger.SCHEDULE)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    return run


def kashflow_account(sandbox) -> dict:
    return control(sandbox.info["control"]["kashflow"], "account", {})


def sign_ins(sandbox, system="kashflow") -> int:
    needle = "sessiontoken" if system == "kashflow" else "Soap/u"
    return calls(sandbox, system, needle)


def test_a_refused_kashflow_sign_in_is_tried_once_not_every_minute(sandbox):
    salesforce_connection(sandbox)
    kashflow_connection(sandbox, password="an-old-password")
    control(sandbox.info["control"]["kashflow"], "stats/reset", {})

    runs = [scheduled_run() for _ in range(6)]  # six minutes of the schedule

    assert calls(sandbox, "kashflow", "POST /v2/sessiontoken") == 1
    assert kashflow_account(sandbox) == {"api_disabled": False, "locked": False, "failures": 1}
    assert runs[0].status == SyncRun.Status.FAILED
    reason = Connection.objects.get(kind="kashflow").sign_in_pause_reason
    assert reason.startswith("KashFlow refused the sign-in at ")
    assert reason.endswith(
        "scheduled syncs are paused until an admin updates the password or memorable word "
        "or presses Test."
    )
    for run in runs[1:]:
        assert run.status == SyncRun.Status.WAITING
        assert run.summary == reason
    # One waiting run says so, not one a minute: the schedule and the sweeper reuse it.
    assert len({run.pk for run in runs[1:]}) == 1
    assert SyncRun.objects.filter(flow="payments").count() == 2


def test_the_overview_says_in_plain_words_that_syncs_are_paused(sandbox, ops_client):
    salesforce_connection(sandbox)
    kashflow_connection(sandbox, password="an-old-password")
    scheduled_run()

    page = ops_client.get("/").content.decode()

    reason = Connection.objects.get(kind="kashflow").sign_in_pause_reason
    assert "KashFlow refused the sign-in at " in page
    assert reason in page
    assert "Check the username and password, then press Test." in page


def test_pressing_test_tries_once_more_and_a_success_resumes_the_schedule(sandbox):
    salesforce_connection(sandbox)
    connection = kashflow_connection(sandbox, password="an-old-password")
    scheduled_run()
    # The finance user fixes the password in KashFlow to match (the sandbox's is fixed), so
    # here the stored one is put right without the form: only Test may clear the pause.
    connection.refresh_from_db()
    connection.set_secrets(password=sandbox.info["kashflow"]["password"])
    Connection.objects.filter(pk=connection.pk).update(
        encrypted_secrets=connection.encrypted_secrets
    )
    assert scheduled_run().status == SyncRun.Status.WAITING

    assert check_connection(Connection.objects.get(pk=connection.pk)).ok

    assert Connection.objects.get(pk=connection.pk).sign_in_refused_at is None
    assert scheduled_run().status == SyncRun.Status.SUCCEEDED


def test_a_refused_test_keeps_the_pause_and_costs_one_attempt(sandbox):
    connection = kashflow_connection(sandbox, password="an-old-password")
    check_connection(connection)
    control(sandbox.info["control"]["kashflow"], "stats/reset", {})

    assert not check_connection(Connection.objects.get(pk=connection.pk)).ok

    assert calls(sandbox, "kashflow", "POST /v2/sessiontoken") == 1
    assert Connection.objects.get(pk=connection.pk).sign_in_refused_at is not None


def test_saving_new_credentials_lifts_the_pause(sandbox):
    connection = kashflow_connection(sandbox, password="an-old-password")
    check_connection(connection)
    connection.refresh_from_db()
    form = ConnectionForm(
        {
            "name": connection.name,
            "kind": connection.kind,
            "environment": connection.environment,
            "auth_method": connection.auth_method,
            "base_url": connection.base_url,
            "username": connection.username,
            "password": sandbox.info["kashflow"]["password"],
            "is_active": "on",
        },
        instance=connection,
    )
    assert form.is_valid(), form.errors
    form.save()

    connection.refresh_from_db()
    assert connection.sign_in_refused_at is None
    assert check_connection(connection).ok


def test_a_refused_salesforce_sign_in_pauses_the_same_way(sandbox):
    org_switches(sandbox, soap_login_enabled=True)  # an older org, where password sign-in works
    salesforce_connection(
        sandbox,
        method="sf_password",
        secrets={"password": "Wrong-Pass-99", "security_token": "XYZTOKEN1234"},
    )
    kashflow_connection(sandbox)
    control(sandbox.info["control"]["salesforce"], "stats/reset", {})

    runs = [scheduled_run("products") for _ in range(4)]

    connection = Connection.objects.get(kind="salesforce")
    assert connection.sign_in_refused_at is not None
    assert connection.sign_in_pause_reason.startswith("Salesforce refused the sign-in at ")
    assert "admin updates the credentials or presses Test" in connection.sign_in_pause_reason
    assert [run.status for run in runs[1:]] == [SyncRun.Status.WAITING] * 3
    stats = control(sandbox.info["control"]["salesforce"], "stats")
    logins = sum(n for route, n in stats["calls"].items() if "Soap" in route or "oauth2" in route)
    assert logins == 1
