"""The engine, driven by a small in-memory flow: claims, dedupe, sweeper, continuation."""

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from integration.models import Connection, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.factories import (
    KashFlowConnectionFactory,
    SalesforceConnectionFactory,
    SyncEventFactory,
    SyncRunFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@dataclass
class MemoryFlow:
    """Reads `source` records, "writes" them into `target`; a record named 'bad' is refused."""

    name: str = "products"
    batch_size: int = 2
    source: list = field(default_factory=list)
    target: dict = field(default_factory=dict)
    writes: int = 0

    def collect(self, ctx):
        for record in self.source:
            engine.record_change(
                ctx,
                direction="kf_to_sf",
                source_object="kashflow.Product",
                source_id=record["Code"],
                payload=record,
                version=record.get("Updated", ""),
            )

    def process(self, events, ctx):
        for event in events:
            if event.payload.get("Name") == "bad":
                event.mark_failed("Product bad has no KashFlow nominal code.", permanent=True)
            elif self.target.get(event.source_id) == event.payload:
                event.mark_skipped()
            else:
                self.writes += 1
                self.target[event.source_id] = event.payload
                event.mark_succeeded(target_id=f"01t{event.source_id}")


@pytest.fixture
def flow(monkeypatch):
    memory = MemoryFlow()
    monkeypatch.setitem(engine._registry, "products", memory)
    return memory


def _run_now(**kwargs) -> SyncRun:
    run = engine.start_run("products", Trigger.MANUAL, **kwargs)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    return run


def test_a_run_writes_every_record_and_counts_them(flow):
    flow.source = [{"Code": f"P{i}", "Name": f"Product {i}"} for i in range(5)]
    run = _run_now()
    assert run.status == SyncRun.Status.SUCCEEDED
    assert (run.read_count, run.written_count, run.failed_count) == (5, 5, 0)
    assert (run.progress_done, run.progress_total, run.progress_percent) == (5, 5, 100)
    assert len(flow.target) == 5
    assert SyncEvent.objects.filter(status=SyncEvent.Status.SUCCEEDED).count() == 5
    assert run.summary == "5 read: 5 synced, 0 unchanged, 0 failed."


def test_the_same_change_seen_twice_is_one_event(flow):
    flow.source = [{"Code": "P1", "Name": "Widget", "Updated": "2024-05-01 10:00:00"}]
    _run_now()
    _run_now()
    assert SyncEvent.objects.count() == 1
    assert flow.writes == 1


def test_a_change_and_back_again_is_three_events(flow):
    for name, stamp in (("A", "1"), ("B", "2"), ("A", "3")):
        flow.source = [{"Code": "P1", "Name": name, "Updated": stamp}]
        _run_now()
    assert SyncEvent.objects.count() == 3
    assert flow.target["P1"]["Name"] == "A"


def test_a_newer_version_replaces_a_waiting_event(flow):
    flow.source = [{"Code": "P1", "Name": "bad", "Updated": "1"}]
    _run_now()
    failed = SyncEvent.objects.get()
    assert failed.status == SyncEvent.Status.FAILED_PERMANENT
    flow.source = [{"Code": "P1", "Name": "Fixed in KashFlow", "Updated": "2"}]
    _run_now()
    assert SyncEvent.objects.count() == 1
    fixed = SyncEvent.objects.get()
    assert fixed.pk == failed.pk and fixed.status == SyncEvent.Status.SUCCEEDED


def test_a_permanent_failure_makes_the_run_partial_and_fills_the_error_queue(flow):
    flow.source = [{"Code": "P1", "Name": "ok"}, {"Code": "P2", "Name": "bad"}]
    run = _run_now()
    assert run.status == SyncRun.Status.PARTIAL
    assert run.failed_count == 1 and run.written_count == 1
    error = SyncEvent.objects.unresolved().get()
    assert error.message == "Product bad has no KashFlow nominal code."


def test_an_exception_in_the_flow_fails_only_that_batch_and_is_retried(flow, monkeypatch):
    flow.source = [{"Code": f"P{i}", "Name": "x"} for i in range(3)]

    def broken(events, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(flow, "process", broken)
    run = _run_now()
    assert run.status == SyncRun.Status.FAILED
    assert SyncEvent.objects.retrying().count() == 3
    assert all("Unexpected error while syncing: boom" in e.message for e in SyncEvent.objects.all())


def test_one_record_the_flow_chokes_on_does_not_hold_back_its_batch(flow, monkeypatch):
    flow.source = [{"Code": "P1", "Name": "x"}, {"Code": "P2", "Name": ["not", "text"]}]
    handles = flow.process

    def chokes_on_lists(events, ctx):
        for event in events:
            event.payload["Name"].strip()  # AttributeError for P2, as a flow bug would raise
        handles(events, ctx)

    monkeypatch.setattr(flow, "process", chokes_on_lists)
    run = _run_now()
    assert (run.status, run.written_count, run.failed_count) == (SyncRun.Status.PARTIAL, 1, 1)
    assert flow.target == {"P1": {"Code": "P1", "Name": "x"}}
    error = SyncEvent.objects.unresolved().get()
    assert (error.source_id, error.error_code) == ("P2", "UNREADABLE_RECORD")
    assert error.message.startswith(
        "kashforce could not read kashflow.Product P2: its data is not in the shape expected "
        "(AttributeError: 'list' object has no attribute 'strip')."
    )
    # A retry meets the same data and the same error: one row, one more attempt, no loop.
    engine.retry_events([error.pk], None)
    _run_now()
    error.refresh_from_db()
    assert (error.status, error.attempts) == (SyncEvent.Status.FAILED_PERMANENT, 2)
    assert SyncEvent.objects.filter(source_id="P2").count() == 1


def test_a_second_start_returns_the_unfinished_run():
    first = engine.start_run("products", Trigger.MANUAL)
    assert engine.start_run("products", Trigger.SCHEDULE) == first
    assert SyncRun.objects.count() == 1


def test_start_run_enqueues_one_task_after_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        run = engine.start_run("products", Trigger.MANUAL)
    assert OrmQ.objects.count() == 1
    assert run.status == SyncRun.Status.QUEUED


def test_two_workers_never_claim_the_same_event(flow):
    run = engine.start_run("products", Trigger.MANUAL)
    for i in range(5):
        SyncEventFactory(flow="products", source_id=f"P{i}", dedupe_key=f"k{i}")
    first = engine.claim_batch(run, 3)
    second = engine.claim_batch(run, 3)
    third = engine.claim_batch(run, 3)
    assert len(first) == 3 and len(second) == 2 and third == []
    assert not {e.pk for e in first} & {e.pk for e in second}
    assert all(e.attempts == 1 for e in first + second)


def test_a_duplicate_task_delivery_after_the_run_finished_does_nothing(flow):
    flow.source = [{"Code": "P1", "Name": "x"}]
    run = _run_now()
    engine.execute_run(run.pk)
    assert flow.writes == 1
    assert SyncRun.objects.get(pk=run.pk).status == SyncRun.Status.SUCCEEDED


def test_a_run_that_outlives_its_time_slice_hands_over(
    flow, settings, django_capture_on_commit_callbacks
):
    settings.KASHFORCE = {**settings.KASHFORCE, "TASK_SLICE_SECONDS": 0}
    flow.source = [{"Code": "P1", "Name": "x"}]
    run = engine.start_run("products", Trigger.MANUAL)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        engine.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.RUNNING and run.collected_at is not None
    assert len(callbacks) == 1  # the continuation
    settings.KASHFORCE = {**settings.KASHFORCE, "TASK_SLICE_SECONDS": 60}
    engine.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.SUCCEEDED and flow.writes == 1


def test_sweeper_recovers_an_event_whose_worker_died(flow):
    event = SyncEventFactory(flow="products")
    event.claim()
    SyncEvent.objects.filter(pk=event.pk).update(claimed_at=timezone.now() - timedelta(hours=2))
    done = engine.sweep()
    event.refresh_from_db()
    assert done["events"] == 1
    assert event.status == SyncEvent.Status.FAILED_TRANSIENT
    assert "worker stopped" in event.message


def test_sweeper_resumes_a_stale_run_and_requeues_a_lost_one(django_capture_on_commit_callbacks):
    stale = SyncRun.objects.create(
        flow="customers",
        trigger=Trigger.SCHEDULE,
        status=SyncRun.Status.RUNNING,
        heartbeat_at=timezone.now() - timedelta(hours=1),
        collect_started_at=timezone.now(),
    )
    lost = SyncRun.objects.create(
        flow="payments", trigger=Trigger.SCHEDULE, created_at=timezone.now() - timedelta(hours=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        done = engine.sweep()
    assert done["runs"] == 1 and done["queued"] == 1
    stale.refresh_from_db()
    assert stale.collect_started_at is None  # collect restarts from the cursor
    assert OrmQ.objects.count() == 2
    assert lost.pk


def test_sweeper_starts_a_retry_run_for_due_events():
    SyncEventFactory(
        flow="payments",
        status=SyncEvent.Status.FAILED_TRANSIENT,
        next_attempt_at=timezone.now() - timedelta(seconds=1),
    )
    done = engine.sweep()
    assert done["retry_runs"] == 1
    assert SyncRun.objects.filter(flow="payments", trigger=Trigger.RETRY).count() == 1


def test_a_crash_looping_record_ends_in_the_error_queue(flow, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "MAX_ATTEMPTS": 3}
    event = SyncEventFactory(flow="products")
    for _ in range(3):
        SyncEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())
        assert event.claim()
        SyncEvent.objects.filter(pk=event.pk).update(claimed_at=timezone.now() - timedelta(hours=2))
        engine.sweep()
        event.refresh_from_db()
    assert event.status == SyncEvent.Status.FAILED_PERMANENT
    assert event.message.startswith("Gave up after 3 attempts")


def test_retry_events_requeues_and_starts_one_run_per_flow(flow):
    user = UserFactory()
    events = [
        SyncEventFactory(flow="products", status=SyncEvent.Status.FAILED_PERMANENT)
        for _ in range(3)
    ]
    done = SyncEventFactory(flow="products", status=SyncEvent.Status.SUCCEEDED)
    assert engine.retry_events([e.pk for e in events] + [done.pk], user) == 3
    assert SyncRun.objects.filter(flow="products", trigger=Trigger.RETRY).count() == 1
    assert SyncEvent.objects.filter(status=SyncEvent.Status.PENDING).count() == 3


def test_group_retry_requeues_matching_errors_with_progress_and_processes_them(flow):
    user = UserFactory()
    for i in range(4):
        SyncEventFactory(
            flow="products",
            source_id=f"P{i}",
            status=SyncEvent.Status.FAILED_PERMANENT,
            error_code="UNABLE_TO_LOCK_ROW",
            payload={"Code": f"P{i}", "Name": "ok"},
        )
    other = SyncEventFactory(
        flow="products",
        status=SyncEvent.Status.FAILED_PERMANENT,
        error_code="INVALID_EMAIL_ADDRESS",
        payload={"Name": "bad"},
    )
    run = engine.start_bulk_retry({"flow": "products", "error_code": "UNABLE_TO_LOCK_ROW"}, user)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    assert run.trigger == Trigger.RETRY and run.status == SyncRun.Status.SUCCEEDED
    assert run.progress_total == 4 and run.written_count == 4
    assert SyncEvent.objects.unresolved().get() == other


def test_scheduled_run_waits_when_the_api_budget_is_spent(flow, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "API_BUDGET_SHARE": 0.8}
    connection = SalesforceConnectionFactory()
    connection.record_api_usage(used=13000, limit=15000)
    run = engine.start_run("products", Trigger.SCHEDULE)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.WAITING
    assert "13,000 of 15,000" in run.summary and "87%" in run.summary
    manual = _run_now()
    assert manual.status == SyncRun.Status.SUCCEEDED
    assert Connection.objects.get().over_api_budget()


def test_scheduled_runs_wait_while_kashflow_is_backing_off_and_manual_ones_run(flow):
    connection = KashFlowConnectionFactory()
    connection.note_busy(60, 3600)
    connection.note_busy(60, 3600)
    run = engine.start_run("products", Trigger.SCHEDULE)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.WAITING
    assert run.summary.startswith("KashFlow answered that it was too busy 2 time(s) in a row;")
    assert "scheduled syncs wait until" in run.summary
    assert _run_now().status == SyncRun.Status.SUCCEEDED


def test_every_run_waits_while_a_sign_in_stands_refused(flow):
    flow.source = [{"Code": "P1", "Name": "Widget"}]
    connection = SalesforceConnectionFactory()
    connection.refuse_sign_in("Salesforce rejected the username, password or security token.")
    for trigger in (Trigger.SCHEDULE, Trigger.MANUAL, Trigger.RETRY):
        run = engine.start_run("products", trigger)
        engine.execute_run(run.pk)
        run.refresh_from_db()
        assert run.status == SyncRun.Status.WAITING
        assert run.summary == connection.sign_in_pause_reason
    assert SyncEvent.objects.count() == 0  # nothing read, nothing signed in


def test_an_unbuilt_flow_fails_the_run_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(engine, "_registry", {})
    monkeypatch.setattr(engine.importlib, "import_module", lambda name: None)
    run = engine.start_run("payments", Trigger.MANUAL)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.FAILED
    assert "Payments flow is not available" in run.summary


def test_schedules_are_installed_for_every_flow_and_the_sweeper():
    names = set(Schedule.objects.values_list("name", flat=True))
    assert {
        "kashforce: sync customers",
        "kashforce: sync invoices",
        "kashforce: sync payments",
        "kashforce: sync products",
        "kashforce: sweeper",
        "kashforce: nightly cleanup",
    } <= names
    assert engine.next_run_at("customers") is not None


def test_cleanup_drops_old_successes_but_keeps_errors():
    old = timezone.now() - timedelta(days=400)
    SyncEventFactory(status=SyncEvent.Status.SUCCEEDED, created_at=old)
    kept = SyncEventFactory(status=SyncEvent.Status.FAILED_PERMANENT, created_at=old)
    assert engine.cleanup()["events"] == 1
    assert list(SyncEvent.objects.all()) == [kept]


def test_dry_run_plans_writes_without_writing_recording_or_moving_anything(flow, monkeypatch):
    flow.source = [{"Code": "P1", "Name": "New"}, {"Code": "P2", "Name": "Same"}]
    flow.target = {"P2": {"Code": "P2", "Name": "Same"}}

    def process(events, ctx):
        for event in events:
            current = flow.target.get(event.source_id)
            if current == event.payload:
                continue
            if ctx.dry_run:
                ctx.plan(
                    event,
                    target_object="salesforce.Product2",
                    action="upsert",
                    payload=event.payload,
                    current=current,
                )
                continue
            raise AssertionError("a dry run must not write")

    monkeypatch.setattr(flow, "process", process)
    plans = engine.dry_run("products")
    assert [(p.source_id, p.diff) for p in plans] == [
        ("P1", [("Code", None, "P1"), ("Name", None, "New")])
    ]
    assert "Name: None -> 'New'" in plans[0].describe()
    assert SyncEvent.objects.count() == 0
    run = SyncRun.objects.get()
    assert run.dry_run and run.status == SyncRun.Status.SUCCEEDED and run.read_count == 2
    assert run.summary == "Dry run: 1 write(s) would be made; nothing was written."


def test_sync_command_runs_in_the_foreground_and_exits_1_on_failures(flow):
    import io

    from django.core.management import CommandError, call_command

    flow.source = [{"Code": "P1", "Name": "ok"}, {"Code": "P2", "Name": "bad"}]
    out = io.StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("sync", "products", stdout=out)
    assert failed.value.returncode == 1
    assert "P2: Product bad has no KashFlow nominal code." in out.getvalue()
    assert "1 synced" in out.getvalue()


def test_sync_command_retries_transient_failures_at_once(flow):
    import io

    from django.core.management import call_command

    SyncEventFactory(
        flow="products",
        source_id="P9",
        payload={"Code": "P9", "Name": "x"},
        status=SyncEvent.Status.FAILED_TRANSIENT,
        next_attempt_at=timezone.now() + timedelta(hours=1),
    )
    out = io.StringIO()
    call_command("sync", "products", stdout=out)
    assert "Retrying 1 record(s)" in out.getvalue()
    assert "Succeeded" in out.getvalue()
    assert flow.target["P9"] == {"Code": "P9", "Name": "x"}


def test_a_full_run_is_not_swallowed_by_a_running_incremental_one_and_says_what_drifted(flow):
    incremental = engine.start_run("products", Trigger.SCHEDULE)
    full = engine.start_run("products", Trigger.SCHEDULE, full=True)
    assert full != incremental and full.full
    flow.source = [{"Code": "P1", "Name": "x"}]
    engine.execute_run(full.pk)
    full.refresh_from_db()
    assert full.summary == (
        "Full comparison: 1 compared, 1 differed and were put right, 0 matched, 0 failed."
    )


def test_nul_characters_never_reach_the_database(flow):
    """PostgreSQL refuses U+0000 in text and jsonb: one NUL in a source field must not make
    recording (and so every collect) fail."""
    flow.source = [{"Code": "P\x001", "Name": "Odd\x00 name", "Tags": ["a\x00", {"k\x00": "v"}]}]
    run = _run_now()
    event = SyncEvent.objects.get()
    assert event.source_id == "P1"
    assert event.payload == {"Code": "P1", "Name": "Odd name", "Tags": ["a", {"k": "v"}]}
    event.mark_failed("Salesforce said: bad value 'Odd\x00 name'", permanent=True)
    event.refresh_from_db()
    assert event.message == "Salesforce said: bad value 'Odd name'"
    assert run.status == SyncRun.Status.SUCCEEDED


def test_cleanup_drops_old_runs_left_empty_and_keeps_those_holding_errors_or_working():
    old = timezone.now() - timedelta(days=400)
    emptied = SyncRunFactory(created_at=old, status=SyncRun.Status.SUCCEEDED)
    SyncEventFactory(run=emptied, status=SyncEvent.Status.SUCCEEDED, created_at=old)
    with_error = SyncRunFactory(created_at=old, status=SyncRun.Status.PARTIAL)
    SyncEventFactory(run=with_error, status=SyncEvent.Status.FAILED_PERMANENT, created_at=old)
    waiting = SyncRunFactory(created_at=old, status=SyncRun.Status.WAITING)
    recent = SyncRunFactory(status=SyncRun.Status.SUCCEEDED)

    outcome = engine.cleanup()

    assert (outcome["events"], outcome["runs"]) == (1, 1)
    assert set(SyncRun.objects.all()) == {with_error, waiting, recent}
    assert SyncEvent.objects.get().run == with_error


# Recording a page of changes ------------------------------------------------------------------


def change(code: str, version: str = "", **fields) -> engine.Change:
    return engine.Change(
        direction="kf_to_sf",
        source_object="kashflow.Product",
        source_id=code,
        payload={"Code": code, "Name": "Widget", **fields},
        version=version,
        target_object="salesforce.Product2",
    )


def recording_context(run=None) -> engine.RunContext:
    return engine.RunContext(run=run or SyncRunFactory(flow="products"), deadline=float("inf"))


def test_recording_a_page_of_200_changes_takes_a_few_queries(django_assert_num_queries):
    # A savepoint, the known keys, the waiting events, one write, the release. SQLite makes the
    # write several statements: Django keeps each under 999 parameters (39 rows an INSERT, 58
    # an UPDATE of the 14 replaced fields, the record's label and search text among them).
    sqlite = connection.vendor == "sqlite"
    ctx = recording_context()
    with django_assert_num_queries(4 + (6 if sqlite else 1)):
        events = engine.record_changes(ctx, [change(f"P{i:03}") for i in range(200)])
    assert SyncEvent.objects.filter(run=ctx.run).count() == 200 == len(events) == ctx.recorded
    # The next page replaces all 200 waiting events in place.
    renamed = [change(f"P{i:03}", Name="Renamed") for i in range(200)]
    with django_assert_num_queries(4 + (4 if sqlite else 1)):
        engine.record_changes(ctx, renamed)
    assert SyncEvent.objects.filter(payload__Name="Renamed").count() == 200
    assert SyncEvent.objects.count() == 200
    # A page the ledger knows already is one read (and, 500 records read, the run's counts).
    with django_assert_num_queries(3 + 2):
        assert engine.record_changes(ctx, renamed) == [None] * 200
    assert ctx.recorded == 400
    ctx.run.refresh_from_db()
    assert (ctx.run.read_count, ctx.seen) == (600, 0)


def test_a_page_skips_the_changes_already_recorded_and_records_the_rest():
    ctx = recording_context()
    first = engine.record_changes(ctx, [change("P1"), change("P2")])
    SyncEvent.objects.update(status=SyncEvent.Status.SUCCEEDED)
    events = engine.record_changes(ctx, [change("P2"), change("P3"), change("P1")])
    assert events[0] is None and events[2] is None
    assert events[1].pk and events[1].source_id == "P3"
    assert ctx.recorded == 3
    assert SyncEvent.objects.count() == 3
    assert set(SyncEvent.objects.filter(source_id__in=["P1", "P2"])) == set(first)


def test_the_same_change_twice_in_a_page_is_one_event():
    ctx = recording_context()
    events = engine.record_changes(ctx, [change("P1", "v1"), change("P1", "v1")])
    assert events[0].pk and events[1] is None
    assert SyncEvent.objects.get().dedupe_key == "products:kashflow.Product:P1:v1"
    assert ctx.recorded == 1


def test_a_record_changed_twice_in_a_page_is_one_event_with_the_later_data():
    ctx = recording_context()
    events = engine.record_changes(ctx, [change("P1", Name="A"), change("P1", Name="B")])
    event = SyncEvent.objects.get()
    assert event.payload["Name"] == "B" and events == [event, event]
    # A → B → A within one page: the event ends with A, and is still one event.
    engine.record_changes(
        ctx, [change("P2", Name="A"), change("P2", Name="B"), change("P2", Name="A")]
    )
    assert SyncEvent.objects.get(source_id="P2").payload["Name"] == "A"


def test_unchanged_content_is_skipped_and_changed_content_is_a_new_event():
    ctx = recording_context()
    engine.record_changes(ctx, [change("P1", Name="A")])
    SyncEvent.objects.update(status=SyncEvent.Status.SUCCEEDED)
    events = engine.record_changes(ctx, [change("P1", Name="A"), change("P2", Name="A")])
    assert events[0] is None and events[1].source_id == "P2"
    events = engine.record_changes(ctx, [change("P1", Name="B")])
    assert events[0].pk and events[0].payload["Name"] == "B"
    assert SyncEvent.objects.filter(source_id="P1").count() == 2


def test_a_page_replaces_waiting_and_failed_events_but_leaves_running_and_finished_ones():
    run = SyncRunFactory(flow="products")
    statuses = {
        "WAITING": SyncEvent.Status.PENDING,
        "FAILED": SyncEvent.Status.FAILED_PERMANENT,
        "RUNNING": SyncEvent.Status.RUNNING,
        "DONE": SyncEvent.Status.SUCCEEDED,
    }
    before = {
        code: SyncEventFactory(
            flow="products",
            source_object="kashflow.Product",
            source_id=code,
            status=status,
            attempts=3,
            error_code="X" if status == SyncEvent.Status.FAILED_PERMANENT else "",
            message="old",
        )
        for code, status in statuses.items()
    }
    ctx = recording_context(run)
    events = engine.record_changes(ctx, [change(code, "v2", Name="New") for code in statuses])
    assert all(events) and ctx.recorded == 4
    for code in ("WAITING", "FAILED"):
        replaced = SyncEvent.objects.get(source_id=code)
        assert replaced.pk == before[code].pk
        assert replaced.payload["Name"] == "New" and replaced.run == run
        assert (replaced.status, replaced.attempts, replaced.error_code, replaced.message) == (
            SyncEvent.Status.PENDING,
            0,
            "",
            "",
        )
    for code in ("RUNNING", "DONE"):
        kept, new = SyncEvent.objects.filter(source_id=code).order_by("pk")
        assert (kept.pk, kept.status, kept.message) == (before[code].pk, statuses[code], "old")
        assert new.status == SyncEvent.Status.PENDING and new.payload["Name"] == "New"


def test_of_two_waiting_events_of_one_record_the_newest_is_replaced():
    """A record can have two open events (the first was running when the second arrived, then
    failed): a new change replaces the newer one instead of being lost."""
    older, newer = (
        SyncEventFactory(
            flow="products",
            source_object="kashflow.Product",
            source_id="P1",
            status=SyncEvent.Status.FAILED_TRANSIENT,
        )
        for _ in range(2)
    )
    ctx = recording_context()
    (event,) = engine.record_changes(ctx, [change("P1", "v3", Name="Newest")])
    assert event.pk == newer.pk
    assert SyncEvent.objects.get(pk=newer.pk).payload["Name"] == "Newest"
    assert SyncEvent.objects.get(pk=older.pk).payload == older.payload


def test_a_change_another_worker_records_between_our_read_and_write_is_one_event(monkeypatch):
    ctx = recording_context()
    (theirs,) = engine.record_changes(ctx, [change("P2")])
    SyncEvent.objects.filter(pk=theirs.pk).update(status=SyncEvent.Status.RUNNING)  # claimed
    read_known = engine._known
    reads = []

    def read_before_they_committed(keys):
        reads.append(keys)
        return set() if len(reads) == 1 else read_known(keys)

    monkeypatch.setattr(engine, "_known", read_before_they_committed)
    events = engine.record_changes(ctx, [change("P1"), change("P2"), change("P3")])
    assert len(reads) == 2  # the insert met their key, and the page was read again
    assert events[1] is None and events[0].pk and events[2].pk
    assert SyncEvent.objects.count() == 3
    assert SyncEvent.objects.get(source_id="P2").status == SyncEvent.Status.RUNNING


@pytest.mark.django_db(transaction=True)
def test_two_workers_recording_the_same_change_at_once_make_one_event():
    if connection.vendor != "postgresql":
        pytest.skip("two connections writing at once: PostgreSQL (SQLite serialises writers)")
    run = SyncRunFactory(flow="products")
    first_wrote, outcome = threading.Event(), {}

    def first():
        try:
            with transaction.atomic():
                outcome["first"] = engine.record_changes(
                    recording_context(run), [change("P1"), change("P2")]
                )
                first_wrote.set()
                time.sleep(0.5)  # the second reads now, misses P2, then waits on P2's key
        finally:
            connection.close()

    def second():
        first_wrote.wait(10)
        try:
            started = time.monotonic()
            outcome["second"] = engine.record_changes(
                recording_context(run), [change("P2"), change("P3")]
            )
            outcome["waited"] = time.monotonic() - started
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(outcome["first"])
    assert outcome["second"][0] is None and outcome["second"][1].source_id == "P3"
    assert outcome["waited"] > 0.2  # it did meet the first's uncommitted key
    assert sorted(SyncEvent.objects.values_list("source_id", flat=True)) == ["P1", "P2", "P3"]


# A record's changes in order: an old retry never writes over newer data ---------------------------


def test_an_old_change_failing_while_a_newer_one_arrived_is_set_aside_not_retried(flow):
    """P1's first change is in a worker's hands when P1 changes again; the first then fails
    for a while. The newer change is synced, and the old one is never written over it."""
    flow.source = [{"Code": "P1", "Name": "Old name", "Updated": "1"}]
    run = engine.start_run("products", Trigger.MANUAL)
    ctx = engine.RunContext(run=run, deadline=float("inf"))
    flow.collect(ctx)
    [old] = engine.claim_batch(run, 10)  # a worker has it
    flow.source = [{"Code": "P1", "Name": "New name", "Updated": "2"}]
    flow.collect(ctx)  # the newer change arrives meanwhile: a second event
    assert engine.claim_batch(run, 10) == []  # it waits for the one in hand
    old.mark_failed("Salesforce is unavailable.", permanent=False)
    SyncEvent.objects.filter(pk=old.pk).update(next_attempt_at=timezone.now())  # its retry is due

    batch = engine.claim_batch(run, 10)

    assert [event.payload["Name"] for event in batch] == ["New name"]
    flow.process(batch, ctx)
    assert engine.claim_batch(run, 10) == []
    old.refresh_from_db()
    assert old.status == SyncEvent.Status.SKIPPED
    assert "newer change of this record replaced this one" in old.message
    assert flow.target["P1"]["Name"] == "New name"
    assert flow.writes == 1


def test_a_failed_change_a_newer_one_has_since_synced_leaves_the_error_queue_on_retry(flow):
    old = SyncEventFactory(
        flow="products", source_id="P1", status=SyncEvent.Status.FAILED_PERMANENT, message="x"
    )
    SyncEventFactory(flow="products", source_id="P1", status=SyncEvent.Status.SUCCEEDED)
    assert old.retry()  # the Retry button
    run = engine.start_run("products", Trigger.RETRY)

    assert engine.claim_batch(run, 10) == []

    old.refresh_from_db()
    assert old.status == SyncEvent.Status.SKIPPED
    assert not SyncEvent.objects.unresolved().exists()


def test_set_aside_changes_do_not_stop_a_claim_short(flow):
    """A page of candidates all superseded: the claim goes on to the work behind them."""
    stale = [
        SyncEventFactory(flow="products", source_id=f"P{i}", status=SyncEvent.Status.FAILED_TRANSIENT,
                         next_attempt_at=timezone.now() - timedelta(minutes=1))
        for i in range(3)
    ]  # fmt: skip
    newer = [SyncEventFactory(flow="products", source_id=f"P{i}") for i in range(3)]
    run = engine.start_run("products", Trigger.MANUAL)

    batch = engine.claim_batch(run, 2)

    assert [event.pk for event in batch] == [newer[0].pk, newer[1].pk]
    assert SyncEvent.objects.filter(status=SyncEvent.Status.SKIPPED).count() == 3
    assert {e.pk for e in stale} == set(
        SyncEvent.objects.filter(status=SyncEvent.Status.SKIPPED).values_list("pk", flat=True)
    )


# Recording outcomes --------------------------------------------------------------------------


def claimed(count: int, **fields) -> list[SyncEvent]:
    """`count` events of the products flow, claimed by this worker as one batch."""
    run = SyncRunFactory(flow="products")
    for i in range(count):
        SyncEventFactory(
            flow="products",
            source_object="kashflow.Product",
            source_id=f"P{i:03}",
            dedupe_key=f"products:kashflow.Product:P{i:03}:v1",
            content_hash=f"seen{i}",
            **fields,
        )
    return engine.claim_batch(run, count)


def test_a_batch_of_outcomes_is_recorded_with_a_few_statements_whatever_its_size(
    django_assert_num_queries,
):
    # One read of the claims, one UPDATE per status, one INSERT … SELECT of the attempts'
    # lines: 200 events, not 200 saves. Then the kept history of the 150 writes: a read of
    # their runs and an INSERT (two on SQLite, whose 999 parameters hold about 76 rows of it).
    batch = claimed(200, target_id="old-id", message="old")
    outcomes = [
        event.succeeded(target_id=f"01t{i:03}", content_hash=f"hash{i}", message=f"Note {i}.")
        for i, event in enumerate(batch[:150])
    ] + [event.skipped(target_id="") for event in batch[150:]]
    sqlite = connection.vendor == "sqlite"
    with django_assert_num_queries(4 + 1 + (2 if sqlite else 1)):
        recorded = SyncEvent.objects.finish(outcomes)
    assert recorded == batch
    stored = {event.pk: event for event in SyncEvent.objects.all()}
    for i, event in enumerate(batch):
        row = stored[event.pk]
        assert (row.status, row.claimed_at, row.next_attempt_at) == (event.status, None, None)
        assert (row.finished_at, row.updated_at) == (event.finished_at, event.updated_at)
        assert row.finished_at is not None and (row.error_class, row.error_code) == ("", "")
        if i < 150:
            assert row.status == SyncEvent.Status.SUCCEEDED
            assert (row.target_id, row.content_hash, row.message) == (
                f"01t{i:03}",
                f"hash{i}",
                f"Note {i}.",
            )
        else:  # no target id or hash given: the event keeps its own
            assert row.status == SyncEvent.Status.SKIPPED
            assert (row.target_id, row.message) == ("old-id", "Unchanged since the last sync.")
            assert row.content_hash == event.content_hash == f"seen{i}"


def test_an_event_swept_from_a_slow_worker_is_not_finished_by_its_batch(flow):
    """Worker A is slow, so the sweeper takes one of its events for a dead worker's and worker B
    claims it. A's batch outcome must leave that event to B, and the run must count it as the
    ledger says, not as A thought."""
    run = engine.start_run("products", Trigger.MANUAL)
    for i in range(3):
        SyncEventFactory(flow="products", source_id=f"P{i}", dedupe_key=f"k{i}", run=run)
    swept = {}

    def slow_process(events, ctx):
        taken = SyncEvent.objects.get(pk=events[1].pk)
        taken.mark_failed("The worker stopped while syncing this record.", permanent=False)
        SyncEvent.objects.filter(pk=taken.pk).update(next_attempt_at=timezone.now())
        assert taken.claim()  # worker B has it now
        swept["event"] = taken
        recorded = SyncEvent.objects.finish(event.succeeded(target_id="01tA") for event in events)
        assert recorded == [events[0], events[2]]

    flow.process = slow_process
    flow.batch_size = 3
    SyncRun.objects.filter(pk=run.pk).update(collected_at=timezone.now())
    run.refresh_from_db()
    engine._process_batch(flow, engine.claim_batch(run, 3), engine.RunContext(run, float("inf")))
    taken = SyncEvent.objects.get(pk=swept["event"].pk)
    assert (taken.status, taken.claimed_at, taken.target_id) == (
        SyncEvent.Status.RUNNING,
        swept["event"].claimed_at,
        "",
    )
    assert taken.attempts == 2
    assert SyncEvent.objects.filter(status=SyncEvent.Status.SUCCEEDED).count() == 2
    run.refresh_from_db()
    assert (run.written_count, run.failed_count, run.progress_done) == (2, 0, 3)
    # B finishes it with its own claim.
    assert taken.mark_succeeded(target_id="01tB")
    assert SyncEvent.objects.get(pk=taken.pk).target_id == "01tB"


def test_a_slow_worker_does_not_undo_a_newer_change_recorded_in_its_swept_event():
    """The sweeper failed A's event; a newer change of the record then replaced its payload (a
    failed event is replaced in place). A, finishing late, must not put the old change back."""
    (event,) = claimed(1)
    SyncEvent.objects.get(pk=event.pk).mark_failed("The worker stopped.", permanent=False)
    engine.record_changes(recording_context(event.run), [change("P000", "v2", Name="Newer")])
    held = event.mark_succeeded(target_id="01tA", content_hash="old")
    row = SyncEvent.objects.get(pk=event.pk)
    assert (row.status, row.payload["Name"], row.target_id) == (
        SyncEvent.Status.PENDING,
        "Newer",
        "",
    )
    assert row.dedupe_key.endswith(":v2") and row.content_hash != "old"
    assert held is False


def test_a_single_outcome_is_one_conditional_update_and_its_attempt(django_assert_num_queries):
    (event,) = claimed(1)
    # The UPDATE, the attempt's line, then the kept history of the write: its run (who
    # triggered it) and an INSERT.
    with django_assert_num_queries(4):
        assert event.mark_succeeded(target_id="01tX", content_hash="h", message="Fine.")
    row = SyncEvent.objects.get(pk=event.pk)
    assert (row.status, row.target_id, row.content_hash, row.message, row.claimed_at) == (
        SyncEvent.Status.SUCCEEDED,
        "01tX",
        "h",
        "Fine.",
        None,
    )
    assert row.updated_at == row.finished_at == event.finished_at
    with django_assert_num_queries(0):
        assert event.mark_skipped() is False  # finished: no claim left to hold


def test_a_claim_reads_only_due_events_and_their_records_through_indexes(flow):
    """At 100,000 events a claim must not walk the flow's ledger: the due events come from the
    (flow, status, created_at) index and their records' other events from the source_id one."""
    if connection.vendor != "sqlite":
        pytest.skip("reads SQLite's query plans")
    from django.test.utils import CaptureQueriesContext

    for i in range(3):
        SyncEventFactory(flow="products", source_id=f"P{i}", status=SyncEvent.Status.SUCCEEDED)
        SyncEventFactory(flow="products", source_id=f"P{i}")
    run = engine.start_run("products", Trigger.MANUAL)
    with CaptureQueriesContext(connection) as queries:
        assert len(engine.claim_batch(run, 10)) == 3
    plans = []
    with connection.cursor() as cursor:
        for query in queries.captured_queries:
            if query["sql"].startswith("SELECT") and "integration_syncevent" in query["sql"]:
                cursor.execute("EXPLAIN QUERY PLAN " + query["sql"])
                plans.append(" / ".join(row[3] for row in cursor.fetchall()))
    assert any("USING INDEX event_flow_due (flow=? AND status=?)" in plan for plan in plans), plans
    assert any("USING INDEX event_source_recent (source_id=?)" in plan for plan in plans), plans
    assert not any("SCAN integration_syncevent" in plan for plan in plans), plans
    assert not any("event_object_recent" in plan for plan in plans), plans


def test_sync_now_beside_a_pushed_run_gets_a_run_that_reads_changes(flow):
    pushed = engine.start_run("products", Trigger.PUSH, collected=True)
    assert engine.start_run("products", Trigger.PUSH, collected=True) == pushed  # pushes share

    manual = engine.start_run("products", Trigger.MANUAL)

    assert manual != pushed and manual.collected_at is None  # it will read changes
    assert engine.start_run("products", Trigger.SCHEDULE) == manual  # and is shared in turn
