"""Issue #19 case 12: a trial on the sandbox says what the demo holds and offers three things to
try, with a button that closes a demo deal in the sandbox (and never in a real org)."""

import pytest
from django.urls import reverse

from integration.clients.salesforce import SalesforceClient
from integration.models import Connection, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests import factories
from tests.sandbox_connections import connect_both

pytestmark = pytest.mark.django_db


def run(flow: str) -> SyncRun:
    sync_run = engine.start_run(flow, Trigger.MANUAL)
    engine.execute_run(sync_run.pk)
    return sync_run


@pytest.fixture
def trial(sandbox, settings):
    sandbox.reset("demo")
    settings.KASHFORCE = {**settings.KASHFORCE, "SANDBOX_STATE_DIR": str(sandbox.state_dir)}
    return connect_both(sandbox)


def test_a_trial_s_overview_says_what_the_demo_holds_and_offers_three_things(trial, ops_client):
    page = ops_client.get("/").content.decode()
    assert "This is the demo: try it" in page
    assert "150 companies" in page and "400 deals" in page
    assert "Close a demo deal" in page and "Open a record" in page and "Retry an error" in page


def test_the_button_closes_a_demo_deal_whose_invoice_is_then_made(trial, ops_client):
    run("customers")
    run("products")
    response = ops_client.post(reverse("dashboard:demo_close_deal"))
    assert response.status_code == 302
    deal = ops_client.session["demo_deal"]
    salesforce = SalesforceClient(Connection.active(Connection.Kind.SALESFORCE))
    [now] = salesforce.query(f"SELECT StageName FROM Opportunity WHERE Id = '{deal['id']}'")
    assert now["StageName"] == "Closed Won"
    page = ops_client.get("/").content.decode()
    assert f"Closed “{deal['name']}”" in page.replace("&ldquo;", "“").replace("&rdquo;", "”")

    run("invoices")  # what the Outbound Message (or the next poll) starts

    invoiced = SyncEvent.objects.get(flow="invoices", source_id=deal["id"])
    assert invoiced.status == SyncEvent.Status.SUCCEEDED, invoiced.message
    assert invoiced.target_id  # the KashFlow invoice number
    assert ops_client.get(deal["timeline"]).status_code == 200


def test_no_guide_and_no_deal_closed_when_the_connections_are_not_the_sandbox(
    sandbox, settings, ops_client
):
    settings.KASHFORCE = {**settings.KASHFORCE, "SANDBOX_STATE_DIR": str(sandbox.state_dir)}
    factories.SalesforceConnectionFactory(instance_url="https://acme.my.salesforce.com")
    factories.KashFlowConnectionFactory()
    assert "This is the demo" not in ops_client.get("/").content.decode()
    response = ops_client.post(reverse("dashboard:demo_close_deal"), follow=True)
    assert "Only a trial connected to the sandbox can close demo deals" in (
        response.content.decode()
    )


def test_only_operators_may_close_a_demo_deal(trial, client):
    client.force_login(factories.UserFactory(username="nobody"))
    assert client.post(reverse("dashboard:demo_close_deal")).status_code == 403
    assert client.get(reverse("dashboard:demo_close_deal")).status_code in (403, 405)
