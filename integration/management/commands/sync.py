"""Run one flow now, in the foreground, with a progress line and a summary.

Exits 1 if records failed (they are in the error queue with the reason), 2 if the run itself
could not go on (a connection is missing or refused, say).
"""

import sys

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from integration.models import Flow, SyncEvent, SyncRun, Trigger
from integration.sync import engine


class Command(BaseCommand):
    help = "Sync one flow now: customers, invoices, payments or products."

    def add_arguments(self, parser):
        parser.add_argument("flow", choices=Flow.values)
        parser.add_argument(
            "--full", action="store_true", help="Compare everything, not just changes."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would be written; write nothing."
        )

    def handle(self, flow, full, dry_run, **options):
        if dry_run:
            return self._dry_run(flow, full)
        retried = (
            SyncEvent.objects.retrying().filter(flow=flow).update(next_attempt_at=timezone.now())
        )
        if retried:
            self.stdout.write(f"Retrying {retried} record(s) that failed for a temporary reason.")
        run = engine.start_run(flow, Trigger.MANUAL, full=full)
        while True:
            engine.execute_run(run.pk, on_progress=self._progress, hand_over=False)
            run.refresh_from_db()
            if run.status not in (SyncRun.Status.RUNNING, SyncRun.Status.QUEUED):
                break
        self._summary(run)

    def _progress(self, run: SyncRun) -> None:
        if not sys.stdout.isatty():
            return
        total = f"/{run.progress_total}" if run.progress_total else ""
        self.stdout.write(
            f"\r  read {run.read_count}  processed {run.progress_done}{total}  "
            f"written {run.written_count}  unchanged {run.skipped_count}  failed {run.failed_count}",
            ending="",
        )
        self.stdout.flush()

    def _summary(self, run: SyncRun) -> None:
        self.stdout.write("")
        line = f"{run.get_flow_display()}: {run.get_status_display()}. {run.summary}"
        if run.status == SyncRun.Status.SUCCEEDED:
            self.stdout.write(self.style.SUCCESS(line))
            return
        self.stdout.write(self.style.WARNING(line))
        waiting = run.status == SyncRun.Status.WAITING  # a paused connection, the API budget
        if waiting or (run.status == SyncRun.Status.FAILED and not run.failed_count):
            raise CommandError(run.summary, returncode=2)
        for event in SyncEvent.objects.unresolved().filter(run=run)[:20]:
            self.stdout.write(f"  {event.source_object} {event.source_id}: {event.message}")
        raise CommandError(
            f"{run.failed_count} record(s) failed; see the error queue.", returncode=1
        )

    def _dry_run(self, flow: str, full: bool) -> None:
        plans = engine.dry_run(flow, full=full)
        for plan in plans:
            self.stdout.write(plan.describe())
        self.stdout.write(
            self.style.SUCCESS(f"Dry run: {len(plans)} write(s) would be made; none were.")
        )
