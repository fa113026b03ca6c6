"""Hostile and malformed data from KashFlow, Salesforce and the webhook, through the real flows
against the sandbox: each record ends synced or as an error-queue row with a readable message;
one bad record never holds back the others, never crashes a run, and a retry of a permanent
error stays one row (no crash loop)."""

from decimal import Decimal

import pytest
from django.test import Client

from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import SalesforceClient
from integration.models import CrossRef, Direction, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.sandbox_connections import connect_both
from tests.test_webhooks import envelope

pytestmark = pytest.mark.django_db

ODD = "Caf\u00e9 \u202eevil\u202c \U0001f600 \u0000 \u00a0Ltd"  # accents, RTL override, emoji, NUL


def run_flow(name: str, **kwargs) -> SyncRun:
    run = engine.start_run(name, Trigger.MANUAL, **kwargs)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    return run


def readable(event: SyncEvent) -> bool:
    """A message a finance person can act on: it names the record and is not a bare crash."""
    return (
        event.source_id in event.message
        and "Traceback" not in event.message
        and not event.message.startswith("Unexpected error")
    )


# KashFlow → Salesforce: odd shapes at the ledger seam -----------------------------------------

HOSTILE_CUSTOMERS = {
    "NUMNAME": {"Name": 12345},
    "NONAME": {"Name": None},
    "EMPTYNAME": {"Name": "   "},
    "CONTSTR": {"Name": "Acme", "Contacts": "bob@example.com"},
    "CONTLIST": {"Name": "Acme", "Contacts": ["bob"]},
    "NULLS": {"Name": "Acme", "Contacts": [None], "Addresses": [None]},
    "ADDRDICT": {"Name": "Acme", "Addresses": {"PostCode": 5}},
    "EXTRA": {"Name": "Acme", "Surprise": {"deep": [1, {"x": None}]}, "Contacts": [{"Email": 5}]},
    "LONG": {"Name": "L" * 10_000},
    "ODD": {"Name": ODD},
    "BADPOST": {"Name": "Acme", "Addresses": [{"Line1": "1 Road", "PostCode": "NOT A CODE!"}]},
}


def test_customers_of_every_odd_shape_end_synced_or_as_a_readable_error(sandbox):
    sandbox.reset("customers=3,accounts=0")
    connect_both(sandbox)
    run = engine.start_run("customers", Trigger.MANUAL)
    ctx = engine.RunContext(run=run, deadline=0)
    for code, fields in HOSTILE_CUSTOMERS.items():
        engine.record_change(
            ctx,
            direction=Direction.KASHFLOW_TO_SALESFORCE,
            source_object="kashflow.Customer",
            source_id=code,
            payload={"Code": code, **fields},
            version="hostile",
            target_object="salesforce.Account",
        )
    engine.execute_run(run.pk)
    run.refresh_from_db()

    assert run.status == SyncRun.Status.PARTIAL, run.summary
    events = {e.source_id: e for e in SyncEvent.objects.all()}
    assert len(events) == 3 + len(HOSTILE_CUSTOMERS)
    # The three real customers are never held back by their hostile batch-mates.
    real = [e for code, e in events.items() if code not in HOSTILE_CUSTOMERS]
    assert all(e.status == SyncEvent.Status.SUCCEEDED for e in real)
    for code in HOSTILE_CUSTOMERS:
        event = events[code]
        assert event.status in (SyncEvent.Status.SUCCEEDED, SyncEvent.Status.FAILED_PERMANENT)
        if event.status == SyncEvent.Status.FAILED_PERMANENT:
            assert readable(event), event.message
    assert events["NONAME"].status == SyncEvent.Status.FAILED_PERMANENT
    assert "the customer has no name" in events["NONAME"].message
    assert events["CONTSTR"].error_code == "UNREADABLE_RECORD"


# KashFlow → Salesforce: odd values through the real API ---------------------------------------


def test_a_customer_with_odd_text_and_an_invalid_email_fails_alone_and_stays_one_row(sandbox):
    sandbox.reset("customers=4,accounts=0")
    salesforce, kashflow = connect_both(sandbox)
    kf, sf = KashFlowClient(kashflow), SalesforceClient(salesforce)
    bad = next(iter(kf.customers()))
    contacts = bad["Contacts"]
    contacts[0]["Email"] = "bob@@example"
    kf.update_customer(bad["Code"], {"Name": ODD.replace("\u0000", "") + " " + "x" * 300})
    kf.update_customer(bad["Code"], {"Contacts": contacts})

    run = run_flow("customers")

    assert (run.status, run.written_count, run.failed_count) == (SyncRun.Status.PARTIAL, 3, 1)
    error = SyncEvent.objects.unresolved().get()
    assert error.source_id == bad["Code"] and readable(error)
    assert "invalid email address: bob@@example" in error.message
    # The Account itself went, its name cut to what Salesforce holds.
    [account] = sf.query(f"SELECT Name FROM Account WHERE ExternalID__c = '{bad['Code']}'")
    assert len(account["Name"]) <= 255 and account["Name"].startswith("Caf\u00e9")

    for attempt in (2, 3):  # someone retries; nothing was fixed
        engine.retry_events([error.pk], None)
        run_flow("customers")
        error.refresh_from_db()
        assert (error.status, error.attempts) == (SyncEvent.Status.FAILED_PERMANENT, attempt)
        assert SyncEvent.objects.filter(source_id=bad["Code"]).count() == 1
    assert SyncEvent.objects.unresolved().count() == 1


# Salesforce → KashFlow -----------------------------------------------------------------------

INVOICE_SEED = "customers=3,accounts=6,products=12,opportunities=40,won_uninvoiced=6"


def won(sf) -> list[dict]:
    return list(
        sf.query(
            "SELECT Id, Name, AccountId, Amount FROM Opportunity "
            "WHERE IsWon = true AND Amount > 0 AND KashFlow_Invoice_Number__c = null"
        )
    )


def test_a_pushed_opportunity_deleted_before_it_is_invoiced_is_set_aside_saying_so(sandbox):
    sandbox.reset(INVOICE_SEED)
    salesforce, _ = connect_both(sandbox)
    salesforce.organization_id = sandbox.info["salesforce"]["organization_id"]
    salesforce.set_secrets(outbound_secret="p" * 32)
    salesforce.save()
    sf = SalesforceClient(salesforce)
    gone, *others = won(sf)
    response = Client().post(
        f"/hooks/salesforce/outbound/{'p' * 32}/",
        envelope(("04l000000000001AAA", gone["Id"]), org=salesforce.organization_id),
        content_type="text/xml",
    )
    assert response.status_code == 200
    sf.delete([gone["Id"]])
    run_flow("products")  # the invoices wait for their products' links

    run = run_flow("invoices")

    # Not an error for a person (nothing to fix), but never silent: the ledger says why.
    event = SyncEvent.objects.get(source_id=gone["Id"])
    assert event.status == SyncEvent.Status.SKIPPED, event.message
    assert event.message == (
        f"Opportunity {gone['Id']} is no longer Closed Won with an amount (or was deleted), "
        "so no invoice was made."
    )
    # The others were invoiced all the same.
    assert run.written_count == len(others)
    assert CrossRef.objects.filter(object_type="invoice", kashflow_key__isnull=False).count() == (
        len(others)
    )


def test_negative_lines_and_a_product_kashflow_does_not_know_are_invoiced_as_sold(sandbox):
    """A credit line (negative price) and a product only Salesforce has are real deals, not
    errors: the invoice carries them, to the penny."""
    sandbox.reset(INVOICE_SEED)
    salesforce, kashflow = connect_both(sandbox)
    sf, kf = SalesforceClient(salesforce), KashFlowClient(kashflow)
    credit, unknown, *_ = won(sf)
    [line] = list(
        sf.query(f"SELECT Id FROM OpportunityLineItem WHERE OpportunityId = '{credit['Id']}'")
    )[:1]
    sf.update("OpportunityLineItem", [{"Id": line["Id"], "UnitPrice": Decimal("-50.00")}])
    [standard] = list(sf.query("SELECT Id FROM Pricebook2 WHERE IsStandard = true"))
    [ghost] = sf.create("Product2", [{"Name": f"Ghost {ODD[:8]}", "ProductCode": "GHOST-1"}])
    [entry] = sf.create(
        "PricebookEntry",
        [{"Pricebook2Id": standard["Id"], "Product2Id": ghost.id, "UnitPrice": Decimal("10")}],
    )
    sf.create(
        "OpportunityLineItem",
        [
            {
                "OpportunityId": unknown["Id"],
                "PricebookEntryId": entry.id,
                "Quantity": 1,
                "UnitPrice": Decimal("10.00"),
            }
        ],
    )
    run_flow("products")  # KashFlow learns the product only Salesforce had, and both are linked

    run = run_flow("invoices")

    assert run.failed_count == 0, list(SyncEvent.objects.values_list("message", flat=True))
    [invoice] = kf.find_invoices_by_reference(credit["Id"])
    assert any(Decimal(str(line["Rate"])) == Decimal("-50.00") for line in invoice["LineItems"])
    [invoice] = kf.find_invoices_by_reference(unknown["Id"])
    assert any(Decimal(str(line["Rate"])) == Decimal("10.00") for line in invoice["LineItems"])
