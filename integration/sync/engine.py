"""The sync engine: runs, claims and the sweeper. Flows plug in through the `Flow` protocol.

A run has two phases. *Collect* reads changes from the source (from a cursor) and records each as
a SyncEvent; exactly one worker collects, chosen by a conditional UPDATE. *Process* claims due
events in batches (SELECT … FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite's IMMEDIATE transactions
serialise writers, which gives the same guarantee) and hands each batch to the flow, which maps,
writes and records every outcome. Any number of workers may process one run's events at once.

The job queue only rings the doorbell. A task that is lost (Redis), delivered twice (the ORM broker
is at-least-once) or killed half-way changes nothing that the ledger does not already say: the
sweeper finds stale work from the ledger and sets it going again.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Protocol

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from integration.models import (
    AuditEntry,
    Connection,
    SyncEvent,
    SyncRun,
    Trigger,
    content_hash,
)
from integration.models import (
    Flow as FlowName,
)
from integration.secrets import redact

log = logging.getLogger(__name__)

OPEN_STATUSES = [
    SyncEvent.Status.PENDING,
    SyncEvent.Status.FAILED_TRANSIENT,
    SyncEvent.Status.FAILED_PERMANENT,
]


def _setting(name: str):
    return settings.KASHFORCE[name]


# --------------------------------------------------------------------------------------------
# Flows


@dataclass
class RunContext:
    """What a flow gets while it works on a run."""

    run: SyncRun
    deadline: float  # time.monotonic() after which a worker hands over to a fresh task
    cache: dict = field(default_factory=dict)  # per-task memo: clients, prefetched cross-refs
    seen: int = 0  # source records read, not yet added to the run's counters
    recorded: int = 0  # events recorded (new or changed) by this collect
    on_progress: Callable[[SyncRun], None] | None = None  # the foreground command's display
    hand_over: bool = True  # False: the caller loops instead of enqueueing a continuation

    @property
    def dry_run(self) -> bool:
        return self.run.dry_run

    @property
    def kashflow(self):
        """The KashFlow client for the active connection, one per task (its session is reused)."""
        if "kashflow" not in self.cache:
            from integration.clients.kashflow import KashFlowClient

            self.cache["kashflow"] = KashFlowClient(Connection.active(Connection.Kind.KASHFLOW))
        return self.cache["kashflow"]

    @property
    def salesforce(self):
        """The Salesforce client for the active connection, one per task."""
        if "salesforce" not in self.cache:
            from integration.clients.salesforce import SalesforceClient

            self.cache["salesforce"] = SalesforceClient(
                Connection.active(Connection.Kind.SALESFORCE)
            )
        return self.cache["salesforce"]

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def flush_counts(self) -> None:
        """Add what was read so far to the run (also its heartbeat); cheap to call per page."""
        if self.seen:
            self.run.add_counts(read=self.seen)
            self.seen = 0
            self.report()

    def report(self) -> None:
        if self.on_progress:
            self.on_progress(self.run)

    def plan(self, event: SyncEvent, **write) -> None:
        """In a dry run, note a write the flow would make (the flow then writes nothing)."""
        self.cache.setdefault("plans", []).append(
            PlannedWrite(source_object=event.source_object, source_id=event.source_id, **write)
        )


@dataclass
class PlannedWrite:
    """One write a dry run would have made, with the field-by-field difference it would make."""

    source_object: str
    source_id: str
    target_object: str
    action: str  # "create", "update" or "upsert"
    payload: dict
    target_id: str = ""
    current: dict | None = None  # the target record as it is now, when it exists
    problem: str = ""  # why this record could not be synced, when it could not

    @property
    def diff(self) -> list[tuple[str, object, object]]:
        current = self.current or {}
        return [
            (name, current.get(name), value)
            for name, value in self.payload.items()
            if str(current.get(name, "")) != str(value if value is not None else "")
        ]

    def describe(self) -> str:
        if self.problem:
            return f"cannot sync {self.source_object} {self.source_id}: {self.problem}"
        target = f"{self.target_object} {self.target_id}".strip()
        lines = [f"{self.action} {target} from {self.source_object} {self.source_id}"]
        for name, before, after in self.diff:
            lines.append(f"    {name}: {before!r} -> {after!r}")
        return "\n".join(lines)


class Flow(Protocol):
    name: str
    batch_size: int

    def collect(self, ctx: RunContext) -> None:
        """Read changes from the source since the cursor and `record_changes` them, a page at a
        time."""

    def process(self, events: list[SyncEvent], ctx: RunContext) -> None:
        """Map and write a batch of claimed events, marking each succeeded, skipped or failed."""


_registry: dict[str, Flow] = {}


def register(flow: Flow) -> Flow:
    _registry[flow.name] = flow
    return flow


def get_flow(name: str) -> Flow:
    """The flow for a name. Flows live in integration/sync/<name>.py and register on import."""
    if name not in _registry:
        try:
            importlib.import_module(f"integration.sync.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"integration.sync.{name}":
                raise
    if name not in _registry:
        raise LookupError(f"The {FlowName(name).label} flow is not available in this version.")
    return _registry[name]


# --------------------------------------------------------------------------------------------
# Starting runs


def ring(task: str, *args) -> None:
    """Enqueue a task once the current transaction commits (the row it names must exist)."""
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task(task, *args, group="kashforce"))


@transaction.atomic
def start_run(
    flow: str,
    trigger: str,
    user=None,
    *,
    dry_run: bool = False,
    full: bool = False,
    params=None,
    collected: bool = False,
) -> SyncRun:
    """Create a run for a flow and enqueue it; an unfinished run of the flow is returned instead.

    `collected`: the caller records the run's changes itself (a push brings them), so a new run
    skips reading changes from the source; the schedule's polls stay the safety net.

    One unfinished run per flow keeps a double-clicked "Sync now", a schedule and a push from
    reading the same changes three times. The queue is rung either way: an extra task on a
    running run only joins its processing, and it guarantees that an event recorded just before
    this call is picked up even if the run was about to finish (see _finish_if_done).
    """
    FlowName(flow)  # ValueError for an unknown flow name
    if trigger in (Trigger.SCHEDULE, Trigger.RETRY) and not dry_run and not params:
        waiting = _still_paused(flow)
        if waiting is not None:
            return waiting  # one waiting run says so; not another every minute
    run = None
    if not dry_run and not params:
        unfinished = (
            SyncRun.objects.select_for_update()
            .unfinished()
            .filter(flow=flow, dry_run=False, full=full, params={})
        )
        if not collected:
            # A run a push made reads no changes: whoever wants them read gets a run that will.
            unfinished = unfinished.exclude(trigger=Trigger.PUSH, collected_at__isnull=False)
        run = unfinished.first()
    if run is None:
        now = timezone.now() if collected else None
        run = SyncRun.objects.create(
            flow=flow,
            trigger=trigger,
            triggered_by=user if getattr(user, "pk", None) else None,
            dry_run=dry_run,
            full=full,
            params=params or {},
            collect_started_at=now,
            collected_at=now,
        )
    ring("integration.tasks.run_flow", run.pk)
    return run


def start_bulk_retry(filters: dict, user) -> SyncRun:
    """Retry a whole group of errors in the background: a run that re-queues every unresolved
    event matching `filters` (a group is always within one flow), then processes them."""
    if not filters.get("flow"):
        raise ValueError("A group retry needs a flow.")
    clean = {k: v for k, v in filters.items() if v not in (None, "") or k == "error_code"}
    count = SyncEvent.objects.unresolved().matching(filters).count()
    run = start_run(filters["flow"], Trigger.RETRY, user, params={"requeue": _jsonable(clean)})
    described = ", ".join(f"{k}={v!s}" for k, v in sorted(_jsonable(clean).items()))
    AuditEntry.record(
        user,
        AuditEntry.Action.GROUP_RETRIED,
        AuditEntry.ObjectType.RUN,
        run.pk,
        str(run),
        f"{count} error(s) matching {described}.",
    )
    return run


def retry_events(event_ids: list[int], user) -> int:
    """Put failed events back in line and ring the queue for their flows; returns how many."""
    events = SyncEvent.objects.filter(pk__in=event_ids).exclude(
        status__in=[SyncEvent.Status.PENDING, SyncEvent.Status.RUNNING, SyncEvent.Status.SUCCEEDED]
    )
    retried = [event for event in events if event.retry(user)]
    for flow in {event.flow for event in retried}:
        start_run(flow, Trigger.RETRY, user)
    return len(retried)


def next_run_at(flow: str) -> datetime | None:
    from django_q.models import Schedule

    schedule = Schedule.objects.filter(name=schedule_name(flow)).first()
    return schedule.next_run if schedule else None


def schedule_name(flow: str) -> str:
    return f"kashforce: sync {flow}"


def _jsonable(filters: dict) -> dict:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in filters.items()}


# --------------------------------------------------------------------------------------------
# Recording changes

PAGE = 200  # changes recorded per transaction: one page of a KashFlow list or a SOQL batch
RECORD_ATTEMPTS = 5  # a page that loses this many races in a row is not racing: raise


@dataclass(frozen=True)
class Change:
    """One source record as a flow read it, on its way to the ledger (`record_changes`)."""

    direction: str
    source_object: str
    source_id: str
    payload: dict
    version: str = ""
    target_object: str = ""
    # What people call the record, when the payload does not carry it (see `describe`).
    label: str = ""


# Payload keys that name a record, most telling first, its codes, and those of its amount.
NAME_KEYS = ("Name", "CustomerName", "Account.Name")
CODE_KEYS = ("Code", "ProductCode", "CustomerCode")
AMOUNT_KEYS = ("Amount", "GrossAmount", "TotalAmount", "Price")


def describe(change: Change) -> tuple[str, str]:
    """The record's label as a person reads it ("Renewal · Harbour Freight Ltd · £1,200.00",
    "Invoice 1043 · Acme Ltd (ACME01) · £120.00", "Acme Ltd (ACME01)") and its search text:
    the label with the record's id and codes, in lower case. A flow's own `label` wins."""
    payload = change.payload if isinstance(change.payload, dict) else {}

    def value(key: str) -> str:
        first, _, rest = key.partition(".")
        found = payload.get(first)
        if rest:
            found = found.get(rest) if isinstance(found, dict) else payload.get(key)
        return "" if found is None or isinstance(found, dict | list) else str(found).strip()

    names = list(dict.fromkeys(v for v in map(value, NAME_KEYS) if v))
    codes = list(dict.fromkeys(v for v in map(value, CODE_KEYS) if v))
    label = change.label
    if not label:
        name = " · ".join(names)
        if name and codes:
            name = f"{name} ({codes[0]})"
        parts = [name or (codes[0] if codes else "")]
        if change.source_object.endswith(".Invoice"):
            parts.insert(0, f"Invoice {value('Number') or change.source_id}")
        currency = value("CurrencyIsoCode") or value("Currency.Code")
        amounts = (_money(value(key), currency) for key in AMOUNT_KEYS)
        parts.append(next((amount for amount in amounts if amount), ""))
        label = " · ".join(part for part in parts if part)
    search = " ".join(dict.fromkeys([label, change.source_id, *names, *codes]))
    return label[:200], search.lower()[:400]


def _money(text: str, currency: str = "") -> str:
    """£1,200.50, or EUR 1,200.50 for a deal or invoice in another currency."""
    try:
        amount = Decimal(text)
    except (InvalidOperation, ValueError):
        return ""
    if not amount.is_finite():
        return ""
    symbol = "£" if currency.upper() in ("", "GBP") else f"{currency.upper()} "
    return f"{symbol}{amount:,.2f}"


def pages(items: Iterable, size: int = PAGE) -> Iterator[list]:
    """`items` in lists of `size`, read lazily (a paged API is read one page at a time)."""
    iterator = iter(items)
    while page := list(itertools.islice(iterator, size)):
        yield page


def record_change(ctx: RunContext, **change) -> SyncEvent | None:
    """Record one source record (keywords as `Change`); see `record_changes`."""
    return record_changes(ctx, [Change(**change)])[0]


def record_changes(ctx: RunContext, changes: Iterable[Change]) -> list[SyncEvent | None]:
    """Record source records as SyncEvents, a page of PAGE at a time, each page in one
    transaction of a few queries whatever its size; returns each change's event, or None where
    the change is already known.

    The dedupe key is the record plus `version`, which the flow chooses to identify one change
    (a modification stamp, with the content hash where stamps are coarse), or the content hash
    when it gives none: the same change seen twice (poll and push, or the cursor's overlap) is
    one event, while A → B → A is three. A newer version of a record whose
    event is still waiting replaces that event's payload, so stale data is never written.
    Changes count in their order, as if recorded one by one: the same change twice in a
    page is one event, and a record's later change replaces its earlier one.
    """
    changes = [_without_nul(change) for change in changes]
    if not changes:
        return []
    if ctx.dry_run:
        events = [_dry_event(ctx.run.flow, change) for change in changes]
        ctx.cache.setdefault("dry_events", []).extend(events)
        return events
    events = []
    for page in pages(changes):
        ctx.seen += len(page)
        if ctx.seen >= 500:
            ctx.flush_counts()  # outside the page's transaction: never hold the run row meanwhile
        recorded = _record_page(ctx.run, page)
        ctx.recorded += sum(event is not None for event in recorded)
        events += recorded
    return events


def _record_page(run: SyncRun, changes: list[Change]) -> list[SyncEvent | None]:
    for _ in range(RECORD_ATTEMPTS - 1):
        try:
            with transaction.atomic():
                return _write_page(run, changes)
        except IntegrityError:
            # Another worker (or a push) recorded one of these changes between our read and our
            # write. Its row is committed now, so reading again sees it and skips that change.
            continue
    with transaction.atomic():
        return _write_page(run, changes)


def _write_page(run: SyncRun, changes: list[Change]) -> list[SyncEvent | None]:
    keyed = [(change, *_dedupe_key(run.flow, change)) for change in changes]
    known = _known({key for _, _, key in keyed})
    # Only records with a new key are locked: a push, which holds its run's row, then never
    # waits on an event's lock for a change the ledger has (the poll may hold that lock while
    # it waits on the run's row to insert).
    waiting = _waiting_events(
        run.flow, {(c.source_object, c.source_id) for c, _, key in keyed if key not in known}
    )
    created, replaced, events = [], {}, []
    for change, digest, key in keyed:
        if key in known:
            events.append(None)
            continue
        record = (change.source_object, change.source_id)
        event = waiting.get(record)
        if event is None:
            event = waiting[record] = SyncEvent(
                flow=run.flow, source_object=change.source_object, source_id=change.source_id
            )
            created.append(event)
        else:
            known.discard(event.dedupe_key)  # replaced: A → B → A within a page is A again
            if event.pk is not None:
                replaced[event.pk] = event
        values = _pending(run, change, digest, key)
        for name, value in values.items():
            setattr(event, name, value)
        known.add(key)
        events.append(event)
    # Inserted in key order, so two recorders of overlapping pages never wait on each other's
    # unique-key entries crosswise (a deadlock on PostgreSQL).
    SyncEvent.objects.bulk_create(sorted(created, key=lambda event: event.dedupe_key))
    if replaced:
        SyncEvent.objects.bulk_update(replaced.values(), fields=list(values))
    return events


def _known(keys: set[str]) -> set[str]:
    """Which of these dedupe keys the ledger holds already."""
    return set(SyncEvent.objects.filter(dedupe_key__in=keys).values_list("dedupe_key", flat=True))


def _pending(run: SyncRun, change: Change, digest: str, key: str) -> dict:
    """An event's fields for a change waiting to be synced, new or replacing a waiting one."""
    label, search_text = describe(change)
    return {
        "label": label,
        "search_text": search_text,
        "run": run,
        "direction": change.direction,
        "target_object": change.target_object,
        "payload": change.payload,
        "content_hash": digest,
        "dedupe_key": key,
        "status": SyncEvent.Status.PENDING,
        "attempts": 0,
        "next_attempt_at": None,
        "error_class": "",
        "error_code": "",
        "message": "",
    }


def _waiting_events(flow: str, records: set[tuple[str, str]]) -> dict[tuple[str, str], SyncEvent]:
    """The newest waiting (or failed) event of each record, locked until the page commits.

    The lock keeps a worker from claiming an event while its payload is replaced (claims skip
    locked rows; a single claim waits, then sees the new payload). Where a record has no
    such event, the page's change becomes a new one.
    """
    if not records:
        return {}
    ids_by_object: dict[str, list[str]] = {}
    for source_object, source_id in records:
        ids_by_object.setdefault(source_object, []).append(source_id)
    which = Q()
    for source_object, source_ids in ids_by_object.items():
        which |= Q(source_object=source_object, source_id__in=source_ids)
    open_events = (
        SyncEvent.objects.select_for_update()
        .filter(which, flow=flow, status__in=OPEN_STATUSES)
        .order_by("pk")  # one locking order for every recorder
    )
    return {(event.source_object, event.source_id): event for event in open_events}


def _dedupe_key(flow: str, change: Change) -> tuple[str, str]:
    """The change's content hash and its dedupe key."""
    digest = content_hash(change.payload)
    return (
        digest,
        f"{flow}:{change.source_object}:{change.source_id}:{change.version or digest[:24]}",
    )


def _dry_event(flow: str, change: Change) -> SyncEvent:
    """A dry run's event: never saved, so never deduped."""
    return SyncEvent(
        flow=flow,
        direction=change.direction,
        source_object=change.source_object,
        source_id=change.source_id,
        target_object=change.target_object,
        payload=change.payload,
        content_hash=content_hash(change.payload),
    )


def _without_nul(change: Change) -> Change:
    return replace(
        change,
        payload=without_nul(change.payload),
        source_id=without_nul(change.source_id),
        version=without_nul(change.version),
    )


def without_nul(value):
    """The value with NUL characters removed from every string in it.

    PostgreSQL cannot store U+0000 in text or jsonb, so one NUL in a KashFlow or Salesforce
    field would make recording the change fail, and the collect with it, on every run.
    """
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Executing runs


def dry_run(flow_name: str, *, full: bool = False, user=None) -> list[PlannedWrite]:
    """Read changes and map them exactly as a run would, and return the writes it would make.

    Nothing is written to either system, no event is recorded and no cursor moves; the dry run
    itself is recorded as a run, so the ledger says who looked and when.
    """
    flow = get_flow(flow_name)
    run = SyncRun.objects.create(
        flow=flow_name,
        trigger=Trigger.MANUAL,
        dry_run=True,
        full=full,
        status=SyncRun.Status.RUNNING,
        started_at=timezone.now(),
        triggered_by=user if getattr(user, "pk", None) else None,
    )
    ctx = RunContext(run=run, deadline=float("inf"))
    try:
        flow.collect(ctx)
        events = ctx.cache.get("dry_events", [])
        for start in range(0, len(events), flow.batch_size):
            flow.process(events[start : start + flow.batch_size], ctx)
    except Exception as exc:
        run.fail(f"The dry run stopped: {exc}")
        raise
    plans = ctx.cache.get("plans", [])
    for event in ctx.cache.get("dry_events", []):
        if event.is_error:
            plans.append(
                PlannedWrite(
                    source_object=event.source_object,
                    source_id=event.source_id,
                    target_object=event.target_object,
                    action="fail",
                    payload={},
                    problem=event.message,
                )
            )
    run.read_count = len(ctx.cache.get("dry_events", []))
    run.save(update_fields=["read_count"])
    run.finish(f"Dry run: {len(plans)} write(s) would be made; nothing was written.")
    return plans


def execute_run(run_id: int, *, on_progress=None, hand_over: bool = True) -> None:
    """Work on a run until it is done or this task's time slice ends (then hand over)."""
    run = SyncRun.objects.filter(pk=run_id).first()
    if run is None or not (run.status == SyncRun.Status.RUNNING or run.claim()):
        return  # finished already, or a duplicate delivery of a finished run's task
    ctx = RunContext(
        run=run,
        deadline=time.monotonic() + _setting("TASK_SLICE_SECONDS"),
        on_progress=on_progress,
        hand_over=hand_over,
    )
    try:
        flow = get_flow(run.flow)
        if _waits_for_connection(run) or _waits_for_budget(run):
            return
        if run.collected_at is None and not _collect(flow, ctx):
            return  # another worker is collecting; it will process afterwards
        _process_until_done(flow, ctx)
    except Exception as exc:
        log.exception("run=%s flow=%s failed", run.pk, run.flow)
        # A collect that stops moves no cursor: the next run reads the same changes again.
        phase = " while reading changes" if run.collected_at is None else ""
        run.fail(f"The run stopped{phase}: {exc}")


def _still_paused(flow: str) -> SyncRun | None:
    """The flow's latest run, when it is waiting on a sign-in refusal that still stands."""
    refused = (
        Connection.objects.filter(is_active=True, sign_in_refused_at__isnull=False)
        .order_by("kind")
        .first()
    )
    if refused is None:
        return None
    last = SyncRun.objects.filter(flow=flow).order_by("-pk").first()
    paused = last is not None and last.status == SyncRun.Status.WAITING
    return last if paused and last.summary == refused.sign_in_pause_reason else None


def _waits_for_connection(run: SyncRun) -> bool:
    """Runs wait, without calling out, while a connection's sign-in stands refused (any run:
    signing in again could lock the account; the events stay due for when it is put right),
    and scheduled runs wait while KashFlow is backing us off after "too busy" answers."""
    for connection in Connection.objects.filter(is_active=True).order_by("kind"):
        if connection.sign_in_refused_at is not None:
            run.wait_for_budget(connection.sign_in_pause_reason)
            return True
        if run.trigger == Trigger.SCHEDULE and connection.busy_now():
            until = timezone.localtime(connection.busy_until).strftime("%H:%M")
            run.wait_for_budget(
                f"{connection.get_kind_display()} answered that it was too busy "
                f"{connection.busy_count} time(s) in a row; scheduled syncs wait until {until} "
                "to let it recover. Manual syncs still run."
            )
            return True
    return False


def _waits_for_budget(run: SyncRun) -> bool:
    """Scheduled runs wait when Salesforce API use is above the share kept for urgent work."""
    if run.trigger != Trigger.SCHEDULE:
        return False
    connection = Connection.objects.filter(kind=Connection.Kind.SALESFORCE, is_active=True).first()
    if connection is None or not connection.over_api_budget():
        return False
    share = connection.api_usage_share
    run.wait_for_budget(
        f"Salesforce API use is at {connection.api_usage_used:,} of {connection.api_usage_limit:,} "
        f"calls today ({share:.0%}), above the {_setting('API_BUDGET_SHARE'):.0%} kept for urgent "
        "work; scheduled syncs wait until it falls. Manual syncs and pushes still run."
    )
    return True


def _collect(flow: Flow, ctx: RunContext) -> bool:
    run = ctx.run
    now = timezone.now()
    mine = SyncRun.objects.filter(pk=run.pk, collect_started_at__isnull=True).update(
        collect_started_at=now, heartbeat_at=now
    )
    if not mine:
        return False
    if run.params.get("requeue"):
        _requeue(run)
    else:
        flow.collect(ctx)
        ctx.flush_counts()
        SyncRun.objects.filter(pk=run.pk).update(progress_total=ctx.recorded)
    SyncRun.objects.filter(pk=run.pk).update(collected_at=timezone.now())
    run.refresh_from_db()
    return True


def _requeue(run: SyncRun) -> None:
    """The collect phase of a group retry: put every matching unresolved event back in line."""
    filters = {**run.params["requeue"], "flow": run.flow}
    ids = list(
        SyncEvent.objects.unresolved().matching(filters).values_list("pk", flat=True).order_by("pk")
    )
    run.add_counts(total=len(ids))
    chunk = 500
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        requeued = (
            SyncEvent.objects.unresolved()
            .filter(pk__in=part)
            .update(
                status=SyncEvent.Status.PENDING,
                next_attempt_at=None,
                resolved_by=run.triggered_by,
                run=run,
            )
        )
        run.add_counts(read=requeued, done=len(part))
    # Progress now counts processing: reset it for the second phase.
    SyncRun.objects.filter(pk=run.pk).update(progress_done=0)


def _process_until_done(flow: Flow, ctx: RunContext) -> None:
    run = ctx.run
    while ctx.time_left() > 0:
        batch = claim_batch(run, flow.batch_size)
        if not batch:
            break
        _process_batch(flow, batch, ctx)
        ctx.report()
    else:
        if ctx.hand_over:
            ring("integration.tasks.run_flow", run.pk)  # time slice over: a fresh task goes on
        return
    _finish_if_done(run)


def fail_events(events, message: str, permanent: bool, code: str = "") -> None:
    """Fail every event of a batch a flow still holds (a whole-batch failure: an API outage, a
    missing mapping); events the flow already finished keep their outcome."""
    for event in events:
        if event.status == SyncEvent.Status.RUNNING or event.pk is None:
            event.mark_failed(message, permanent=permanent, code=code)


def claim_batch(run: SyncRun, size: int) -> list[SyncEvent]:
    """Claim up to `size` due events of the run's flow for this worker.

    A record's changes reach the target in order: an event whose record has another event in a
    worker's hands waits for it (it stays due), and one whose record has a newer event is set
    aside (superseded), so an old retry never writes stale data over newer.
    """
    now = timezone.now()
    claimed: list[int] = []
    waiting: list[int] = []  # due, but behind an event of the same record in a worker's hands
    while len(claimed) < size:
        with transaction.atomic():
            candidates = list(
                SyncEvent.objects.due(now)
                .filter(flow=run.flow)
                .exclude(pk__in=waiting)
                .order_by("created_at", "pk")
                .select_for_update(skip_locked=True)
                .values_list("pk", "source_object", "source_id")[: size - len(claimed)]
            )
            ids, stale, behind = _in_order(run.flow, candidates)
            if stale:
                SyncEvent.objects.filter(pk__in=stale).supersede(now)
            if ids:
                SyncEvent.objects.filter(pk__in=ids).update(
                    status=SyncEvent.Status.RUNNING,
                    claimed_at=now,
                    attempts=F("attempts") + 1,
                    run=run,
                )
        claimed += ids
        waiting += behind
        if not stale and not behind:
            break  # every candidate is claimed, or there were none
    return list(SyncEvent.objects.filter(pk__in=claimed).order_by("created_at", "pk"))


def _in_order(flow: str, candidates: list[tuple[int, str, str]]):
    """Split candidate (pk, source_object, source_id) into those to claim, those a newer event
    of their record supersedes, and those behind an event of their record that is running."""
    if not candidates:
        return [], [], []
    newest: dict[tuple[str, str], int] = {}
    running: set[tuple[str, str]] = set()
    # Filtered on source_id alone in SQL, so the (source_id, created_at) index serves it.
    others = SyncEvent.objects.filter(source_id__in={c[2] for c in candidates}).values_list(
        "pk", "flow", "source_object", "source_id", "status"
    )
    for pk, event_flow, source_object, source_id, status in others:
        if event_flow != flow:
            continue
        record = (source_object, source_id)
        newest[record] = max(pk, newest.get(record, pk))
        if status == SyncEvent.Status.RUNNING:
            running.add(record)
    ids, stale, behind = [], [], []
    for pk, source_object, source_id in candidates:
        record = (source_object, source_id)
        if newest[record] > pk:
            stale.append(pk)
        elif record in running:
            behind.append(pk)
        else:
            ids.append(pk)
    return ids, stale, behind


# Raised by flow code meeting data of a shape it does not expect (a list where a record should
# be, text where a number should be): the same record fails the same way every time.
DATA_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError, ArithmeticError)


def _process_batch(flow: Flow, batch: list[SyncEvent], ctx: RunContext) -> None:
    try:
        flow.process(batch, ctx)
    except Exception:
        # One record the flow could not handle must not hold back the others: what this worker
        # still holds is processed again one record at a time (every write is idempotent), so
        # the culprit is found and set aside and the rest are synced.
        log.exception("run=%s flow=%s batch failed; retrying one by one", ctx.run.pk, ctx.run.flow)
        for event in _still_held(batch):
            _process_alone(flow, event, ctx)
    _count_outcomes(ctx.run, batch)


def _still_held(batch: list[SyncEvent]) -> list[SyncEvent]:
    """The batch's events still running under this worker's claim. One the sweeper took (this
    worker was slow, not dead) may be in another worker's hands now: that one is left alone."""
    claims = {event.pk: event.claimed_at for event in batch if event.claimed_at}
    running = SyncEvent.objects.filter(pk__in=list(claims), status=SyncEvent.Status.RUNNING)
    return [event for event in running if event.claimed_at == claims[event.pk]]


def _process_alone(flow: Flow, event: SyncEvent, ctx: RunContext) -> None:
    try:
        flow.process([event], ctx)
    except DATA_ERRORS as exc:
        log.exception("run=%s event=%s cannot be handled", ctx.run.pk, event.pk)
        for held in _still_held([event]):
            held.mark_failed(
                f"kashforce could not read {event.source_object} {event.source_id}: its data "
                f"is not in the shape expected ({type(exc).__name__}: {redact(str(exc))[:300]}). "
                "It did not hold back the other records. Correct it at its source, then retry.",
                permanent=True,
                code="UNREADABLE_RECORD",
            )
    except Exception as exc:
        # Something else (a bug, an unclassified outage): retried with backoff and, if it keeps
        # failing, the error queue.
        log.exception("run=%s event=%s failed", ctx.run.pk, event.pk)
        for held in _still_held([event]):
            held.mark_failed(f"Unexpected error while syncing: {redact(str(exc))}", permanent=False)


def _count_outcomes(run: SyncRun, batch: list[SyncEvent]) -> None:
    ids = [event.pk for event in batch]
    outcomes = dict(
        SyncEvent.objects.filter(pk__in=ids).values_list("status").annotate(n=Count("pk"))
    )
    # The flow returned without an outcome for some events: never leave them silent.
    unfinished = _still_held(batch)
    for event in unfinished:
        event.mark_failed("kashforce recorded no outcome for this record.", permanent=False)
    unfinished = len(unfinished)
    failed = sum(
        outcomes.get(s, 0)
        for s in (SyncEvent.Status.FAILED_TRANSIENT, SyncEvent.Status.FAILED_PERMANENT)
    )
    run.add_counts(
        written=outcomes.get(SyncEvent.Status.SUCCEEDED, 0),
        skipped=outcomes.get(SyncEvent.Status.SKIPPED, 0),
        failed=failed + unfinished,
        done=len(ids),
    )


def _finish_if_done(run: SyncRun) -> None:
    """Finish the run when nothing of its flow is waiting or in a worker's hands.

    The run row is locked first and the check made inside that transaction: start_run locks the
    same row, so an event recorded before a start_run that found this run still running is
    always seen here, and the run stays open for the task start_run rang.
    """
    busy = SyncEvent.objects.filter(flow=run.flow).filter(
        Q(status=SyncEvent.Status.RUNNING) | Q(status=SyncEvent.Status.PENDING)
    )
    with transaction.atomic():
        locked = (
            SyncRun.objects.select_for_update()
            .filter(pk=run.pk, status=SyncRun.Status.RUNNING)
            .first()
        )
        if locked is None or busy.exists():
            return  # finished already, or work remains for another worker or task
        locked.finish(_summary(locked))
    run.refresh_from_db()


def _summary(run: SyncRun) -> str:
    """The finished run in words whose numbers add up (Read = Synced + Unchanged + Failed)."""
    run.status = SyncRun.Status.SUCCEEDED  # as finished: the remainder is "seen before"
    if run.is_empty:
        return "Nothing to do: no record had changed since the last run."
    retried = (
        f" (and {run.from_earlier_count} retried from earlier runs)"
        if run.from_earlier_count
        else ""
    )
    if run.full:
        return (
            f"Full comparison: {run.read_count} compared{retried}, {run.written_count} differed "
            f"and were put right, {run.unchanged_total} matched, {run.failed_count} failed."
        )
    return (
        f"{run.read_count} read{retried}: {run.written_count} synced, {run.unchanged_total} "
        f"unchanged, {run.failed_count} failed."
    )


# --------------------------------------------------------------------------------------------
# The sweeper and the cleanup


def sweep() -> dict:
    """Recover work that a killed worker or a lost queue message left behind. Runs every minute.

    Returns what it did, for the log and the tests.
    """
    stale_after = timedelta(seconds=_setting("STALE_AFTER_SECONDS"))
    done = {"events": 0, "runs": 0, "queued": 0, "retry_runs": 0}
    for event in SyncEvent.objects.stale_running(stale_after):
        # The claim already counted an attempt, so a record that kills its worker every time
        # ends in the error queue instead of looping for ever.
        event.mark_failed(
            "The worker stopped while syncing this record; it will be tried again.", permanent=False
        )
        done["events"] += 1
    for run in SyncRun.objects.stale(stale_after):
        SyncRun.objects.filter(pk=run.pk, collected_at__isnull=True).update(collect_started_at=None)
        SyncRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
        ring("integration.tasks.run_flow", run.pk)
        done["runs"] += 1
    lost_before = timezone.now() - timedelta(seconds=_setting("LOST_TASK_SECONDS"))
    for run in SyncRun.objects.filter(status=SyncRun.Status.QUEUED, created_at__lt=lost_before):
        ring("integration.tasks.run_flow", run.pk)
        done["queued"] += 1
    due_flows = set(SyncEvent.objects.due().values_list("flow", flat=True).distinct())
    busy_flows = set(SyncRun.objects.unfinished().values_list("flow", flat=True))
    for flow in sorted(due_flows - busy_flows):
        start_run(flow, Trigger.RETRY)
        done["retry_runs"] += 1
    if any(done.values()):
        log.info("sweeper %s", " ".join(f"{k}={v}" for k, v in done.items()))
    return done


CLEANUP_CHUNK = 2000


def cleanup() -> dict:
    """Nightly: drop old successful ledger rows (errors and ignored rows are kept), then the old
    finished runs left with no rows (a run that still holds an error keeps its page)."""
    from django_q.models import Failure

    keep = timezone.now() - timedelta(days=_setting("LEDGER_RETENTION_DAYS"))
    old = SyncEvent.objects.filter(
        status__in=[SyncEvent.Status.SUCCEEDED, SyncEvent.Status.SKIPPED], created_at__lt=keep
    )
    events = 0
    # An event's attempts go with it (CASCADE), so Django reads the events it deletes: a
    # chunk at a time and their pks only, never every old row with its payload at once.
    while ids := list(old.values_list("pk", flat=True)[:CLEANUP_CHUNK]):
        _, deleted = SyncEvent.objects.filter(pk__in=ids).only("pk").delete()
        events += deleted.get(SyncEvent._meta.label, 0)
    runs, _ = SyncRun.objects.empty_and_finished_before(keep).delete()
    failures, _ = Failure.objects.filter(stopped__lt=keep).delete()
    return {"events": events, "runs": runs, "queue_failures": failures}
