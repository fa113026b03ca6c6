"""Reconciliation: Salesforce and KashFlow compared for the invoicing flow.

Differences, each a line of the CSV:
- `missing_in_kashflow`: an Opportunity carries an invoice number KashFlow does not have;
- `not_linked`: a KashFlow invoice carries an Opportunity marker in CustomerReference (an
  Opportunity Id, or one with kashforce's -CN/-R suffix) but no Opportunity links to it, and no
  decision on a change after invoicing explains it (a credit note, a replaced invoice);
- `amount`: the Opportunity's amount is not what KashFlow billed for it (the invoice's net, less
  the credit notes raised for it). An open amendment is named as the explanation;
- `currency`: the Opportunity's currency (multi-currency orgs) is not the invoice's;
- `status` and `amount_due`: what Salesforce shows of the invoice is not what KashFlow says.

Cost, whatever the differences: Salesforce one describe plus one query call per 2,000 invoiced
Opportunities, and one call per 100 unlinked invoices when a start date hides some Opportunities;
KashFlow one list call per 200 invoices (the summaries carry the totals, the status and the
reference, so no invoice is read on its own). At 10,000 invoices: 1 + 5 Salesforce calls and
50 KashFlow calls, 56 in all (test_reconcile.py measures a smaller case against the formula).
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date
from decimal import Decimal

from django.utils import timezone

from integration.clients.errors import ApiError
from integration.clients.salesforce import soql_list
from integration.models import Amendment, Reconciliation, Trigger

KINDS = {
    "missing_in_kashflow": "Invoiced in Salesforce, not in KashFlow",
    "not_linked": "In KashFlow, no Opportunity links to it",
    "amount": "Amount differs",
    "currency": "Currency differs",
    "status": "Status differs",
    "amount_due": "Amount due differs",
}
MARKER = re.compile(r"^(006[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?)(?:-(CN|R)(\d+))?$")
FIELDS = (
    "Id, Name, Amount, CloseDate, IsWon, KashFlow_Invoice_Number__c, KashFlow_Invoice_Status__c, "
    "KashFlow_Amount_Due__c"
)
CSV_COLUMNS = (
    "kind",
    "month",
    "opportunity_id",
    "opportunity_name",
    "invoice_number",
    "salesforce",
    "kashflow",
    "amount",
    "explanation",
)


@dataclass
class Line:
    kind: str
    month: str
    opportunity_id: str = ""
    opportunity_name: str = ""
    invoice_number: str = ""
    salesforce: str = ""
    kashflow: str = ""
    amount: str = ""
    explanation: str = ""


def run(salesforce, kashflow, since: date | None = None, trigger: str = Trigger.MANUAL):
    """Compare, record the result as a Reconciliation row and return it. A failure is recorded
    on the row (its `error`) and raised (ApiError)."""
    record = Reconciliation.objects.create(since=since, trigger=trigger)
    counter = _CallCounter(salesforce.session, kashflow.session)
    try:
        lines, compared = compare(salesforce, kashflow, since)
    except ApiError as exc:
        record.error, record.api_calls = exc.message, counter.stop()
        record.finished_at = timezone.now()
        record.save()
        raise
    record.lines = [asdict(line) for line in lines]
    record.differences = len(lines)
    record.compared = compared
    record.summary = summarise(lines)
    record.api_calls = counter.stop()
    record.finished_at = timezone.now()
    record.save()
    return record


class _CallCounter:
    """Counts the HTTP answers the clients' sessions receive (sign-ins included)."""

    def __init__(self, *sessions):
        self.sessions, self.count = sessions, 0
        for session in sessions:
            session.hooks.setdefault("response", []).append(self._seen)

    def _seen(self, response, *args, **kwargs):
        self.count += 1

    def stop(self) -> int:
        for session in self.sessions:
            session.hooks["response"].remove(self._seen)
        return self.count


def from_connections(since: date | None = None, trigger: str = Trigger.MANUAL):
    """A reconciliation with the active connections' clients."""
    from integration.clients.kashflow import KashFlowClient
    from integration.clients.salesforce import SalesforceClient
    from integration.models import Connection

    return run(
        SalesforceClient(Connection.active(Connection.Kind.SALESFORCE)),
        KashFlowClient(Connection.active(Connection.Kind.KASHFLOW)),
        since,
        trigger,
    )


def compare(salesforce, kashflow, since: date | None) -> tuple[list[Line], int]:
    """The differences, and how many invoices and Opportunities were compared."""
    currency = "CurrencyIsoCode" in {
        f["name"] for f in salesforce.describe("Opportunity").get("fields", [])
    }
    soql = f"SELECT {FIELDS}{', CurrencyIsoCode' if currency else ''} FROM Opportunity "
    soql += "WHERE KashFlow_Invoice_Number__c != null"
    if since:
        soql += f" AND CloseDate >= {since.isoformat()}"
    deals = {}
    for deal in salesforce.query(soql):
        deals.setdefault(str(deal["KashFlow_Invoice_Number__c"]).strip(), deal)
    filters = {"issuedatefrom": since} if since else {}
    invoices = {str(i["Number"]): i for i in kashflow.invoices(**filters)}
    decided = _decided()
    credits = defaultdict(Decimal)  # Opportunity Id -> credit notes' net (negative)
    for invoice in invoices.values():
        found = MARKER.match(invoice.get("CustomerReference") or "")
        if found and found.group(2) == "CN":
            credits[found.group(1)] += Decimal(str(invoice.get("NetAmount") or 0))
    lines = []
    for number, deal in deals.items():
        lines += _deal_lines(number, deal, invoices.get(number), credits, currency, since)
    lines += _unlinked(salesforce, invoices, deals, decided, since)
    return sorted(lines, key=lambda line: (line.month, line.kind, line.invoice_number)), len(
        set(deals) | set(invoices)
    )


def _decided() -> dict[str, str]:
    """Invoice numbers a decision on a change after invoicing explains, with the words."""
    explained = {}
    for amendment in Amendment.objects.exclude(credit_note_number="", replacement_number=""):
        if amendment.credit_note_number:
            explained[amendment.credit_note_number] = (
                f"Credit note for invoice {amendment.invoice_number} ({amendment.headline})."
            )
        if amendment.replacement_number:
            explained[amendment.invoice_number] = (
                f"Replaced by invoice {amendment.replacement_number} and credited."
            )
    return explained


def _deal_lines(number, deal, invoice, credits, currency, since) -> list[Line]:
    month = (deal.get("CloseDate") or "")[:7]
    base = {
        "month": month,
        "opportunity_id": deal["Id"],
        "opportunity_name": deal.get("Name") or "",
        "invoice_number": number,
    }
    amount = Decimal(str(deal.get("Amount") or 0))
    if invoice is None:
        why = "KashFlow has no invoice with this number"
        if since:
            why += f" issued since {since.isoformat()}"
        return [Line("missing_in_kashflow", amount=_money(amount), explanation=why + ".", **base)]
    lines = []
    billed = Decimal(str(invoice.get("NetAmount") or 0)) + credits.get(deal["Id"], Decimal(0))
    if not deal.get("IsWon", True):
        amount = Decimal(0)  # a lost deal owes nothing: its invoice should be credited
    if billed != amount:
        lines.append(
            Line(
                "amount",
                salesforce=_money(amount),
                kashflow=_money(billed),
                amount=_money(amount - billed),
                explanation=_amendment_words(deal["Id"]),
                **base,
            )
        )
    invoice_currency = (invoice.get("Currency") or {}).get("Code") or ""
    if currency and deal.get("CurrencyIsoCode") and deal["CurrencyIsoCode"] != invoice_currency:
        lines.append(
            Line("currency", salesforce=deal["CurrencyIsoCode"], kashflow=invoice_currency, **base)
        )
    status = invoice.get("Status") or ""
    if (deal.get("KashFlow_Invoice_Status__c") or "") != status:
        lines.append(
            Line(
                "status",
                salesforce=deal.get("KashFlow_Invoice_Status__c") or "",
                kashflow=status,
                **base,
            )
        )
    due = Decimal(str(invoice.get("DueAmount") or 0))
    shown = deal.get("KashFlow_Amount_Due__c")
    if shown is None or Decimal(str(shown)) != due:
        lines.append(
            Line(
                "amount_due",
                salesforce="" if shown is None else _money(Decimal(str(shown))),
                kashflow=_money(due),
                amount=_money(due - Decimal(str(shown or 0))),
                **base,
            )
        )
    return lines


def _amendment_words(opportunity_id: str) -> str:
    """What the amendments queue says about a deal's changed amount, if anything."""
    amendment = Amendment.objects.filter(opportunity_id=opportunity_id).first()
    if amendment is None:
        return ""
    if amendment.status == Amendment.Status.OPEN:
        return f"Waiting for a decision: {amendment.headline}."
    by = f" by {amendment.decided_by}" if amendment.decided_by else ""
    return f"{amendment.get_status_display()}{by}: {amendment.headline}."


def _unlinked(salesforce, invoices, deals, decided, since) -> list[Line]:
    candidates = {
        number: invoice
        for number, invoice in invoices.items()
        if number not in deals and MARKER.match(invoice.get("CustomerReference") or "")
    }
    if since and candidates:
        # An Opportunity closed before the start date may still link to one of these.
        numbers = sorted(candidates)
        for start in range(0, len(numbers), 100):
            part = numbers[start : start + 100]
            soql = (
                "SELECT KashFlow_Invoice_Number__c FROM Opportunity "
                f"WHERE KashFlow_Invoice_Number__c IN ({soql_list(part)})"
            )
            for deal in salesforce.query(soql):
                candidates.pop(str(deal["KashFlow_Invoice_Number__c"]), None)
    lines = []
    for number, invoice in candidates.items():
        if number in decided:
            continue  # a credit note or a replaced invoice, decided in the amendments queue
        found = MARKER.match(invoice["CustomerReference"])
        lines.append(
            Line(
                "not_linked",
                month=str(invoice.get("IssuedDate") or "")[:7],
                opportunity_id=found.group(1),
                invoice_number=number,
                kashflow=_money(Decimal(str(invoice.get("NetAmount") or 0))),
                amount=_money(Decimal(str(invoice.get("NetAmount") or 0))),
                explanation="No Opportunity carries this invoice number.",
            )
        )
    return lines


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def summarise(lines: list[Line]) -> dict:
    """Counts and totals per kind, and per kind and month: {"kinds": {...}, "months": {...}}."""
    kinds = {kind: {"count": 0, "total": Decimal(0)} for kind in KINDS}
    months = defaultdict(lambda: {kind: {"count": 0, "total": Decimal(0)} for kind in KINDS})
    for line in lines:
        amount = Decimal(line.amount or 0)
        for bucket in (kinds[line.kind], months[line.month][line.kind]):
            bucket["count"] += 1
            bucket["total"] += amount
    return {"kinds": kinds, "months": dict(sorted(months.items()))}


def as_csv(record: Reconciliation) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for line in record.lines:
        writer.writerow({**line, "kind": KINDS.get(line["kind"], line["kind"])})
    return out.getvalue()


def describe(record: Reconciliation) -> str:
    """The summary a person reads (the command prints it; the page shows the same)."""
    if record.error:
        return f"The reconciliation could not finish: {record.error}"
    head = (
        f"Compared {record.compared} invoices and invoiced Opportunities"
        + (f" since {record.since}" if record.since else "")
        + f" with {record.api_calls} API calls: "
    )
    if not record.differences:
        return head + "Salesforce and KashFlow agree."
    rows = [head + f"{record.differences} difference(s)."]
    for kind, label in KINDS.items():
        bucket = record.summary["kinds"][kind]
        if bucket["count"]:
            rows.append(f"  {label}: {bucket['count']} (total {Decimal(bucket['total']):.2f})")
    return "\n".join(rows)
