"""Compare Salesforce and KashFlow for the invoicing flow; exit 1 when they differ."""

import sys
from datetime import date
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from integration import reconcile
from integration.clients.errors import ApiError
from integration.models import Trigger


class Command(BaseCommand):
    help = (
        "Compare the invoiced Opportunities in Salesforce with the invoices in KashFlow; print a "
        "summary, write every difference to --csv, and exit 1 when there are any."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--since", type=date.fromisoformat, help="YYYY-MM-DD: closed/issued on or after"
        )
        parser.add_argument("--csv", type=Path, help="Write every difference to this file.")

    def handle(self, *args, since=None, csv=None, **options):
        try:
            record = reconcile.from_connections(since, Trigger.MANUAL)
        except ApiError as exc:
            raise CommandError(f"The reconciliation could not finish: {exc.message}") from None
        self.stdout.write(reconcile.describe(record))
        if csv:
            csv.write_text(reconcile.as_csv(record), encoding="utf-8")
            self.stdout.write(f"Every difference is in {csv}.")
        if record.differences:
            sys.exit(1)
