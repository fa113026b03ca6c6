"""Finance holds: an invoice above the amount an admin set, or dated on or before the end of the
last VAT period submitted, waits for a Finance approval before it is raised in KashFlow.

KashFlow's REST API gives no closed-period date to rely on (its `LockTransactionAfterVat` is a
flag without a date; `/vatreturns` is not in the documented set), so the date is entered by an
admin (FinanceSettings.vat_closed_until) after each return. A back-dated invoice would
otherwise put VAT into a return already filed (HMRC: reference D2).

A held invoice's event is set aside (skipped, saying why) and its hold is listed for Finance.
Approving is one click, audited: the hold records who and when, and the event goes back in line
for the next invoices run. An approval covers the amount approved: a deal that grows past it
waits again.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from integration.models import AuditEntry, FinanceHold, FinanceSettings, SyncEvent, Trigger


def reasons_for(amount: Decimal | None, issued: date | None, rules: FinanceSettings) -> list[str]:
    reasons = []
    if rules.hold_above is not None and amount is not None and amount > rules.hold_above:
        reasons.append(FinanceHold.Reason.OVER_LIMIT)
    if rules.vat_closed_until and issued and issued <= rules.vat_closed_until:
        reasons.append(FinanceHold.Reason.CLOSED_PERIOD)
    return reasons


def describe(reasons: list[str], amount, issued, rules: FinanceSettings) -> str:
    words = []
    if FinanceHold.Reason.OVER_LIMIT in reasons:
        words.append(f"its amount {amount:,.2f} is above {rules.hold_above:,.2f}")
    if FinanceHold.Reason.CLOSED_PERIOD in reasons:
        words.append(
            f"it is dated {issued:%d %b %Y}, in a VAT period closed on "
            f"{rules.vat_closed_until:%d %b %Y}"
        )
    return "Waiting for a Finance approval before it is invoiced: " + " and ".join(words) + "."


def release(invoices: list, ctx) -> list:
    """The invoices that may be raised now; the others wait on a hold (their events are set
    aside with the reason). `invoices` are the invoices flow's, with `opportunity` and `ref`."""
    rules = FinanceSettings.current()
    if ctx.dry_run or (rules.hold_above is None and rules.vat_closed_until is None):
        return invoices
    ids = [invoice.opportunity_id for invoice in invoices]
    holds = {
        hold.opportunity_id: hold for hold in FinanceHold.objects.filter(opportunity_id__in=ids)
    }
    free, outcomes, held = [], [], []
    for invoice in invoices:
        if invoice.ref is not None:
            free.append(invoice)  # made already, or its making began: never held half-way
            continue
        # An Opportunity's Amount and CloseDate, or an Order's TotalAmount and EffectiveDate.
        amount = _amount(invoice.amount)
        issued = _date(
            invoice.opportunity.get("CloseDate") or invoice.opportunity.get("EffectiveDate")
        )
        reasons = reasons_for(amount, issued, rules)
        hold = holds.get(invoice.opportunity_id)
        if not reasons or (hold and hold.approved and _covers(hold, amount, issued)):
            free.append(invoice)
            continue
        held.append(
            {
                "opportunity_id": invoice.opportunity_id,
                "opportunity_name": invoice.opportunity.get("Name") or invoice.label,
                "reasons": reasons,
                "amount": amount,
                "issued": issued,
                "event": invoice.event,
            }
        )
        outcomes.append(invoice.event.skipped(describe(reasons, amount, issued, rules)))
    with transaction.atomic():  # the holds and their events' outcomes together
        for hold in held:
            FinanceHold.objects.update_or_create(
                opportunity_id=hold.pop("opportunity_id"),
                defaults={**hold, "approved_at": None, "approved_by": None},
            )
        SyncEvent.objects.finish(outcomes)
    return free


def _covers(hold: FinanceHold, amount, issued) -> bool:
    return (
        hold.amount is None or amount is None or amount <= hold.amount
    ) and hold.issued == issued


def _amount(value) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def _date(value) -> date | None:
    return date.fromisoformat(str(value)[:10]) if value else None


def approve(hold: FinanceHold, user) -> bool:
    """One click: record the approval (audited) and put the invoice back in line. False when
    it was approved already."""
    from integration.sync import engine

    with transaction.atomic():
        approved = FinanceHold.objects.filter(pk=hold.pk, approved_at__isnull=True).update(
            approved_at=timezone.now(), approved_by=user
        )
        if not approved:
            return False
        hold.refresh_from_db()
        AuditEntry.record(
            user,
            AuditEntry.Action.HOLD_APPROVED,
            AuditEntry.ObjectType.HOLD,
            hold.pk,
            str(hold),
            f"Approved for invoicing: {hold.amount} dated {hold.issued} "
            f"({', '.join(FinanceHold.Reason(r).label for r in hold.reasons)}).",
        )
        if hold.event_id:
            SyncEvent.objects.filter(pk=hold.event_id, status=SyncEvent.Status.SKIPPED).update(
                status=SyncEvent.Status.PENDING, next_attempt_at=None, finished_at=None
            )
        engine.start_run("invoices", Trigger.RETRY, user)
    return True
