"""Finance holds, over real sockets against the sandbox: an invoice above the limit, or dated
into a closed VAT period, is not raised until Finance approves it (one click, audited)."""

from datetime import date, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Group

from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import SalesforceClient
from integration.models import AuditEntry, FinanceHold, FinanceSettings, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.sandbox_connections import connect_both, link_products

pytestmark = pytest.mark.django_db

SEED = "customers=3,accounts=6,products=12,opportunities=40,won_uninvoiced=6"


@pytest.fixture
def org(sandbox):
    sandbox.reset(SEED)
    salesforce, kashflow = connect_both(sandbox)
    link_products()
    return SimpleNamespace(
        sandbox=sandbox, salesforce=SalesforceClient(salesforce), kashflow=KashFlowClient(kashflow)
    )


@pytest.fixture
def finance(django_user_model):
    user = django_user_model.objects.create_user("fiona", password="x" * 20)
    user.groups.add(Group.objects.get(name="Finance"))
    return user


def run_invoices() -> SyncRun:
    run = engine.start_run("invoices", Trigger.MANUAL)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    return run


def waiting(org) -> list[dict]:
    return list(
        org.salesforce.query(
            "SELECT Id, Amount, CloseDate FROM Opportunity WHERE IsWon = true AND Amount > 0 "
            "AND KashFlow_Invoice_Number__c = null ORDER BY Amount DESC"
        )
    )


def test_an_invoice_above_the_limit_waits_until_finance_approves_it(org, finance, client):
    deals = waiting(org)
    biggest = deals[0]
    limit = Decimal(str(deals[1]["Amount"]))  # only the biggest is above it
    FinanceSettings.objects.create(hold_above=limit)

    run = run_invoices()

    assert run.written_count == len(deals) - 1
    assert org.kashflow.find_invoices_by_reference(biggest["Id"]) == []
    hold = FinanceHold.objects.get()
    assert hold.opportunity_id == biggest["Id"] and not hold.approved
    event = SyncEvent.objects.get(source_id=biggest["Id"])
    assert event.status == SyncEvent.Status.SKIPPED
    assert f"above {limit:,.2f}" in event.message
    run_invoices()  # still held: no approval, no invoice
    assert org.kashflow.find_invoices_by_reference(biggest["Id"]) == []

    client.force_login(finance)
    assert "Approve and invoice" in client.get("/holds/").content.decode()
    client.post(f"/holds/{hold.pk}/approve/")
    engine.execute_run(SyncRun.objects.filter(trigger=Trigger.RETRY).get().pk)

    assert len(org.kashflow.find_invoices_by_reference(biggest["Id"])) == 1
    hold.refresh_from_db()
    assert hold.approved_by == finance
    entry = AuditEntry.objects.get(action=AuditEntry.Action.HOLD_APPROVED)
    assert entry.username == "fiona"
    assert waiting(org) == []


def test_an_invoice_dated_into_a_closed_vat_period_waits(org, finance):
    deals = waiting(org)
    latest = max(date.fromisoformat(d["CloseDate"]) for d in deals)
    FinanceSettings.objects.create(vat_closed_until=latest - timedelta(days=1))
    run_invoices()
    held = {hold.opportunity_id for hold in FinanceHold.objects.all()}
    closed = {d["Id"] for d in deals if date.fromisoformat(d["CloseDate"]) < latest}
    assert held == closed and held
    assert (
        "in a VAT period closed on" in SyncEvent.objects.filter(source_id__in=held).first().message
    )
    for deal in deals:
        made = org.kashflow.find_invoices_by_reference(deal["Id"])
        assert len(made) == (0 if deal["Id"] in held else 1)


def test_only_finance_may_approve(org, ops_user, client):
    hold = FinanceHold.objects.create(opportunity_id="006000000000009AAA", amount=Decimal(10))
    client.force_login(ops_user)
    assert client.post(f"/holds/{hold.pk}/approve/").status_code == 403
    hold.refresh_from_db()
    assert not hold.approved
