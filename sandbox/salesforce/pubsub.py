"""The Pub/Sub API (gRPC over TLS): Change Data Capture events for the records the REST API writes.

A faithful server of the published `eventbus.v1.PubSub` contract (eventbus/pubsub_api.proto), so
an unmodified third-party client can subscribe. What it follows, from
shared/reference/salesforce-pubsub.md:

- auth on every call from the `accesstoken`, `instanceurl` and `tenantid` headers; anything else
  is UNAUTHENTICATED with the trailer `error-code: sfdc.platform.eventbus.grpc.service.auth.error`
  and a description ending in `rpcId: <uuid>`;
- topics `/data/<Object>ChangeEvent` for the objects selected for CDC (`pubsub_entities`), an
  unknown topic is NOT_FOUND; schemas by a 22-character fingerprint of their JSON;
- replay ids are 8-byte big-endian counters with gaps; CUSTOM resumes strictly after the id; an
  id that is malformed or older than the retention window (72 h) is INVALID_ARGUMENT with
  `…fetch.replayid.corrupted`, CUSTOM with no id `…fetch.replayid.validation.failed`;
- credit: pending = sum of num_requested - delivered, capped at 100, reported in every response;
  keepalives (empty responses with `latest_replay_id`) while credit is pending; a stream left
  without credit for `pubsub_idle_close_seconds` is closed;
- payloads are schemaless Avro binary: ChangeEventHeader first, then every field of the object;
  an UPDATE carries only changed fields (the others null) with `changedFields`/`nulledFields`
  bitmaps (upper-case, even-length hex); one event per record per transaction.

Faults (control `POST /__sandbox__/pubsub`): reset every open stream (UNAVAILABLE, "RST_STREAM
closed stream"), slow delivery, a hang (no keepalives), a gap or overflow event, ageing the log
past retention. The log lives in the org's SQLite file, so a restart keeps replay ids valid.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import io
import json
import secrets
import threading
import time
import uuid
from concurrent import futures
from datetime import UTC, date, datetime

import fastavro
import grpc

from eventbus import pubsub_api_pb2 as pb
from eventbus import pubsub_api_pb2_grpc as pb_grpc
from sandbox.salesforce import schema
from sandbox.salesforce.store import parse_datetime

AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
REPLAY_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
REPLAY_VALIDATION = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed"
MAX_CREDIT = 100
SKIPPED_BODY_FIELDS = {"Id", "IsDeleted", "SystemModstamp"}  # the record id is in the header
AVRO_TYPES = {
    "boolean": "boolean",
    "int": "int",
    "currency": "double",
    "double": "double",
    "percent": "double",
    "date": "int",  # days since 1970-01-01 (see sandbox/README.md: the real type is unpublished)
    "datetime": "long",  # epoch milliseconds, like commitTimestamp
}
CHANGE_TYPES = [
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
    "SNAPSHOT",
]
DEFAULTS = {
    "pubsub_port": 0,
    "pubsub_entities": ("Opportunity", "OpportunityLineItem"),
    "pubsub_platform_events": ("Deal_Won__e",),
    "pubsub_retention_seconds": 72 * 3600,
    "pubsub_keepalive_seconds": 60,  # real life ~60 s; the contract allows up to 270 s
    "pubsub_idle_close_seconds": 60,  # pending 0 for this long ends the stream
}

# Who is writing, set by the REST layer for the request in hand: (changeOrigin, commitUser).
CALLER: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "pubsub_caller", default=("", "")
)


def change_origin(version: str, call_options: str | None) -> str:
    """`com/salesforce/api/rest/<ver>[;client=<id>]`: the client id comes from the caller's
    `Sforce-Call-Options: client=<id>` header, as on the real platform."""
    origin = f"com/salesforce/api/rest/{version}"
    for part in (call_options or "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "client" and value.strip():
            origin += f";client={value.strip()}"
    return origin


# -- schemas --------------------------------------------------------------------------------------


def header_schema() -> dict:
    strings = {"type": "array", "items": "string"}
    return {
        "type": "record",
        "name": "ChangeEventHeader",
        "namespace": "com.sforce.eventbus",
        "fields": [
            {"name": "entityName", "type": "string"},
            {"name": "recordIds", "type": strings},
            {
                "name": "changeType",
                "type": {"type": "enum", "name": "ChangeType", "symbols": CHANGE_TYPES},
            },
            {"name": "changeOrigin", "type": "string"},
            {"name": "transactionKey", "type": "string"},
            {"name": "sequenceNumber", "type": "int"},
            {"name": "commitTimestamp", "type": "long"},
            {"name": "commitNumber", "type": "long"},
            {"name": "commitUser", "type": "string"},
            {"name": "nulledFields", "type": strings},
            {"name": "diffFields", "type": strings},
            {"name": "changedFields", "type": strings},
        ],
    }


def change_event_schema(sobj: schema.SObject) -> dict:
    body = [
        {"name": f.name, "type": ["null", AVRO_TYPES.get(f.type, "string")], "default": None}
        for f in sobj.fields.values()
        if f.name not in SKIPPED_BODY_FIELDS and f.type != "address"
    ]
    return {
        "type": "record",
        "name": f"{sobj.name}ChangeEvent",
        "namespace": "com.sforce.eventbus",
        "fields": [{"name": "ChangeEventHeader", "type": header_schema()}, *body],
    }


def fingerprint(schema_json: str) -> str:
    """A stable 22-character id that changes whenever the schema does (real ids look alike)."""
    digest = hashlib.sha256(schema_json.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def bitmap(indexes: list[int]) -> list[str]:
    """`["0x<HEX>"]` over top-level field indexes; `[]` when none (upper-case, even length)."""
    if not indexes:
        return []
    digits = f"{sum(1 << i for i in indexes):X}"
    return ["0x" + ("0" * (len(digits) % 2)) + digits]


class Topic:
    is_change_events = True

    def __init__(self, sobj: schema.SObject):
        self.entity = sobj.name
        self.name = f"/data/{sobj.name}ChangeEvent"
        self.schema = change_event_schema(sobj)
        self.schema_json = json.dumps(self.schema, separators=(",", ":"))
        self.schema_id = fingerprint(self.schema_json)
        self.parsed = fastavro.parse_schema(json.loads(self.schema_json))
        self.body_fields = [f["name"] for f in self.schema["fields"][1:]]
        self.field_types = {f.name: f.type for f in sobj.fields.values()}

    def encode(self, record: dict) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self.parsed, record)
        return out.getvalue()

    def body_value(self, name: str, value):
        if value is None:
            return None
        kind = self.field_types.get(name)
        if kind == "datetime":
            return int(parse_datetime(value).timestamp() * 1000)
        if kind == "date":
            return (date.fromisoformat(value) - date(1970, 1, 1)).days
        if kind in ("currency", "double", "percent"):
            return float(value)
        if kind in ("int", "boolean"):
            return value
        return str(value)


class PlatformEventTopic:
    """`/event/Deal_Won__e`: a custom Platform Event that a record-triggered flow in the org
    publishes (after commit) when an Opportunity becomes Closed Won, and that clients may
    publish too. Fields as the Platform Events guide shows them: CreatedDate, CreatedById, then
    the custom fields as optional unions."""

    is_change_events = False

    def __init__(self, name: str):
        self.entity = ""
        self.name = f"/event/{name}"
        self.schema = {
            "type": "record",
            "name": name,
            "namespace": "com.sforce.eventbus",
            "fields": [
                {"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"},
                {"name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId"},
                {"name": "OpportunityId__c", "type": ["null", "string"], "default": None},
            ],
        }
        self.schema_json = json.dumps(self.schema, separators=(",", ":"))
        self.schema_id = fingerprint(self.schema_json)
        self.parsed = fastavro.parse_schema(json.loads(self.schema_json))

    def encode(self, record: dict) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self.parsed, record)
        return out.getvalue()


# -- the event log -------------------------------------------------------------------------------


class EventBus:
    """Retained events per topic with replay ids, in the org's SQLite database."""

    def __init__(self, store, retention_seconds: float):
        self.store = store
        self.retention_seconds = float(retention_seconds)
        self.changed = threading.Condition()
        self.version = 0  # bumped on every append, under `changed`
        with store.lock:
            store.db.execute(
                "CREATE TABLE IF NOT EXISTS pubsub_events (replay INTEGER PRIMARY KEY, "
                "topic TEXT, created REAL, event_id TEXT, schema_id TEXT, payload BLOB)"
            )

    def append(self, topic: str, schema_id: str, payload: bytes, event_id: str = "") -> int:
        with self.store.lock:
            # Not contiguous: ids are opaque positions, and a client must not compute with them.
            replay = self._tip() + 1 + secrets.randbelow(3)
            self.store.db.execute(
                "INSERT INTO pubsub_events VALUES (?, ?, ?, ?, ?, ?)",
                (replay, topic, time.time(), event_id or str(uuid.uuid4()), schema_id, payload),
            )
            self.store.set_meta("pubsub:tip", replay)
        with self.changed:
            self.version += 1
            self.changed.notify_all()
        return replay

    def _tip(self) -> int:
        return int(self.store.get_meta("pubsub:tip", 0))

    def tip(self) -> int:
        with self.store.lock:
            return self._tip()

    def purge(self) -> None:
        """Drop what is older than the retention window; remember the newest id dropped."""
        cutoff = time.time() - self.retention_seconds
        with self.store.lock:
            row = self.store.db.execute(
                "SELECT MAX(replay) FROM pubsub_events WHERE created < ?", (cutoff,)
            ).fetchone()
            if row[0] is not None:
                self.store.db.execute("DELETE FROM pubsub_events WHERE replay <= ?", (row[0],))
                purged = max(int(self.store.get_meta("pubsub:purged", 0)), row[0])
                self.store.set_meta("pubsub:purged", purged)

    def purged_through(self) -> int:
        with self.store.lock:
            return int(self.store.get_meta("pubsub:purged", 0))

    def earliest_position(self) -> int:
        """The position just before the oldest retained event (EARLIEST starts after it)."""
        return self.purged_through()

    def after(self, topic: str, replay: int, limit: int) -> list[tuple]:
        with self.store.lock:
            return self.store.db.execute(
                "SELECT replay, event_id, schema_id, payload FROM pubsub_events "
                "WHERE topic = ? AND replay > ? ORDER BY replay LIMIT ?",
                (topic, replay, limit),
            ).fetchall()

    def age(self, seconds: float) -> None:
        with self.store.lock:
            self.store.db.execute("UPDATE pubsub_events SET created = created - ?", (seconds,))

    def clear(self) -> None:
        """A reset org has no events; the replay counter keeps counting (ids never go back)."""
        with self.store.lock:
            self.store.db.execute("DELETE FROM pubsub_events")
            self.store.set_meta("pubsub:purged", self._tip())


# -- change capture ------------------------------------------------------------------------------


class ChangeCapture:
    """Turns each committed store transaction into change events, one per record changed."""

    def __init__(self, bus: EventBus, topics: dict[str, Topic], faults: dict):
        self.bus = bus
        self.faults = faults  # the server's, shared
        self.by_entity = {t.entity: t for t in topics.values() if t.is_change_events}
        self.commit_number = int(time.time() * 1000) * 1000

    def on_commit(self, journal: list) -> None:
        first_seen: dict[tuple[str, str], dict | None] = {}
        for entry in journal:
            if entry[0] == "put" and entry[1] in self.by_entity:
                first_seen.setdefault((entry[1], entry[2]), entry[3])
        if not first_seen:
            return
        origin, user = CALLER.get()
        transaction_key = str(uuid.uuid4())
        self.commit_number += 1
        sequence = 0
        for (entity, record_id), before in first_seen.items():
            after = self.bus.store.get(entity, record_id)
            event = self._event(self.by_entity[entity], record_id, before, after)
            if event is None:
                continue
            sequence += 1
            event["ChangeEventHeader"].update(
                changeOrigin=origin,
                transactionKey=transaction_key,
                sequenceNumber=sequence,
                commitNumber=self.commit_number,
                commitUser=user,
            )
            topic = self.by_entity[entity]
            if self.faults.get("gap_next"):
                # As when an event is over 1 MB or hits an internal error: only a gap event,
                # header only, says that this record changed.
                self.faults["gap_next"] -= 1
                event = header(
                    entity, [record_id], "GAP_" + event["ChangeEventHeader"]["changeType"]
                )
            self.bus.append(topic.name, topic.schema_id, topic.encode(event))

    def _event(self, topic: Topic, record_id: str, before, after) -> dict | None:
        if after is None:  # hard-deleted in the same transaction: the soft delete told it
            return None
        if before is None:
            change, names = "CREATE", [n for n in topic.body_fields if after.get(n) is not None]
        elif after.get("IsDeleted") and not before.get("IsDeleted"):
            change, names = "DELETE", []
        elif before.get("IsDeleted") and not after.get("IsDeleted"):
            change, names = "UNDELETE", [n for n in topic.body_fields if after.get(n) is not None]
        else:
            change = "UPDATE"
            names = [n for n in topic.body_fields if before.get(n) != after.get(n)]
            if not names:
                return None
        event = header(topic.entity, [record_id], change)
        event.update({n: topic.body_value(n, after.get(n)) for n in names})
        if change == "UPDATE":
            positions = {name: i + 1 for i, name in enumerate(topic.body_fields)}
            header_fields = event["ChangeEventHeader"]
            header_fields["changedFields"] = bitmap([positions[n] for n in names])
            header_fields["nulledFields"] = bitmap(
                [positions[n] for n in names if after.get(n) is None]
            )
        return event


def header(entity: str, record_ids: list[str], change_type: str) -> dict:
    return {
        "ChangeEventHeader": {
            "entityName": entity,
            "recordIds": record_ids,
            "changeType": change_type,
            "changeOrigin": "",
            "transactionKey": str(uuid.uuid4()),
            "sequenceNumber": 1,
            "commitTimestamp": int(time.time() * 1000),
            "commitNumber": 0,
            "commitUser": "",
            "nulledFields": [],
            "diffFields": [],
            "changedFields": [],
        }
    }


# -- the gRPC service ----------------------------------------------------------------------------


def encode_replay(replay: int) -> bytes:
    return replay.to_bytes(8, "big")


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, error_code: str = ""):
        super().__init__(message)
        self.code, self.message, self.error_code = code, message, error_code


def _abort(context, failure: _Abort):
    rpc_id = str(uuid.uuid4())
    trailers = [("rpc-id", rpc_id)]
    if failure.error_code:
        trailers.insert(0, ("error-code", failure.error_code))
    context.set_trailing_metadata(trailers)
    context.abort(failure.code, f"{failure.message} rpcId: {rpc_id}")


class PubSubService(pb_grpc.PubSubServicer):
    def __init__(self, server: PubSubServer):
        self.server = server

    # -- auth and topics ---

    def _authenticate(self, context) -> None:
        headers = {key: value for key, value in context.invocation_metadata()}
        app = self.server.app
        org = app.creds["organization_id"]
        token_ok = app.sessions.is_valid(headers.get("accesstoken"))
        instance_ok = (headers.get("instanceurl") or "").rstrip("/") == app.base_url.rstrip("/")
        tenant = headers.get("tenantid") or ""
        tenant_ok = tenant in (org, org[:15])
        if not (token_ok and instance_ok and tenant_ok):
            raise _Abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "An authentication exception occurred. Provide valid authentication via "
                "metadata headers.",
                AUTH_ERROR,
            )

    def _topic(self, name: str) -> Topic:
        topic = self.server.topics.get(name)
        if topic is None:
            # The real service answers NOT_FOUND or PERMISSION_DENIED; we choose NOT_FOUND.
            raise _Abort(
                grpc.StatusCode.NOT_FOUND,
                f"The topic {name!r} does not exist or you do not have access to it.",
            )
        return topic

    def GetTopic(self, request, context):
        try:
            self._authenticate(context)
            topic = self._topic(request.topic_name)
        except _Abort as failure:
            _abort(context, failure)
        return pb.TopicInfo(
            topic_name=topic.name,
            tenant_guid=self.server.app.creds["organization_id"],
            can_publish=not topic.is_change_events,  # change events come from the platform only
            can_subscribe=True,
            schema_id=topic.schema_id,
            rpc_id=str(uuid.uuid4()),
        )

    def GetSchema(self, request, context):
        try:
            self._authenticate(context)
            topic = next(
                (t for t in self.server.topics.values() if t.schema_id == request.schema_id), None
            )
            if topic is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Unknown schema id {request.schema_id!r}.")
        except _Abort as failure:
            _abort(context, failure)
        return pb.SchemaInfo(
            schema_json=topic.schema_json, schema_id=topic.schema_id, rpc_id=str(uuid.uuid4())
        )

    def Publish(self, request, context):
        try:
            self._authenticate(context)
            topic = self._topic(request.topic_name)
        except _Abort as failure:
            _abort(context, failure)
        results = []
        for event in request.events:
            if topic.is_change_events:
                error = pb.Error(
                    code=pb.PUBLISH, msg="Change events are published by the platform only."
                )
                results.append(pb.PublishResult(error=error, correlation_key=event.id))
                continue
            # Like the real service, the payload is not checked against the schema.
            event_id = event.id or str(uuid.uuid4())
            replay = self.server.bus.append(topic.name, event.schema_id, event.payload, event_id)
            results.append(
                pb.PublishResult(replay_id=encode_replay(replay), correlation_key=event_id)
            )
        return pb.PublishResponse(
            results=results, schema_id=topic.schema_id, rpc_id=str(uuid.uuid4())
        )

    def PublishStream(self, request_iterator, context):
        for request in request_iterator:
            yield self.Publish(request, context)

    def ManagedSubscribe(self, request_iterator, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "ManagedSubscribe is not simulated.")

    # -- subscribe ---

    def Subscribe(self, request_iterator, context):
        stream = _Stream(self.server, context)
        try:
            self._authenticate(context)
            first = next(request_iterator, None)
            if first is None:
                return
            topic = self._topic(first.topic_name)
            position = self._start(first)
            self.server.subscriptions.append(
                {
                    "topic": topic.name,
                    "preset": pb.ReplayPreset.Name(first.replay_preset),
                    "replay_id": first.replay_id.hex(),
                    "position": position,
                }
            )
            stream.add_credit(first.num_requested)
        except _Abort as failure:
            _abort(context, failure)
        self.server.open_streams.add(stream)
        reader = threading.Thread(
            target=stream.read_credit, args=(request_iterator, topic.name), daemon=True
        )
        reader.start()
        try:
            yield from stream.responses(topic, position)
        except _Closed:
            return
        except _Abort as failure:
            _abort(context, failure)
        finally:
            stream.close()
            self.server.open_streams.discard(stream)

    def _start(self, first) -> int:
        bus = self.server.bus
        bus.purge()
        if first.replay_preset == pb.LATEST:
            return bus.tip()
        if first.replay_preset == pb.EARLIEST:
            return bus.earliest_position()
        if not first.replay_id:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "A CUSTOM replay needs a replay id.",
                REPLAY_VALIDATION,
            )
        if len(first.replay_id) != 8:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, "The replay id is not valid.", REPLAY_CORRUPTED
            )
        replay = int.from_bytes(first.replay_id, "big")
        if replay > bus.tip() or replay < bus.purged_through():
            # Outside the retention window (or never issued): an error, not a reposition.
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "The replay id is not valid or is older than the retention window.",
                REPLAY_CORRUPTED,
            )
        return replay


class _Stream:
    """One Subscribe call: its credit, its position and the faults aimed at it."""

    def __init__(self, server: PubSubServer, context):
        self.server, self.context = server, context
        self.credit = 0
        self.failure: _Abort | None = None
        self.closed = False
        context.add_callback(self.close)

    def add_credit(self, requested: int) -> None:
        if requested < 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "num_requested must not be negative.")
        with self.server.bus.changed:
            self.credit = min(MAX_CREDIT, self.credit + requested)
            self.server.bus.changed.notify_all()

    def read_credit(self, request_iterator, topic_name: str) -> None:
        try:
            for request in request_iterator:
                if request.topic_name and request.topic_name != topic_name:
                    self.fail(
                        _Abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "A FetchRequest names another topic than the subscription's.",
                        )
                    )
                    return
                self.add_credit(request.num_requested)
        except _Abort as failure:
            self.fail(failure)
        except grpc.RpcError:
            pass  # the client went away
        self.close()

    def fail(self, failure: _Abort) -> None:
        with self.server.bus.changed:
            self.failure = failure
            self.server.bus.changed.notify_all()

    def close(self) -> None:
        with self.server.bus.changed:
            self.closed = True
            self.server.bus.changed.notify_all()

    def responses(self, topic: Topic, position: int):
        bus = self.server.bus
        last_sent = time.monotonic()
        while True:
            rows, tip = self._wait_for_work(topic, position, last_sent)
            delay = float(self.server.faults.get("delay_seconds") or 0)
            if rows and delay:
                time.sleep(delay)
            events = [
                pb.ConsumerEvent(
                    event=pb.ProducerEvent(id=event_id, schema_id=schema_id, payload=payload),
                    replay_id=encode_replay(replay),
                )
                for replay, event_id, schema_id, payload in rows
            ]
            if rows:
                position = rows[-1][0]
                latest = position
            else:
                latest = max(position, tip)  # the bus moves on without this topic
            with bus.changed:
                self.credit -= len(rows)
                pending = self.credit
            last_sent = time.monotonic()
            yield pb.FetchResponse(
                events=events,
                latest_replay_id=encode_replay(latest),
                rpc_id=str(uuid.uuid4()),
                pending_num_requested=pending,
            )

    def _wait_for_work(self, topic: Topic, position: int, last_sent: float) -> tuple[list, int]:
        """(events to send, the tip read before reading them); ([], tip) means a keepalive.

        The store's lock is never taken while holding the bus condition: a committing REST
        request holds the store lock and then notifies the condition."""
        bus, options = self.server.bus, self.server.options
        while True:
            with bus.changed:
                if self.failure:
                    raise self.failure
                if self.closed or not self.context.is_active():
                    raise _Closed
                seen, credit = bus.version, self.credit
            waited = time.monotonic() - last_sent
            if not self.server.faults.get("hang"):
                # The tip is read before the query: a keepalive's latest_replay_id must never
                # pass an event of this topic that the query did not see.
                tip = bus.tip()
                rows = bus.after(topic.name, position, credit) if credit else []
                if rows or (credit and waited >= float(options["pubsub_keepalive_seconds"])):
                    return rows, tip
                if not credit and waited >= float(options["pubsub_idle_close_seconds"]):
                    raise _Abort(
                        grpc.StatusCode.CANCELLED,
                        "The stream was closed: no events were requested for too long.",
                    )
            with bus.changed:
                if bus.version == seen and self.credit == credit and not self.failure:
                    bus.changed.wait(timeout=0.1)


class _Closed(Exception):
    """The client went away."""


class PubSubServer:
    """The gRPC server beside the REST simulator: `start()`, `address` ("host:port"), `stop()`."""

    def __init__(self, app, options: dict):
        self.app = app
        self.options = {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}}
        self._initial = dict(self.options)
        entities = self.options["pubsub_entities"]
        if isinstance(entities, str):
            entities = [e.strip() for e in entities.split(",") if e.strip()]
        self.topics = {t.name: t for t in (Topic(schema.sobject(e)) for e in entities)}
        events = self.options["pubsub_platform_events"]
        if isinstance(events, str):
            events = [e.strip() for e in events.split(",") if e.strip()]
        self.topics.update({t.name: t for t in (PlatformEventTopic(e) for e in events)})
        self.bus = EventBus(app.store, self.options["pubsub_retention_seconds"])
        self.faults: dict = {}
        self.capture = ChangeCapture(self.bus, self.topics, self.faults)
        app.store.change_listeners.append(self.capture.on_commit)
        app.org.won_listeners.append(self.publish_deal_won)
        self.open_streams: set[_Stream] = set()
        self.subscriptions: list[dict] = []  # every Subscribe accepted: topic, preset, replay
        self._grpc: grpc.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> PubSubServer:
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="sandbox-pubsub")
        )
        pb_grpc.add_PubSubServicer_to_server(PubSubService(self), self._grpc)
        directory = self.app.directory
        credentials = grpc.ssl_server_credentials(
            [((directory / "server.key").read_bytes(), (directory / "server.pem").read_bytes())]
        )
        self.port = self._grpc.add_secure_port(
            f"127.0.0.1:{int(self.options['pubsub_port'])}", credentials
        )
        self._grpc.start()
        return self

    def stop(self) -> None:
        if self._grpc:
            self._grpc.stop(grace=0.5).wait()

    def reset(self) -> None:
        """No events, no faults, the timings the server started with (open streams stay)."""
        self.faults.clear()
        self.subscriptions.clear()
        self.options.update(self._initial)
        self.bus.retention_seconds = float(self._initial["pubsub_retention_seconds"])
        self.bus.clear()

    # -- control ---

    def control(self, payload: dict) -> dict:
        """Faults and clock tricks for tests; returns the state."""
        if payload.get("reset_streams"):
            for stream in list(self.open_streams):
                stream.fail(_Abort(grpc.StatusCode.UNAVAILABLE, "RST_STREAM closed stream"))
        for key in ("delay_seconds", "hang", "gap_next"):
            if key in payload:
                self.faults[key] = payload[key]
        for key in ("pubsub_keepalive_seconds", "pubsub_idle_close_seconds"):
            if key in payload:
                self.options[key] = float(payload[key])
        if "retention_seconds" in payload:
            self.bus.retention_seconds = float(payload["retention_seconds"])
        if payload.get("age_seconds"):
            self.bus.age(float(payload["age_seconds"]))
            self.bus.purge()
        if payload.get("gap"):
            self.publish_gap(payload["gap"])
        return self.status()

    def publish_deal_won(self, opportunity_id: str) -> None:
        """The org's flow: an Opportunity became Closed Won (run after the commit)."""
        topic = self.topics.get("/event/Deal_Won__e")
        if topic is None:
            return
        event = {
            "CreatedDate": int(time.time() * 1000),
            "CreatedById": self.app.creds["user_id"],
            "OpportunityId__c": opportunity_id,
        }
        self.bus.append(topic.name, topic.schema_id, topic.encode(event))

    def publish_gap(self, gap: dict) -> int:
        """A gap (`GAP_UPDATE` etc. with record ids) or overflow (`GAP_OVERFLOW`, no ids) event."""
        topic = self._topic_of(gap.get("entity", "Opportunity"))
        change_type = gap.get("change_type", "GAP_UPDATE")
        if change_type not in CHANGE_TYPES or not change_type.startswith("GAP_"):
            raise ValueError(f"not a gap change type: {change_type}")
        record_ids = [] if change_type == "GAP_OVERFLOW" else list(gap.get("record_ids") or [])
        event = header(topic.entity, record_ids, change_type)
        return self.bus.append(topic.name, topic.schema_id, topic.encode(event))

    def _topic_of(self, entity: str) -> Topic:
        for topic in self.topics.values():
            if topic.is_change_events and topic.entity == entity:
                return topic
        raise ValueError(f"{entity} is not selected for Change Data Capture")

    def status(self) -> dict:
        return {
            "address": self.address,
            "topics": {name: topic.schema_id for name, topic in self.topics.items()},
            "tip": self.bus.tip(),
            "open_streams": len(self.open_streams),
            "subscriptions": self.subscriptions[-20:],
            "faults": dict(self.faults),
            "retention_seconds": self.bus.retention_seconds,
            "keepalive_seconds": self.options["pubsub_keepalive_seconds"],
            "now": datetime.now(UTC).isoformat(),
        }
