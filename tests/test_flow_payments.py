"""Payments flow end to end: payment lines of KashFlow invoices → KashFlow_Payment__c records and
the Opportunity's status, over real sockets against the sandbox, with the real clients."""

import json
import re
from datetime import date, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import SalesforceClient
from integration.models import CrossRef, Cursor, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.fake_api import use_fast_retries
from tests.fixtures_sandbox import control
from tests.sandbox_connections import calls, clear_faults, connect_both, org_switches, set_faults

pytestmark = pytest.mark.django_db

BACS, CARD = 1, 3  # the sandbox's payment method ids (GET /paymentmethods/invoice)
CURRENT_ACCOUNT = 101  # a bank account Id, not its nominal code
PAYMENT_FIELDS = "Id, ExternalID__c, Opportunity__c, Amount__c, Payment_Date__c, Method__c, "
PAYMENT_FIELDS += "Invoice_Number__c"


@pytest.fixture
def org(sandbox):
    sandbox.reset("customers=2,accounts=0")
    salesforce, kashflow = connect_both(sandbox)
    return SimpleNamespace(
        sandbox=sandbox, salesforce=SalesforceClient(salesforce), kashflow=KashFlowClient(kashflow)
    )


def run_payments(**kwargs) -> SyncRun:
    run = engine.start_run("payments", Trigger.MANUAL, **kwargs)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    return run


def reset_stats(sandbox):
    for system in ("salesforce", "kashflow"):
        control(sandbox.info["control"][system], "stats/reset", {})


def invoiced_opportunity(org, linked=True, issued=None) -> SimpleNamespace:
    """A Closed Won Opportunity and its KashFlow invoice for 99.99 (3 x 33.33, no VAT), linked as
    the invoices flow links them."""
    [opportunity] = org.salesforce.create(
        "Opportunity",
        [{"Name": "Three chairs", "StageName": "Closed Won", "CloseDate": "2026-01-15"}],
    )
    customer = next(iter(org.kashflow.customers()))["Code"]
    invoice = org.kashflow.create_invoice(
        {
            "CustomerCode": customer,
            "CustomerReference": opportunity.id,
            "IssuedDate": issued or date.today(),
            "LineItems": [
                {
                    "Description": "Chair",
                    "Quantity": Decimal("3"),
                    "Rate": Decimal("33.33"),
                    "NominalCode": 4000,
                    "VATLevel": Decimal("0"),
                }
            ],
        }
    )
    assert invoice["GrossAmount"] == Decimal("99.99")
    if linked:
        CrossRef.objects.create(
            object_type="invoice", salesforce_id=opportunity.id, kashflow_key=str(invoice["Number"])
        )
    return SimpleNamespace(number=invoice["Number"], opportunity_id=opportunity.id)


def pay(org, number, *payments, keep=()):
    """Set the invoice's payments: `keep` (existing lines) plus new (amount, day, method)."""
    lines = [*keep]
    for amount, day, method in payments:
        lines.append(
            {"Amount": Decimal(amount), "Date": day, "Method": method, "AccountId": CURRENT_ACCOUNT}
        )
    return org.kashflow.update_invoice(number, {"PaymentLines": lines})["PaymentLines"]


def payment_records(org, opportunity_id):
    soql = f"SELECT {PAYMENT_FIELDS} FROM KashFlow_Payment__c WHERE Opportunity__c = "
    records = org.salesforce.query(soql + f"'{opportunity_id}' ORDER BY ExternalID__c")
    return list(records)


def opportunity(org, opportunity_id):
    soql = "SELECT KashFlow_Invoice_Number__c, KashFlow_Invoice_Status__c, KashFlow_Amount_Due__c "
    return next(org.salesforce.query(soql + f"FROM Opportunity WHERE Id = '{opportunity_id}'"))


def test_payments_reach_salesforce_to_the_penny_with_date_and_method(org):
    deal = invoiced_opportunity(org)
    lines = pay(
        org,
        deal.number,
        ("33.33", date(2026, 2, 1), BACS),
        ("33.33", date(2026, 2, 8), BACS),
        ("33.33", date(2026, 2, 15), CARD),
    )
    reset_stats(org.sandbox)

    run = run_payments()

    # Three list calls (the unpaid invoices, the recent ones, this run's slice of older ones),
    # one invoice GET, the payment methods once; in Salesforce one query, one upsert of the
    # three payments and one Opportunity update (describes are cached).
    assert calls(org.sandbox, "kashflow", "GET /v2/invoices") == 3 + 1
    assert calls(org.sandbox, "kashflow", "/paymentmethods") == 1
    assert calls(org.sandbox, "salesforce", "/query") == 1
    assert calls(org.sandbox, "salesforce", "composite/sobjects") == 2
    assert run.status == SyncRun.Status.SUCCEEDED, run.summary
    records = payment_records(org, deal.opportunity_id)
    assert [r["ExternalID__c"] for r in records] == [f"KF-PAY-{line['Id']}" for line in lines]
    assert [r["Amount__c"] for r in records] == [Decimal("33.33")] * 3
    assert sum(r["Amount__c"] for r in records) == Decimal("99.99")
    assert [r["Payment_Date__c"] for r in records] == ["2026-02-01", "2026-02-08", "2026-02-15"]
    assert [r["Method__c"] for r in records] == ["BACS", "BACS", "Card"]
    assert {r["Invoice_Number__c"] for r in records} == {str(deal.number)}
    assert opportunity(org, deal.opportunity_id)["KashFlow_Invoice_Status__c"] == "Paid"
    assert opportunity(org, deal.opportunity_id)["KashFlow_Amount_Due__c"] == Decimal("0")
    for line, record in zip(lines, records, strict=True):
        ref = CrossRef.objects.get(object_type="payment", kashflow_key=str(line["Id"]))
        assert ref.salesforce_id == record["Id"]


def test_a_second_run_writes_nothing_and_costs_its_list_calls_and_one_line_check(org):
    deal = invoiced_opportunity(org)
    pay(org, deal.number, ("10.00", date(2026, 2, 1), BACS))
    assert run_payments().written_count == 1
    reset_stats(org.sandbox)

    again = run_payments()

    assert again.status == SyncRun.Status.SUCCEEDED
    assert again.written_count == 0
    assert control(org.sandbox.info["control"]["salesforce"], "stats")["total"] == 0
    # The three list calls, and the paid invoice read in full once to check its payment lines.
    assert control(org.sandbox.info["control"]["kashflow"], "stats")["total"] == 3 + 1
    assert calls(org.sandbox, "kashflow", "GET /v2/invoices/{number}") == 1
    assert SyncEvent.objects.filter(flow="payments").count() == 1


def test_a_part_payment_then_the_rest(org):
    deal = invoiced_opportunity(org)
    first = pay(org, deal.number, ("50.00", date(2026, 2, 1), BACS))
    run_payments()
    assert opportunity(org, deal.opportunity_id)["KashFlow_Invoice_Status__c"] == "Part Paid"
    assert opportunity(org, deal.opportunity_id)["KashFlow_Amount_Due__c"] == Decimal("49.99")

    pay(org, deal.number, ("49.99", date(2026, 3, 1), CARD), keep=first)
    run = run_payments()

    assert run.written_count == 1, run.summary
    records = payment_records(org, deal.opportunity_id)
    assert [r["Amount__c"] for r in records] == [Decimal("50.00"), Decimal("49.99")]
    assert opportunity(org, deal.opportunity_id)["KashFlow_Invoice_Status__c"] == "Paid"
    assert opportunity(org, deal.opportunity_id)["KashFlow_Amount_Due__c"] == Decimal("0")


def test_a_reversed_payment_is_deleted_from_salesforce(org):
    deal = invoiced_opportunity(org)
    lines = pay(
        org, deal.number, ("60.00", date(2026, 2, 1), BACS), ("39.99", date(2026, 2, 2), BACS)
    )
    run_payments()
    assert len(payment_records(org, deal.opportunity_id)) == 2

    pay(org, deal.number, keep=lines[:1])  # the 39.99 bounced
    run = run_payments()

    assert run.status == SyncRun.Status.SUCCEEDED, run.summary
    records = payment_records(org, deal.opportunity_id)
    assert [r["Amount__c"] for r in records] == [Decimal("60.00")]
    assert opportunity(org, deal.opportunity_id)["KashFlow_Amount_Due__c"] == Decimal("39.99")
    assert not CrossRef.objects.filter(object_type="payment", kashflow_key=str(lines[1]["Id"]))


def test_paid_then_fully_reversed_goes_back_to_unpaid(org):
    """Unpaid → Paid → Unpaid: the last state equals the first, and is still a change."""
    deal = invoiced_opportunity(org)
    run_payments()  # seen unpaid
    assert opportunity(org, deal.opportunity_id)["KashFlow_Invoice_Status__c"] == "Unpaid"
    pay(org, deal.number, ("99.99", date(2026, 2, 1), BACS))
    run_payments()
    assert len(payment_records(org, deal.opportunity_id)) == 1

    pay(org, deal.number)  # every payment removed
    reset_stats(org.sandbox)
    run = run_payments()

    assert run.written_count == 1, run.summary
    assert payment_records(org, deal.opportunity_id) == []
    now = opportunity(org, deal.opportunity_id)
    assert (now["KashFlow_Invoice_Status__c"], now["KashFlow_Amount_Due__c"]) == (
        "Unpaid",
        Decimal("99.99"),
    )
    # Nothing is paid, so the invoice is not read: the list alone says there are no payments.
    assert calls(org.sandbox, "kashflow", "/invoices/{number}") == 0


def test_an_invoice_not_linked_to_an_opportunity_is_ignored(org):
    deal = invoiced_opportunity(org, linked=False)
    pay(org, deal.number, ("99.99", date(2026, 2, 1), BACS))

    run = run_payments()

    assert run.status == SyncRun.Status.SUCCEEDED
    assert SyncEvent.objects.filter(flow="payments").count() == 0
    assert payment_records(org, deal.opportunity_id) == []


def test_invoices_issued_before_the_lookback_are_left_to_full_runs(org, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "PAYMENTS_LOOKBACK_DAYS": 30}
    deal = invoiced_opportunity(org, issued=date.today() - timedelta(days=90))
    pay(org, deal.number, ("99.99", date(2026, 2, 1), BACS))

    assert run_payments().read_count == 0
    full = run_payments(full=True)

    assert full.written_count == 1, full.summary
    assert len(payment_records(org, deal.opportunity_id)) == 1


def test_a_salesforce_503_storm_is_retried_and_makes_no_duplicates(org, settings, monkeypatch):
    use_fast_retries(settings, monkeypatch)
    deals = [invoiced_opportunity(org) for _ in range(2)]
    for deal in deals:
        pay(org, deal.number, ("33.33", date(2026, 2, 1), BACS), ("66.66", date(2026, 2, 2), CARD))
    set_faults(org.sandbox, "salesforce", ("PATCH /services/data", "503", 1.0))

    run = run_payments()

    assert run.failed_count == 2
    assert SyncEvent.objects.retrying().count() == 2
    clear_faults(org.sandbox, "salesforce")
    SyncEvent.objects.filter(status="failed_transient").update(status="pending")
    retry = run_payments()
    assert retry.written_count == 2, retry.summary
    retry_again = run_payments(full=True)  # everything upserted once more: still one each
    assert retry_again.failed_count == 0
    for deal in deals:
        records = payment_records(org, deal.opportunity_id)
        assert sorted(r["Amount__c"] for r in records) == [Decimal("33.33"), Decimal("66.66")]


def test_an_opportunity_deleted_in_salesforce_is_a_clear_error(org):
    deal = invoiced_opportunity(org)
    pay(org, deal.number, ("10.00", date(2026, 2, 1), BACS))
    org.salesforce.delete([deal.opportunity_id])

    run = run_payments()

    assert (run.status, run.failed_count) == (SyncRun.Status.FAILED, 1)
    error = SyncEvent.objects.unresolved().get()
    assert error.error_code == "OPPORTUNITY_MISSING"
    assert deal.opportunity_id in error.message


def test_dry_run_shows_the_writes_and_makes_none(org):
    deal = invoiced_opportunity(org)
    pay(org, deal.number, ("33.33", date(2026, 2, 1), BACS), ("66.66", date(2026, 2, 2), CARD))
    reset_stats(org.sandbox)

    plans = engine.dry_run("payments")

    assert [(p.target_object, p.action) for p in plans] == [
        ("salesforce.KashFlow_Payment__c", "upsert"),
        ("salesforce.KashFlow_Payment__c", "upsert"),
        ("salesforce.Opportunity", "update"),
    ]
    assert plans[0].payload["Amount__c"] == Decimal("33.33")
    assert plans[2].payload["KashFlow_Invoice_Status__c"] == "Paid"
    assert calls(org.sandbox, "salesforce", "composite") == 0
    assert SyncEvent.objects.count() == 0
    assert payment_records(org, deal.opportunity_id) == []


def test_a_batch_of_paid_invoices_records_its_outcomes_in_one_statement(org):
    deals = [invoiced_opportunity(org) for _ in range(3)]
    for deal in deals:
        pay(org, deal.number, ("10.00", date(2026, 2, 1), BACS))
    with CaptureQueriesContext(connection) as queries:
        run = run_payments()
    assert run.written_count == 3, run.summary
    updates = [q["sql"] for q in queries if q["sql"].startswith('UPDATE "integration_syncevent"')]
    assert len(updates) == 2  # the claim and the outcomes (one save per invoice before)
    for deal in deals:
        event = SyncEvent.objects.get(flow="payments", source_id=str(deal.number))
        assert event.status == SyncEvent.Status.SUCCEEDED
        assert event.target_id == deal.opportunity_id and len(event.content_hash) == 64
        assert event.finished_at == event.updated_at and event.claimed_at is None


def test_payments_are_read_through_the_relationship_the_admin_named(org):
    # Issue #12: the child relationship name is chosen when the lookup is made; an org that
    # called it Payments__r failed every batch with KashFlow_Payments__r hard-coded.
    org_switches(org.sandbox, payments_relationship="Payments__r")
    deal = invoiced_opportunity(org)
    pay(org, deal.number, ("33.33", date(2026, 2, 1), BACS))

    run = run_payments()

    assert run.status == SyncRun.Status.SUCCEEDED, run.summary
    assert run.failed_count == 0, run.summary
    assert [r["Amount__c"] for r in payment_records(org, deal.opportunity_id)] == [Decimal("33.33")]
    # The next change is compared with what Salesforce holds through that relationship: the
    # payment replaced in KashFlow is replaced in Salesforce, not added beside the old one.
    pay(org, deal.number, ("66.66", date(2026, 2, 8), CARD))
    again = run_payments()
    assert again.failed_count == 0, again.summary
    assert [r["Amount__c"] for r in payment_records(org, deal.opportunity_id)] == [Decimal("66.66")]


# -- Nothing lost, nothing deleted on an absence (issue #13 cases 2, 4, 9) ----------------------


def spoil_invoice_answers(monkeypatch, spoil):
    """KashFlow's GET /invoices/{n} answers, changed by `spoil(body)` on the way in (a real
    socket, a real answer, then spoiled as a faulty server would send it)."""
    original = KashFlowClient._send

    def send(self, method, path, token, params, body):
        response = original(self, method, path, token, params, body)
        if method == "GET" and re.fullmatch(r"/invoices/\d+", path) and response.ok:
            response._content = json.dumps(spoil(response.json())).encode()
        return response

    monkeypatch.setattr(KashFlowClient, "_send", send)
    return lambda: monkeypatch.setattr(KashFlowClient, "_send", original)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda invoice: {k: v for k, v in invoice.items() if k != "PaymentLines"},
        lambda invoice: {**invoice, "PaymentLines": None},
        lambda invoice: {**invoice, "PaymentLines": {"Id": 1}},
        lambda invoice: {**invoice, "PaymentLines": [{"Date": "2026-02-01"}]},
    ],
    ids=["missing", "null", "not-a-list", "lines-without-id-or-amount"],
)
def test_an_invoice_answer_without_its_payment_lines_deletes_nothing(org, monkeypatch, spoil):
    deal = invoiced_opportunity(org)
    lines = pay(org, deal.number, ("50.00", date(2026, 2, 1), BACS))
    run_payments()
    pay(org, deal.number, ("20.00", date(2026, 2, 9), CARD), keep=lines)
    restore = spoil_invoice_answers(monkeypatch, spoil)

    run = run_payments()

    # Unreadable, not "every payment reversed": the 50.00 stays, and the event waits to retry.
    assert [r["Amount__c"] for r in payment_records(org, deal.opportunity_id)] == [Decimal("50")]
    assert opportunity(org, deal.opportunity_id)["KashFlow_Amount_Due__c"] == Decimal("49.99")
    event = SyncEvent.objects.get(source_id=str(deal.number), status="failed_transient")
    assert event.error_code == "UNREADABLE_ANSWER"
    assert "KashFlow answered with" in event.message
    assert run.failed_count == 1
    restore()
    SyncEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())
    retry = run_payments()
    assert retry.written_count == 1, retry.summary
    amounts = [r["Amount__c"] for r in payment_records(org, deal.opportunity_id)]
    assert sorted(amounts) == [Decimal("20"), Decimal("50")]


def test_unreadable_payment_lines_go_to_the_error_queue_after_the_retries(org, monkeypatch):
    deal = invoiced_opportunity(org)
    lines = pay(org, deal.number, ("50.00", date(2026, 2, 1), BACS))
    run_payments()
    pay(org, deal.number, ("20.00", date(2026, 2, 9), CARD), keep=lines)
    spoil_invoice_answers(monkeypatch, lambda i: {**i, "PaymentLines": None})

    for _ in range(settings_attempts()):
        run_payments()
        SyncEvent.objects.filter(status="failed_transient").update(next_attempt_at=timezone.now())

    event = SyncEvent.objects.unresolved().get(source_id=str(deal.number))
    assert event.status == SyncEvent.Status.FAILED_PERMANENT
    assert event.message.startswith("Gave up after")
    assert len(payment_records(org, deal.opportunity_id)) == 1


def settings_attempts() -> int:
    from django.conf import settings

    return settings.KASHFORCE["MAX_ATTEMPTS"]


def test_a_malformed_payment_methods_answer_is_unreadable_not_a_crash(org, monkeypatch):
    deal = invoiced_opportunity(org)
    pay(org, deal.number, ("50.00", date(2026, 2, 1), BACS))
    monkeypatch.setattr(KashFlowClient, "payment_methods", lambda self, kind="invoice": [{"x": 1}])

    run = run_payments()

    event = SyncEvent.objects.get(source_id=str(deal.number))
    assert (event.status, event.error_code) == ("failed_transient", "UNREADABLE_ANSWER")
    assert run.failed_count == 1
    assert payment_records(org, deal.opportunity_id) == []


@pytest.mark.parametrize(
    "edit",
    [
        # a date changed
        lambda lines: [lines[0], {**lines[1], "Date": date(2026, 2, 20)}],
        # two payments swapped (each keeps its id, the amounts change places)
        lambda lines: [
            {**lines[0], "Amount": lines[1]["Amount"]},
            {**lines[1], "Amount": lines[0]["Amount"]},
        ],
        # 50 + 70 edited to 60 + 60 (well, 49.99 + 50: the invoice is 99.99)
        lambda lines: [
            {**lines[0], "Amount": Decimal("49.99")},
            {**lines[1], "Amount": Decimal("50.00")},
        ],
    ],
    ids=["date-changed", "swapped", "same-total-new-split"],
)
def test_payment_edits_that_keep_the_totals_are_found_on_the_next_run(org, edit):
    deal = invoiced_opportunity(org)
    lines = pay(
        org, deal.number, ("39.99", date(2026, 2, 1), BACS), ("60.00", date(2026, 2, 8), CARD)
    )
    run_payments()
    edited = org.kashflow.update_invoice(deal.number, {"PaymentLines": edit(lines)})
    assert edited["TotalPaidAmount"] == Decimal("99.99")  # the summary says nothing changed

    run = run_payments()

    assert run.written_count == 1, run.summary
    records = payment_records(org, deal.opportunity_id)
    expected = sorted(
        (f"KF-PAY-{line['Id']}", line["Amount"], line["Date"][:10])
        for line in edited["PaymentLines"]
    )
    assert [(r["ExternalID__c"], r["Amount__c"], r["Payment_Date__c"]) for r in records] == expected
    assert run_payments().written_count == 0  # and once put right, it stays quiet


def test_an_invoice_deleted_in_kashflow_is_a_visible_error_not_silently_unpaid(org):
    deal = invoiced_opportunity(org)
    lines = pay(org, deal.number, ("50.00", date(2026, 2, 1), BACS))
    run_payments()
    assert opportunity(org, deal.opportunity_id)["KashFlow_Invoice_Status__c"] == "Part Paid"
    org.kashflow.update_invoice(deal.number, {"PaymentLines": []})  # KashFlow refuses to
    org.kashflow._request("DELETE", f"/invoices/{deal.number}", "delete")  # delete paid ones
    del lines

    run = run_payments()

    error = SyncEvent.objects.unresolved().get(source_id=str(deal.number))
    assert (error.status, error.error_code) == ("failed_permanent", "INVOICE_DELETED")
    assert error.message.startswith(f"Invoice {deal.number} was deleted in KashFlow")
    assert deal.opportunity_id in error.message
    assert run.failed_count == 1
    # Found once: later runs do not read it again or pile up errors.
    reset_stats(org.sandbox)
    assert run_payments().failed_count == 0
    assert calls(org.sandbox, "kashflow", "GET /v2/invoices/{number}") == 0
    assert SyncEvent.objects.unresolved().count() == 1


# -- Money to the last decimal (issue #14 case 4) -------------------------------------------------


def test_four_decimal_payments_and_the_amount_due_are_carried_exactly(org):
    deal = invoiced_opportunity(org)
    pay(org, deal.number, ("10.005", date(2026, 2, 1), BACS), ("0.0049", date(2026, 2, 2), CARD))

    run = run_payments()

    assert run.written_count == 1, run.summary
    amounts = [r["Amount__c"] for r in payment_records(org, deal.opportunity_id)]
    assert amounts == [Decimal("10.005"), Decimal("0.0049")]
    # KashFlow's due is 99.99 - 10.0099 = 89.9801, not 89.98.
    assert opportunity(org, deal.opportunity_id)["KashFlow_Amount_Due__c"] == Decimal("89.9801")


# -- What a run costs (issue #12: not 400 days of invoices every minute) -------------------------


@pytest.fixture
def slices(settings):
    settings.KASHFORCE = {
        **settings.KASHFORCE,
        "PAYMENTS_LOOKBACK_DAYS": 400,
        "PAYMENTS_RECENT_DAYS": 31,
        "PAYMENTS_SLICE_DAYS": 100,
    }


def test_an_older_paid_invoice_is_visited_by_its_slice_not_every_run(org, slices):
    deal = invoiced_opportunity(org, issued=date.today() - timedelta(days=200))
    pay(org, deal.number, ("99.99", date(2026, 2, 1), BACS))  # paid: not in the unpaid pass

    written = []
    for _ in range(5):
        reset_stats(org.sandbox)
        run = run_payments()
        written.append(run.written_count)
        # Whatever the lookback holds: the unpaid, the recent and one slice, a call each here.
        assert calls(org.sandbox, "kashflow", "GET /v2/invoices") <= 3 + 1

    # Windows of 100 days from 400 days back: [-400, -301], [-300, -201], [-200, -101] has it.
    assert written == [0, 0, 1, 0, 0]
    assert len(payment_records(org, deal.opportunity_id)) == 1


def test_an_older_unpaid_invoice_paid_off_is_found_on_the_next_run(org, slices):
    deal = invoiced_opportunity(org, issued=date.today() - timedelta(days=200))
    run_payments()  # listed by the unpaid pass, and seen unpaid
    assert opportunity(org, deal.opportunity_id)["KashFlow_Invoice_Status__c"] == "Unpaid"
    pay(org, deal.number, ("99.99", date(2026, 2, 1), BACS))  # paid off: leaves the unpaid pass

    run = run_payments()

    assert run.written_count == 1, run.summary
    assert opportunity(org, deal.opportunity_id)["KashFlow_Invoice_Status__c"] == "Paid"
    assert [r["Amount__c"] for r in payment_records(org, deal.opportunity_id)] == [Decimal("99.99")]


def test_line_checks_take_the_paid_invoices_in_turn(org, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "PAYMENTS_LINE_CHECKS": 2}
    deals = [invoiced_opportunity(org) for _ in range(3)]
    for deal in deals:
        pay(org, deal.number, ("99.99", date(2026, 2, 1), BACS))
    run_payments()

    checked, last = [], []
    for _ in range(3):
        reset_stats(org.sandbox)
        run_payments()
        checked.append(calls(org.sandbox, "kashflow", "GET /v2/invoices/{number}"))
        last.append(Cursor.objects.get(flow="payments", name="lines").value)

    assert checked == [2, 2, 2]  # never more than the budget ...
    first, second, third = (str(deal.number) for deal in deals)
    assert last == [second, first, third]  # ... and round the three in turn: 1 2, 3 1, 2 3
