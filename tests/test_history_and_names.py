"""Issue #19 cases 3 and 4: one line per attempt on a record's timeline, and records named the
way people name them (deal, account, customer code, invoice number, amount), found by any of
those names."""

from datetime import timedelta
from unittest import mock

import pytest
from django.urls import reverse
from django.utils import timezone

from integration.clients.salesforce import SalesforceClient
from integration.models import SyncAttempt, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests import factories
from tests.sandbox_connections import connect_both
from tests.test_flow_invoices import SEED, link_products, run_invoices

pytestmark = pytest.mark.django_db

TIMELINE = reverse("dashboard:timeline")
ERRORS = reverse("dashboard:errors")
DEAL = "0068d000000006XAAQ"


def record(run: SyncRun, **change) -> SyncEvent:
    ctx = engine.RunContext(run=run, deadline=float("inf"))
    return engine.record_change(ctx, **change)


def deal_change(**payload) -> dict:
    return {
        "direction": "sf_to_kf",
        "source_object": "salesforce.Opportunity",
        "source_id": DEAL,
        "payload": {"Id": DEAL, "SystemModstamp": "2026-12-03T10:00:00.000+0000"},
        "version": "won",
        "target_object": "kashflow.Invoice",
        "label": engine.describe(
            engine.Change("", "salesforce.Opportunity", DEAL, payload or DEAL_FIELDS)
        )[0],
    }


DEAL_FIELDS = {
    "Id": DEAL,
    "Name": "Harbour renewal 2027",
    "Account": {"Name": "Harbour Freight Ltd"},
    "Amount": 1200.5,
}


def claim(event: SyncEvent) -> SyncEvent:
    event = SyncEvent.objects.get(pk=event.pk)
    SyncEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())
    assert event.claim()
    return event


def at(minutes: int):
    moment = timezone.now().replace(microsecond=0) - timedelta(minutes=60 - minutes)
    return mock.patch("django.utils.timezone.now", return_value=moment)


@pytest.fixture
def retried_deal():
    """A deal that failed twice (KashFlow down, then gave up), was retried by a person and
    then synced: three attempts at different times."""
    run = factories.SyncRunFactory(flow="invoices", trigger=Trigger.SCHEDULE)
    with at(0):
        event = record(run, **deal_change())
    with at(1):
        claim(event).mark_failed("KashFlow was temporarily unavailable (HTTP 503).", False)
    with at(5):
        SyncEvent.objects.filter(pk=event.pk).update(attempts=5)  # the retries ran out
        claim(event).mark_failed("KashFlow did not answer in time.", False)
    event.refresh_from_db()
    assert event.status == SyncEvent.Status.FAILED_PERMANENT
    with at(20):
        event.retry()
        claim(event).mark_succeeded(target_id="1043", message="Invoice 1043 raised.")
    return SyncEvent.objects.get(pk=event.pk)


def test_a_retried_records_timeline_lists_every_attempt_with_its_time_and_message(
    ops_client, retried_deal
):
    page = ops_client.get(TIMELINE, {"q": DEAL}).content.decode()

    attempts = list(SyncAttempt.objects.filter(event=retried_deal))
    assert [a.status for a in attempts] == ["failed_transient", "failed_permanent", "succeeded"]
    assert [a.message for a in attempts] == [
        "KashFlow was temporarily unavailable (HTTP 503).",
        "Gave up after 6 attempts. KashFlow did not answer in time. kashforce will not try "
        "again by itself: press Retry once the cause is fixed.",
        "Invoice 1043 raised.",
    ]
    assert attempts[0].finished_at < attempts[1].finished_at < attempts[2].finished_at
    for attempt in attempts:
        local = timezone.localtime(attempt.finished_at)
        assert f"{local:%-d %b %Y %H:%M:%S}" in page
        assert attempt.message in page
    assert page.count("Failed, will retry") == 1 and "Needs attention" in page


def test_the_queue_shows_the_latest_attempts_time_after_a_retry_with_first_seen_beside_it(
    ops_client,
):
    run = factories.SyncRunFactory(flow="invoices")
    event = record(run, **deal_change())
    SyncEvent.objects.filter(pk=event.pk).update(created_at=timezone.now() - timedelta(hours=1))
    with at(2):
        claim(event).mark_failed("Nominal code 4001 does not exist.", True, "INVALID_NOMINAL")
    with at(30):
        SyncEvent.objects.get(pk=event.pk).retry()
        claim(event).mark_failed("Nominal code 4001 does not exist.", True, "INVALID_NOMINAL")
    event.refresh_from_db()

    page = ops_client.get(ERRORS).content.decode()

    latest = timezone.localtime(event.updated_at)
    first = timezone.localtime(event.created_at)
    assert latest - first >= timedelta(minutes=29)
    assert f'datetime="{latest:%Y-%m-%dT%H:%M:%S}' in page
    assert f'first seen <time datetime="{first:%Y-%m-%dT%H:%M:%S}' in page


def test_queue_timeline_and_run_rows_lead_with_the_deal_account_and_amount(ops_client):
    run = factories.SyncRunFactory(flow="invoices")
    event = record(run, **deal_change())
    claim(event).mark_failed("Nominal code 4001 does not exist.", True, "INVALID_NOMINAL")
    label = "Harbour renewal 2027 · Harbour Freight Ltd · £1,200.50"

    for url in (ERRORS, reverse("dashboard:run", args=[run.pk]), f"{TIMELINE}?q={DEAL}"):
        page = ops_client.get(url).content.decode()
        assert label in page, url
        assert DEAL in page  # the Id stays beside the name
        assert page.index(label) < page.index(f"Opportunity {DEAL}"), url


@pytest.mark.parametrize(
    "change, label",
    [
        (
            {"source_object": "kashflow.Customer", "source_id": "HARB01"},
            {"Code": "HARB01", "Name": "Harbour Freight Ltd"},
        ),
        (
            {"source_object": "kashflow.Invoice", "source_id": "1043"},
            {
                "Number": 1043,
                "CustomerCode": "HARB01",
                "CustomerName": "Harbour Freight Ltd",
                "GrossAmount": "1440.60",
            },
        ),
        (
            {"source_object": "salesforce.Opportunity", "source_id": DEAL},
            {"Name": "Hafen", "Amount": 99.5, "CurrencyIsoCode": "EUR"},
        ),
        (
            {"source_object": "kashflow.Product", "source_id": "4000:WID"},
            {"Code": "WID", "Name": "Widget", "Price": "10"},
        ),
    ],
)
def test_labels_come_from_the_payload(change, label):
    made, search = engine.describe(engine.Change("kf_to_sf", payload=label, **change))
    expected = {
        "kashflow.Customer": "Harbour Freight Ltd (HARB01)",
        "kashflow.Invoice": "Invoice 1043 · Harbour Freight Ltd (HARB01) · £1,440.60",
        "kashflow.Product": "Widget (WID) · £10.00",
        "salesforce.Opportunity": "Hafen · EUR 99.50",
    }[change["source_object"]]
    assert made == expected
    assert change["source_id"].lower() in search and search == search.lower()


@pytest.fixture
def named_records():
    run = factories.SyncRunFactory(flow="customers")
    customer = record(
        run,
        direction="kf_to_sf",
        source_object="kashflow.Customer",
        source_id="HARB01",
        payload={"Code": "HARB01", "Name": "Harbour Freight Ltd"},
        target_object="salesforce.Account",
    )
    deal_run = factories.SyncRunFactory(flow="invoices")
    deal = record(deal_run, **deal_change())
    claim(deal).mark_succeeded(target_id="1043")
    other = record(
        run,
        direction="kf_to_sf",
        source_object="kashflow.Customer",
        source_id="ZEBRA9",
        payload={"Code": "ZEBRA9", "Name": "Zebra Crossings Ltd"},
        target_object="salesforce.Account",
    )
    return customer, SyncEvent.objects.get(pk=deal.pk), other


@pytest.mark.parametrize(
    "query, expected",
    [
        ("Harbour", {"HARB01", DEAL}),  # part of a name: the customer and the deal
        ("harbour renewal", {DEAL}),  # the deal's name, any case
        ("HARB01", {"HARB01"}),  # a customer code
        ("1043", {DEAL}),  # the invoice number the deal became
        ("6XAAQ", {DEAL}),  # part of an id
    ],
)
def test_search_finds_a_record_by_any_of_its_names(ops_client, named_records, query, expected):
    response = ops_client.get(TIMELINE, {"q": query})

    found = {entry["event"].source_id for entry in response.context["entries"]}
    assert found == expected
    assert "ZEBRA9" not in response.content.decode()


def test_the_queue_search_finds_an_error_by_the_deal_name(ops_client):
    event = record(factories.SyncRunFactory(flow="invoices"), **deal_change())
    claim(event).mark_failed("Nominal code 4001 does not exist.", True, "INVALID_NOMINAL")
    factories.SyncEventFactory(status=SyncEvent.Status.FAILED_PERMANENT, message="Other")

    rows = ops_client.get(ERRORS, {"q": "harbour freight"}).context["rows"]

    assert [event.source_id for event, _ in rows] == [DEAL]


def test_timeline_query_count_does_not_grow_with_attempts(
    ops_client, retried_deal, django_assert_num_queries
):
    # session, user, permissions (2), names, cross-refs, events, their attempts, links, the kept
    # history of writes
    with django_assert_num_queries(10):
        ops_client.get(TIMELINE, {"q": DEAL})
    for _ in range(3):
        SyncAttempt.objects.create(event=retried_deal, status="failed_transient", message="x")
    with django_assert_num_queries(10):
        ops_client.get(TIMELINE, {"q": DEAL})


def test_cleanup_drops_old_successes_with_their_attempts(retried_deal):
    old = timezone.now() - timedelta(days=400)
    SyncEvent.objects.filter(pk=retried_deal.pk).update(created_at=old)

    assert engine.cleanup()["events"] == 1

    assert not SyncEvent.objects.exists() and not SyncAttempt.objects.exists()


@pytest.fixture
def salesforce(sandbox):
    sandbox.reset(SEED)
    salesforce, _ = connect_both(sandbox)
    link_products()
    return SalesforceClient(salesforce)


def test_a_real_invoices_run_names_its_records_and_search_finds_them(ops_client, salesforce):
    """Over real sockets against the sandbox: the poll's deals carry their names and amounts,
    and the timeline finds one by part of its name, its account and its invoice number."""
    [deal] = salesforce.query(
        "SELECT Id, Name, Account.Name, Amount FROM Opportunity WHERE IsWon = true AND "
        "Amount > 0 AND KashFlow_Invoice_Number__c = null ORDER BY Id LIMIT 1"
    )
    run = run_invoices()
    assert run.status == SyncRun.Status.SUCCEEDED, run.summary
    event = SyncEvent.objects.get(source_id=deal["Id"])
    assert event.label.startswith(f"{deal['Name']} · {deal['Account']['Name']} · £")
    assert f"{deal['Amount']:,.2f}" in event.label

    for query in (deal["Name"][3:12], deal["Account"]["Name"], event.target_id, deal["Id"][-6:]):
        entries = ops_client.get(TIMELINE, {"q": query}).context["entries"]
        assert deal["Id"] in {entry["event"].source_id for entry in entries}, query


def test_a_deal_in_another_currency_is_labelled_in_it(sandbox):
    from tests import test_invoice_vat_currency as vat

    sandbox.reset(vat.SEED)
    salesforce, _ = connect_both(sandbox)
    org = vat.SimpleNamespace(sandbox=sandbox, salesforce=SalesforceClient(salesforce))
    org.accounts = [a["Id"] for a in org.salesforce.query("SELECT Id FROM Account ORDER BY Name")]
    vat.multi_currency(org, EUR="1.17")
    deal = vat.won_deal(org, org.accounts[0], [vat.STANDARD], currency="EUR")

    vat.run("invoices")

    label = SyncEvent.objects.get(source_id=deal).label
    assert label.endswith("· EUR 200.00") and "£" not in label
