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
    kashflow = stats(org.sandbox, "kashflow")["calls"]
    # Sign-in (2), 3 pages of 200, and each new customer's full record (the default mapping
    # reads TelephoneNumber and Email, which the summaries lack).
    assert sum(kashflow.values()) == 2 + 3 + 450, kashflow


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


# -- The change feed under the strict simulator (issues #12, #13 case 1, #21) -------------------


def kashflow_calls(sandbox) -> dict[str, int]:
    calls = stats(sandbox, "kashflow")["calls"]
    return {
        "lists": calls.get("GET /v2/customers", 0),
        "reads": calls.get("GET /v2/customers/{code}", 0),
    }


def account_of(org, code: str) -> dict:
    soql = f"SELECT Name, Phone, BillingPostalCode FROM Account WHERE ExternalID__c = '{code}'"
    return next(org.salesforce.query(soql))


def contact_of(org, code: str) -> dict:
    soql = f"SELECT Email, Phone, LastName FROM Contact WHERE ExternalID__c = '{code}-primary'"
    return next(org.salesforce.query(soql))


def test_a_no_op_run_costs_one_list_call_per_200_customers_and_nothing_else(org):
    org.sandbox.reset("customers=450,accounts=0")
    run_customers()
    reset_stats(org.sandbox)
    again = run_customers()
    assert again.status == SyncRun.Status.SUCCEEDED, again.summary
    assert (again.read_count, again.written_count) == (0, 0)
    assert kashflow_calls(org.sandbox) == {"lists": 3, "reads": 0}  # ⌈450/200⌉, no full reads
    assert stats(org.sandbox, "kashflow")["total"] == 3
    assert stats(org.sandbox, "salesforce")["total"] == 0


def test_contact_email_phone_and_postcode_edited_in_kashflow_reach_salesforce_next_run(org):
    org.sandbox.reset("customers=250,accounts=0")
    run_customers()
    code = sorted(c["Code"] for c in org.kashflow.customers())[-1]  # on the second page
    customer = org.kashflow.get_customer(code)
    contacts = [dict(c) for c in customer["Contacts"]]
    primary = next(c for c in contacts if c["IsPrimary"])
    primary.update(Email="new.address@example.org", Telephone="0161 496 0123")
    addresses = [dict(a) for a in customer["Addresses"]]
    addresses[0]["PostCode"] = "M1 1AE"
    # The top-level phone and e-mail are cleared, so the primary contact's are what KashFlow has.
    org.kashflow.update_customer(
        code,
        {"Contacts": contacts, "Addresses": addresses, "TelephoneNumber": "", "Email": ""},
    )
    reset_stats(org.sandbox)
    run = run_customers()
    assert (run.read_count, run.written_count) == (1, 1), run.summary
    assert kashflow_calls(org.sandbox) == {"lists": 2, "reads": 1}
    assert account_of(org, code)["BillingPostalCode"] == "M1 1AE"
    assert account_of(org, code)["Phone"] == "0161 496 0123"
    contact = contact_of(org, code)
    assert (contact["Email"], contact["Phone"]) == ("new.address@example.org", "0161 496 0123")


def test_a_new_customer_reaches_salesforce_next_run(org):
    org.sandbox.reset("customers=210,accounts=0")
    run_customers()
    org.kashflow.create_customer(
        {
            "Code": "AAAA01",  # sorts first: the walk's pages shift under it
            "Name": "Quayside Analytics Ltd",
            "TelephoneNumber": "0191 496 0000",
            "Contacts": [{"Name": "Ada Quay", "Email": "ada@quayside.example", "IsPrimary": True}],
            "Addresses": [{"Line1": "1 Quay St", "Line3": "Newcastle", "PostCode": "NE1 3AF"}],
        }
    )
    reset_stats(org.sandbox)
    run = run_customers()
    assert (run.read_count, run.written_count) == (1, 1), run.summary
    assert kashflow_calls(org.sandbox) == {"lists": 2, "reads": 1}
    account = account_of(org, "AAAA01")
    assert (account["Name"], account["Phone"]) == ("Quayside Analytics Ltd", "0191 496 0000")
    assert contact_of(org, "AAAA01")["Email"] == "ada@quayside.example"


def test_a_telephone_number_edit_reaches_the_account_by_the_rolling_refresh(org, monkeypatch):
    """TelephoneNumber is not in the list summaries: the full record brings it, on the rolling
    re-read (every customer within CUSTOMER_REFRESH_HOURS), or at once with a summary change."""
    org.sandbox.reset("customers=30,accounts=0")
    run_customers()
    first, second = sorted(c["Code"] for c in org.kashflow.customers())[:2]
    org.kashflow.update_customer(first, {"TelephoneNumber": "020 7946 0999"})
    org.kashflow.update_customer(second, {"TelephoneNumber": "020 7946 0888", "Name": "Moved Ltd"})
    reset_stats(org.sandbox)
    now = run_customers()
    assert (now.read_count, now.written_count) == (1, 1), now.summary  # the name change
    assert account_of(org, second)["Phone"] == "020 7946 0888"
    assert account_of(org, first)["Phone"] != "020 7946 0999"  # its summary did not change
    assert kashflow_calls(org.sandbox) == {"lists": 1, "reads": 1}

    a_day_later = timezone.now() + customers.timedelta(hours=24, minutes=1)
    monkeypatch.setattr(customers.timezone, "now", lambda: a_day_later)
    reset_stats(org.sandbox)
    later = run_customers()
    assert later.written_count == 1, later.summary
    assert account_of(org, first)["Phone"] == "020 7946 0999"
    # Every customer was due once in the day; the 29 unchanged ones were re-read, not recorded.
    assert kashflow_calls(org.sandbox) == {"lists": 1, "reads": 30}
    assert later.read_count == 1


def test_the_refresh_is_spread_over_the_period_and_bounded_per_run(org, monkeypatch, settings):
    org.sandbox.reset("customers=40,accounts=0")
    run_customers()
    settings.KASHFORCE = {**settings.KASHFORCE, "CUSTOMER_REFRESH_PER_RUN": 5}
    start = timezone.now()
    monkeypatch.setattr(customers.timezone, "now", lambda: start + customers.timedelta(hours=12))
    reset_stats(org.sandbox)
    run_customers()
    halfway = kashflow_calls(org.sandbox)["reads"]
    assert 0 < halfway <= 5  # some are due after 12 hours, at most 5 a run


def test_a_page_without_data_fails_the_collect_and_leaves_the_feed_where_it_was(org):
    org.sandbox.reset("customers=450,accounts=0")
    run_customers()
    codes = sorted(c["Code"] for c in org.kashflow.customers())
    renamed = [codes[0], codes[300]]  # one on page 1, one on page 2
    for code in renamed:
        org.kashflow.update_customer(code, {"Name": f"Renamed {code}"})
    before = dict(
        customers.CustomerFeedEntry.objects.values_list("code", "summary_hash").order_by("code")
    )
    control(
        org.sandbox.info["control"]["kashflow"],
        "faults",
        {"rules": [{"match": "GET /v2/customers?page=2", "kind": "error_body", "rate": 1.0}]},
    )
    failed = run_customers()
    assert failed.status == SyncRun.Status.FAILED
    assert "reading changes" in failed.summary and "cannot read" in failed.summary
    assert "An error has occurred." in failed.summary
    after = dict(
        customers.CustomerFeedEntry.objects.values_list("code", "summary_hash").order_by("code")
    )
    # Page 1's change is in the ledger; page 2 and 3 were never read, so nothing moved there.
    assert {code for code in before if before[code] != after[code]} == {codes[0]}
    assert len(after) == 450  # nobody was forgotten as deleted

    control(org.sandbox.info["control"]["kashflow"], "faults", {"rules": []})
    retry = run_customers()
    assert retry.status == SyncRun.Status.SUCCEEDED, retry.summary
    for code in renamed:
        assert account_of(org, code)["Name"] == f"Renamed {code}"


def test_a_deleted_customer_is_forgotten_by_the_feed(org):
    org.sandbox.reset("customers=5,accounts=0")
    run_customers()
    code = sorted(c["Code"] for c in org.kashflow.customers())[0]
    org.kashflow._request("DELETE", f"/customers/{code}", "delete customer")
    run_customers()
    assert not customers.CustomerFeedEntry.objects.filter(code=code).exists()
    assert customers.CustomerFeedEntry.objects.count() == 4


def test_full_reads_stop_when_the_task_s_time_is_up_and_the_next_run_carries_on(org, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "KASHFLOW_READ_THREADS": 1}  # 4 reads a step
    org.sandbox.reset("customers=12,accounts=0")
    run = engine.start_run("customers", Trigger.MANUAL)
    ctx = engine.RunContext(run=run, deadline=float("inf"))
    read = ctx.kashflow.get_customer

    def slow_read(code):
        reads.append(code)
        if len(reads) == 4:
            ctx.deadline = 0  # this task's slice runs out with the 4th full record
        return read(code)

    reads = []
    ctx.kashflow.get_customer = slow_read
    engine.get_flow("customers").collect(ctx)
    assert ctx.recorded == 4 == customers.CustomerFeedEntry.objects.count()
    run.fail("test")  # let the next run collect
    rest = run_customers()
    assert rest.read_count == 8, rest.summary
    assert customers.CustomerFeedEntry.objects.count() == 12


def test_a_full_run_cut_short_leaves_the_rest_to_be_read_next_run(org, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "KASHFLOW_READ_THREADS": 1}  # 4 reads a step
    org.sandbox.reset("customers=6,accounts=0")
    run_customers()
    code = sorted(c["Code"] for c in org.kashflow.customers())[-1]
    org.kashflow.update_customer(code, {"TelephoneNumber": "020 7946 0777"})  # not in summary
    run = engine.start_run("customers", Trigger.MANUAL, full=True)
    ctx = engine.RunContext(run=run, deadline=float("inf"))
    read, reads = ctx.kashflow.get_customer, []

    def slow_read(customer_code):
        reads.append(customer_code)
        if len(reads) == 2:
            ctx.deadline = 0
        return read(customer_code)

    ctx.kashflow.get_customer = slow_read
    engine.get_flow("customers").collect(ctx)
    assert len(reads) == 4  # the step in hand is finished, then the reads stop
    run.fail("test")
    reset_stats(org.sandbox)
    rest = run_customers()
    assert kashflow_calls(org.sandbox) == {"lists": 1, "reads": 2}
    assert account_of(org, code)["Phone"] == "020 7946 0777", rest.summary


def test_a_200_customer_name_match_fits_salesforces_uri_limit(org):
    # Issue #12: 200 long company names in one IN list passed 16,384 bytes of URI (a 414,
    # which failed the whole batch). The names are cut into queries that fit.
    org.sandbox.reset("customers=0,accounts=0")
    names = [
        f"Harbour & Sons Marine Engineering (Southampton) Ltd, Units 4 to 6, No. {n:03d}"
        for n in range(200)
    ]
    for n, name in enumerate(names):
        org.kashflow.create_customer({"Code": f"HARB{n:03d}", "Name": name})
    made = org.salesforce.create("Account", [{"Name": name} for name in names])
    assert all(result.success for result in made)
    reset_stats(org.sandbox)

    run = run_customers()

    assert run.status == SyncRun.Status.SUCCEEDED, run.summary
    assert (run.written_count, run.failed_count) == (200, 0), run.summary
    accounts = list(org.salesforce.query("SELECT Id, Name, ExternalID__c FROM Account"))
    assert len(accounts) == 200  # each customer adopted its namesake, none made twice
    assert {a["Id"] for a in accounts} == {r.id for r in made}
    assert sorted(a["ExternalID__c"] for a in accounts) == [f"HARB{n:03d}" for n in range(200)]


def test_an_account_upsert_that_lost_to_a_concurrent_one_is_not_the_customers_fault(org):
    # Issue #13 case 11 / #19 case 2: two workers (or the customers and invoices flows) create
    # the same Account at once; one insert wins, the other upsert gets DUPLICATE_VALUE on
    # ExternalID__c. The engine retries it as an update: no error for a person, no duplicate.
    org.sandbox.reset("customers=12,accounts=0")
    control(
        org.sandbox.info["control"]["salesforce"],
        "faults",
        {"rules": [{"match": "PATCH /services/data", "kind": "upsert_race", "count": 1}]},
    )

    run = run_customers()

    assert stats(org.sandbox, "salesforce")["faults"] == {"upsert_race": 1}
    assert run.status == SyncRun.Status.SUCCEEDED, run.summary
    assert (run.written_count, run.failed_count) == (12, 0), run.summary
    assert set(SyncEvent.objects.values_list("status", flat=True)) == {SyncEvent.Status.SUCCEEDED}
    keys = [a["ExternalID__c"] for a in org.salesforce.query("SELECT ExternalID__c FROM Account")]
    assert len(keys) == len(set(keys)) == 12
