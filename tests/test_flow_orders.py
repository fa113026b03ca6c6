"""Invoices from activated Orders, the lock after activation, and reduction Orders as credit
notes: end to end over real sockets against the sandbox (issue #16, "Invoices from Orders")."""

from datetime import date
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.test import Client

from integration.clients.check import check_connection
from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import SalesforceClient, required_fields
from integration.models import CrossRef, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.factories import SalesforceConnectionFactory
from tests.fixtures_sandbox import control
from tests.sandbox_connections import kashflow_connection, salesforce_connection, set_faults
from tests.test_invoice_vat_currency import kashflow_customer

pytestmark = pytest.mark.django_db

SEED = "customers=0,accounts=2,products=12,opportunities=0"
REDUCED, STANDARD = "ENE-0005", "CON-0001"  # 5% and 20% in KashFlow


def make_org(sandbox, invoice_from: str):
    salesforce = salesforce_connection(sandbox, invoice_from=invoice_from)
    org = SimpleNamespace(
        sandbox=sandbox,
        connection=salesforce,
        salesforce=SalesforceClient(salesforce),
        kashflow=KashFlowClient(kashflow_connection(sandbox)),
    )
    org.accounts = [a["Id"] for a in org.salesforce.query("SELECT Id FROM Account ORDER BY Name")]
    [book] = org.salesforce.query("SELECT Id FROM Pricebook2 WHERE IsStandard = true")
    org.pricebook = book["Id"]
    run("products")  # links the products, as in a trial's first minute
    return org


@pytest.fixture
def org(sandbox):
    sandbox.reset(SEED)
    org = make_org(sandbox, "orders")
    permission(org, edit_activated_orders=True)
    return org


@pytest.fixture
def locked_org(sandbox):
    """An org whose integration user lacks Edit Activated Orders (the simulator's default)."""
    sandbox.reset(SEED)
    return make_org(sandbox, "orders")


def permission(org, **settings):
    return control(org.sandbox.info["control"]["salesforce"], "orders", settings)


def run(flow: str = "invoices") -> SyncRun:
    sync_run = engine.start_run(flow, Trigger.MANUAL)
    engine.execute_run(sync_run.pk)
    sync_run.refresh_from_db()
    return sync_run


def entries(org) -> dict[str, str]:
    found = org.salesforce.query("SELECT Id, Product2.ProductCode FROM PricebookEntry")
    return {entry["Product2"]["ProductCode"]: entry["Id"] for entry in found}


def order(org, codes=(STANDARD, REDUCED), activate=True, opportunity_id=None, currency=None):
    """An Order of the first Account with 2 units at 100.00 of each product."""
    header = {"AccountId": org.accounts[0], "EffectiveDate": date.today().isoformat(),
              "Status": "Draft", "Pricebook2Id": org.pricebook}  # fmt: skip
    if opportunity_id:
        header["OpportunityId"] = opportunity_id
    if currency:
        header["CurrencyIsoCode"] = currency
    [made] = org.salesforce.create("Order", [header])
    assert made.success, made.error
    prices = entries(org)
    items = [{"OrderId": made.id, "PricebookEntryId": prices[code], "Quantity": 2,
              "UnitPrice": 100} for code in codes]  # fmt: skip
    assert all(result.success for result in org.salesforce.create("OrderItem", items))
    if activate:
        activate_order(org, made.id)
    return made.id


def activate_order(org, order_id: str) -> None:
    [result] = org.salesforce.update("Order", [{"Id": order_id, "Status": "Activated"}])
    assert result.success, result.error


def won_deal(org) -> str:
    [made] = org.salesforce.create("Opportunity", [{
        "Name": "Won deal", "AccountId": org.accounts[0], "StageName": "Closed Won",
        "CloseDate": date.today().isoformat()}])  # fmt: skip
    prices = entries(org)
    line = {"OpportunityId": made.id, "PricebookEntryId": prices[STANDARD], "Quantity": 2,
            "UnitPrice": 100}  # fmt: skip
    assert org.salesforce.create("OpportunityLineItem", [line])[0].success
    return made.id


def read_order(org, order_id: str) -> dict:
    [record] = org.salesforce.query(
        "SELECT OrderNumber, KashFlow_Invoice_Number__c, KashFlow_Invoice_Status__c, "
        f"KashFlow_Amount_Due__c FROM Order WHERE Id = '{order_id}'"
    )
    return record


def invoices_marked(org, salesforce_id: str) -> list[dict]:
    return org.kashflow.find_invoices_by_reference(salesforce_id)


def event_of(salesforce_id: str) -> SyncEvent:
    return SyncEvent.objects.get(flow="invoices", source_id=salesforce_id)


def test_an_activated_order_becomes_one_invoice_written_back_to_the_order(org):
    order_id = order(org)
    assert run().written_count == 1
    [summary] = invoices_marked(org, order_id)  # the marker is the Order Id (801…)
    invoice = org.kashflow.get_invoice(summary["Number"])
    # Order products become lines exactly as Opportunity products do: VAT from the product.
    assert [(line["ProductCode"], line["Quantity"], line["Rate"], line["VATLevel"])
            for line in invoice["LineItems"]] == [
        (STANDARD, Decimal(2), Decimal(100), Decimal(20)),
        (REDUCED, Decimal(2), Decimal(100), Decimal(5)),
    ]  # fmt: skip
    assert invoice["NetAmount"] == Decimal("400.00")
    assert invoice["Currency"]["Code"] == "GBP"
    written = read_order(org, order_id)
    assert written["KashFlow_Invoice_Number__c"] == str(summary["Number"])
    assert written["KashFlow_Invoice_Status__c"]
    assert written["KashFlow_Amount_Due__c"] == Decimal("450.00")
    assert event_of(order_id).message.startswith(f"Invoice {summary['Number']} made in KashFlow")
    # Seen again (a full poll), it is not invoiced again.
    SyncEvent.objects.all().delete()
    full = engine.start_run("invoices", Trigger.MANUAL, full=True)
    engine.execute_run(full.pk)
    assert len(invoices_marked(org, order_id)) == 1


def test_a_draft_order_is_not_invoiced(org):
    draft = order(org, activate=False)
    assert run().written_count == 0
    assert not SyncEvent.objects.filter(source_id=draft).exists()
    assert invoices_marked(org, draft) == []
    activate_order(org, draft)
    assert run().written_count == 1
    assert len(invoices_marked(org, draft)) == 1


def test_a_locked_order_gets_a_plain_reason_and_no_second_invoice_on_retry(locked_org):
    org = locked_org
    order_id = order(org)
    number = read_order(org, order_id)["OrderNumber"]
    assert run().written_count == 0
    event = event_of(order_id)
    assert event.status == SyncEvent.Status.FAILED_PERMANENT
    assert event.error_code == "ENTITY_IS_LOCKED"
    assert (
        f"Salesforce refused to write the invoice number on Order {number} because activated "
        "orders are locked; give the integration user the Edit Activated Orders permission, "
        "then retry"
    ) in event.message
    [summary] = invoices_marked(org, order_id)
    # Retried before the permission is given: still no second invoice, the same reason.
    event.retry()
    run()
    assert event_of(order_id).error_code == "ENTITY_IS_LOCKED"
    assert len(invoices_marked(org, order_id)) == 1
    permission(org, edit_activated_orders=True)
    event_of(order_id).retry()
    assert run().written_count == 1
    assert [i["Number"] for i in invoices_marked(org, order_id)] == [summary["Number"]]
    assert read_order(org, order_id)["KashFlow_Invoice_Number__c"] == str(summary["Number"])


def test_the_connection_check_reports_the_missing_edit_activated_orders_permission(locked_org):
    result = check_connection(locked_org.connection)
    assert not result.ok
    assert "lacks the Edit Activated Orders permission" in result.message
    permission(locked_org, edit_activated_orders=True)
    assert check_connection(locked_org.connection).ok


def test_a_lost_answer_from_kashflow_makes_no_second_invoice(org):
    order_id = order(org)
    set_faults(org.sandbox, "kashflow", ("POST /v2/invoices", "ambiguous", 1.0))
    assert run().written_count == 0
    event = event_of(order_id)
    assert "will look for it" in event.message
    assert len(invoices_marked(org, order_id)) == 1  # KashFlow saved it; the answer was lost
    set_faults(org.sandbox, "kashflow")
    SyncEvent.objects.filter(pk=event.pk).update(
        status=SyncEvent.Status.PENDING, next_attempt_at=None
    )
    assert run().written_count == 1
    assert len(invoices_marked(org, order_id)) == 1
    assert "earlier attempt" in event_of(order_id).message


def test_with_both_an_order_of_an_invoiced_opportunity_is_not_invoiced_again(sandbox):
    sandbox.reset(SEED)
    org = make_org(sandbox, "both")
    permission(org, edit_activated_orders=True)
    deal = won_deal(org)
    order_id = order(org, opportunity_id=deal)
    assert run().written_count == 1
    assert len(invoices_marked(org, deal)) == 1
    assert invoices_marked(org, order_id) == []
    assert "the Opportunity wins" in event_of(order_id).message
    assert event_of(order_id).status == SyncEvent.Status.SKIPPED
    # Later runs, whatever they see, leave it at one invoice.
    SyncEvent.objects.filter(source_id=order_id).delete()
    run()
    assert invoices_marked(org, order_id) == []
    assert "already invoiced in KashFlow as" in event_of(order_id).message


def test_with_both_an_opportunity_whose_order_was_invoiced_first_is_not_invoiced_again(sandbox):
    sandbox.reset(SEED)
    org = make_org(sandbox, "both")
    permission(org, edit_activated_orders=True)
    [deal] = org.salesforce.create("Opportunity", [{
        "Name": "Open deal", "AccountId": org.accounts[0], "StageName": "Negotiation/Review",
        "CloseDate": date.today().isoformat()}])  # fmt: skip
    order_id = order(org, opportunity_id=deal.id)
    assert run().written_count == 1
    assert len(invoices_marked(org, order_id)) == 1
    org.salesforce.update("Opportunity", [{"Id": deal.id, "StageName": "Closed Won",
                                           "Amount": 400}])  # fmt: skip
    run()
    assert invoices_marked(org, deal.id) == []
    assert "Its Order" in event_of(deal.id).message
    assert event_of(deal.id).status == SyncEvent.Status.SKIPPED


def test_invoicing_from_orders_only_leaves_won_opportunities_alone(org):
    deal = won_deal(org)
    order_id = order(org)
    assert run().written_count == 1
    assert invoices_marked(org, deal) == []
    assert len(invoices_marked(org, order_id)) == 1


def test_a_reduction_order_becomes_a_credit_note_once(org):
    permission(org, reduction_orders=True)
    original = order(org, codes=(STANDARD,))
    run()
    [invoice] = invoices_marked(org, original)
    [item] = org.salesforce.query(f"SELECT Id, PricebookEntryId FROM OrderItem "
                                  f"WHERE OrderId = '{original}'")  # fmt: skip
    [reduction] = org.salesforce.create("Order", [{
        "AccountId": org.accounts[0], "EffectiveDate": date.today().isoformat(),
        "Status": "Draft", "IsReductionOrder": True, "OriginalOrderId": original}])  # fmt: skip
    assert reduction.success, reduction.error
    [made] = org.salesforce.create("OrderItem", [{
        "OrderId": reduction.id, "PricebookEntryId": item["PricebookEntryId"], "Quantity": -1,
        "UnitPrice": 100, "OriginalOrderItemId": item["Id"]}])  # fmt: skip
    assert made.success, made.error
    activate_order(org, reduction.id)
    # The product's VAT rate changed since: the credit takes the rate the invoice charged.
    [product] = [p for p in org.kashflow.products() if p["Code"] == STANDARD]
    org.kashflow.update_product(product["NominalCode"], STANDARD, {**product, "VATRate": 0})
    # Its answer lost the first time: the retry finds it, so there is still one credit note.
    set_faults(org.sandbox, "kashflow", ("POST /v2/invoices", "ambiguous", 1.0))
    run()
    set_faults(org.sandbox, "kashflow")
    SyncEvent.objects.exclude(status=SyncEvent.Status.SUCCEEDED).update(
        status=SyncEvent.Status.PENDING, next_attempt_at=None
    )
    run()
    [summary] = invoices_marked(org, reduction.id)
    credit = org.kashflow.get_invoice(summary["Number"])
    assert credit["NetAmount"] == Decimal("-100.00")
    assert credit["VATAmount"] == Decimal("-20.00")
    [line] = credit["LineItems"]
    assert line["Quantity"] == Decimal(-1)
    assert line["Description"].startswith(f"Credit for invoice {invoice['Number']}")
    assert read_order(org, reduction.id)["KashFlow_Invoice_Number__c"] == str(summary["Number"])
    assert f"for invoice {invoice['Number']}" in event_of(reduction.id).message
    assert (
        f"at 20% (the rate invoice {invoice['Number']} charged)" in event_of(reduction.id).message
    )
    run()
    assert len(invoices_marked(org, reduction.id)) == 1
    ref = CrossRef.objects.get(object_type="invoice", salesforce_id=reduction.id)
    assert ref.kashflow_key == str(summary["Number"])


def test_an_eur_order_is_invoiced_in_eur(sandbox):
    sandbox.reset(SEED)
    control(sandbox.info["control"]["salesforce"], "currencies",
            {"multi_currency": True, "corporate": "GBP", "rates": {"EUR": "1.17"}})  # fmt: skip
    org = make_org(sandbox, "orders")
    permission(org, edit_activated_orders=True)
    kashflow_customer(org, org.accounts[0], "EURO01", "IE", vat_number="IE7654321W", currency="EUR")
    order_id = order(org, codes=(STANDARD,), currency="EUR")
    assert run().written_count == 1
    [summary] = invoices_marked(org, order_id)
    invoice = org.kashflow.get_invoice(summary["Number"])
    assert invoice["Currency"]["Code"] == "EUR"
    assert invoice["NetAmount"] == Decimal("200")
    assert [line["VATLevel"] for line in invoice["LineItems"]] == [0]  # reverse charge, as deals
    assert "in EUR" in event_of(order_id).message


def test_invoicing_from_orders_needs_the_order_fields_and_with_both_its_opportunity():
    for invoice_from, expected in (
        ("opportunities", None),
        ("orders", ["KashFlow_Invoice_Number__c", "KashFlow_Invoice_Status__c",
                    "KashFlow_Amount_Due__c"]),
        ("both", ["KashFlow_Invoice_Number__c", "KashFlow_Invoice_Status__c",
                  "KashFlow_Amount_Due__c", "OpportunityId"]),
    ):  # fmt: skip
        connection = SalesforceConnectionFactory.build(invoice_from=invoice_from)
        assert required_fields(connection).get("Order") == expected


def test_the_connection_s_choice_wins_over_the_variable(settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "INVOICE_FROM": "both"}
    assert SalesforceConnectionFactory.build(invoice_from="").invoices_from() == "both"
    assert SalesforceConnectionFactory.build(invoice_from="orders").invoices_from() == "orders"


def test_a_pushed_order_is_invoiced_once_however_often_it_is_delivered(org):
    org.connection.organization_id = org.sandbox.info["salesforce"]["organization_id"]
    org.connection.set_secrets(outbound_secret="order-hook-secret")
    org.connection.save()
    order_id = order(org)
    outbound = org.sandbox.salesforce.outbound  # the simulator's own Outbound Message body
    for notification_id in ("04l8d0000000001AAA", "04l8d0000000002AAA"):
        body = outbound.envelope(notification_id, order_id, "Order").encode()
        response = Client(enforce_csrf_checks=True).post(
            "/hooks/salesforce/outbound/order-hook-secret/", body, content_type="text/xml"
        )
        assert b"<Ack>true</Ack>" in response.content, response.content.decode()[-800:]
    [event] = SyncEvent.objects.filter(source_id=order_id)
    assert event.source_object == "salesforce.Order"
    [pushed] = SyncRun.objects.filter(trigger=Trigger.PUSH)
    engine.execute_run(pushed.pk)
    assert len(invoices_marked(org, order_id)) == 1
    run()  # the poll sees the same Order: the same event, no second invoice
    assert len(invoices_marked(org, order_id)) == 1
    assert SyncEvent.objects.filter(source_id=order_id).count() == 1


def test_a_dry_run_shows_the_order_s_invoice_and_writes_nothing(org):
    order_id = order(org)
    plans = [p for p in engine.dry_run("invoices") if p.target_object == "kashflow.Invoice"]
    assert [p.source_id for p in plans] == [order_id]
    assert plans[0].payload["CustomerReference"] == order_id
    assert len(plans[0].payload["LineItems"]) == 2
    assert list(org.kashflow.invoices()) == []
    assert not SyncEvent.objects.filter(flow="invoices").exists()
    assert read_order(org, order_id)["KashFlow_Invoice_Number__c"] is None
