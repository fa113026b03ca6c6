"""Find the alerts that are due now and send them (the schedule runs this every minute).

    python manage.py send_alerts

Safe to run on several workers at once: each alert is recorded once and sent once to each
recipient (see integration/alerts.py).
"""

from django.core.management.base import BaseCommand

from integration import alerts


class Command(BaseCommand):
    help = "Find the alerts that are due now and send them by e-mail and webhook."

    def handle(self, *args, **options):
        counts = alerts.run()
        self.stdout.write(
            f"{counts.get('found', 0)} new alert(s); delivered {counts.get('sent', 0)}, "
            f"will retry {counts.get('retrying', 0)}, not delivered {counts.get('failed', 0)}, "
            f"left for the next pass {counts.get('later', 0)}."
        )
