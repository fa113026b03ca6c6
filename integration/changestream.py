"""Change Data Capture over the Pub/Sub API: won deals reach the ledger in seconds with no
public address (`python manage.py subscribe`, a long-lived process beside the qcluster).

For each topic a `Subscriber`:

1. holds the topic's `ChangeStream` lease (a conditional UPDATE), so of two subscribers started
   together one streams and the other waits to take over;
2. subscribes after the stored replay id (LATEST the first time) and keeps `PUBSUB_CREDIT`
   events requested (flow control with `num_requested`);
3. decodes each event with the schema GetSchema gives for its schema id, reads the
   `changedFields` bitmap, and sets aside what costs nothing: kashforce's own writes (its
   integration user through its client id) and changes to fields the invoice rule does not read;
4. asks Salesforce once per batch which of the remaining Opportunities now match the invoice
   rule (the poll's own query, narrowed to their ids), records those in the ledger exactly as
   the Outbound Message webhook does (`engine.record_changes` in a push run), and only then, in
   the same transaction, stores the replay id, so a crash replays instead of losing;
5. runs the poll when the stream cannot say what changed: a gap or overflow event, a replay id
   past the 72-hour retention (then resubscribes from LATEST), an outage, or silence longer than
   `PUBSUB_SILENCE_SECONDS` (no event and no keepalive);
6. reconnects with jittered exponential backoff, and signs in again on UNAUTHENTICATED.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, IntegrityError, close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from integration.clients.errors import ApiError
from integration.clients.pubsub import PubSubClient, PubSubError, Subscription, client_id
from integration.models import ChangeStream, Connection, Direction, Flow, SyncRun, Trigger
from integration.sync import engine

log = logging.getLogger(__name__)

OPPORTUNITY_TOPIC = "/data/OpportunityChangeEvent"
SOQL_WORDS = {"and", "or", "not", "true", "false", "null", "in", "like", "includes", "excludes"}


def _setting(name: str):
    return settings.KASHFORCE[name]


# --------------------------------------------------------------------------------------------
# Reading events


def bitmap_fields(bitmaps: list[str], schema: dict) -> list[str]:
    """Field names a `changedFields`/`nulledFields` bitmap names, in schema order.

    `0x<HEX>` is over the top-level fields (ChangeEventHeader is bit 0); `<p>-0x<HEX>` is over
    the fields of compound field p's record (`Parent.Child`). Raises ValueError for a bit with
    no field: a bitmap we cannot read is an error, never "nothing changed".
    """
    top = schema["fields"]
    names = []
    for item in bitmaps:
        parent, _, digits = item.rpartition("-")
        fields, prefix = top, ""
        if parent:
            compound = top[int(parent)]
            fields = _record_fields(compound["type"])
            prefix = compound["name"] + "."
        for index in _bits(digits):
            if index >= len(fields):
                raise ValueError(f"bitmap {item!r} names field {index}, past the schema's end")
            names.append(prefix + fields[index]["name"])
    return names


def _bits(digits: str) -> list[int]:
    number = int(digits, 16)
    return [i for i in range(number.bit_length()) if number >> i & 1]


def _record_fields(avro_type) -> list[dict]:
    for branch in avro_type if isinstance(avro_type, list) else [avro_type]:
        if isinstance(branch, dict) and branch.get("type") == "record":
            return branch["fields"]
    raise ValueError("a compound-field bitmap points at a field that is not a record")


def rule_fields() -> set[str]:
    """The Opportunity fields the invoice rule (INVOICE_WHEN) reads."""
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*", _strip_literals())
    return {w for w in words if w.lower() not in SOQL_WORDS}


def _strip_literals() -> str:
    return re.sub(r"'(?:[^'\\]|\\.)*'", "", _setting("INVOICE_WHEN"))


@dataclass
class Reading:
    """What one batch of events asks of kashforce."""

    candidates: list[str]  # Opportunity ids whose change may make them due for an invoice
    own_writes: int = 0
    unrelated: int = 0
    needs_poll: str = ""  # why the poll must run (a gap, an overflow), if it must


def read_events(client: PubSubClient, events, topic: str) -> Reading:
    reading = Reading(candidates=[])
    watched = rule_fields() | {"KashFlow_Invoice_Number__c"}
    me = client.whoami().user_id
    own_client = f"client={client_id()}"
    for consumer_event in events:
        payload, schema = client.decode(consumer_event.event)
        if topic.startswith("/event/"):  # a Platform Event naming the Opportunity
            opportunity_id = payload.get(_setting("PUBSUB_EVENT_OPPORTUNITY_FIELD"))
            if opportunity_id:
                reading.candidates.append(str(opportunity_id))
            else:
                reading.unrelated += 1
            continue
        header = payload["ChangeEventHeader"]
        change_type = header["changeType"]
        if change_type.startswith("GAP_"):
            reading.needs_poll = f"Salesforce sent a {change_type} event"
            continue
        if header["commitUser"] == me and own_client in (header.get("changeOrigin") or ""):
            reading.own_writes += 1
            continue
        if header["entityName"] != "Opportunity" or change_type == "DELETE":
            reading.unrelated += 1
            continue
        if change_type == "UPDATE":
            changed = set(bitmap_fields(header["changedFields"], schema))
            if not changed & watched:
                reading.unrelated += 1
                continue
        reading.candidates += header["recordIds"]
    return reading


# --------------------------------------------------------------------------------------------
# Recording


def due_opportunities(client: PubSubClient, ids: list[str]) -> list[dict]:
    """Which of these Opportunities the invoice rule takes now: the poll's query on their ids."""
    quoted = ", ".join(f"'{i}'" for i in sorted(set(ids)) if len(i) in (15, 18) and i.isalnum())
    if not quoted:
        return []
    soql = (
        f"SELECT Id, SystemModstamp FROM Opportunity WHERE Id IN ({quoted}) "
        f"AND ({_setting('INVOICE_WHEN')}) AND KashFlow_Invoice_Number__c = null"
    )
    return list(client.salesforce.query(soql))


def record_batch(
    stream: ChangeStream,
    opportunities: list[dict],
    replay_hex: str,
    events: int,
    poll_reason: str = "",
) -> int:
    """Record due Opportunities as the webhook does, start the poll if asked, then store the
    replay id, all in one transaction; returns how many changes were new."""
    now = timezone.now()
    with transaction.atomic():
        recorded = _record_push(opportunities) if opportunities else 0
        if poll_reason:
            run_poll(poll_reason)
        ChangeStream.objects.filter(pk=stream.pk).update(
            replay_id=replay_hex,
            replay_saved_at=now,
            last_heard_at=now,
            **({"last_event_at": now} if events else {}),
            events_received=F("events_received") + events,
        )
    return recorded


def _record_push(opportunities: list[dict]) -> int:
    # The Outbound Message path (integration/webhooks.py): a push run that arrives collected.
    with transaction.atomic():
        run = engine.start_run(Flow.INVOICES, Trigger.PUSH, collected=True)
        ctx = engine.RunContext(run=run, deadline=0)
        engine.record_changes(
            ctx,
            [
                engine.Change(
                    direction=Direction.SALESFORCE_TO_KASHFLOW,
                    source_object="salesforce.Opportunity",
                    source_id=opportunity["Id"],
                    payload={
                        "Id": opportunity["Id"],
                        "SystemModstamp": opportunity["SystemModstamp"],
                    },
                    version="won",  # one invoice per won Opportunity, however it is seen
                    target_object="kashflow.Invoice",
                )
                for opportunity in opportunities
            ],
        )
        ctx.flush_counts()
        run.add_to_total(ctx.recorded)
        if not ctx.recorded:
            transaction.set_rollback(True)  # all known already: no run for a repeat
    return ctx.recorded


def run_poll(reason: str) -> None:
    log.info("change stream: running the poll (%s)", reason)
    engine.start_run(Flow.INVOICES, Trigger.POLL)


# --------------------------------------------------------------------------------------------
# The subscriber


class Subscriber:
    """Streams one topic of the active Salesforce connection until `stop` is set."""

    def __init__(self, connection: Connection, topic: str, holder: str, stop: threading.Event):
        self.connection, self.topic, self.holder, self.stop = connection, topic, holder, stop
        self.stream = _stream_row(connection, topic)
        self.client: PubSubClient | None = None
        self.subscription: Subscription | None = None
        self.last_heard = time.monotonic()
        self.failures = 0
        self.signed_in_again = False
        self.polled_for_outage = False

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self._lease():
                    self.stop.wait(_setting("PUBSUB_LEASE_SECONDS") / 3)
                    continue
                self._stream_once()
        finally:
            if self.subscription:
                self.subscription.cancel()
            with contextlib.suppress(DatabaseError):  # else the lease simply runs out
                self.stream.release(self.holder)
            if self.client:
                self.client.close()
            close_old_connections()

    def _lease(self) -> bool:
        seconds = _setting("PUBSUB_LEASE_SECONDS")
        try:
            if self.stream.take_lease(self.holder, seconds):
                return True
            # A subscriber of this host that was killed (systemd restarts us at once) need not
            # be waited for: its process is gone.
            self.stream.refresh_from_db(fields=["holder"])
            dead = self.stream.holder
            return holder_is_dead(dead) and self.stream.take_over(dead, self.holder, seconds)
        except DatabaseError:
            close_old_connections()
            return False

    def _stream_once(self) -> None:
        """One Subscribe call, from connecting to its end, and what its end calls for."""
        try:
            self.client = self.client or PubSubClient(self.connection)
            self.stream.note(ChangeStream.State.CONNECTING)
            self.stream.refresh_from_db(fields=["replay_id"])
            replay = bytes.fromhex(self.stream.replay_id) if self.stream.replay_id else None
            self.subscription = self.client.subscribe(self.topic, replay, _setting("PUBSUB_CREDIT"))
            self.last_heard = time.monotonic()
            watchdog = threading.Thread(target=self._watch, args=(self.subscription,), daemon=True)
            watchdog.start()
            self._consume(self.subscription)
            if not self.stop.is_set():
                self.stop.wait(1)  # Salesforce ended the stream: call Subscribe again
        except PubSubError as error:
            self._after_error(error)
        except ApiError as error:
            # A refused sign-in is tried again only after the longest wait, never in a burst.
            self._down(f"The change stream stopped: {error.message}", permanent=error.permanent)
        except (ValueError, KeyError) as error:
            self._down(f"The change stream stopped: an event kashforce cannot read ({error!r}).")
        except DatabaseError as error:
            # Nothing was stored past what the ledger holds: reconnecting replays the batch.
            log.warning("change stream %s: database error %s", self.topic, error)
            close_old_connections()
            self.stop.wait(random.uniform(0.5, 1.0))
        finally:
            if self.subscription:
                self.subscription.cancel()
                self.subscription = None

    def _consume(self, subscription: Subscription) -> None:
        credit = _setting("PUBSUB_CREDIT")
        for response in subscription:
            self.last_heard = time.monotonic()
            self.failures, self.signed_in_again, self.polled_for_outage = 0, False, False
            if self.stream.state != ChangeStream.State.LIVE:
                self.stream.note(ChangeStream.State.LIVE)
            self._handle(response)
            if response.pending_num_requested <= credit // 2:
                subscription.request(credit - response.pending_num_requested)
            if self.stop.is_set():
                return

    def _handle(self, response) -> None:
        events = list(response.events)
        if not events:  # a keepalive: Salesforce asks that its position be kept
            if response.latest_replay_id:
                record_batch(self.stream, [], response.latest_replay_id.hex(), 0)
            return
        reading = read_events(self.client, events, self.topic)
        due = due_opportunities(self.client, reading.candidates) if reading.candidates else []
        recorded = record_batch(
            self.stream, due, events[-1].replay_id.hex(), len(events), reading.needs_poll
        )
        log.info(
            "change stream %s: %d events, %d own writes, %d due, %d new",
            self.topic,
            len(events),
            reading.own_writes,
            len(due),
            recorded,
        )

    def _watch(self, subscription: Subscription) -> None:
        """Renew the lease while the stream is open; end a stream that went silent."""
        lease = _setting("PUBSUB_LEASE_SECONDS")
        renewed = time.monotonic()
        try:
            while self.subscription is subscription and not self.stop.wait(min(1.0, lease / 3)):
                if time.monotonic() - renewed >= lease / 3:  # one UPDATE a third of a lease
                    if not self._lease():
                        log.warning("change stream %s: another subscriber has it", self.topic)
                        subscription.cancel()
                        return
                    renewed = time.monotonic()
                if time.monotonic() - self.last_heard > _setting("PUBSUB_SILENCE_SECONDS"):
                    self.stream.note(
                        ChangeStream.State.SILENT,
                        "Salesforce sent nothing, not even a keepalive, for too long; the poll "
                        "ran and kashforce is connecting again.",
                    )
                    run_poll("the change stream went silent")
                    subscription.cancel()
                    return
            if self.stop.is_set():
                subscription.cancel()
        finally:
            close_old_connections()

    def _after_error(self, error: PubSubError) -> None:
        if self.stop.is_set() or error.details == "Locally cancelled by application!":
            return
        if error.needs_sign_in and not self.signed_in_again:
            self.signed_in_again = True
            try:
                self.client.sign_in()
            except ApiError as failure:
                return self._down(
                    f"Signing in to Salesforce again failed: {failure.message}",
                    permanent=failure.permanent,
                )
            return
        if error.bad_replay_id:
            # Past the 72-hour retention (or unreadable): the poll reads what the stream cannot
            # replay, and the stream starts again from now. Once, not in a loop.
            ChangeStream.objects.filter(pk=self.stream.pk).update(replay_id="")
            self.stream.note(
                ChangeStream.State.CONNECTING,
                "Salesforce no longer keeps the changes after where kashforce stopped reading "
                "(events are kept 72 hours); the poll ran to catch up.",
            )
            run_poll("the stored replay id is past Salesforce's retention")
            return
        if error.topic_missing:
            return self._down(
                f"Salesforce has no change stream {self.topic} for this user. Select "
                "Opportunity for Change Data Capture in Setup, or check the user's permissions.",
                permanent=True,
            )
        self._down(f"The change stream stopped ({error.status.name}: {error.details}).")

    def _down(self, message: str, permanent: bool = False) -> None:
        self.failures += 1
        self.stream.note(ChangeStream.State.DOWN, message + " The poll is covering meanwhile.")
        # A single reset is reconnected at once and replays; a second failure in a row is an
        # outage, and the poll reads what happens meanwhile.
        if (self.failures >= 2 or permanent) and not self.polled_for_outage:
            self.polled_for_outage = True
            run_poll("the change stream is down")
        wait = min(_setting("PUBSUB_MAX_BACKOFF"), 2 ** (self.failures - 1))
        if permanent:
            wait = _setting("PUBSUB_MAX_BACKOFF")
        self.stop.wait(wait * random.uniform(0.5, 1.0))


def _stream_row(connection: Connection, topic: str) -> ChangeStream:
    try:
        return ChangeStream.objects.get_or_create(connection=connection, topic=topic)[0]
    except IntegrityError:  # a second subscriber made it at the same moment
        return ChangeStream.objects.get(connection=connection, topic=topic)


def topics() -> list[str]:
    return [OPPORTUNITY_TOPIC, *_setting("PUBSUB_EVENT_TOPICS")]


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_dead(holder: str) -> bool:
    """True for a holder of this host whose process no longer exists."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# --------------------------------------------------------------------------------------------
# What the overview shows


def realtime_status(connections: list[Connection]) -> list[dict]:
    """For each active Salesforce connection: how changes arrive in seconds, whether that is
    live, and when the last one arrived. One query per connection at most."""
    rows = []
    now = timezone.now()
    for connection in connections:
        if connection.kind != Connection.Kind.SALESFORCE:
            continue
        row = {"connection": connection, "mode": connection.get_realtime_display(), "streams": []}
        if connection.realtime == Connection.Realtime.PUBSUB:
            for stream in connection.change_streams.order_by("topic"):
                held = bool(
                    stream.holder and stream.lease_expires_at and stream.lease_expires_at > now
                )
                stream.is_live = held and stream.state == ChangeStream.State.LIVE
                stream.no_subscriber = not held
                row["streams"].append(stream)
            row["live"] = any(stream.is_live for stream in row["streams"])
            row["last_event_at"] = max(
                (s.last_event_at for s in row["streams"] if s.last_event_at), default=None
            )
        elif connection.realtime == Connection.Realtime.OUTBOUND:
            last_push = SyncRun.objects.filter(trigger=Trigger.PUSH).order_by("-created_at").first()
            row["last_event_at"] = last_push.created_at if last_push else None
        rows.append(row)
    return rows
