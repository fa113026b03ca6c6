"""Finance's pages: changes after invoicing (amendments), invoices held for approval, and the
reconciliation of Salesforce with KashFlow. Actions are POST → flow call → message → redirect."""

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from integration.access import admin_required, operator_required, viewer_required
from integration.forms import FinanceSettingsForm
from integration.models import Amendment, AuditEntry, FinanceHold, FinanceSettings, Reconciliation

DECIDE = "integration.decide_amendments"
APPROVE = "integration.approve_finance_holds"
VIEW_AMENDMENTS = "integration.view_amendment"

decider_required = permission_required(DECIDE, raise_exception=True)
approver_required = permission_required(APPROVE, raise_exception=True)
amendment_viewer_required = permission_required(VIEW_AMENDMENTS, raise_exception=True)


@amendment_viewer_required
def amendments(request):
    context = {
        "open": list(Amendment.objects.open().select_related("decided_by")[:200]),
        "decided": list(
            Amendment.objects.exclude(status=Amendment.Status.OPEN).select_related("decided_by")[
                :50
            ]
        ),
        "actions": Amendment.Action.choices,
    }
    return render(request, "integration/amendments.html", context)


@require_POST
@decider_required
def decide_amendment(request, pk: int):
    from integration.sync.amendments import DecisionError, decide

    amendment = get_object_or_404(Amendment, pk=pk)
    action = request.POST.get("action", "")
    try:
        decide(amendment, action, request.user, request.POST.get("reason", ""))
    except DecisionError as exc:
        messages.error(request, f"Invoice {amendment.invoice_number}: {exc}")
    else:
        amendment.refresh_from_db()
        done = amendment.get_status_display()
        if amendment.credit_note_number:
            done += f": credit note {amendment.credit_note_number}"
        if amendment.replacement_number:
            done += f", replacement invoice {amendment.replacement_number}"
        messages.success(request, f"Invoice {amendment.invoice_number}. {done}.")
    return redirect("dashboard:amendments")


# --------------------------------------------------------------------------------------------
# Reconciliation


@viewer_required
def reconciliation(request):
    from integration import reconcile

    record = Reconciliation.objects.first()
    months = []
    if record and not record.error:
        for month, kinds in record.summary.get("months", {}).items():
            months.append((month, [kinds[kind] for kind in reconcile.KINDS]))
    context = {
        "record": record,
        "described": reconcile.describe(record) if record else "",
        "kinds": [
            (label, record.summary["kinds"][kind]) if record and not record.error else (label, None)
            for kind, label in reconcile.KINDS.items()
        ],
        "labels": list(reconcile.KINDS.values()),
        "months": months,
        "lines": record.lines[:500] if record else [],
        "kind_labels": reconcile.KINDS,
        "history": Reconciliation.objects.only(
            "created_at", "differences", "compared", "api_calls", "trigger", "error"
        )[:10],
    }
    return render(request, "integration/reconciliation.html", context)


@viewer_required
def reconciliation_csv(request):
    from integration import reconcile

    record = Reconciliation.objects.first()
    if record is None:
        raise Http404("No reconciliation has run yet.")
    response = HttpResponse(reconcile.as_csv(record), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="reconciliation-{record.created_at:%Y%m%d-%H%M}.csv"'
    )
    return response


@require_POST
@operator_required
def reconcile_now(request):
    from django_q.tasks import async_task

    async_task("integration.tasks.reconciliation_now", group="kashforce")
    messages.success(
        request, "The reconciliation is running in the background; this page shows it when done."
    )
    return redirect("dashboard:reconciliation")


# --------------------------------------------------------------------------------------------
# Finance holds


@viewer_required
def holds(request):
    rules = FinanceSettings.current()
    context = {
        "waiting": list(FinanceHold.objects.filter(approved_at__isnull=True)[:200]),
        "approved": list(
            FinanceHold.objects.filter(approved_at__isnull=False).select_related("approved_by")[:50]
        ),
        "rules": rules,
        "form": FinanceSettingsForm(instance=rules),
        "reason_labels": dict(FinanceHold.Reason.choices),
    }
    return render(request, "integration/holds.html", context)


@require_POST
@approver_required
def approve_hold(request, pk: int):
    from integration.sync.holds import approve

    hold = get_object_or_404(FinanceHold, pk=pk)
    if approve(hold, request.user):
        messages.success(
            request, f"Approved: {hold} is invoiced with the next run, which starts now."
        )
    else:
        messages.warning(request, f"{hold} was approved already.")
    return redirect("dashboard:holds")


@require_POST
@admin_required
def finance_settings(request):
    rules = FinanceSettings.current()
    before = (rules.hold_above, rules.vat_closed_until)
    form = FinanceSettingsForm(request.POST, instance=rules)
    if not form.is_valid():
        messages.error(request, f"Not saved: {form.errors.as_text()}")
        return redirect("dashboard:holds")
    rules = form.save(commit=False)
    rules.updated_by = request.user
    rules.save()
    AuditEntry.record(
        request.user,
        AuditEntry.Action.FINANCE_SETTINGS_CHANGED,
        AuditEntry.ObjectType.FINANCE_SETTINGS,
        rules.pk,
        str(rules),
        f"Hold above: {before[0]} → {rules.hold_above}; VAT closed until: {before[1]} → "
        f"{rules.vat_closed_until}.",
    )
    messages.success(request, "Saved. The next invoices run holds what these rules catch.")
    return redirect("dashboard:holds")
