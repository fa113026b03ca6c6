"""Dashboard views: small functions. An action is POST → model or flow call → message → redirect."""

from datetime import timedelta

from django.contrib.auth.decorators import login_not_required
from django.db import connection as db_connection
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from integration.models import Flow, SyncEvent, SyncRun


@login_not_required
@never_cache
@require_GET
def health(request):
    """For load balancers and monitors: is the database reachable, is the queue being worked?"""
    checks = {"database": _database_ok(), "queue": _queue_state()}
    healthy = checks["database"] and checks["queue"]["ok"]
    return JsonResponse(
        {"status": "ok" if healthy else "error", **checks}, status=200 if healthy else 503
    )


def _database_ok() -> bool:
    try:
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


def _queue_state() -> dict:
    """The queue is healthy when it can be read and no task has waited far too long."""
    from django.conf import settings
    from django.utils import timezone
    from django_q.models import OrmQ

    if "redis" in settings.Q_CLUSTER:
        try:
            from django_q.brokers import get_broker

            get_broker().ping()
            return {"ok": True, "broker": "redis"}
        except Exception as exc:
            return {"ok": False, "broker": "redis", "error": type(exc).__name__}
    try:
        waiting = OrmQ.objects.count()
        oldest = OrmQ.objects.order_by("lock").values_list("lock", flat=True).first()
    except Exception as exc:
        return {"ok": False, "broker": "orm", "error": type(exc).__name__}
    # A task still queued long after its lock expired means no cluster is taking work.
    stuck = bool(oldest and timezone.now() - oldest > timedelta(minutes=15))
    return {"ok": not stuck, "broker": "orm", "waiting": waiting, "stuck": stuck}


def overview(request):
    flows = []
    for flow in Flow:
        last = SyncRun.objects.for_flow(flow).first()
        flows.append({"flow": flow, "last": last})
    context = {
        "flows": flows,
        "open_errors": SyncEvent.objects.unresolved().count(),
        "recent_runs": SyncRun.objects.select_related("triggered_by")[:10],
    }
    return render(request, "integration/overview.html", context)
