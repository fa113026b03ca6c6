"""Changes after invoicing, end to end over real sockets against the sandbox: each change of an
invoiced deal becomes an amendment (the old flow skipped invoiced deals, so a run found none),
and a credit note made from one is made exactly once, even when KashFlow's answer is lost."""

from datetime import date, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Group

from integration import reconcile
from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import SalesforceClient
from integration.models import (
    Amendment,
    AuditEntry,
    CrossRef,
    SyncEvent,
    SyncRun,
    Trigger,
    WriteRecord,
)
from integration.sync import amendments, engine
from integration.sync.amendments import DecisionError, decide
from tests.sandbox_connections import connect_both, link_products, set_faults

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


def run_invoices(**kwargs) -> SyncRun:
    run = engine.start_run("invoices", Trigger.MANUAL, **kwargs)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    return run


def invoiced_deals(org) -> list[dict]:
    ids = sorted(
        CrossRef.objects.filter(object_type="invoice").values_list("salesforce_id", flat=True)
    )
    quoted = ", ".join(f"'{i}'" for i in ids)
    return list(
        org.salesforce.query(
            "SELECT Id, Amount, CloseDate, KashFlow_Invoice_Number__c, (SELECT Id, Quantity, "
            "UnitPrice, Discount, TotalPrice FROM OpportunityLineItems) FROM Opportunity "
            f"WHERE Id IN ({quoted}) ORDER BY Id"
        )
    )


def lines(deal: dict) -> list[dict]:
    return deal["OpportunityLineItems"]["records"]


def reduce(org, deal: dict) -> None:
    """The first line at half its total: the deal is worth less than its invoice."""
    line = lines(deal)[0]
    half = (Decimal(str(line["TotalPrice"])) / 2).quantize(Decimal("0.01"))
    org.salesforce.update(
        "OpportunityLineItem",
        [{"Id": line["Id"], "Quantity": 1, "UnitPrice": str(half), "Discount": None}],
    )


def test_each_change_after_invoicing_becomes_an_amendment(org):
    assert run_invoices().written_count == 6
    deals = invoiced_deals(org)
    # A line that is not already 1 x its total, to change its products without its total.
    reshaped = next(d for d in deals if any(ln["Quantity"] > 1 for ln in lines(d)))
    others = [d for d in deals if d is not reshaped]
    amount, close_date, lost, deleted, untouched = others[:5]
    line = lines(amount)[0]
    org.salesforce.update(
        "OpportunityLineItem", [{"Id": line["Id"], "Quantity": line["Quantity"] + 1}]
    )
    line = next(ln for ln in lines(reshaped) if ln["Quantity"] > 1)
    org.salesforce.update(
        "OpportunityLineItem",
        [{"Id": line["Id"], "Quantity": 1, "UnitPrice": str(line["TotalPrice"]), "Discount": None}],
    )
    moved = date.fromisoformat(close_date["CloseDate"]) - timedelta(days=3)
    org.salesforce.update("Opportunity", [{"Id": close_date["Id"], "CloseDate": moved.isoformat()}])
    org.salesforce.update("Opportunity", [{"Id": lost["Id"], "StageName": "Closed Lost"}])
    org.salesforce.delete([deleted["Id"]])
    invoices_before = len(list(org.kashflow.invoices()))

    run_invoices()

    found = {a.opportunity_id: a for a in Amendment.objects.open()}
    assert set(found) == {d["Id"] for d in (amount, reshaped, close_date, lost, deleted)}
    assert Amendment.Change.AMOUNT in found[amount["Id"]].changes
    assert found[reshaped["Id"]].changes == [Amendment.Change.LINES]
    assert found[close_date["Id"]].changes == [Amendment.Change.CLOSE_DATE]
    assert Amendment.Change.LOST in found[lost["Id"]].changes
    assert found[deleted["Id"]].changes == [Amendment.Change.DELETED]
    bigger = found[amount["Id"]]
    now = Decimal(str(invoiced_deals(org)[0]["Amount"]))  # noqa: F841 (read for the record)
    assert bigger.headline == (
        f"Invoice {amount['KashFlow_Invoice_Number__c']} is "
        f"£{Decimal(str(amount['Amount'])):,.2f}, the deal is now "
        f"£{Decimal(bigger.current['Amount']):,.2f}"
    )
    assert untouched["Id"] not in found
    # Nothing was changed in KashFlow: the decision is a person's.
    assert len(list(org.kashflow.invoices())) == invoices_before
    # Seen again (the next run, a full run), each is still one amendment.
    run_invoices()
    run_invoices(full=True)
    assert Amendment.objects.count() == 5


def test_a_deal_changed_back_withdraws_its_amendment(org):
    run_invoices()
    [deal] = invoiced_deals(org)[:1]
    org.salesforce.update("Opportunity", [{"Id": deal["Id"], "StageName": "Closed Lost"}])
    run_invoices()
    assert Amendment.objects.open().count() == 1
    org.salesforce.update("Opportunity", [{"Id": deal["Id"], "StageName": "Closed Won"}])
    run_invoices()
    assert Amendment.objects.open().count() == 0
    assert Amendment.objects.get().status == Amendment.Status.WITHDRAWN


def test_a_credit_note_is_made_once_even_when_its_answer_is_lost(org, finance):
    run_invoices()
    deal = invoiced_deals(org)[0]
    reduce(org, deal)
    run_invoices()
    [amendment] = Amendment.objects.open()
    original = org.kashflow.get_invoice(int(amendment.invoice_number))
    owed = amendment.difference
    assert owed > 0

    set_faults(org.sandbox, "kashflow", ("POST /v2/invoices", "ambiguous", 1.0))
    with pytest.raises(DecisionError, match="answer was lost"):
        decide(amendment, Amendment.Action.CREDIT_DIFFERENCE, finance)
    set_faults(org.sandbox, "kashflow")
    amendment.refresh_from_db()
    assert amendment.status == Amendment.Status.OPEN
    assert amendment.action == Amendment.Action.CREDIT_DIFFERENCE  # the intent, kept

    decide(amendment, Amendment.Action.CREDIT_DIFFERENCE, finance)  # the retry adopts it
    with pytest.raises(DecisionError, match="decided already"):
        decide(amendment, Amendment.Action.CREDIT_DIFFERENCE, finance)  # a double click

    amendment.refresh_from_db()
    assert amendment.status == Amendment.Status.CREDITED
    [summary] = org.kashflow.find_invoices_by_reference(amendments.credit_marker(amendment))
    credit = org.kashflow.get_invoice(summary["Number"])
    assert str(credit["Number"]) == amendment.credit_note_number
    assert credit["NetAmount"] == -owed
    assert credit["CustomerCode"] == original["CustomerCode"]
    assert credit["LineItems"][0]["VATLevel"] == original["LineItems"][0]["VATLevel"]
    # The original invoice is untouched; the history keeps the credit note and who made it.
    assert (
        org.kashflow.get_invoice(int(amendment.invoice_number))["NetAmount"]
        == (original["NetAmount"])
    )
    record = WriteRecord.objects.get(action=WriteRecord.Action.CREDIT_NOTE_CREATED)
    assert (record.target_id, record.amount, record.username) == (
        amendment.credit_note_number,
        -owed,
        "fiona",
    )
    assert AuditEntry.objects.filter(action=AuditEntry.Action.AMENDMENT_DECIDED).count() == 1
    # The credit settled the deal as it is now: the next run opens nothing new.
    run_invoices(full=True)
    assert Amendment.objects.open().count() == 0


def test_a_lost_deal_is_credited_whole(org, finance):
    run_invoices()
    deal = invoiced_deals(org)[0]
    org.salesforce.update("Opportunity", [{"Id": deal["Id"], "StageName": "Closed Lost"}])
    run_invoices()
    [amendment] = Amendment.objects.open()
    with pytest.raises(DecisionError, match="nothing to invoice instead"):
        decide(amendment, Amendment.Action.REPLACE, finance)
    decide(amendment, Amendment.Action.CREDIT_WHOLE, finance)
    original = org.kashflow.get_invoice(int(amendment.invoice_number))
    amendment.refresh_from_db()
    credit = org.kashflow.get_invoice(int(amendment.credit_note_number))
    assert credit["GrossAmount"] == -original["GrossAmount"]
    assert len(credit["LineItems"]) == len(original["LineItems"])
    # Settled: later runs open nothing new, and the reconciliation sees nothing owed.
    org.salesforce.update("Opportunity", [{"Id": deal["Id"], "Description": "Lost to a rival"}])
    run_invoices()
    run_invoices(full=True)
    assert Amendment.objects.open().count() == 0
    lines = [
        line
        for line in reconcile.from_connections().lines
        if line["opportunity_id"] == deal["Id"] and line["kind"] == "amount"
    ]
    assert lines == []


def test_a_change_made_while_a_decision_is_under_way_waits_for_it(org, finance):
    run_invoices()
    deal = invoiced_deals(org)[0]
    reduce(org, deal)
    run_invoices()
    [amendment] = Amendment.objects.open()
    assert amendments._claim(amendment, Amendment.Action.CREDIT_DIFFERENCE)  # someone clicked
    org.salesforce.update("Opportunity", [{"Id": deal["Id"], "StageName": "Closed Lost"}])
    run_invoices()
    amendment.refresh_from_db()
    assert Amendment.Change.LOST not in amendment.changes  # not changed under the decision
    waiting = SyncEvent.objects.get(error_code="DECISION_UNDER_WAY")
    assert "under way" in waiting.message


def test_a_replacement_credits_the_invoice_and_invoices_the_deal_as_it_is_now(org, finance):
    run_invoices()
    deal = invoiced_deals(org)[0]
    line = lines(deal)[0]
    org.salesforce.update(
        "OpportunityLineItem", [{"Id": line["Id"], "Quantity": line["Quantity"] + 2}]
    )
    run_invoices()
    [amendment] = Amendment.objects.open()
    set_faults(org.sandbox, "kashflow", ("POST /v2/invoices", "ambiguous", 1.0))
    with pytest.raises(DecisionError):
        decide(amendment, Amendment.Action.REPLACE, finance)
    set_faults(org.sandbox, "kashflow")
    with pytest.raises(DecisionError):  # the credit note is adopted; the replacement is lost
        set_faults(org.sandbox, "kashflow", ("POST /v2/invoices", "ambiguous", 1.0))
        decide(amendment, Amendment.Action.REPLACE, finance)
    set_faults(org.sandbox, "kashflow")
    decide(amendment, Amendment.Action.REPLACE, finance)

    amendment.refresh_from_db()
    assert amendment.status == Amendment.Status.REPLACED
    assert len(org.kashflow.find_invoices_by_reference(amendments.credit_marker(amendment))) == 1
    [made] = org.kashflow.find_invoices_by_reference(amendments.replacement_marker(amendment))
    replacement = org.kashflow.get_invoice(made["Number"])
    [now] = [d for d in invoiced_deals(org) if d["Id"] == deal["Id"]]
    assert replacement["NetAmount"] == Decimal(str(now["Amount"]))
    assert now["KashFlow_Invoice_Number__c"] == str(replacement["Number"])
    assert CrossRef.objects.get(salesforce_id=deal["Id"]).kashflow_key == str(made["Number"])
    run_invoices(full=True)
    assert Amendment.objects.open().count() == 0


def test_accepting_needs_a_reason_and_writes_nothing_to_kashflow(org, finance):
    run_invoices()
    deal = invoiced_deals(org)[0]
    moved = date.fromisoformat(deal["CloseDate"]) + timedelta(days=2)
    org.salesforce.update("Opportunity", [{"Id": deal["Id"], "CloseDate": moved.isoformat()}])
    run_invoices()
    [amendment] = Amendment.objects.open()
    count = len(list(org.kashflow.invoices()))
    with pytest.raises(DecisionError, match="Say why"):
        decide(amendment, "accept", finance, "  ")
    decide(amendment, "accept", finance, "Date typo in Salesforce; the invoice date is right.")
    amendment.refresh_from_db()
    assert (amendment.status, amendment.decided_by) == (Amendment.Status.ACCEPTED, finance)
    assert len(list(org.kashflow.invoices())) == count
    run_invoices(full=True)
    assert Amendment.objects.open().count() == 0


# The queue on the dashboard ------------------------------------------------------------------


def test_the_queue_shows_each_change_in_words_and_deciding_needs_finance(client, finance, ops_user):
    amendment = Amendment.objects.create(
        opportunity_id="006000000000001AAA",
        opportunity_name="Acme - order 7",
        invoice_number="1042",
        changes=[Amendment.Change.AMOUNT],
        invoiced={"Amount": "100"},
        current={"Amount": "200"},
    )
    client.force_login(ops_user)
    page = client.get("/amendments/").content.decode()
    assert "Invoice 1042 is £100.00, the deal is now £200.00" in page
    assert "Accept the change" not in page  # no buttons without the permission
    decide_url = f"/amendments/{amendment.pk}/decide/"
    assert client.post(decide_url, {"action": "accept", "reason": "ok"}).status_code == 403

    client.force_login(finance)
    assert "Accept the change" in client.get("/amendments/").content.decode()
    response = client.post(decide_url, {"action": "accept", "reason": ""}, follow=True)
    assert "Say why the change is accepted" in response.content.decode()
    client.post(decide_url, {"action": "accept", "reason": "Price agreed by phone"})
    amendment.refresh_from_db()
    assert (amendment.status, amendment.reason) == (
        Amendment.Status.ACCEPTED,
        "Price agreed by phone",
    )
    assert "Price agreed by phone" in client.get("/amendments/").content.decode()


def test_kashforce_s_own_write_backs_are_not_changes_after_invoicing(org):
    """The write-back (and the payments flow's status updates) move an Opportunity's
    SystemModstamp; they are not compared as changes: no ledger row, no amendment."""
    assert run_invoices().written_count == 6
    events = SyncEvent.objects.filter(flow="invoices").count()
    again = run_invoices()
    assert again.read_count == 0, again.summary
    assert SyncEvent.objects.filter(flow="invoices").count() == events
    deal = invoiced_deals(org)[0]
    org.salesforce.update(
        "Opportunity", [{"Id": deal["Id"], "KashFlow_Invoice_Status__c": "Paid"}]
    )  # as the payments flow writes it
    assert run_invoices().read_count == 0
    reduce(org, deal)
    assert run_invoices().read_count == 1
    assert Amendment.objects.open().filter(opportunity_id=deal["Id"]).exists()
