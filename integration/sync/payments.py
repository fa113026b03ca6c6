"""Payments: the payment lines of KashFlow invoices → KashFlow_Payment__c records in Salesforce,
with each invoice's status and amount due written back to its Opportunity.

KashFlow has no payments list and no modified-since filter: payments live inside invoices, and
only the invoice list's summaries (TotalPaidAmount, DueAmount, Status) say that they changed.
So that a run's cost does not grow with the PAYMENTS_LOOKBACK_DAYS window, collect reads, 200 a
call, the invoices issued in the last PAYMENTS_RECENT_DAYS, the older ones of the window not fully
paid, and a slice of PAYMENTS_SLICE_DAYS of the older ones (the next slice each run, from a cursor that moves
only once a slice was read whole). It keeps the invoices linked to an Opportunity and records one
when its paid state differs from the one last seen in the ledger. Two bounded checks follow:
PAYMENTS_LINE_CHECKS unchanged paid invoices, in turn, are read in full and recorded when their
payment lines differ from those last synced (the ledger's content hash covers the lines), so an
edit that keeps the totals is found; and up to PAYMENTS_GONE_CHECKS invoices last seen with money
due that no list showed are read, to record a payment (paid off) or a deletion (a 404: an error
for a person, never a silent "unpaid"). A full run reads every invoice. README "What a payments
run costs" has the figures.

Process takes 50 invoices:
- each invoice with money paid is read in full, one GET each: list summaries leave PaymentLines
  out and KashFlow offers no other read of sales-invoice payments (no payments list, no bulk
  payment GET). An invoice whose summary says nothing is paid has no payment lines, so it is
  not read. An answer without a well-formed PaymentLines list is unreadable (retried, then the
  error queue): an absence never deletes a payment;
- one SOQL reads the batch's Opportunities with their payment records, so unchanged payments and
  Opportunities are skipped by comparing with what Salesforce holds now, and a payment removed
  in KashFlow (a reversal) is found;
- one collections call upserts the new and changed payments (External ID `KF-PAY-{Id}`), one
  deletes the records of payments no longer on their invoice, so Salesforce never shows money
  that is not there, and one updates the Opportunities' status and amount due.
Only records kashforce made (a `payment` cross-reference) are ever deleted.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db.models import Max
from django.utils import timezone

from integration.clients.errors import ApiError
from integration.clients.kashflow import unexpected_shape
from integration.mapping import payload_hash, preview
from integration.models import CrossRef, Cursor, Direction, Outcome, SyncEvent
from integration.sync import engine
from integration.sync.links import Links
from integration.sync.mappings import (
    DESCRIBE_CACHE_SECONDS,
    MappingMissing,
    active_rows,
    context,
    salesforce_fields,
)

SOURCE = "kashflow.Invoice"
PAYMENT_LINE = "kashflow.PaymentLine"
PAYMENT = "salesforce.KashFlow_Payment__c"
OPPORTUNITY = "salesforce.Opportunity"
PAGE = 200  # the KashFlow client's invoice page: one prefetch of cross-references per call
# The write-back of an invoice's status lives with the invoices flow's mappings.
WRITE_BACK_FLOW = "invoices"
# The key an Opportunity's payment records are kept under once read (the org's relationship
# name is the admin's choice: see _payments_relationship).
PAYMENTS = "payments"


NOT_FULLY_PAID = "NotFullyPaid"  # the spec's invoice statusfilter (enum 7 on purchases)
SLICE_CURSOR, LINES_CURSOR = "slice", "lines"


class PaymentsFlow:
    name = "payments"
    # 50 invoice GETs a batch keeps a batch well inside a task's time slice, and their payments
    # (a few each) inside one collections call of 200.
    batch_size = 50

    # Collect ----------------------------------------------------------------------------------

    def collect(self, ctx: engine.RunContext) -> None:
        """Read the invoices whose payments may have changed, at a cost that does not grow with
        the lookback (see the module's docstring and README "What a run costs")."""
        if ctx.run.full:
            reading = _Reading(self, ctx)
            reading.read(ctx.kashflow.invoices())
            return
        conf = settings.KASHFORCE
        today = timezone.localdate()
        lookback = today - timedelta(days=conf["PAYMENTS_LOOKBACK_DAYS"])
        recent = max(lookback, today - timedelta(days=conf["PAYMENTS_RECENT_DAYS"]))
        reading = _Reading(self, ctx)
        # Every run: everything issued lately, and the older invoices that can still be paid.
        reading.read(ctx.kashflow.invoices(issuedatefrom=recent))
        if recent > lookback:
            older = {"issuedatefrom": lookback, "issuedateto": recent - timedelta(days=1)}
            reading.read(ctx.kashflow.invoices(**older, statusfilter=NOT_FULLY_PAID))
        # And a slice of the older ones, so each is visited within LOOKBACK / SLICE runs.
        window = _slice(ctx, lookback, recent)
        if window:
            reading.read(ctx.kashflow.invoices(issuedatefrom=window[0], issuedateto=window[1]))
        reading.check_lines()
        reading.check_gone(lookback)
        if window and not ctx.dry_run:  # past a window only once it was read whole
            _advance(ctx, SLICE_CURSOR, (window[1] + timedelta(days=1)).isoformat())

    def _record_page(self, ctx: engine.RunContext, page: list[dict]) -> list[tuple]:
        """Record the linked invoices of one page whose paid state changed; returns the
        unchanged ones already synced, as (summary, latest event), for the line checks."""
        links = Links().prefetch("invoice", "kashflow", [str(s["Number"]) for s in page])
        linked = [s for s in page if links.lookup("invoice", "kashflow", str(s["Number"]))]
        numbers = [str(s["Number"]) for s in linked]
        seen = (
            {} if ctx.run.full else SyncEvent.objects.latest_by_source(self.name, SOURCE, numbers)
        )
        changes, unchanged = [], []
        for summary in linked:
            number, state = str(summary["Number"]), paid_state(summary)
            before = seen.get(number)
            if before is not None and paid_state(before.payload) == state:
                if not ctx.dry_run:
                    ctx.seen += 1  # read, and nothing new about it
                if before.status in SYNCED:
                    unchanged.append((summary, before))
                continue
            # The paid state alone would make Unpaid → Paid → Unpaid (a reversal) look like the
            # first state again: chaining it to the last event keeps each change its own event.
            version = (
                f"full-{ctx.run.pk}"
                if ctx.run.full
                else f"{payload_hash(state)[:16]}:{before.pk if before else 0}"
            )
            changes.append(_change(number, summary, version))
        engine.record_changes(ctx, changes)
        return unchanged

    # Process ----------------------------------------------------------------------------------

    def process(self, events: list[SyncEvent], ctx: engine.RunContext) -> None:
        try:
            payment_rows = active_rows(ctx, self.name, PAYMENT_LINE, PAYMENT)
            opportunity_rows = active_rows(ctx, WRITE_BACK_FLOW, SOURCE, OPPORTUNITY)
        except MappingMissing as exc:
            return engine.fail_events(events, str(exc), permanent=True, code="MAPPING_MISSING")
        links = Links().prefetch("invoice", "kashflow", [event.source_id for event in events])
        invoices = [_Invoice(event, links) for event in events]
        invoices = [invoice for invoice in invoices if invoice.opportunity_id]
        try:
            _read_invoices(ctx, invoices)
            invoices = [invoice for invoice in invoices if not invoice.failed]
            if not invoices:
                return
            methods = _payment_method_names(ctx)
            current = _current_opportunities(ctx, invoices, payment_rows, opportunity_rows)
            payment_context = context(links, salesforce_fields(ctx, "KashFlow_Payment__c"))
            opportunity_context = context(links, salesforce_fields(ctx, "Opportunity"))
        except ApiError as exc:
            events = [invoice.event for invoice in invoices if not invoice.failed]
            return engine.fail_events(
                events, exc.message, permanent=not exc.transient, code=exc.code
            )
        payment_ids = [line["Id"] for invoice in invoices for line in invoice.lines]
        record_ids = [
            r["Id"] for opportunity in current.values() for r in _payments_of(opportunity)
        ]
        links.prefetch("payment", "kashflow", [str(i) for i in payment_ids])
        links.prefetch("payment", "salesforce", record_ids)
        for invoice in invoices:
            invoice.plan(
                current.get(invoice.opportunity_id[:15]),
                links,
                methods,
                (payment_rows, payment_context),
                (opportunity_rows, opportunity_context),
                full=ctx.run.full,
            )
        invoices = [invoice for invoice in invoices if not invoice.failed]
        if ctx.dry_run:
            return _plan(ctx, invoices)
        _write(ctx, invoices, links)


SYNCED = (SyncEvent.Status.SUCCEEDED, SyncEvent.Status.SKIPPED)


def _change(number: str, payload: dict, version: str) -> engine.Change:
    return engine.Change(
        direction=Direction.KASHFLOW_TO_SALESFORCE,
        source_object=SOURCE,
        source_id=number,
        payload=payload,
        version=version,
        # The invoice's payments land on its Opportunity (records and paid status).
        target_object=OPPORTUNITY,
    )


class _Reading:
    """One collect's passes over the invoice list, deduplicated, and its bounded checks."""

    def __init__(self, flow: PaymentsFlow, ctx: engine.RunContext):
        self.flow, self.ctx = flow, ctx
        self.listed: set[str] = set()  # every invoice number any pass listed
        self.unchanged: list[tuple] = []  # (summary, latest event) of synced, unchanged ones

    def read(self, summaries) -> None:
        for page in engine.pages(summaries, PAGE):
            for summary in page:
                if not isinstance(summary, dict) or "Number" not in summary:
                    raise unexpected_shape("an invoice summary with its Number", summary)
            numbers = [str(s["Number"]) for s in page]
            fresh = [s for s in page if str(s["Number"]) not in self.listed]
            self.listed.update(numbers)
            self.unchanged += self.flow._record_page(self.ctx, fresh)

    def check_lines(self) -> None:
        """Payment edits that keep the totals (a date changed, two payments swapped, 50 + 70
        made 60 + 60) leave the summary as it was: read up to LINE_CHECKS of the unchanged,
        paid invoices in full, in turn, and record those whose payment lines differ from the
        ones last synced (the ledger's content hash covers the lines)."""
        ctx = self.ctx
        paid = [(s, e) for s, e in self.unchanged if _money_text(s.get("TotalPaidAmount")) != ZERO]
        paid.sort(key=lambda pair: int(pair[0]["Number"]))
        after = int(_cursor(ctx, LINES_CURSOR) or 0)
        turn = [p for p in paid if int(p[0]["Number"]) > after]
        turn += [p for p in paid if int(p[0]["Number"]) <= after]
        turn = turn[: settings.KASHFORCE["PAYMENTS_LINE_CHECKS"]]
        changes = []
        for summary, before in turn:
            number = str(summary["Number"])
            try:
                invoice = ctx.kashflow.get_invoice(int(number))
            except ApiError as exc:
                if exc.status == 404:
                    continue  # deleted since the list was read: the next run's lists say so
                raise
            digest = invoice_digest(invoice)
            if digest != before.content_hash:
                payload = {**summary, "PaymentLinesHash": digest}
                changes.append(_change(number, payload, f"lines-{digest[:16]}:{before.pk}"))
        engine.record_changes(ctx, changes)
        if turn and not ctx.dry_run:
            _advance(ctx, LINES_CURSOR, str(turn[-1][0]["Number"]))

    def check_gone(self, lookback) -> None:
        """A linked invoice last seen with money due that no pass listed was paid since (an
        older one, outside this run's slice) or deleted in KashFlow: read up to GONE_CHECKS of
        them; a deleted one becomes an event that fails with plain words, so the Opportunity
        is not left showing an invoice that no longer exists as unpaid."""
        ctx = self.ctx
        latest = SyncEvent.objects.filter(flow=self.flow.name, source_object=SOURCE)
        newest = latest.values("source_id").annotate(newest=Max("pk")).values("newest")
        rows = SyncEvent.objects.filter(pk__in=newest).values_list(
            "pk", "source_id", "payload__DueAmount", "payload__IssuedDate", "payload__Deleted"
        )
        since = lookback.isoformat()
        missing = [
            (pk, number)
            for pk, number, due, issued, deleted in rows.order_by("pk")
            if not deleted
            and number not in self.listed
            and str(issued or "")[:10] >= since
            and _money_text(due) not in ("", ZERO)
            and Decimal(_money_text(due)) > 0
        ][: settings.KASHFORCE["PAYMENTS_GONE_CHECKS"]]
        changes = []
        for before_pk, number in missing:
            try:
                invoice = ctx.kashflow.get_invoice(int(number))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                gone = {"Number": number, "Deleted": True}
                changes.append(_change(number, gone, f"deleted:{before_pk}"))
                continue
            summary = {k: v for k, v in invoice.items() if k not in ("LineItems", "PaymentLines")}
            state = paid_state(summary)
            changes.append(_change(number, summary, f"{payload_hash(state)[:16]}:{before_pk}"))
        engine.record_changes(ctx, changes)


def _slice(ctx: engine.RunContext, lookback, recent):
    """This run's window of older issue dates, [first, last], from the slice cursor; None when
    the lookback holds nothing older than the recent pass."""
    if recent <= lookback:
        return None
    stored = _cursor(ctx, SLICE_CURSOR)
    try:
        first = date.fromisoformat(stored) if stored else lookback
    except ValueError:
        first = lookback
    if not lookback <= first < recent:
        first = lookback  # wrapped round, or the lookback moved on
    last = min(recent - timedelta(days=1), first + timedelta(days=_slice_days() - 1))
    return first, last


def _slice_days() -> int:
    return max(1, settings.KASHFORCE["PAYMENTS_SLICE_DAYS"])


def _cursor(ctx: engine.RunContext, name: str) -> str:
    return Cursor.get_value(PaymentsFlow.name, ctx.kashflow.connection, name)


def _advance(ctx: engine.RunContext, name: str, value: str) -> None:
    Cursor.advance(PaymentsFlow.name, ctx.kashflow.connection, value, name)


ZERO = "0.0000"


def paid_state(summary: dict) -> dict:
    """What says an invoice's payments changed, as text (stored payloads hold money as text)."""
    return {
        "Number": str(summary.get("Number")),
        "TotalPaidAmount": _money_text(summary.get("TotalPaidAmount")),
        "DueAmount": _money_text(summary.get("DueAmount")),
        "Status": str(summary.get("Status") or ""),
    }


def invoice_digest(invoice: dict) -> str:
    """The ledger's content hash of a synced invoice: its paid state and its payment lines
    (each line's id, date, amount, method, account and reference), so an edit that keeps the
    totals still changes it."""
    lines = sorted(
        (
            str(line.get("Id")),
            str(line.get("Date") or ""),
            _money_text(line.get("Amount")),
            str(line.get("Method") or ""),
            str(line.get("AccountId") or ""),
            str(line.get("Reference") or ""),
        )
        for line in payment_lines(invoice)
    )
    return payload_hash({**paid_state(invoice), "Lines": [list(line) for line in lines]})


def payment_lines(invoice: dict) -> list[dict]:
    """The invoice's PaymentLines; ApiError (unreadable) when they are missing or malformed.

    A full invoice always carries the list, empty when nothing is paid (reference §4.2): an
    answer without it must never read as "every payment reversed"."""
    lines = invoice.get("PaymentLines")
    if not isinstance(lines, list) or not all(
        isinstance(line, dict) and line.get("Id") is not None and line.get("Amount") is not None
        for line in lines
    ):
        raise unexpected_shape(f"invoice {invoice.get('Number', '')}'s list of payments", lines)
    return lines


def _money_text(value) -> str:
    return "" if value is None else str(Decimal(str(value)).quantize(Decimal("0.0001")))


class _Invoice:
    """One invoice of a batch: what KashFlow holds, and what Salesforce needs to match it."""

    def __init__(self, event: SyncEvent, links: Links):
        self.event = event
        self.number = event.source_id
        self.opportunity_id = links.lookup("invoice", "kashflow", self.number)
        self.invoice_ref = links.get("invoice", "kashflow", self.number)
        self.invoice: dict = {}
        self.failed = False
        self.upserts: list[dict] = []  # {"payload", "line_id", "digest"}
        self.deletes: list[str] = []  # KashFlow_Payment__c Ids
        self.opportunity: dict | None = None  # the write-back, when it changes anything
        self.warnings: list[str] = []
        self.current: dict | None = None
        if not self.opportunity_id:
            event.mark_failed(
                f"Invoice {self.number} is not linked to an Opportunity, so its payments have "
                "nowhere to go.",
                permanent=True,
                code="NOT_LINKED",
            )

    @property
    def lines(self) -> list[dict]:
        return self.invoice.get("PaymentLines") or []

    def fail(self, message: str, permanent: bool, code: str = "") -> None:
        if not self.failed:
            self.failed = True
            self.event.mark_failed(message, permanent=permanent, code=code)

    def plan(self, current, links, methods, payment_mapping, opportunity_mapping, full) -> None:
        """Map the payments and the write-back; keep only what differs from Salesforce now."""
        if current is None:
            return self.fail(
                f"Opportunity {self.opportunity_id}, linked to invoice {self.number}, is not in "
                "Salesforce (deleted?). Link the invoice to an existing Opportunity, then retry.",
                permanent=True,
                code="OPPORTUNITY_MISSING",
            )
        self.current = current
        records = {record["Id"][:15]: record for record in _payments_of(current)}
        rows, payment_context = payment_mapping
        problems = []
        for line in self.lines:
            source = {
                **line,
                # KashFlow sends InvoiceNumber 0 inside an invoice, and Method as an id.
                "InvoiceNumber": self.invoice["Number"],
                "MethodName": methods.get(str(line.get("Method")), ""),
            }
            ref = links.get("payment", "kashflow", str(line.get("Id")))
            record = records.get(ref.salesforce_id[:15]) if ref and ref.salesforce_id else None
            mapped = preview(rows, source, payment_context, record)
            if mapped.errors:
                problems += [f"payment {line.get('Id')}: {e.message}" for e in mapped.errors]
                continue
            self.warnings += mapped.warnings
            currency = (self.invoice.get("Currency") or {}).get("Code")
            if currency and "CurrencyIsoCode" in (payment_context.target_fields or {}):
                # Multi-currency org: the record's amount is in its CurrencyIsoCode, which
                # would otherwise be the API user's currency, not the invoice's.
                mapped.payload["CurrencyIsoCode"] = currency
            if full or record is None or mapped.diff:
                self.upserts.append(
                    {
                        "payload": mapped.payload,
                        "line_id": str(line["Id"]),
                        "digest": payload_hash(mapped.payload),
                    }
                )
        if problems:
            return self.fail(
                f"Invoice {self.number}'s payments cannot be sent to Salesforce. "
                + "; ".join(problems),
                permanent=True,
                code="MAPPING",
            )
        self._plan_write_back(current, opportunity_mapping, full)
        self._plan_deletes(links)

    def _plan_write_back(self, current, opportunity_mapping, full: bool) -> None:
        rows, opportunity_context = opportunity_mapping
        mapped = preview(rows, self.invoice, opportunity_context, current)
        if mapped.errors:
            problems = "; ".join(e.message for e in mapped.errors)
            return self.fail(
                f"Invoice {self.number}'s status cannot be written to its Opportunity. {problems}",
                permanent=True,
                code="MAPPING",
            )
        self.warnings += mapped.warnings
        if full or mapped.diff:
            self.opportunity = {"Id": self.opportunity_id, **mapped.payload}

    def _plan_deletes(self, links: Links) -> None:
        """Payment records kashforce made for this invoice whose payment is gone from it."""
        present = {str(line["Id"]) for line in self.lines}
        for record in _payments_of(self.current or {}):
            ref = links.get("payment", "salesforce", record["Id"])
            if ref is not None and ref.kashflow_key not in present:
                self.deletes.append(record["Id"])

    @property
    def has_writes(self) -> bool:
        return bool(self.upserts or self.deletes or self.opportunity)


def _read_invoices(ctx: engine.RunContext, invoices: list[_Invoice]) -> None:
    """Each invoice in full; one GET for each invoice with money paid, none for the others.

    An answer without a well-formed PaymentLines list is unreadable (retried, then the error
    queue), never "no payments": nothing is deleted on the strength of an absence. A transient
    failure (KashFlow down) ends the reading: the rest of the batch is retried later rather
    than waiting out the same outage once per invoice.
    """
    for position, invoice in enumerate(invoices):
        summary = invoice.event.payload
        if summary.get("Deleted"):
            invoice.fail(_deleted_message(invoice), permanent=True, code="INVOICE_DELETED")
            continue
        paid = summary.get("TotalPaidAmount")
        if paid is not None and Decimal(str(paid)) == 0:
            invoice.invoice = {**summary, "PaymentLines": []}
            continue
        try:
            invoice.invoice = ctx.kashflow.get_invoice(int(invoice.number))
            payment_lines(invoice.invoice)
        except ApiError as exc:
            if exc.status == 404:
                invoice.fail(_deleted_message(invoice), permanent=True, code="INVOICE_DELETED")
                continue
            invoice.fail(exc.message, permanent=not exc.transient, code=exc.code)
            if exc.transient:
                for rest in invoices[position + 1 :]:
                    rest.fail(exc.message, permanent=False, code=exc.code)
                return


def _deleted_message(invoice: _Invoice) -> str:
    return (
        f"Invoice {invoice.number} was deleted in KashFlow, but Opportunity "
        f"{invoice.opportunity_id} still links to it and shows its last status and amount due. "
        "Its payments in Salesforce were left as they were. Correct the Opportunity (or restore "
        "the invoice in KashFlow), then mark this error ignored."
    )


def _payment_method_names(ctx: engine.RunContext) -> dict[str, str]:
    """Payment method names by id, read once per task. The list's shape is not published
    (reference §3): anything but items with an Id and a Name is an unreadable answer."""
    if "payment_methods" not in ctx.cache:
        methods = ctx.kashflow.payment_methods()
        if not all(isinstance(m, dict) and "Id" in m and "Name" in m for m in methods):
            raise unexpected_shape("a list of payment methods with their Id and Name", methods)
        ctx.cache["payment_methods"] = {str(m["Id"]): m["Name"] for m in methods}
    return ctx.cache["payment_methods"]


def _current_opportunities(ctx, invoices, payment_rows, opportunity_rows) -> dict[str, dict]:
    """The batch's Opportunities with their payment records, as Salesforce holds them: one SOQL."""
    payment_fields = _fields(payment_rows) | {"Id", "ExternalID__c"}
    opportunity_fields = _fields(opportunity_rows) | {"Id"}
    ids = ", ".join(sorted({f"'{invoice.opportunity_id}'" for invoice in invoices}))
    relationship = _payments_relationship(ctx)
    soql = (
        f"SELECT {', '.join(sorted(opportunity_fields))}, "
        f"(SELECT {', '.join(sorted(payment_fields))} FROM {relationship}) "
        f"FROM Opportunity WHERE Id IN ({ids})"
    )
    # By the 15-character form: a cross-reference may hold either form of an Id.
    return {
        record["Id"][:15]: _with_payments(record, relationship)
        for record in ctx.salesforce.query(soql)
    }


def _payments_relationship(ctx: engine.RunContext) -> str:
    """The admin's name for Opportunity's payments relationship (the setting, or describe's),
    cached as describes are: it rarely changes."""
    key = f"kashforce:payments-relationship:{ctx.salesforce.connection.pk}"
    name = cache.get(key)
    if name is None:
        name = ctx.salesforce.payments_relationship()
        cache.set(key, name, DESCRIBE_CACHE_SECONDS)
    return name


def _with_payments(record: dict, relationship: str) -> dict:
    """The record with its payment records under PAYMENTS, whatever the relationship's name."""
    key = next((k for k in record if k.lower() == relationship.lower()), relationship)
    record[PAYMENTS] = record.pop(key, None)
    return record


def _fields(rows: list[dict]) -> set[str]:
    return {row["target_path"].split(".")[0] for row in rows}


def _payments_of(opportunity: dict) -> list[dict]:
    return (opportunity.get(PAYMENTS) or {}).get("records") or []


# Writing ------------------------------------------------------------------------------------


def _write(ctx: engine.RunContext, invoices: list[_Invoice], links: Links) -> None:
    _upsert_payments(ctx, invoices, links)
    _delete_payments(ctx, [i for i in invoices if not i.failed])
    _update_opportunities(ctx, [i for i in invoices if not i.failed], links)
    SyncEvent.objects.finish(_outcome(invoice) for invoice in invoices if not invoice.failed)


def _outcome(invoice: _Invoice) -> Outcome:
    # The hash covers the payment lines, so the collect's line checks can tell an edit that
    # kept the totals from no change (whether or not this sync had to write anything).
    digest = invoice_digest(invoice.invoice)
    if not invoice.has_writes:
        return replace(invoice.event.skipped(target_id=invoice.opportunity_id), content_hash=digest)
    return invoice.event.succeeded(
        target_id=invoice.opportunity_id, content_hash=digest, message=" ".join(invoice.warnings)
    )


def _upsert_payments(ctx, invoices: list[_Invoice], links: Links) -> None:
    writes = [(invoice, upsert) for invoice in invoices for upsert in invoice.upserts]
    if not writes:
        return
    try:
        results = ctx.salesforce.upsert(
            "KashFlow_Payment__c", "ExternalID__c", [upsert["payload"] for _, upsert in writes]
        )
    except ApiError as exc:
        for invoice, _ in writes:
            invoice.fail(exc.message, permanent=not exc.transient, code=exc.code)
        return
    for (invoice, upsert), result in zip(writes, results, strict=True):
        if not result.success:
            invoice.fail(result.error.message, not result.error.transient, result.error.code)
            continue
        ref = links.link("payment", salesforce_id=result.id, kashflow_key=upsert["line_id"])
        links.written(ref, "salesforce", upsert["digest"])


def _delete_payments(ctx, invoices: list[_Invoice]) -> None:
    doomed = [(invoice, record_id) for invoice in invoices for record_id in invoice.deletes]
    if not doomed:
        return
    try:
        results = ctx.salesforce.delete([record_id for _, record_id in doomed])
    except ApiError as exc:
        for invoice, _ in doomed:
            invoice.fail(exc.message, permanent=not exc.transient, code=exc.code)
        return
    gone = []
    for (invoice, record_id), result in zip(doomed, results, strict=True):
        already_gone = result.error and result.error.code in (
            "ENTITY_IS_DELETED",
            "INVALID_CROSS_REFERENCE_KEY",
        )
        if result.success or already_gone:
            gone.append(record_id)
        else:
            invoice.fail(
                f"A payment reversed in KashFlow is still in Salesforce: {result.error.message}",
                not result.error.transient,
                result.error.code,
            )
    CrossRef.objects.filter(object_type="payment", salesforce_id__in=gone).delete()


def _update_opportunities(ctx, invoices: list[_Invoice], links: Links) -> None:
    # Only once every payment of the invoice is in: the status never runs ahead of the money.
    updates = [invoice for invoice in invoices if invoice.opportunity]
    if not updates:
        return
    try:
        results = ctx.salesforce.update("Opportunity", [i.opportunity for i in updates])
    except ApiError as exc:
        for invoice in updates:
            invoice.fail(exc.message, permanent=not exc.transient, code=exc.code)
        return
    for invoice, result in zip(updates, results, strict=True):
        if not result.success:
            invoice.fail(result.error.message, not result.error.transient, result.error.code)
            continue
        written = {k: v for k, v in invoice.opportunity.items() if k != "Id"}
        links.written(invoice.invoice_ref, "salesforce", payload_hash(written))


def _plan(ctx: engine.RunContext, invoices: list[_Invoice]) -> None:
    for invoice in invoices:
        records = {r["Id"]: r for r in _payments_of(invoice.current or {})}
        by_key = {r.get("ExternalID__c"): r for r in records.values()}
        for upsert in invoice.upserts:
            current = by_key.get(upsert["payload"].get("ExternalID__c"))
            ctx.plan(
                invoice.event,
                target_object=PAYMENT,
                action="upsert",
                payload=upsert["payload"],
                target_id=current["Id"] if current else "",
                current=current,
            )
        for record_id in invoice.deletes:
            ctx.plan(
                invoice.event,
                target_object=PAYMENT,
                action="delete",
                payload={},
                target_id=record_id,
                current=records.get(record_id),
            )
        if invoice.opportunity:
            ctx.plan(
                invoice.event,
                target_object=OPPORTUNITY,
                action="update",
                payload=invoice.opportunity,
                target_id=invoice.opportunity_id,
                current=invoice.current,
            )


engine.register(PaymentsFlow())
