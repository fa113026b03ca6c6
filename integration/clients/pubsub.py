"""The Salesforce Pub/Sub API client (gRPC over TLS): the only code that speaks `eventbus.v1`.

Facts are in shared/reference/salesforce-pubsub.md. How this module meets them:

- **Auth headers on every call**: `accesstoken` and `instanceurl` from the connection's stored
  Salesforce session (the REST client's sign-in), `tenantid` the org id read from OpenID
  `userinfo` along with the integration user's id (which `commitUser` is compared with).
  grpcio refuses upper-case metadata keys, so they are lower-case here.
- **Errors** arrive as a gRPC status plus an `error-code` trailer; `PubSubError` carries both
  and says which kind of recovery they call for (sign in again, drop the replay id, back off).
- **Schemas** are fetched once per schema id with GetSchema and kept parsed (fastavro).
- **Subscribe** is pull-based: `Subscription.request(n)` adds credit on the open stream; the
  request generator stays alive until `close()`, or grpcio would half-close the stream.
"""

from __future__ import annotations

import io
import json
import logging
import queue
from dataclasses import dataclass
from pathlib import Path

import fastavro
import grpc
from django.conf import settings

from eventbus import pubsub_api_pb2 as pb
from eventbus import pubsub_api_pb2_grpc as pb_grpc
from integration.clients.errors import ApiError
from integration.clients.salesforce import SalesforceClient, salesforce_session
from integration.models import Connection

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "api.pubsub.salesforce.com:7443"
AUTH_ERRORS = {
    "sfdc.platform.eventbus.grpc.service.auth.error",
    "sfdc.platform.eventbus.grpc.service.auth.refresh.invalid",
}
REPLAY_ERRORS = {
    "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted",
    "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed",
}
LIMIT_ERRORS = {
    "sfdc.platform.eventbus.grpc.subscription.limit.exceeded",
    "sfdc.platform.eventbus.grpc.concurrent.client.limit.exceeded",
}


class PubSubError(Exception):
    """A failed Pub/Sub call or a stream that ended: the status, the `error-code` trailer and
    the server's description."""

    def __init__(self, status: grpc.StatusCode, error_code: str, details: str):
        super().__init__(f"{status.name}: {details}")
        self.status, self.error_code, self.details = status, error_code, details

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> PubSubError:
        trailers = (
            dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
        )
        status = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(status, trailers.get("error-code", ""), details or "")

    @property
    def needs_sign_in(self) -> bool:
        return self.status == grpc.StatusCode.UNAUTHENTICATED or self.error_code in AUTH_ERRORS

    @property
    def bad_replay_id(self) -> bool:
        """The stored replay id is refused (corrupt, or older than the 72-hour retention)."""
        return self.error_code in REPLAY_ERRORS

    @property
    def over_limit(self) -> bool:
        return self.error_code in LIMIT_ERRORS

    @property
    def topic_missing(self) -> bool:
        return self.status in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)


@dataclass
class Identity:
    """Who kashforce is in the org: the `tenantid` header and the `commitUser` of its writes."""

    organization_id: str
    user_id: str


class PubSubClient:
    def __init__(self, connection: Connection):
        if connection.kind != Connection.Kind.SALESFORCE:
            raise ValueError(f"{connection!r} is not a Salesforce connection")
        self.connection = connection
        self.endpoint = connection.pubsub_endpoint or DEFAULT_ENDPOINT
        self.salesforce = SalesforceClient(connection)
        self.identity: Identity | None = None
        self._schemas: dict[str, tuple[dict, object]] = {}
        self._channel = grpc.secure_channel(
            self.endpoint,
            grpc.ssl_channel_credentials(_root_certificates(connection.ca_file)),
            options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
        )
        self._stub = pb_grpc.PubSubStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    # Auth ---------------------------------------------------------------------------------------

    def sign_in(self) -> None:
        """A new access token (after UNAUTHENTICATED), then who it belongs to."""
        self.salesforce.login()
        self.identity = None

    def _session(self) -> dict:
        self.connection.refresh_from_db(fields=["encrypted_session", "session_obtained_at"])
        session = self.connection.get_session()
        if not session.get("access_token"):
            session = self.salesforce.login()
        return session

    def whoami(self) -> Identity:
        """The org and user of the stored token (OpenID userinfo; one call per token)."""
        if self.identity is None:
            session = self._session()
            http = salesforce_session(self.connection)
            try:
                response = http.get(
                    f"{session['instance_url']}/services/oauth2/userinfo",
                    headers={"Authorization": f"Bearer {session['access_token']}"},
                )
            finally:
                http.close()
            if response.status_code in (401, 403):
                self.sign_in()
                return self.whoami()
            if response.status_code != 200:
                raise ApiError(
                    f"Salesforce did not say who kashforce is signed in as (HTTP "
                    f"{response.status_code}).",
                    permanent=False,
                    system="salesforce",
                    status=response.status_code,
                )
            info = response.json()
            self.identity = Identity(info["organization_id"], info["user_id"])
        return self.identity

    def metadata(self) -> list[tuple[str, str]]:
        session = self._session()
        identity = self.whoami()
        return [
            ("accesstoken", session["access_token"]),
            ("instanceurl", session["instance_url"]),
            ("tenantid", self.connection.organization_id or identity.organization_id),
        ]

    # Calls --------------------------------------------------------------------------------------

    def topic(self, name: str) -> pb.TopicInfo:
        try:
            return self._stub.GetTopic(pb.TopicRequest(topic_name=name), metadata=self.metadata())
        except grpc.RpcError as error:
            raise PubSubError.from_rpc(error) from None

    def schema(self, schema_id: str) -> tuple[dict, object]:
        """(schema as JSON, parsed schema) for an id, fetched once per id."""
        if schema_id not in self._schemas:
            try:
                info = self._stub.GetSchema(
                    pb.SchemaRequest(schema_id=schema_id), metadata=self.metadata()
                )
            except grpc.RpcError as error:
                raise PubSubError.from_rpc(error) from None
            as_json = json.loads(info.schema_json)
            self._schemas[schema_id] = (
                as_json,
                fastavro.parse_schema(json.loads(info.schema_json)),
            )
        return self._schemas[schema_id]

    def decode(self, event: pb.ProducerEvent) -> tuple[dict, dict]:
        """(payload, schema JSON) of one event, read with the schema it was written with."""
        as_json, parsed = self.schema(event.schema_id)
        return fastavro.schemaless_reader(io.BytesIO(event.payload), parsed), as_json

    def subscribe(self, topic: str, replay_id: bytes | None, credit: int) -> Subscription:
        """An open Subscribe stream: CUSTOM after `replay_id`, or LATEST when there is none."""
        first = pb.FetchRequest(topic_name=topic, num_requested=credit)
        if replay_id:
            first.replay_preset = pb.CUSTOM
            first.replay_id = replay_id
        else:
            first.replay_preset = pb.LATEST
        return Subscription(self._stub, first, self.metadata())


class Subscription:
    """One Subscribe call. Iterate it for FetchResponses; `request(n)` adds credit."""

    _END = object()

    def __init__(self, stub, first: pb.FetchRequest, metadata):
        self._requests: queue.Queue = queue.Queue()
        self._requests.put(first)
        self.topic = first.topic_name
        self._call = stub.Subscribe(self._generate(), metadata=metadata)

    def _generate(self):
        while True:
            request = self._requests.get()
            if request is self._END:
                return
            yield request

    def request(self, count: int) -> None:
        self._requests.put(pb.FetchRequest(topic_name=self.topic, num_requested=count))

    def __iter__(self):
        try:
            yield from self._call
        except grpc.RpcError as error:
            raise PubSubError.from_rpc(error) from None

    def cancel(self) -> None:
        self._call.cancel()
        self._requests.put(self._END)


def _root_certificates(ca_file: str) -> bytes | None:
    """The connection's CA bundle, or None for the system's (grpcio's bundled roots)."""
    return Path(ca_file).read_bytes() if ca_file else None


def client_id() -> str:
    return settings.KASHFORCE["PUBSUB_CLIENT_ID"]
