"""Customers flow end to end: KashFlow customers → Salesforce Accounts and Contacts, over real
sockets against the sandbox, with the real clients."""

from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import SalesforceClient
from integration.models import CrossRef, SyncEvent, SyncRun, Trigger
from integration.sync import customers, engine
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
    # of 39 rows). One customer at a time, it was three queries each.
    assert len(ledger) == 3 * 2 + (6 + 6 + 2 if connection.vendor == "sqlite" else 3)


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


def ledger_writes(queries) -> dict[str, int]:
    """UPDATE statements per ledger table."""
    tables = ("integration_syncevent", "integration_crossref")
    return {
        table: sum(q["sql"].startswith(f'UPDATE "{table}"') for q in queries) for table in tables
    }


def test_a_batch_s_outcomes_cost_a_few_statements_and_match_their_cross_references(org):
    org.sandbox.reset("customers=450,accounts=0")
    with CaptureQueriesContext(connection) as queries:
        run = run_customers()
    assert (run.read_count, run.written_count, run.progress_done) == (450, 450, 450)
    # Per batch of 200: the claim and one UPDATE of the outcomes; one of the hashes. A save per
    # customer before (453 UPDATEs of the events).
    assert ledger_writes(queries) == {"integration_syncevent": 3 + 3, "integration_crossref": 3}
    refs = {ref.kashflow_key: ref for ref in CrossRef.objects.filter(object_type="customer")}
    for event in SyncEvent.objects.all():
        ref = refs[event.source_id]
        assert event.status == SyncEvent.Status.SUCCEEDED
        assert event.target_id == ref.salesforce_id and event.target_id.startswith("001")
        assert event.content_hash == ref.salesforce_hash and len(event.content_hash) == 64
        assert (event.message, event.error_class, event.error_code) == ("", "", "")
        assert (event.claimed_at, event.next_attempt_at) == (None, None)
        assert event.finished_at == event.updated_at and event.finished_at > event.created_at
        assert ref.salesforce_synced_at is not None


def test_unchanged_customers_of_a_full_run_are_one_statement_a_batch(org):
    org.sandbox.reset("customers=10,accounts=0")
    run_customers()
    with CaptureQueriesContext(connection) as queries:
        full = run_customers(full=True)
    assert (full.skipped_count, full.written_count) == (10, 0)
    assert ledger_writes(queries) == {"integration_syncevent": 1 + 1, "integration_crossref": 0}
    refs = dict(CrossRef.objects.filter(object_type="customer").values_list("kashflow_key", "pk"))
    skipped = SyncEvent.objects.filter(run=full)
    assert {event.status for event in skipped} == {SyncEvent.Status.SKIPPED}
    for event in skipped:
        assert event.message == "Unchanged since the last sync."
        ref = CrossRef.objects.get(pk=refs[event.source_id])
        assert event.target_id == ref.salesforce_id and event.finished_at is not None


def test_each_customer_keeps_its_own_warning_in_a_batch(org):
    # Three of six customers match an Account of the same name without an External ID.
    org.sandbox.reset("customers=6,accounts=3")
    run = run_customers()
    assert run.written_count == 6, run.summary
    messages = sorted(SyncEvent.objects.values_list("message", flat=True))
    assert messages == [""] * 3 + ["Matched to the existing Account of the same name."] * 3


def test_a_customer_swept_from_a_slow_worker_is_left_to_the_ledger_and_synced_later(
    org, monkeypatch
):
    """Worker A is slow: before it records its batch, the sweeper fails one of its customers
    for a dead worker's. A records the others; that one stays failed, with its link but not
    its hash, counts as failed, and the retry syncs it."""
    org.sandbox.reset("customers=5,accounts=0")
    real_succeeded = customers._succeeded
    swept = []

    def slow_succeeded(done, links):
        taken = SyncEvent.objects.get(pk=done[2][0].event.pk)
        taken.mark_failed("The worker stopped while syncing this record.", permanent=False)
        swept.append(taken)
        return real_succeeded(done, links)

    monkeypatch.setattr(customers, "_succeeded", slow_succeeded)
    run = run_customers()
    monkeypatch.setattr(customers, "_succeeded", real_succeeded)
    assert (run.written_count, run.failed_count, run.progress_done) == (4, 1, 5)
    event = SyncEvent.objects.get(pk=swept[0].pk)
    assert event.status == SyncEvent.Status.FAILED_TRANSIENT and "stopped" in event.message
    assert event.target_id == ""
    ref = CrossRef.objects.get(object_type="customer", kashflow_key=event.source_id)
    assert ref.salesforce_id and ref.salesforce_hash == ""
    others = CrossRef.objects.filter(object_type="customer").exclude(pk=ref.pk)
    assert all(other.salesforce_hash for other in others)
    SyncEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())
    retry = run_customers()
    assert retry.written_count == 1, retry.summary
    event.refresh_from_db()
    assert event.status == SyncEvent.Status.SUCCEEDED and event.target_id == ref.salesforce_id
