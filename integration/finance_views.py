"""Finance's pages: changes after invoicing (amendments), invoices held for approval, and the
reconciliation of Salesforce with KashFlow. Actions are POST → flow call → message → redirect."""

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from integration.models import Amendment

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
