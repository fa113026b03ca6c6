"""The sandbox's Pub/Sub server against the published contract, driven the way a third-party
client drives it: the generated stubs, a request generator, the three auth headers."""

import io
import json
import queue
import time
from pathlib import Path

import fastavro
import grpc
import pytest
import requests

from eventbus import pubsub_api_pb2 as pb
from eventbus import pubsub_api_pb2_grpc as pb_grpc
from tests.fixtures_sandbox import control

TOPIC = "/data/OpportunityChangeEvent"


@pytest.fixture
def bus(sandbox):
    sandbox.reset("accounts=2,products=4,opportunities=10,won_uninvoiced=0")
    info = sandbox.info["salesforce"]
    session = requests.Session()
    session.trust_env = False
    session.verify = info["ca_file"]
    token = session.post(
        f"{info['login_url']}/services/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": info["consumer_key"],
            "client_secret": info["consumer_secret"],
            "username": info["username"],
            "password": info["password"] + info["security_token"],
        },
        timeout=10,
    ).json()
    session.headers["Authorization"] = f"Bearer {token['access_token']}"
    channel = grpc.secure_channel(
        info["pubsub"], grpc.ssl_channel_credentials(Path(info["ca_file"]).read_bytes())
    )
    metadata = [
        ("accesstoken", token["access_token"]),
        ("instanceurl", token["instance_url"]),
        ("tenantid", info["organization_id"]),
    ]

    class Bus:
        stub = pb_grpc.PubSubStub(channel)
        md = metadata
        rest = session
        base = f"{token['instance_url']}/services/data/v{info['api_version']}"

        def control(self, **payload):
            return control(sandbox.info["control"]["salesforce"], "pubsub", payload)

        def opportunity(self):
            store = sandbox.salesforce.store
            with store.lock:
                return next(r["Id"] for r in store.all("Opportunity") if not r["IsClosed"])

        def touch(self, opportunity_id, **fields):
            self.rest.patch(
                f"{self.base}/sobjects/Opportunity/{opportunity_id}", json=fields, timeout=10
            ).raise_for_status()

        def subscribe(self, *requests_):
            feed = queue.Queue()
            for request in requests_:
                feed.put(request)

            def generate():
                while (request := feed.get()) is not None:
                    yield request

            call = self.stub.Subscribe(generate(), metadata=self.md)
            call.feed = feed
            return call

    yield Bus()
    channel.close()


def error_of(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def error_code(error) -> str:
    return dict(error.trailing_metadata()).get("error-code", "")


def test_every_call_needs_the_three_auth_headers(bus):
    for missing in range(3):
        headers = [h for i, h in enumerate(bus.md) if i != missing]
        error = error_of(
            lambda h=headers: bus.stub.GetTopic(pb.TopicRequest(topic_name=TOPIC), metadata=h)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_code(error) == "sfdc.platform.eventbus.grpc.service.auth.error"
        assert "rpcId: " in error.details()


def test_an_unknown_topic_is_not_found_on_get_topic_and_on_subscribe(bus):
    error = error_of(
        lambda: bus.stub.GetTopic(
            pb.TopicRequest(topic_name="/data/NopeChangeEvent"), metadata=bus.md
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    call = bus.subscribe(pb.FetchRequest(topic_name="/data/NopeChangeEvent", num_requested=1))
    assert error_of(lambda: next(call)).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("replay_id", "code"),
    [
        (b"", "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed"),
        (b"12907414", "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"),
        (b"\x01\x02", "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"),
    ],
)
def test_a_bad_custom_replay_id_is_invalid_argument(bus, replay_id, code):
    call = bus.subscribe(
        pb.FetchRequest(
            topic_name=TOPIC, replay_preset=pb.CUSTOM, replay_id=replay_id, num_requested=1
        )
    )
    error = error_of(lambda: next(call))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(error) == code


def test_a_replay_id_older_than_retention_is_refused_not_repositioned(bus):
    opportunity = bus.opportunity()
    call = bus.subscribe(
        pb.FetchRequest(topic_name=TOPIC, replay_preset=pb.EARLIEST, num_requested=5)
    )
    bus.touch(opportunity, Description="first")
    first = next(r for r in call if r.events).events[0].replay_id
    call.cancel()
    bus.touch(opportunity, Description="second")
    bus.control(age_seconds=73 * 3600)
    call = bus.subscribe(
        pb.FetchRequest(topic_name=TOPIC, replay_preset=pb.CUSTOM, replay_id=first, num_requested=5)
    )
    error = error_of(lambda: next(call))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(error) == "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"


def test_custom_resumes_strictly_after_the_id_and_credit_is_reported(bus):
    opportunity = bus.opportunity()
    for n in range(3):
        bus.touch(opportunity, Description=f"edit {n}")
    call = bus.subscribe(
        pb.FetchRequest(topic_name=TOPIC, replay_preset=pb.EARLIEST, num_requested=2)
    )
    first = next(call)
    assert len(first.events) == 2 and first.pending_num_requested == 0
    ids = [int.from_bytes(e.replay_id, "big") for e in first.events]
    assert ids == sorted(ids) and all(len(e.replay_id) == 8 for e in first.events)
    call.cancel()
    call = bus.subscribe(
        pb.FetchRequest(
            topic_name=TOPIC,
            replay_preset=pb.CUSTOM,
            replay_id=first.events[0].replay_id,
            num_requested=10,
        )
    )
    rest = next(call)
    assert [e.replay_id for e in rest.events] == [
        first.events[1].replay_id,
        *[e.replay_id for e in rest.events[1:]],
    ]
    assert len(rest.events) == 2 and rest.pending_num_requested == 8
    call.cancel()


def test_credit_is_capped_at_100_and_keepalives_carry_the_latest_replay_id(bus):
    bus.control(pubsub_keepalive_seconds=0.5)
    call = bus.subscribe(pb.FetchRequest(topic_name=TOPIC, num_requested=500))
    keepalive = next(call)
    assert list(keepalive.events) == []
    assert keepalive.pending_num_requested == 100
    assert len(keepalive.latest_replay_id) == 8
    call.cancel()


def test_a_later_request_naming_another_topic_ends_the_stream(bus):
    bus.control(pubsub_keepalive_seconds=0.3)
    call = bus.subscribe(pb.FetchRequest(topic_name=TOPIC, num_requested=1))
    next(call)
    call.feed.put(
        pb.FetchRequest(topic_name="/data/OpportunityLineItemChangeEvent", num_requested=1)
    )
    error = error_of(lambda: [r for r in call])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_stream_without_credit_is_closed(bus):
    bus.control(pubsub_idle_close_seconds=0.5)
    call = bus.subscribe(pb.FetchRequest(topic_name=TOPIC, num_requested=0))
    started = time.monotonic()
    error = error_of(lambda: [r for r in call])
    assert error.code() == grpc.StatusCode.CANCELLED
    assert time.monotonic() - started < 5


def test_an_update_carries_only_changed_fields_and_their_bitmap(bus):
    topic = bus.stub.GetTopic(pb.TopicRequest(topic_name=TOPIC), metadata=bus.md)
    assert (topic.can_subscribe, topic.can_publish, len(topic.schema_id)) == (True, False, 22)
    schema = bus.stub.GetSchema(pb.SchemaRequest(schema_id=topic.schema_id), metadata=bus.md)
    parsed = fastavro.parse_schema(json.loads(schema.schema_json))
    names = [f["name"] for f in json.loads(schema.schema_json)["fields"]]
    opportunity = bus.opportunity()
    bus.touch(opportunity, Description="to be cleared")
    call = bus.subscribe(pb.FetchRequest(topic_name=TOPIC, num_requested=1))
    time.sleep(0.5)  # LATEST: subscribed after the first change, before the second
    bus.touch(opportunity, Description=None, Probability=55)
    event = next(r for r in call if r.events).events[0]
    call.cancel()
    assert event.event.schema_id == topic.schema_id
    payload = fastavro.schemaless_reader(io.BytesIO(event.event.payload), parsed)
    header = payload["ChangeEventHeader"]
    assert header["changeType"] == "UPDATE" and header["recordIds"] == [opportunity]
    assert header["changeOrigin"] == "com/salesforce/api/rest/59.0"  # no client id given
    (changed,) = header["changedFields"]
    assert changed.startswith("0x") and changed[2:] == changed[2:].upper()
    assert len(changed[2:]) % 2 == 0
    bits = int(changed, 16)
    assert {names[i] for i in range(bits.bit_length()) if bits >> i & 1} >= {
        "Probability",
        "LastModifiedDate",
    }
    assert payload["Probability"] == 55 and payload["Name"] is None
    (nulled,) = header["nulledFields"]
    nulled_bits = int(nulled, 16)
    assert [names[i] for i in range(nulled_bits.bit_length()) if nulled_bits >> i & 1] == [
        "Description"
    ]


def test_a_reset_fault_ends_open_streams_with_unavailable(bus):
    bus.control(pubsub_keepalive_seconds=0.3)
    call = bus.subscribe(pb.FetchRequest(topic_name=TOPIC, num_requested=5))
    next(call)
    bus.control(reset_streams=True)
    error = error_of(lambda: [r for r in call])
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "RST_STREAM" in error.details()


def test_platform_events_can_be_published_and_are_replayed_unchecked(bus):
    topic = bus.stub.GetTopic(pb.TopicRequest(topic_name="/event/Deal_Won__e"), metadata=bus.md)
    assert topic.can_publish
    answer = bus.stub.Publish(
        pb.PublishRequest(
            topic_name="/event/Deal_Won__e",
            events=[pb.ProducerEvent(id="e-1", schema_id=topic.schema_id, payload=b"not avro")],
        ),
        metadata=bus.md,
    )
    (result,) = answer.results
    assert result.correlation_key == "e-1" and len(result.replay_id) == 8
    assert not result.HasField("error")
    change_events = bus.stub.Publish(
        pb.PublishRequest(topic_name=TOPIC, events=[pb.ProducerEvent(id="e-2")]), metadata=bus.md
    )
    assert change_events.results[0].error.code == pb.PUBLISH
    call = bus.subscribe(
        pb.FetchRequest(topic_name="/event/Deal_Won__e", replay_preset=pb.EARLIEST, num_requested=5)
    )
    event = next(r for r in call if r.events).events[0]
    call.cancel()
    assert (event.event.id, event.event.payload, event.replay_id) == (
        "e-1",
        b"not avro",
        result.replay_id,
    )
