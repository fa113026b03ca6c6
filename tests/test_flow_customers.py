"""Customers flow end to end: KashFlow customers → Salesforce Accounts and Contacts, over real
sockets against the sandbox, with the real clients."""

from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import SalesforceClient
from integration.models import CrossRef, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.fixtures_sandbox import control
from tests.sandbox_connections import connect_both

pytestmark = pytest.mark.django_db


@pytest.fixture
def org(sandbox):
    salesforce, kashflow = connect_both(sandbox)
    return SimpleNamespace(
        sandbox=sandbox, salesforce=SalesforceClient(salesforce), kashflow=KashFlowClient(kashflow)
    )


def run_customers(**kwargs) -> SyncRun:
    run = engine.start_run("customers", Trigger.MANUAL, **kwargs)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    return run


def stats(sandbox, system):
    return control(sandbox.info["control"][system], "stats")


def reset_stats(sandbox):
    for system in ("salesforce", "kashflow"):
        control(sandbox.info["control"][system], "stats/reset", {})


def test_initial_load_upserts_accounts_and_contacts_in_batches_of_200(org):
    org.sandbox.reset("customers=450,accounts=0")
    reset_stats(org.sandbox)
    run = run_customers()
    assert run.status == SyncRun.Status.SUCCEEDED, run.summary
    assert (run.read_count, run.written_count, run.failed_count) == (450, 450, 0)
    accounts = list(org.salesforce.query("SELECT Id, Name, ExternalID__c FROM Account"))
    assert len(accounts) == 450
    assert CrossRef.objects.filter(object_type="customer").count() == 450
    contacts = list(org.salesforce.query("SELECT Id, AccountId, ExternalID__c FROM Contact"))
    assert len(contacts) == 450 and all(c["AccountId"] for c in contacts)
    calls = stats(org.sandbox, "salesforce")["calls"]
    upserts = sum(n for route, n in calls.items() if "composite/sobjects" in route)
    assert upserts == 6  # 3 batches x (Accounts + Contacts)
    kashflow_calls = stats(org.sandbox, "kashflow")["total"]
    assert kashflow_calls <= 2 + 3  # sign-in (2) + 3 pages of 200


def test_collect_records_the_customers_a_page_at_a_time(org):
    org.sandbox.reset("customers=450,accounts=0")
    run = engine.start_run("customers", Trigger.MANUAL)
    ctx = engine.RunContext(run=run, deadline=float("inf"))
    with CaptureQueriesContext(connection) as queries:
        engine.get_flow("customers").collect(ctx)
    assert SyncEvent.objects.count() == 450 == ctx.recorded
    ledger = [q["sql"] for q in queries if '"integration_syncevent"' in q["sql"]]
    # Per page of 200: read the known keys and the waiting events, insert (SQLite: in statements
    # of 45 rows). One customer at a time, it was three queries each.
    assert len(ledger) == 3 * 2 + (5 + 5 + 2 if connection.vendor == "sqlite" else 3)


def test_nothing_changed_costs_a_handful_of_calls_and_writes_nothing(org):
    org.sandbox.reset("customers=300,accounts=0")
    run_customers()
    reset_stats(org.sandbox)
    again = run_customers()
    assert again.status == SyncRun.Status.SUCCEEDED
    assert again.written_count == 0
    assert stats(org.sandbox, "salesforce")["total"] == 0
    assert stats(org.sandbox, "kashflow")["total"] <= 3


def test_one_changed_customer_is_one_write(org):
    org.sandbox.reset("customers=50,accounts=0")
    run_customers()
    code = next(iter(org.kashflow.customers()))["Code"]
    org.kashflow.update_customer(code, {"Name": "Renamed & Sons Ltd"})
    reset_stats(org.sandbox)
    run = run_customers()
    assert run.written_count == 1, run.summary
    account = next(org.salesforce.query(f"SELECT Name FROM Account WHERE ExternalID__c = '{code}'"))
    assert account["Name"] == "Renamed & Sons Ltd"
    calls = stats(org.sandbox, "salesforce")["calls"]
    assert sum(n for route, n in calls.items() if "composite/sobjects" in route) == 2


def test_running_twice_creates_nothing_new(org):
    org.sandbox.reset("customers=20,accounts=0")
    run_customers()
    SyncEvent.objects.all().delete()
    CrossRef.objects.all().update(salesforce_hash="")  # forget what was sent: upserts again
    run_customers()
    assert len(list(org.salesforce.query("SELECT Id FROM Account"))) == 20
    assert len(list(org.salesforce.query("SELECT Id FROM Contact"))) == 20


def test_a_full_run_puts_right_what_was_changed_by_hand_in_salesforce(org):
    org.sandbox.reset("customers=10,accounts=0")
    run_customers()
    account = next(org.salesforce.query("SELECT Id, Name, ExternalID__c FROM Account LIMIT 1"))
    org.salesforce.update("Account", [{"Id": account["Id"], "Name": "Typed over in Salesforce"}])
    assert run_customers().written_count == 0  # an incremental run trusts what it sent
    full = run_customers(full=True)
    assert full.written_count == 1 and full.skipped_count == 9, full.summary
    fixed = next(org.salesforce.query(f"SELECT Name FROM Account WHERE Id = '{account['Id']}'"))
    assert fixed["Name"] != "Typed over in Salesforce"


def test_dry_run_shows_the_payloads_and_writes_nothing(org):
    org.sandbox.reset("customers=3,accounts=0")
    reset_stats(org.sandbox)
    plans = engine.dry_run("customers")
    assert len(plans) == 6  # an Account and a Contact each
    assert {p.target_object for p in plans} == {"salesforce.Account", "salesforce.Contact"}
    assert all(p.payload["ExternalID__c"] for p in plans)
    calls = stats(org.sandbox, "salesforce")["calls"]
    assert not any("composite" in route for route in calls)
    assert SyncEvent.objects.count() == 0
    assert list(org.salesforce.query("SELECT Id FROM Account")) == []


def test_a_customer_salesforce_refuses_lands_in_the_error_queue_with_the_reason(org):
    org.sandbox.reset("customers=2,accounts=0")
    bad = next(iter(org.kashflow.customers()))
    contacts = bad["Contacts"]
    contacts[0]["Email"] = "not-an-email"
    org.kashflow.update_customer(bad["Code"], {"Contacts": contacts})
    run = run_customers()
    assert run.status == SyncRun.Status.PARTIAL
    error = SyncEvent.objects.unresolved().get()
    assert error.source_id == bad["Code"]
    assert "Contact was not" in error.message and "mail" in error.message.lower()


def test_a_salesforce_outage_is_retried_later_not_lost(org):
    org.sandbox.reset("customers=5,accounts=0")
    control(
        org.sandbox.info["control"]["salesforce"],
        "faults",
        {"rules": [{"match": "PATCH /services/data", "kind": "503", "rate": 1.0}]},
    )
    run = run_customers()
    assert run.failed_count == 5
    assert SyncEvent.objects.retrying().count() == 5
    control(org.sandbox.info["control"]["salesforce"], "faults", {"rules": []})
    SyncEvent.objects.update(next_attempt_at=None)
    SyncEvent.objects.filter(status="failed_transient").update(status="pending")
    retry = run_customers()
    assert retry.written_count == 5
    assert len(list(org.salesforce.query("SELECT Id FROM Account"))) == 5


def test_contacts_refused_by_an_outage_are_retried_while_their_accounts_stay(org):
    org.sandbox.reset("customers=4,accounts=0")
    control(
        org.sandbox.info["control"]["salesforce"],
        "faults",
        {
            "rules": [
                {
                    "match": "PATCH /services/data/v59.0/composite/sobjects/Contact",
                    "kind": "503",
                    "rate": 1.0,
                }
            ]
        },
    )
    run = run_customers()
    assert run.failed_count == 4
    assert SyncEvent.objects.retrying().count() == 4
    assert len(list(org.salesforce.query("SELECT Id FROM Account"))) == 4
    assert list(org.salesforce.query("SELECT Id FROM Contact")) == []
