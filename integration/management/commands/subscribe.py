"""Listen to Salesforce's change stream (Pub/Sub API) and record won deals in seconds.

    python manage.py subscribe [--topic /data/OpportunityChangeEvent ...]

A long-lived process beside the qcluster (a systemd unit is in the README). It streams only while
the active Salesforce connection is set to Pub/Sub; otherwise it waits and checks again. Several
may run: each topic is held by one of them at a time (a lease in the database), and another
takes over when the holder stops. SIGTERM or Ctrl-C stops it cleanly; a SIGKILL loses nothing,
since the replay id is stored only after the ledger has what it brought.
"""

import logging
import signal
import threading

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from integration import changestream
from integration.models import Connection

log = logging.getLogger(__name__)
MODE_CHECK_SECONDS = 10


class Command(BaseCommand):
    help = "Stream Salesforce change events (Pub/Sub API) into the ledger."

    def add_arguments(self, parser):
        parser.add_argument(
            "--topic", action="append", help="topic to stream (repeatable); default from settings"
        )

    def handle(self, topic=None, **options):
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        holder = changestream.holder_name()
        self.stdout.write(f"Subscriber {holder} started.")
        while not stop.is_set():
            connection = self._pubsub_connection()
            if connection is None:
                stop.wait(MODE_CHECK_SECONDS)
                continue
            self._stream(connection, topic or changestream.topics(), holder, stop)
        self.stdout.write("Subscriber stopped.")

    def _pubsub_connection(self) -> Connection | None:
        close_old_connections()
        connection = Connection.objects.filter(
            kind=Connection.Kind.SALESFORCE, is_active=True
        ).first()
        if connection is None or connection.realtime != Connection.Realtime.PUBSUB:
            return None
        return connection

    def _stream(self, connection: Connection, topics: list[str], holder: str, stop) -> None:
        """Stream every topic until stopped or until the connection leaves Pub/Sub mode."""
        this_run = threading.Event()
        threads = [
            threading.Thread(
                target=changestream.Subscriber(connection, name, holder, this_run).run,
                name=f"subscribe {name}",
                daemon=True,
            )
            for name in topics
        ]
        for thread in threads:
            thread.start()
        while not stop.wait(MODE_CHECK_SECONDS):
            current = self._pubsub_connection()
            if current is None or current.pk != connection.pk:
                log.info("the Salesforce connection is no longer set to Pub/Sub: stopping")
                break
        this_run.set()
        for thread in threads:
            thread.join(timeout=10)
