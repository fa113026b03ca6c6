"""Changes after invoicing: an invoiced deal whose amount, products or close date change, that
moves to Closed Lost or is deleted becomes an Amendment a finance user decides on. A sent
invoice is never changed silently.

Detection is part of the invoices flow's run. Its collect also polls, from a cursor of its own,
the Opportunities that carry an invoice number and changed (SystemModstamp, through queryAll so
deletions are seen), and records each change of one that kashforce invoiced as an event. Each
event compares the deal now with the deal as invoiced (kept in the WriteRecord written when the
invoice was made, or when a later decision settled it; for an invoice made before that history
existed, the KashFlow invoice's net total and date). A difference opens an amendment, or updates
the one already open; a deal changed back withdraws it.

A decision (`decide`) is one of:
- a credit note for the difference, or for the whole invoice. KashFlow has no credit-note
  resource: a credit note is an invoice for a negative amount (kashflow.com/change-log/
  credit-notes), here with the original's customer, currency, nominal codes and VAT rates, and
  the original invoice's number in its lines;
- a replacement: the whole invoice credited, then a new invoice made from the deal as it is now,
  and its number written back to the Opportunity;
- accepting the change with a reason: nothing is written to KashFlow.

Credit notes and replacements are made exactly once like invoices: the decision is recorded
before KashFlow is called, the document carries a deterministic marker in CustomerReference
("<Opportunity Id>-CN<amendment>" / "-R<amendment>") and every attempt looks for that marker
first, adopting what an earlier attempt made (a lost answer, a double click, a crash).
"""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from integration.clients.errors import ApiError
from integration.models import (
    Amendment,
    AuditEntry,
    CrossRef,
    Cursor,
    Direction,
    Flow,
    SyncEvent,
    SyncRun,
    Trigger,
    WriteRecord,
)
from integration.sync import engine

SOURCE = "salesforce.Opportunity"
TARGET = "kashforce.Amendment"
CURSOR = "invoiced"  # the invoices flow's second cursor: invoiced deals that changed
OVERLAP = timedelta(minutes=5)
DEAL_FIELDS = (
    "Id, Name, Amount, CloseDate, StageName, IsWon, IsClosed, IsDeleted, "
    "KashFlow_Invoice_Number__c, SystemModstamp"
)
LINE_FIELDS = "Id, Product2Id, Quantity, UnitPrice, Discount, TotalPrice"
BASELINES = (
    WriteRecord.Action.INVOICE_CREATED,
    WriteRecord.Action.REPLACEMENT_CREATED,
    WriteRecord.Action.CREDIT_NOTE_CREATED,
    WriteRecord.Action.CHANGE_ACCEPTED,
)
STUCK_AFTER = timedelta(minutes=10)  # a decision's claim older than this was a dead request


def credit_marker(amendment: Amendment) -> str:
    return f"{amendment.opportunity_id}-CN{amendment.pk}"


def replacement_marker(amendment: Amendment) -> str:
    return f"{amendment.opportunity_id}-R{amendment.pk}"


# --------------------------------------------------------------------------------------------
# The deal as invoiced


def deal(opportunity: dict) -> dict:
    """The parts of an Opportunity an invoice depends on, as plain comparable values."""
    lines = (opportunity.get("OpportunityLineItems") or {}).get("records") or []
    return {
        "Name": opportunity.get("Name") or "",
        "Amount": _text(opportunity.get("Amount")),
        "CloseDate": opportunity.get("CloseDate") or "",
        "StageName": opportunity.get("StageName") or "",
        "Lines": sorted(
            (
                {
                    "Product2Id": line.get("Product2Id") or "",
                    "Quantity": _text(line.get("Quantity")),
                    "UnitPrice": _text(line.get("UnitPrice")),
                    "Discount": _text(line.get("Discount")),
                    "TotalPrice": _text(line.get("TotalPrice")),
                }
                for line in lines
            ),
            key=lambda line: tuple(line.values()),
        ),
    }


def _text(value) -> str:
    """A number as its exact decimal text without trailing zeros ('' for none), so 100, 100.0
    and 100.00 compare equal and no float ever decides a difference."""
    if value in (None, ""):
        return ""
    number = Decimal(str(value))
    return format(number.normalize(), "f") if number else "0"


def remember_invoiced(opportunity: dict, invoice: dict, event: SyncEvent | None) -> WriteRecord:
    """Keep the invoice made for a deal, with the deal as invoiced (the baseline changes are
    compared with). Called by the invoices flow when an invoice is made or adopted."""
    return record_write(
        WriteRecord.Action.INVOICE_CREATED,
        opportunity_id=opportunity["Id"],
        invoice=invoice,
        run=event.run if event is not None and event.run_id else None,
        details={"deal": deal(opportunity)},
    )


def record_write(
    action: str, *, opportunity_id: str, invoice: dict, run=None, user=None, details=None
) -> WriteRecord:
    """One line of the kept history for a KashFlow document (invoice, credit note)."""
    return WriteRecord.objects.create(
        flow=Flow.INVOICES,
        action=action,
        source_object=SOURCE,
        source_id=opportunity_id,
        target_object="kashflow.Invoice",
        target_id=str(invoice.get("Number") or ""),
        amount=_decimal(invoice.get("NetAmount")),
        currency=_currency(invoice),
        details={
            "gross": _text(invoice.get("GrossAmount")),
            "vat": _text(invoice.get("VATAmount")),
            "issued": str(invoice.get("IssuedDate") or "")[:10],
            "customer": invoice.get("CustomerCode") or "",
            "reference": invoice.get("CustomerReference") or "",
            **(details or {}),
        },
        run_id=getattr(run, "pk", None),
        trigger=getattr(run, "trigger", "") or ("manual" if user else ""),
        username=user.get_username() if getattr(user, "pk", None) else "",
    )


def _decimal(value) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value)).quantize(Decimal("0.0001"))


def _currency(invoice: dict) -> str:
    currency = invoice.get("Currency")
    if isinstance(currency, dict):
        return (currency.get("Code") or "")[:3]
    return (currency or "")[:3]


def baseline(opportunity_id: str) -> dict | None:
    """The deal as last invoiced or settled, from the kept history; None before there is one."""
    record = (
        WriteRecord.objects.filter(source_id=opportunity_id, action__in=BASELINES)
        .exclude(details__deal=None)
        .order_by("-created_at", "-pk")
        .first()
    )
    return record.details.get("deal") if record else None


def differences(before: dict, now: dict, deleted: bool = False) -> list[str]:
    """Which changes turn the deal as invoiced (or as last settled) into the deal now
    (Amendment.Change values). A deal settled as lost or deleted is not lost again."""
    if deleted:
        return [] if before.get("deleted") else [Amendment.Change.DELETED]
    found = []
    if now.get("lost") and not before.get("lost"):
        found.append(Amendment.Change.LOST)
    if _text(before.get("Amount")) != _text(now.get("Amount")):
        found.append(Amendment.Change.AMOUNT)
    if "Lines" in before and before["Lines"] != now.get("Lines"):
        found.append(Amendment.Change.LINES)
    if (before.get("CloseDate") or "")[:10] != (now.get("CloseDate") or "")[:10]:
        found.append(Amendment.Change.CLOSE_DATE)
    return found


# --------------------------------------------------------------------------------------------
# Collect and process, inside the invoices flow's run


def collect(ctx: engine.RunContext) -> None:
    """Record a change of every invoiced deal kashforce invoiced that changed since the cursor
    (all of them in a full run), deleted ones included."""
    connection = ctx.salesforce.connection
    cursor = Cursor.get_value(Flow.INVOICES, connection, CURSOR)
    # The fields an invoice depends on come with the poll, so that kashforce's own write-backs
    # (the invoice number, status and amount due, which move SystemModstamp) are told apart
    # from real changes here, without a ledger row or a second read.
    soql = (
        f"SELECT {DEAL_FIELDS}, (SELECT {LINE_FIELDS} FROM OpportunityLineItems) "
        "FROM Opportunity WHERE KashFlow_Invoice_Number__c != null"
    )
    if cursor and not ctx.run.full:
        since = _moment(cursor) - OVERLAP
        soql += f" AND SystemModstamp > {since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    newest = ""
    query = ctx.salesforce.query(soql + " ORDER BY SystemModstamp, Id", include_deleted=True)
    for page in engine.pages(query):
        newest = max(newest, *(opportunity["SystemModstamp"] for opportunity in page))
        # Only deals kashforce invoiced are watched: one invoiced before kashforce has no
        # invoice of ours to amend (the reconciliation compares those with KashFlow).
        ours = set(
            CrossRef.objects.filter(
                object_type=CrossRef.ObjectType.INVOICE,
                kashflow_key__isnull=False,
                salesforce_id__in=[opportunity["Id"] for opportunity in page],
            ).values_list("salesforce_id", flat=True)
        )
        mine = [opportunity for opportunity in page if opportunity["Id"] in ours]
        engine.record_changes(ctx, [_change(o) for o in _worth_comparing(mine)])
    if newest and not ctx.dry_run:
        Cursor.advance(Flow.INVOICES, connection, newest, name=CURSOR)


def _worth_comparing(opportunities: list[dict]) -> list[dict]:
    """The deals that differ from the deal as invoiced, or whose amendment is open (a deal
    changed back withdraws it), or that have no kept baseline yet (compared with KashFlow)."""
    ids = [opportunity["Id"] for opportunity in opportunities]
    open_ids = set(
        Amendment.objects.open()
        .filter(opportunity_id__in=ids)
        .values_list("opportunity_id", flat=True)
    )
    baselines = _baselines(ids)
    worth = []
    for opportunity in opportunities:
        before = baselines.get(opportunity["Id"])
        now, deleted = _deal_now(opportunity)
        if before is None or opportunity["Id"] in open_ids or differences(before, now, deleted):
            worth.append(opportunity)
    return worth


def _baselines(ids: list[str]) -> dict[str, dict]:
    """baseline() for many deals in one query: the newest kept deal of each."""
    found: dict[str, dict] = {}
    records = (
        WriteRecord.objects.filter(source_id__in=ids, action__in=BASELINES)
        .exclude(details__deal=None)
        .order_by("-created_at", "-pk")
        .values_list("source_id", "details")
    )
    for source_id, details in records:
        found.setdefault(source_id, details.get("deal"))
    return found


def _deal_now(opportunity: dict | None) -> tuple[dict, bool]:
    """The deal as it is now (comparable with a baseline), and whether it was deleted."""
    deleted = opportunity is None or bool(opportunity.get("IsDeleted"))
    now = deal(opportunity) if opportunity else {"Name": "", "Amount": "", "Lines": []}
    if opportunity and opportunity.get("IsClosed") and not opportunity.get("IsWon"):
        now["lost"] = True
    if deleted:
        now["deleted"] = True
    return now, deleted


def _change(opportunity: dict) -> engine.Change:
    return engine.Change(
        direction=Direction.SALESFORCE_TO_KASHFLOW,
        source_object=SOURCE,
        source_id=opportunity["Id"],
        payload={
            "Id": opportunity["Id"],
            "SystemModstamp": opportunity["SystemModstamp"],
            "invoiced": True,
        },
        version=f"invoiced:{opportunity['SystemModstamp']}",  # every change is one event
        target_object=TARGET,
    )


def is_invoiced_change(event: SyncEvent) -> bool:
    return bool((event.payload or {}).get("invoiced"))


def process(events: list[SyncEvent], ctx: engine.RunContext) -> None:
    """Compare each changed invoiced deal with the deal as invoiced; open, update or withdraw
    its amendment."""
    try:
        deals = _read_deals(ctx, [event.source_id for event in events])
    except ApiError as exc:
        return engine.fail_events(events, exc.message, exc.permanent, exc.code)
    refs = dict(
        CrossRef.objects.filter(
            object_type=CrossRef.ObjectType.INVOICE,
            salesforce_id__in=[event.source_id for event in events],
        ).values_list("salesforce_id", "kashflow_key")
    )
    outcomes, writes = [], []
    for event in events:
        number = refs.get(event.source_id)
        if not number:
            outcomes.append(event.skipped("kashforce made no invoice for this deal."))
            continue
        try:
            outcome, write = _compare(ctx, event, deals.get(event.source_id), number)
        except ApiError as exc:
            event.mark_failed(exc.message, exc.permanent, exc.code)
            continue
        if outcome is not None:
            outcomes.append(outcome)
            writes += [write] if write else []
    if ctx.dry_run:
        return
    with transaction.atomic():  # the amendments and the events' outcomes together
        for write in writes:
            write()
        SyncEvent.objects.finish(outcomes)


def _read_deals(ctx, ids: list[str]) -> dict[str, dict]:
    """The deals with their lines (one query); those not found are read again through queryAll
    (deleted ones, a second query only when there are any)."""
    quoted = ", ".join(f"'{i}'" for i in ids if len(i) in (15, 18) and i.isalnum())
    if not quoted:
        return {}
    soql = (
        f"SELECT {DEAL_FIELDS}, (SELECT {LINE_FIELDS} FROM OpportunityLineItems) "
        f"FROM Opportunity WHERE Id IN ({quoted})"
    )
    deals = {record["Id"]: record for record in ctx.salesforce.query(soql)}
    missing = [i for i in ids if i not in deals and len(i) in (15, 18) and i.isalnum()]
    if missing:
        quoted = ", ".join(f"'{i}'" for i in missing)
        soql = f"SELECT {DEAL_FIELDS} FROM Opportunity WHERE Id IN ({quoted})"
        for record in ctx.salesforce.query(soql, include_deleted=True):
            deals[record["Id"]] = record
    return deals


def _compare(ctx, event: SyncEvent, opportunity: dict | None, number: str):
    """(the event's outcome, the amendment's write to make with it); raises ApiError."""
    now, deleted = _deal_now(opportunity)
    before = baseline(event.source_id)
    if before is None:
        before = _from_kashflow(ctx.kashflow.get_invoice(int(number)))
    found = differences(before, now, deleted=deleted)
    open_amendment = Amendment.objects.open().filter(opportunity_id=event.source_id).first()
    if ctx.dry_run:
        return None, None
    if open_amendment is not None and open_amendment.action:
        # A decision is being carried out on what the amendment says: changing it now would
        # settle the deal on figures nobody decided on. Looked at again once it is done.
        event.mark_failed(
            f"A decision on invoice {number} is under way; this later change of the deal is "
            "compared once it is done.",
            permanent=False,
            code="DECISION_UNDER_WAY",
        )
        return None, None
    if not found:
        if open_amendment is None:
            return event.skipped(f"Invoice {number} still matches the deal.", number), None

        def withdraw():
            Amendment.objects.filter(
                pk=open_amendment.pk, status=Amendment.Status.OPEN, action=""
            ).update(
                status=Amendment.Status.WITHDRAWN,
                current=now,
                changes=[],
                message="The deal was changed back to what was invoiced.",
            )

        message = f"The deal is back to what invoice {number} says; its amendment is withdrawn."
        return event.succeeded(target_id=number, message=message), withdraw
    amendment = open_amendment or Amendment(
        opportunity_id=event.source_id, invoice_number=number, invoiced=before
    )
    amendment.opportunity_name = (opportunity or {}).get("Name") or amendment.opportunity_name
    amendment.changes, amendment.current = found, now
    message = f"{amendment.headline}: waiting for a Finance decision (Changes after invoicing)."
    return event.succeeded(target_id=number, message=message), amendment.save


def _from_kashflow(invoice: dict) -> dict:
    """The deal as the KashFlow invoice says it was sold, for an invoice kashforce made before
    it kept the deal as invoiced: its net total and date (the lines are not comparable)."""
    return {
        "Amount": _text(invoice.get("NetAmount")),
        "CloseDate": str(invoice.get("IssuedDate") or "")[:10],
    }


def _moment(stamp: str):
    from datetime import datetime

    return datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")


# --------------------------------------------------------------------------------------------
# Decisions


class DecisionError(Exception):
    """A decision that cannot be carried out; the message says why in plain words."""


def decide(amendment: Amendment, action: str, user, reason: str = "") -> Amendment:
    """Carry out a finance user's decision on an open amendment; raises DecisionError.

    Safe to repeat: a decision interrupted after KashFlow saved (a lost answer) finds its
    document by marker the next time instead of making a second one.
    """
    if action == "accept":
        return _accept(amendment, user, reason)
    if action not in Amendment.Action.values:
        raise DecisionError("Choose what to do with this invoice.")
    _check(amendment, action)
    if not _claim(amendment, action):
        raise DecisionError(
            "Someone else is deciding on this invoice right now, or it was decided already."
        )
    ctx = _context(user)
    try:
        original = ctx.kashflow.get_invoice(int(amendment.invoice_number))
        credit_note = amendment.credit_note_number or _credit_once(ctx, amendment, original)
        if action == Amendment.Action.REPLACE:
            replacement = amendment.replacement_number or _replace_once(ctx, amendment, original)
    except (ApiError, DecisionError) as exc:
        message = exc.message if isinstance(exc, ApiError) else str(exc)
        if isinstance(exc, ApiError) and exc.ambiguous:
            message = (
                "KashFlow may have saved it but its answer was lost; trying again looks for it "
                f"first, so it is not made twice. ({exc.message})"
            )
        Amendment.objects.filter(pk=amendment.pk).update(working_since=None, message=message)
        amendment.refresh_from_db()
        raise DecisionError(message) from exc
    status = Amendment.Status.REPLACED if action == Amendment.Action.REPLACE else None
    _settle(amendment, user, status or Amendment.Status.CREDITED, reason)
    amendment.refresh_from_db()
    assert amendment.credit_note_number == str(credit_note)
    if status:
        assert amendment.replacement_number == str(replacement)
    return amendment


def _check(amendment: Amendment, action: str) -> None:
    if amendment.status != Amendment.Status.OPEN:
        raise DecisionError(f"This change was decided already ({amendment.get_status_display()}).")
    if amendment.action and amendment.action != action:
        raise DecisionError(
            f"“{amendment.get_action_display()}” was started for this invoice; finish that first."
        )
    gone = {Amendment.Change.DELETED, Amendment.Change.LOST} & set(amendment.changes)
    if action == Amendment.Action.CREDIT_DIFFERENCE and not gone and amendment.difference <= 0:
        raise DecisionError(
            f"The deal is now worth more than invoice {amendment.invoice_number}, so there is "
            "nothing to credit: raise a replacement invoice, or accept the change."
        )
    if action == Amendment.Action.REPLACE and gone:
        raise DecisionError(
            "The deal is lost or deleted, so there is nothing to invoice instead: credit the "
            "whole invoice, or accept the change."
        )


def _claim(amendment: Amendment, action: str) -> bool:
    """Record the decision before anything is written (the intent), and take it for this
    request: a double click or a second person finds it taken."""
    now = timezone.now()
    from django.db.models import Q

    taken = (
        Amendment.objects.filter(pk=amendment.pk, status=Amendment.Status.OPEN)
        .filter(Q(action="") | Q(action=action))
        .filter(Q(working_since__isnull=True) | Q(working_since__lt=now - STUCK_AFTER))
        .update(action=action, working_since=now, message="")
    )
    amendment.refresh_from_db()
    return bool(taken)


def _context(user) -> engine.RunContext:
    run = SyncRun(flow=Flow.INVOICES, trigger=Trigger.MANUAL, triggered_by=user)
    return engine.RunContext(run=run, deadline=time.monotonic() + 300)


def _credit_once(ctx, amendment: Amendment, original: dict) -> str:
    marker = credit_marker(amendment)
    found = ctx.kashflow.find_invoices_by_reference(marker)
    if found:
        credit = ctx.kashflow.get_invoice(found[0]["Number"])
    else:
        gone = {Amendment.Change.DELETED, Amendment.Change.LOST} & set(amendment.changes)
        whole = amendment.action != Amendment.Action.CREDIT_DIFFERENCE or bool(gone)
        credit = ctx.kashflow.create_invoice(_credit_note(amendment, original, marker, whole))
    number = str(credit["Number"])
    with transaction.atomic():
        Amendment.objects.filter(pk=amendment.pk).update(
            credit_note_number=number, credit_amount=_decimal(credit.get("NetAmount"))
        )
        record_write(
            WriteRecord.Action.CREDIT_NOTE_CREATED,
            opportunity_id=amendment.opportunity_id,
            invoice=credit,
            user=ctx.run.triggered_by,
            details={
                "credits": amendment.invoice_number,
                "amendment": amendment.pk,
                "changes": amendment.changes,
                # The decision settles the deal as it is now (a replacement's invoice, made
                # next, records the deal it invoices).
                "deal": amendment.current,
            },
        )
    amendment.credit_note_number = number
    return number


def _credit_note(amendment: Amendment, original: dict, marker: str, whole: bool) -> dict:
    """A negative invoice: the original's lines negated (whole), or one line for the difference
    at the original's VAT rate (HMRC: a credit note takes the VAT rate of the original supply)."""
    lines = original.get("LineItems") or []
    if not lines:
        raise DecisionError(f"Invoice {amendment.invoice_number} has no lines to credit.")
    about = f"Credit for invoice {amendment.invoice_number}"
    if whole:
        items = [
            {
                "Number": n,
                "Quantity": -Decimal(str(line["Quantity"])),
                "Rate": Decimal(str(line["Rate"])),
                "VATLevel": Decimal(str(line.get("VATLevel") or 0)),
                "VATExempt": bool(line.get("VATExempt")),
                "NominalCode": line["NominalCode"],
                "ProductCode": line.get("ProductCode") or "",
                "Description": f"{about}: {line.get('Description') or ''}".strip(": ")[:1000],
            }
            for n, line in enumerate(lines, start=1)
        ]
    else:
        rates = {(str(line.get("VATLevel")), bool(line.get("VATExempt"))) for line in lines}
        if len(rates) > 1:
            raise DecisionError(
                f"Invoice {amendment.invoice_number} has lines at several VAT rates, so a credit "
                "for the difference cannot say which rate it takes: credit the whole invoice and "
                "raise a replacement instead."
            )
        first = lines[0]
        items = [
            {
                "Number": 1,
                "Quantity": Decimal(-1),
                "Rate": amendment.difference,
                "VATLevel": Decimal(str(first.get("VATLevel") or 0)),
                "VATExempt": bool(first.get("VATExempt")),
                "NominalCode": first["NominalCode"],
                "Description": f"{about}: the deal was reduced from "
                f"{amendment.invoiced.get('Amount')} to {amendment.current.get('Amount')}",
            }
        ]
    return {
        "CustomerCode": original["CustomerCode"],
        "CustomerReference": marker,
        "IssuedDate": timezone.localdate().isoformat(),
        "Currency": {"Code": _currency(original) or "GBP"},
        "LineItems": items,
    }


def _replace_once(ctx, amendment: Amendment, original: dict) -> str:
    """A new invoice from the deal as it is now, made once (by marker), linked to the deal and
    written back to it."""
    from integration.sync import invoices

    marker = replacement_marker(amendment)
    found = ctx.kashflow.find_invoices_by_reference(marker)
    if found:
        replacement = ctx.kashflow.get_invoice(found[0]["Number"])
        opportunity = None
    else:
        opportunity, payload, problem = invoices.replacement_payload(ctx, amendment.opportunity_id)
        if problem:
            raise DecisionError(problem)
        payload["CustomerReference"] = marker
        replacement = ctx.kashflow.create_invoice(payload)
    number = str(replacement["Number"])
    with transaction.atomic():
        Amendment.objects.filter(pk=amendment.pk).update(replacement_number=number)
        CrossRef.objects.filter(
            object_type=CrossRef.ObjectType.INVOICE, salesforce_id=amendment.opportunity_id
        ).update(kashflow_key=number)
        record_write(
            WriteRecord.Action.REPLACEMENT_CREATED,
            opportunity_id=amendment.opportunity_id,
            invoice=replacement,
            user=ctx.run.triggered_by,
            details={
                "replaces": amendment.invoice_number,
                "amendment": amendment.pk,
                "deal": deal(opportunity) if opportunity else amendment.current,
            },
        )
    invoices.write_back_invoice(ctx, amendment.opportunity_id, replacement)
    return number


def _settle(amendment: Amendment, user, status: str, reason: str) -> None:
    with transaction.atomic():
        Amendment.objects.filter(pk=amendment.pk).update(
            status=status,
            working_since=None,
            reason=reason.strip(),
            decided_by=user if getattr(user, "pk", None) else None,
            decided_at=timezone.now(),
            message="",
        )
        amendment.refresh_from_db()
        AuditEntry.record(
            user,
            AuditEntry.Action.AMENDMENT_DECIDED,
            AuditEntry.ObjectType.AMENDMENT,
            amendment.pk,
            str(amendment),
            f"{amendment.get_status_display()}"
            + (
                f": credit note {amendment.credit_note_number}"
                if amendment.credit_note_number
                else ""
            )
            + (
                f", replacement {amendment.replacement_number}"
                if amendment.replacement_number
                else ""
            )
            + (f". Reason: {amendment.reason}" if amendment.reason else "."),
        )


def _accept(amendment: Amendment, user, reason: str) -> Amendment:
    if not reason.strip():
        raise DecisionError("Say why the change is accepted without a credit note.")
    with transaction.atomic():
        accepted = Amendment.objects.filter(
            pk=amendment.pk, status=Amendment.Status.OPEN, action=""
        ).update(status=Amendment.Status.ACCEPTED)
        if not accepted:
            raise DecisionError("This change was decided already, or a decision is under way.")
        WriteRecord.objects.create(
            flow=Flow.INVOICES,
            action=WriteRecord.Action.CHANGE_ACCEPTED,
            source_object=SOURCE,
            source_id=amendment.opportunity_id,
            target_object="kashflow.Invoice",
            target_id=amendment.invoice_number,
            amount=_decimal(amendment.current.get("Amount")),
            details={
                "deal": amendment.current,
                "reason": reason.strip(),
                "changes": amendment.changes,
            },
            trigger="manual",
            username=user.get_username() if getattr(user, "pk", None) else "",
        )
        _settle(amendment, user, Amendment.Status.ACCEPTED, reason)
    return amendment
