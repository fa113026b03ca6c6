"""Dashboard views: small functions. An action is POST → model or flow call → message → redirect."""

import hmac
import json
import logging
from datetime import datetime, time, timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.cache import cache
from django.db import connection as db_connection
from django.db.models import Count, Max, Min, Q
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from integration import changes, changestream, export
from integration.access import VIEW, admin_required, operator_required, viewer_required
from integration.forms import (
    NO_CODE,
    QUEUE_VIEWS,
    AuditFilterForm,
    ErrorFilterForm,
    FieldMappingForm,
    IgnoreForm,
    KindConnectionForm,
    MappingFormSet,
    MappingVersionForm,
    RunFilterForm,
    VatRulesForm,
)
from integration.links import SALESFORCE_ID, RecordLinks, salesforce_id18
from integration.models import (
    AuditEntry,
    Connection,
    CrossRef,
    Flow,
    MappingSet,
    SyncEvent,
    SyncRun,
    Trigger,
    VatRuleSet,
    describe_vat_rule_changes,
)
from integration.paging import keyset_page
from integration.templatetags.kashforce import object_label

log = logging.getLogger(__name__)

PAGE_SIZE = 50
CHART_DAYS = 14
TIMELINE_LIMIT = 200
MATCHES = 20  # records a search by name may show at once


@login_not_required
@never_cache
@require_GET
def health(request):
    """For load balancers and monitors: is the database reachable, is the queue being worked?

    Anyone gets up or down; the details (queue length, broker, errors) need a signed-in user
    or the KASHFORCE_HEALTH_TOKEN as `Authorization: Bearer <token>` (issue #15)."""
    checks = {"database": _database_ok(), "queue": _queue_state()}
    healthy = checks["database"] and checks["queue"]["ok"]
    answer = {"status": "ok" if healthy else "error"}
    if _may_see_health_details(request):
        answer |= checks
    return JsonResponse(answer, status=200 if healthy else 503)


def _may_see_health_details(request) -> bool:
    if request.user.has_perm(VIEW):
        return True
    token = settings.KASHFORCE.get("HEALTH_TOKEN", "")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


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


# --------------------------------------------------------------------------------------------
# Seams to the engines, imported when first used. The sync engine is integration/sync/engine.py;
# the mapping engine (validation, preview, the known fields) is integration/mapping.py.


def _sync_engine():
    from integration.sync import engine

    return engine


def _mapping_engine():
    """integration.mapping, or None on an install without it (the editor then saves unchecked
    rows and says that preview is unavailable)."""
    try:
        from integration import mapping
    except ImportError:
        return None
    return mapping


def _start_of(day) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def _back(request, default: str):
    """Redirect to the page the action came from (only on this site), else to `default`."""
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return redirect(target)
    return redirect(default)


# --------------------------------------------------------------------------------------------
# Overview


def _stale_after() -> timedelta:
    # A few missed schedule ticks are normal (a long run, a restart); a quarter of an hour of
    # silence with a one-minute schedule means the workers are not running.
    return timedelta(minutes=max(15, 3 * settings.KASHFORCE["SYNC_INTERVAL_MINUTES"]))


def _cause_rows(groups) -> list[dict]:
    return [
        {
            **group,
            "label": SyncEvent.cause_label(group["error_code"], group["sample"] or ""),
            "flow_label": Flow(group["flow"]).label,
            "code_param": group["error_code"] or NO_CODE,
        }
        for group in groups
    ]


@viewer_required
def overview(request):
    today = timezone.localdate()
    days = [today - timedelta(days=n) for n in range(CHART_DAYS - 1, -1, -1)]
    week_start = today - timedelta(days=today.weekday())
    synced = SyncEvent.objects.synced_per_day(days)
    causes = _cause_rows(SyncEvent.objects.unresolved().error_groups())
    connections = list(Connection.objects.filter(is_active=True))
    engine = _sync_engine()
    now, stale_after = timezone.now(), _stale_after()

    flows = []
    for flow in Flow:
        last = SyncRun.objects.for_flow(flow).select_related("triggered_by").first()
        flows.append(
            {
                "flow": flow,
                "last": last,
                "stalled": bool(
                    last
                    and last.status == SyncRun.Status.RUNNING
                    and (last.heartbeat_at or last.created_at) < now - stale_after
                ),
                "next_run_at": engine.next_run_at(flow),
                "today": synced.get((today, flow.value), 0),
                "week": sum(synced.get((day, flow.value), 0) for day in days if day >= week_start),
                "open_errors": sum(c["count"] for c in causes if c["flow"] == flow.value),
            }
        )
    latest = max((row["last"].created_at for row in flows if row["last"]), default=None)
    charts = {
        "synced": {
            "labels": [day.strftime("%a %d %b") for day in days],
            "series": [
                {"label": flow.label, "data": [synced.get((day, flow.value), 0) for day in days]}
                for flow in Flow
            ],
        },
        "causes": {
            "labels": [f"{c['label']} ({c['flow_label']})" for c in causes[:8]],
            "data": [c["count"] for c in causes[:8]],
        },
        "api": [
            {
                "label": c.name,
                "used": c.api_usage_used,
                "limit": c.api_usage_limit,
                "budget": round(c.api_usage_limit * settings.KASHFORCE["API_BUDGET_SHARE"]),
            }
            for c in connections
            if c.kind == Connection.Kind.SALESFORCE and c.api_usage_limit
        ],
    }
    context = {
        "flows": flows,
        "causes": causes,
        "open_errors": sum(c["count"] for c in causes),
        "warnings_this_week": SyncEvent.objects.with_warnings()
        .filter(created_at__gte=_start_of(week_start))
        .count(),
        "failing_connections": [
            c
            for c in connections
            if c.status == Connection.Status.FAILING and c.sign_in_refused_at is None
        ],
        "paused_connections": [c for c in connections if c.sign_in_refused_at is not None],
        "salesforce_usage": [c for c in connections if c.kind == Connection.Kind.SALESFORCE],
        "realtime": changestream.realtime_status(connections),
        "silent_since": latest if latest and latest < now - stale_after else None,
        "never_synced": latest is None,
        "charts": charts,
        "budget_percent": round(100 * settings.KASHFORCE["API_BUDGET_SHARE"]),
        "days": days,
        "synced_table": list(
            zip(
                charts["synced"]["labels"],
                zip(*(s["data"] for s in charts["synced"]["series"]), strict=True),
                strict=True,
            )
        ),
    }
    context["demo"] = _demo_guide(request)
    context |= _finance_overview()
    return render(request, "integration/overview.html", context)


def _demo_guide(request) -> dict | None:
    """What the guided first run shows on the overview of a trial on the sandbox."""
    from integration import demo

    if demo.demo_connections() is None:
        return None
    latest_invoice = (
        SyncEvent.objects.filter(flow=Flow.INVOICES, status=SyncEvent.Status.SUCCEEDED)
        .order_by("-created_at")
        .values_list("source_id", flat=True)
        .first()
    )
    return {
        "holds": demo.DEMO_HOLDS,
        "deal": request.session.get("demo_deal"),
        "record": latest_invoice,
    }


@require_POST
@operator_required
def demo_close_deal(request):
    """The guided first run's button: close one demo deal in the sandbox (never elsewhere)."""
    from integration import demo
    from integration.clients.errors import ApiError

    try:
        deal = demo.close_a_demo_deal()
    except demo.NotTheSandbox:
        messages.error(
            request,
            "Only a trial connected to the sandbox can close demo deals; "
            "these connections point somewhere else.",
        )
        return redirect("dashboard:overview")
    except ApiError as exc:
        messages.error(request, f"The demo Salesforce did not close the deal: {exc}")
        return redirect("dashboard:overview")
    if deal is None:
        messages.info(request, "Every demo deal is closed already.")
        return redirect("dashboard:overview")
    timeline = f"{reverse('dashboard:timeline')}?{urlencode({'q': deal.id})}"
    messages.success(
        request,
        f"Closed “{deal.name}” ({deal.account}) as won in the demo Salesforce. Its invoice "
        "appears in KashFlow within a minute or two; its timeline shows each step.",
    )
    request.session["demo_deal"] = {"id": deal.id, "name": deal.name, "timeline": timeline}
    return redirect("dashboard:overview")


def _finance_overview() -> dict:
    """The last reconciliation and the changes after invoicing waiting for Finance (2 queries)."""
    from integration.models import Amendment, Reconciliation

    return {
        "last_reconciliation": Reconciliation.objects.defer("lines", "summary").first(),
        "open_amendments": Amendment.objects.open().count(),
    }


# --------------------------------------------------------------------------------------------
# Runs


@viewer_required
def runs(request):
    form = RunFilterForm(request.GET or None)
    queryset = form.apply(SyncRun.objects.select_related("triggered_by"))
    page = keyset_page(
        queryset, PAGE_SIZE, request.GET.get("older", ""), request.GET.get("newer", "")
    )
    context = {"form": form, "page": page, "flows": Flow}
    if not form["idle"].value():
        context["idle"] = _idle_runs_among(page)
    return render(request, "integration/runs.html", context)


def _idle_runs_among(page) -> dict:
    """The idle runs hidden among this page's runs (from its oldest row, or the start, to its
    newest, or now): one count over the partial index of idle runs."""
    span = SyncRun.objects.filter(idle=True)
    if page.older and page.rows:
        span = span.filter(created_at__gte=page.rows[-1].created_at)
    if page.newer and page.rows:
        span = span.filter(created_at__lte=page.rows[0].created_at)
    return span.order_by().aggregate(
        count=Count("pk"), first=Min("created_at"), last=Max("created_at")
    )


@viewer_required
def runs_csv(request):
    form = RunFilterForm(request.GET or None)
    queryset = form.apply(SyncRun.objects.all())
    rows = (
        queryset.select_related("triggered_by")
        .order_by("-created_at", "-pk")
        .iterator(chunk_size=2000)
    )
    header = [
        "Run",
        "Flow",
        "Trigger",
        "Status",
        "Dry run",
        "Created",
        "Started",
        "Finished",
        "Read",
        "Synced",
        "Unchanged",
        "Failed",
        "Started by",
        "Summary",
    ]
    return export.csv_response("kashforce-runs.csv", header, map(_run_row, rows))


def _run_row(run: SyncRun) -> list:
    """A run as the runs page words it; Unchanged holds the records read with nothing new."""
    return [
        run.pk,
        run.get_flow_display(),
        run.get_trigger_display(),
        run.get_status_display(),
        "yes" if run.dry_run else "no",
        run.created_at,
        run.started_at,
        run.finished_at,
        run.read_count,
        run.written_count,
        run.unchanged_total,
        run.failed_count,
        run.started_by_label,
        run.summary,
    ]


@viewer_required
def run_detail(request, pk: int):
    run = get_object_or_404(SyncRun.objects.select_related("triggered_by"), pk=pk)
    page = keyset_page(
        run.events.select_related("resolved_by"),
        PAGE_SIZE,
        request.GET.get("older", ""),
        request.GET.get("newer", ""),
    )
    links = RecordLinks.load()
    rows = [(event, links.for_event(event)) for event in page.rows]
    context = {"run": run, "page": page, "rows": rows, "poll": _is_unfinished(run)}
    return render(request, "integration/run_detail.html", context)


def _is_unfinished(run: SyncRun) -> bool:
    return run.status in (SyncRun.Status.QUEUED, SyncRun.Status.RUNNING)


@viewer_required
def run_progress(request, pk: int):
    """The part of a run's page that htmx polls while the run is going; once the run has
    finished, the fragment comes back without its polling trigger and the polling stops."""
    run = get_object_or_404(SyncRun, pk=pk)
    context = {"run": run, "poll": _is_unfinished(run), "polled": True}
    return render(request, "integration/_run_progress.html", context)


@require_POST
@operator_required
def sync_now(request):
    flow = request.POST.get("flow", "")
    if flow not in Flow.values:
        raise Http404("No such flow.")
    run = _sync_engine().start_run(flow, Trigger.MANUAL, request.user)
    messages.success(request, f"{Flow(flow).label}: sync started. This page follows its progress.")
    return redirect("dashboard:run", pk=run.pk)


# --------------------------------------------------------------------------------------------
# The error queue


@viewer_required
def errors(request):
    form = ErrorFilterForm(request.GET or None)
    queue = form.queue()
    filters = form.filters()
    # Filters other than the cause stay when a person picks a cause or retries a whole group.
    carry = [
        (k, request.GET[k])
        for k in ("source_object", "q", "date_from", "date_to")
        if request.GET.get(k)
    ]
    causes = _cause_rows(queue.matching(form.filters(with_cause=False)).error_groups())
    for cause in causes:
        cause["query"] = urlencode(
            [
                *carry,
                ("show", form.view),
                ("flow", cause["flow"]),
                ("code", cause["code_param"]),
                ("error_class", cause["error_class"]),
            ]
        )
    page = keyset_page(
        queue.matching(filters).select_related("resolved_by"),
        PAGE_SIZE,
        request.GET.get("older", ""),
        request.GET.get("newer", ""),
    )
    links = RecordLinks.load()
    context = {
        "title": QUEUE_VIEWS[form.view][0],
        "form": form,
        "views": {key: label for key, (label, _) in QUEUE_VIEWS.items()},
        "causes": causes,
        "selected_cause": _selected_cause(causes, filters),
        "total": sum(c["count"] for c in causes),
        "carry": carry,
        "page": page,
        "rows": [(event, links.for_event(event)) for event in page.rows],
        "source_objects": MappingSet.objects.order_by()
        .values_list("source_object", flat=True)
        .distinct(),
    }
    return render(request, "integration/errors.html", context)


@viewer_required
def errors_csv(request):
    form = ErrorFilterForm(request.GET or None)
    queryset = form.queue().matching(form.filters())
    columns = [
        "pk",
        "flow",
        "source_object",
        "source_id",
        "target_object",
        "target_id",
        "status",
        "error_class",
        "error_code",
        "message",
        "attempts",
        "created_at",
        "updated_at",
        "resolved_by__username",
        "ignored_reason",
        "run_id",
        "label",
        "warning",
    ]
    rows = queryset.order_by("-created_at", "-pk").values_list(*columns).iterator(chunk_size=2000)
    header = [
        "Event",
        "Flow",
        "Source object",
        "Source id",
        "Target object",
        "Target id",
        "Status",
        "Kind",
        "Cause",
        "Message",
        "Attempts",
        "First seen",
        "Latest attempt",
        "Retried or ignored by",
        "Reason ignored",
        "Run",
        "Record",
        "Code for support",
    ]
    return export.csv_response("kashforce-errors.csv", header, map(_error_row, rows))


def _error_row(row: tuple) -> list:
    """A queue row as the page words it: labels, not the codes the database keeps."""
    pk, flow, source, source_id, target, target_id, status, kind, code, message, *rest = row
    *rest, label, warning = rest
    status_label = SyncEvent.Status(status).label
    if warning and status == SyncEvent.Status.SUCCEEDED:
        status_label = "Synced with a warning"
    return [
        pk,
        Flow(flow).label,
        object_label(source),
        source_id,
        object_label(target),
        target_id,
        status_label,
        SyncEvent.ErrorClass(kind).label if kind else "",
        SyncEvent.cause_label(code, message) if kind else "",
        message,
        *rest,
        label,
        code,
    ]


def _selected_cause(causes: list[dict], filters: dict) -> dict | None:
    if "error_code" not in filters:
        return None
    wanted = {key: filters[key] for key in ("flow", "error_code", "error_class") if key in filters}
    return next((c for c in causes if all(c[k] == v for k, v in wanted.items())), None)


@require_POST
@operator_required
def retry_event(request, pk: int):
    event = get_object_or_404(SyncEvent, pk=pk)
    if _sync_engine().retry_events([event.pk], request.user):
        messages.success(
            request,
            f"Retrying {event.source_id}. It leaves this list now and comes back only if it fails again.",
        )
    else:
        messages.warning(request, f"{event.source_id} was not waiting for a retry.")
    return _back(request, reverse("dashboard:errors"))


@require_POST
@operator_required
def retry_selected(request):
    ids = [int(pk) for pk in request.POST.getlist("ids") if pk.isdigit()]
    if not ids:
        messages.warning(request, "Tick the errors to retry first.")
        return _back(request, reverse("dashboard:errors"))
    retried = _sync_engine().retry_events(ids, request.user)
    messages.success(request, f"Retrying {retried} record{'s' if retried != 1 else ''}.")
    return _back(request, reverse("dashboard:errors"))


@require_POST
@operator_required
def retry_group(request):
    form = ErrorFilterForm(request.POST)
    filters = form.filters()
    if "error_code" not in filters:
        messages.error(request, "Choose a cause to retry.")
        return _back(request, reverse("dashboard:errors"))
    run = _sync_engine().start_bulk_retry(filters, request.user)
    messages.success(
        request, "Retrying the whole group in the background. This page follows its progress."
    )
    return redirect("dashboard:run", pk=run.pk)


@require_POST
@operator_required
def ignore_event(request, pk: int):
    event = get_object_or_404(SyncEvent, pk=pk)
    form = IgnoreForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Say why this error is being ignored.")
    elif event.ignore(request.user, form.cleaned_data["reason"]):
        messages.success(request, f"Ignored {event.source_id}: {event.ignored_reason}")
    else:
        messages.warning(request, f"{event.source_id} was not an open error.")
    return _back(request, reverse("dashboard:errors"))


# --------------------------------------------------------------------------------------------
# Record timeline: "what happened to invoice 1043?"


@viewer_required
def timeline(request):
    query = request.GET.get("q", "").strip()
    context = {"query": query}
    if "\x00" in query:
        # No id holds one, and PostgreSQL refuses it in a query (a 500 before issue #15).
        return render(
            request,
            "integration/timeline.html",
            {"query": "", "problem": "A record id cannot contain a NUL character; type it again."},
        )
    if query:
        ids = {query, salesforce_id18(query)}
        # A name ("Harbour"), a customer code, an invoice number or part of an id: the records
        # whose names or ids hold it, a few at most.
        ids |= set(SyncEvent.objects.named(query).values_list("source_id", flat=True)[:MATCHES])
        crossrefs = list(
            CrossRef.objects.filter(
                Q(salesforce_id__in=ids) | Q(kashflow_key__in=ids - {salesforce_id18(query)})
            )
        )
        for crossref in crossrefs:
            ids |= {crossref.salesforce_id, crossref.kashflow_key} - {None}
        events = list(
            SyncEvent.objects.for_records(sorted(ids))
            .select_related("run", "resolved_by")
            .prefetch_related("attempt_lines")[:TIMELINE_LIMIT]
        )
        links = RecordLinks.load()
        context |= {
            "crossrefs": [(c, links.for_crossref(c)) for c in crossrefs],
            "entries": _timeline_entries(events, links),
            "limited": len(events) == TIMELINE_LIMIT,
            "writes": _kept_history(sorted(ids)),
        }
    return render(request, "integration/timeline.html", context)


def _kept_history(record_ids: list[str]) -> list:
    """The kept history of writes to the record (six years; the events above go sooner)."""
    from integration.models import WriteRecord

    return list(
        WriteRecord.objects.filter(Q(source_id__in=record_ids) | Q(target_id__in=record_ids))[
            :TIMELINE_LIMIT
        ]
    )


def _timeline_entries(events: list[SyncEvent], links: RecordLinks) -> list[dict]:
    """Newest first, each event with what changed in its payload since the one before it
    (the previous event of the same record in the same flow)."""
    previous: dict[tuple, dict] = {}
    entries = []
    for event in reversed(events):
        key = (event.flow, event.source_object, event.source_id)
        before = previous.get(key)
        entries.append(
            {
                "event": event,
                "links": links.for_event(event),
                "first": before is None,
                "changes": changes.payload_changes(before, event.payload)
                if before is not None
                else [],
            }
        )
        previous[key] = event.payload
    return entries[::-1]


# --------------------------------------------------------------------------------------------
# Connections


@viewer_required
def connections(request):
    context = {"connections": Connection.objects.all()}
    return render(request, "integration/connections.html", context)


@admin_required
def connection_edit(request, pk: int | None = None):
    connection = get_object_or_404(Connection, pk=pk) if pk else Connection()
    kind = connection.kind if pk else request.POST.get("kind") or request.GET.get("kind", "")
    if kind not in Connection.Kind.values:
        return render(request, "integration/connection_form.html", {"choose_kind": True})
    connection.kind = kind
    form = KindConnectionForm(request.POST or None, instance=connection, kind=kind)
    if request.method == "POST" and form.is_valid():
        connection = form.save()
        form.audit(request.user, created=pk is None)
        messages.success(request, f"Saved {connection.name}. Use Test to check it signs in.")
        return redirect("dashboard:connections")
    return render(
        request, "integration/connection_form.html", {"form": form, "connection": connection}
    )


@require_POST
@operator_required
def connection_test(request, pk: int):
    from integration.clients.check import check_connection

    connection = get_object_or_404(Connection, pk=pk)
    result = check_connection(connection, request.user)
    # The message already names any custom fields missing in the Salesforce org.
    if result.ok:
        messages.success(request, f"{connection.name} works: {result.message}")
    else:
        messages.error(request, f"{connection.name} is not working: {result.message}")
    return redirect("dashboard:connections")


# --------------------------------------------------------------------------------------------
# Mapping editor (Integration admins only)


@admin_required
def mappings(request):
    mapping_sets = MappingSet.objects.active().select_related("created_by")
    return render(request, "integration/mappings.html", {"mapping_sets": mapping_sets})


@admin_required
def mapping_edit(request, pk: int):
    mapping_set = get_object_or_404(MappingSet.objects.select_related("created_by"), pk=pk)
    if request.method == "POST":
        formset = MappingFormSet(request.POST, prefix="rows")
        version_form = MappingVersionForm(request.POST)
        if (
            formset.is_valid()
            and version_form.is_valid()
            and _validate(mapping_set, formset, version_form)
        ):
            new = mapping_set.save_new_version(
                formset.rows(), user=request.user, note=version_form.cleaned_data["note"]
            )
            messages.success(
                request, f"Saved as version {new.version}. It is used from the next sync."
            )
            return redirect("dashboard:mapping", pk=new.pk)
    else:
        fixed = _fixed_fields(mapping_set)
        initial = [
            FieldMappingForm.initial_from_row(row)
            for row in mapping_set.as_rows()
            if row["target_path"] not in fixed  # set by the engine: shown apart, never saved
        ]
        formset = MappingFormSet(initial=initial, prefix="rows")
        version_form = MappingVersionForm()
    return render(
        request,
        "integration/mapping_edit.html",
        _editor_context(mapping_set, formset, version_form),
    )


def _editor_context(mapping_set: MappingSet, formset, version_form) -> dict:
    history = MappingSet.objects.history(
        mapping_set.flow, mapping_set.source_object, mapping_set.target_object
    )
    recent = (
        SyncEvent.objects.filter(flow=mapping_set.flow, source_object=mapping_set.source_object)
        .order_by("-created_at")
        .values_list("source_id", flat=True)[:200]
    )
    _mark_full_record_rows(mapping_set.source_object, formset)
    return {
        "mapping_set": mapping_set,
        "active": mapping_set if mapping_set.is_active else history.filter(is_active=True).first(),
        "formset": formset,
        "version_form": version_form,
        "fixed_rows": _template(mapping_set).fixed_by_engine if _template(mapping_set) else (),
        "source_fields": sorted(_field_info(mapping_set.source_object) or ()),
        "target_fields": sorted(_field_info(mapping_set.target_object) or ()),
        "recent_records": list(dict.fromkeys(recent))[:20],
        "preview_available": _mapping_engine() is not None,
        **_params_reference(),
    }


def _params_reference() -> dict:
    """Each transform's parameters in words ("length (a positive number)"), for the editor."""
    mapping = _mapping_engine()
    if mapping is None:
        return {"transform_params": {}, "common_params": ""}

    def words(rules: dict) -> str:
        return "; ".join(
            f"{name}{' (required)' if required else ''}: {expected}"
            for name, (required, _, expected) in rules.items()
        )

    return {
        "transform_params": {name: words(rules) for name, rules in mapping.PARAM_RULES.items()},
        "common_params": words(mapping.COMMON_RULES),
    }


def _mark_full_record_rows(source_object: str, formset) -> None:
    """Flag the rows that read a field KashFlow's list leaves out (`needs_full_record`): the
    row says so, since such a field arrives on the rolling re-read of full records."""
    mapping = _mapping_engine()
    if mapping is None:
        return
    for form in formset.forms:
        params = form["params"].value() or {}
        if isinstance(params, str):
            try:
                params = json.loads(params or "{}")
            except ValueError:
                params = {}
        row = {
            "source_path": form["source_path"].value() or "",
            "params": params if isinstance(params, dict) else {},
        }
        form.needs_full_record = any(
            mapping.needs_full_record(source_object, path) for path in mapping.source_paths(row)
        )


def _field_info(object_name: str) -> dict | None:
    """The real fields of 'kashflow.Customer' or 'salesforce.Account' (name -> FieldInfo):
    KashFlow's are known; Salesforce's come from `describe`, cached for ten minutes so the
    editor does not spend API calls on every page. None when they cannot be known now."""
    mapping = _mapping_engine()
    system, _, name = object_name.partition(".")
    if mapping is None:
        return None
    if system == "kashflow":
        return mapping.KASHFLOW_FIELDS.get(name)
    if system != "salesforce":
        return None
    describe = _cached_describe(name)
    return None if describe is None else mapping.salesforce_fields_from_describe(describe)


def _cached_describe(name: str) -> dict | None:
    """A Salesforce object's describe, cached for ten minutes; None when Salesforce cannot be
    asked now (no connection, or unreachable): the editor still works without it."""
    try:
        return cache.get_or_set(
            f"kashforce:describe:{name}", lambda: _salesforce_describe(name), timeout=600
        )
    except Exception:
        log.warning("describe %s failed", name, exc_info=True)
        return None


def _salesforce_describe(sobject: str) -> dict:
    from integration.clients.salesforce import SalesforceClient

    return SalesforceClient(Connection.active(Connection.Kind.SALESFORCE)).describe(sobject)


def _validate(mapping_set: MappingSet, formset, version_form) -> bool:
    """The mapping engine's checks, shown on the rows they concern. Without the target's
    fields (Salesforce unreachable) only the rows themselves can be checked."""
    mapping = _mapping_engine()
    if mapping is None:
        return True
    rows, kept = formset.rows(), formset.kept_forms()
    target_fields = _field_info(mapping_set.target_object)
    template = _template(mapping_set)
    if target_fields is None:
        problems = [
            mapping.RowError(number, row["target_path"], problem)
            for number, row in enumerate(rows, start=1)
            for problem in mapping.row_problems(row)
        ] + mapping.duplicate_targets(rows)
    else:
        problems = mapping.validate_rows(
            rows,
            target_fields,
            update_only=bool(template and template.update_only),
            filled_by_flow=template.filled_by_flow if template else (),
            fixed_by_engine=template.fixed_fields if template else (),
        )
    source_names = _source_names(mapping_set, template)
    if source_names is not None:
        problems += mapping.source_problems(rows, source_names)
    for problem in problems:
        if problem.row and problem.row <= len(kept):
            kept[problem.row - 1].add_error(None, problem.problem)
        else:
            version_form.add_error(None, problem.message)
    return not problems


def _source_names(mapping_set: MappingSet, template) -> set[str] | None:
    """The names a row's source path may start with, or None when they cannot be known now
    (Salesforce unreachable): the object's fields and relationships, and what its flow adds."""
    system, _, name = mapping_set.source_object.partition(".")
    extras = set(template.source_extras) if template else set()
    if system == "kashflow":
        return (_mapping_engine().kashflow_source_names(name) | extras) or None
    describe = _cached_describe(name) if system == "salesforce" else None
    if describe is None:
        return None
    return _mapping_engine().source_names_from_describe(describe) | extras


def _fixed_fields(mapping_set: MappingSet) -> tuple[str, ...]:
    template = _template(mapping_set)
    return template.fixed_fields if template else ()


def _template(mapping_set: MappingSet):
    """The default template of this pair: which fields its flow fills itself."""
    try:
        from integration.mapping_defaults import template_for
    except ImportError:
        return None
    return template_for(mapping_set.flow, mapping_set.source_object, mapping_set.target_object)


@require_POST
@admin_required
def mapping_preview(request, pk: int):
    """Map one real source record with the rows as they are in the form (saved or not) and
    show the payload and what would change in the target. Nothing is written."""
    mapping_set = get_object_or_404(MappingSet, pk=pk)
    formset = MappingFormSet(request.POST, prefix="rows")
    record_id = request.POST.get("record_id", "").strip()
    version_form = MappingVersionForm()
    # The rows go back with the preview (an out-of-band swap), so their red marks are the ones
    # this check found: a row fixed since the last save or preview is no longer marked.
    context = {
        "record_id": record_id,
        "mapping_set": mapping_set,
        "formset": formset,
        **_params_reference(),
    }
    mapping = _mapping_engine()
    source = _source_record(mapping_set, record_id) if record_id else None
    if mapping is None:
        context["problem"] = "Preview needs the mapping engine, which is not installed here."
    elif not record_id:
        context["problem"] = "Type or pick the id of a record to preview with."
    elif not (formset.is_valid() and _validate(mapping_set, formset, version_form)):
        context["problem"] = "Fix the rows marked in red first:"
        context["row_problems"] = _named_row_problems(formset, version_form)
    elif source is None:
        context["problem"] = (
            f"No {mapping_set.source_object} with id {record_id} has reached kashforce yet."
        )
    else:
        target = _current_target(mapping_set, record_id, formset.rows())
        mapping_context = mapping.MappingContext(
            lookup=_crossref_lookup, target_fields=_field_info(mapping_set.target_object)
        )
        preview = mapping.preview(formset.rows(), source, mapping_context, target)
        context |= {
            "preview": preview,
            "payload_rows": changes.flatten(preview.payload).items(),
            "has_target": target is not None,
        }
    return render(request, "integration/_mapping_preview.html", context)


def _crossref_lookup(object_type: str, side: str, key: str) -> str | None:
    """The other side's id of a record, for the preview's lookup rows (one query each)."""
    other = "kashflow_key" if side == "salesforce" else "salesforce_id"
    mine = "salesforce_id" if side == "salesforce" else "kashflow_key"
    return (
        CrossRef.objects.filter(object_type=object_type, **{mine: key})
        .values_list(other, flat=True)
        .first()
    )


def _source_record(mapping_set: MappingSet, record_id: str) -> dict | None:
    """The record as it last arrived from the source system (the ledger keeps its payload)."""
    event = (
        SyncEvent.objects.filter(
            flow=mapping_set.flow, source_object=mapping_set.source_object, source_id=record_id
        )
        .order_by("-created_at")
        .first()
    )
    return event.payload if event else None


def _named_row_problems(formset, version_form) -> list[str]:
    """Each marked row by its number on the page and its target field, with what is wrong."""
    named = []
    for number, form in enumerate(formset.forms, start=1):
        if not form.errors:
            continue
        target = form.data.get(form.add_prefix("target_path"), "").strip() or "no target field"
        for name, errors in form.errors.items():
            label = "" if name == "__all__" else f"{form.fields[name].label}: "
            named += [f"Row {number} ({target}): {label}{error}" for error in errors]
    return named + list(formset.non_form_errors()) + list(version_form.non_field_errors())


# A Salesforce target of a mapping, and the cross-reference that holds its id.
SALESFORCE_TARGETS = {
    "Account": CrossRef.ObjectType.CUSTOMER,
    "Opportunity": CrossRef.ObjectType.INVOICE,
    "Product2": CrossRef.ObjectType.PRODUCT,
}


def _current_target(mapping_set: MappingSet, record_id: str, rows=()) -> dict | None:
    """The target record as it is now, for the diff; None when there is none (or it cannot
    be read: the preview then shows everything the mapping writes)."""
    if mapping_set.target_object.startswith("salesforce."):
        return _current_salesforce_target(mapping_set, record_id, rows)
    object_type = mapping_set.target_object.partition(".")[2].lower()
    if not mapping_set.target_object.startswith("kashflow.") or object_type not in (
        "customer",
        "invoice",
    ):
        return None
    key = _crossref_lookup(object_type, "salesforce", record_id)
    if not key:
        return None
    try:
        from integration.clients.kashflow import KashFlowClient

        client = KashFlowClient(Connection.active(Connection.Kind.KASHFLOW))
        return (
            client.get_customer(key) if object_type == "customer" else client.get_invoice(int(key))
        )
    except Exception:
        log.warning("reading KashFlow %s %s for a preview failed", object_type, key, exc_info=True)
        return None


def _current_salesforce_target(mapping_set: MappingSet, record_id: str, rows) -> dict | None:
    """The Salesforce record the source record is linked to, read with the fields the rows
    write (those the object has: a typo in a row must not make the whole read fail)."""
    name = mapping_set.target_object.partition(".")[2]
    object_type = SALESFORCE_TARGETS.get(name)
    salesforce_id = object_type and _crossref_lookup(object_type, "kashflow", record_id)
    fields = _field_info(mapping_set.target_object)
    if not salesforce_id or not fields or not SALESFORCE_ID.fullmatch(salesforce_id):
        return None
    wanted = sorted({row["target_path"].split(".")[0] for row in rows} & set(fields) - {"Id"})
    try:
        from integration.clients.salesforce import SalesforceClient

        client = SalesforceClient(Connection.active(Connection.Kind.SALESFORCE))
        soql = f"SELECT {', '.join(['Id', *wanted])} FROM {name} WHERE Id = '{salesforce_id}'"
        record = next(iter(client.query(soql)), None)
    except Exception:
        log.warning(
            "reading Salesforce %s %s for a preview failed", name, salesforce_id, exc_info=True
        )
        return None
    return None if record is None else {k: v for k, v in record.items() if k != "attributes"}


@admin_required
def mapping_history(request, pk: int):
    mapping_set = get_object_or_404(MappingSet, pk=pk)
    versions = list(
        MappingSet.objects.history(
            mapping_set.flow, mapping_set.source_object, mapping_set.target_object
        )
        .select_related("created_by")
        .prefetch_related("fields")
    )
    entries = [
        {
            "version": version,
            "changes": changes.mapping_changes(older.as_rows() if older else [], version.as_rows()),
        }
        for version, older in zip(versions, [*versions[1:], None], strict=True)
    ]
    return render(
        request,
        "integration/mapping_history.html",
        {"mapping_set": mapping_set, "entries": entries},
    )


@require_POST
@admin_required
def mapping_rollback(request, pk: int):
    mapping_set = get_object_or_404(MappingSet, pk=pk)
    new = mapping_set.rollback_to(request.user)
    messages.success(
        request,
        f"Rolled back: version {new.version} now has the rows of version {mapping_set.version}.",
    )
    return redirect("dashboard:mapping_history", pk=new.pk)


# --------------------------------------------------------------------------------------------
# VAT rules (Integration admins only)


@admin_required
def vat_rules(request):
    """The VAT rules: kept in versions like mappings, each save audited."""
    current = VatRuleSet.objects.active().first()
    rules = current.rules if current else {}
    form = VatRulesForm(request.POST or None, initial=VatRulesForm.initial_for(rules))
    if request.method == "POST" and form.is_valid():
        new = VatRuleSet.save_new_version(
            form.rules(), user=request.user, note=form.cleaned_data["note"]
        )
        messages.success(request, f"VAT rules saved as version {new.version}.")
        return redirect("dashboard:vat_rules")
    versions = list(VatRuleSet.objects.select_related("created_by")[:50])
    history = [
        {"version": v, "changes": describe_vat_rule_changes(older.rules if older else {}, v.rules)}
        for v, older in zip(versions, [*versions[1:], None][: len(versions)], strict=True)
    ]
    return render(
        request,
        "integration/vat_rules.html",
        {"form": form, "current": current, "history": history},
    )


# --------------------------------------------------------------------------------------------
# The audit trail (Integration admins only)


@admin_required
def audit(request):
    form = AuditFilterForm(request.GET or None)
    entries = AuditEntry.objects.select_related("user")
    if form.is_valid():
        entries = form.apply(entries)
    page = keyset_page(
        entries, PAGE_SIZE, request.GET.get("older", ""), request.GET.get("newer", "")
    )
    return render(request, "integration/audit.html", {"form": form, "page": page})


# --------------------------------------------------------------------------------------------
# Two-step sign-in (anyone signed in may turn it on; KASHFORCE_REQUIRE_TWO_FACTOR_FOR_ADMINS
# makes Integration admins do so before anything else)


@never_cache
def two_factor(request):
    """Turn on two-step sign-in. "Show a key" (a POST: a GET changes nothing) makes a new
    secret and shows it once, as a QR code and as text; a code from it confirms it. After that
    the secret is never shown again."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from integration.access import needs_two_factor

    user = request.user
    context = {"required": needs_two_factor(user), "verified": user.is_verified()}
    if TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        return render(request, "integration/two_factor.html", {**context, "enabled": True})
    action = request.POST.get("action") if request.method == "POST" else None
    if action == "confirm":
        device_id = request.POST.get("device", "")
        device = (
            TOTPDevice.objects.filter(user=user, confirmed=False, pk=device_id).first()
            if device_id.isdigit()
            else None
        )
        if device is None:
            messages.error(request, "That key has been replaced; ask for a new one.")
        elif _confirm_device(request, device, request.POST.get("code", "")):
            return redirect("dashboard:overview")
        else:
            context["problem"] = (
                "That code did not match. Check the app's entry for kashforce and try again."
            )
            return render(request, "integration/two_factor.html", _key_context(context, device))
    elif action == "new":
        # A fresh secret each time: one shown earlier (a page left open) is no longer valid.
        TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)
        return render(request, "integration/two_factor.html", _key_context(context, device))
    return render(request, "integration/two_factor.html", context)


def _confirm_device(request, device, code: str) -> bool:
    from django_otp import login as otp_login

    code = code.replace(" ", "")
    if not code or not device.verify_token(code):
        return False
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    otp_login(request, device)  # this session counts as signed in with a code
    log.info("two-step sign-in turned on user=%s", request.user.pk)
    messages.success(request, "Two-step sign-in is on: from now on, sign in with a code as well.")
    return True


def _key_context(context: dict, device) -> dict:
    return {
        **context,
        "device": device,
        "uri": device.config_url,
        "secret": _base32(device.bin_key),
        "qr_svg": _qr_svg(device.config_url),
    }


def _base32(key: bytes) -> str:
    from base64 import b32encode

    text = b32encode(key).decode().rstrip("=")
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def _qr_svg(text: str) -> str:
    """The QR code as inline SVG made here (no script, no outside service: works offline)."""
    import segno
    from django.utils.safestring import mark_safe

    # Safe: segno draws paths from the bits of the code and escapes the title; nothing of the
    # text itself reaches the markup.
    svg = segno.make(text, error="m").svg_inline(scale=5, title="Scan with your app")
    return mark_safe(svg)  # noqa: S308
