"""Change Data Capture over the Pub/Sub API, end to end over real sockets: the subscriber
(integration/changestream.py) against the sandbox's gRPC server, no webhook anywhere.

The subscriber runs in a thread here (the SIGKILL and two-process cases are in
test_pubsub_processes.py); the test plays the qcluster by executing the runs it finds queued.
"""

import contextlib
import threading
import time
from types import SimpleNamespace

import pytest
import requests
from django.apps import apps as django_apps
from django.db import OperationalError

from integration import changestream
from integration.clients.pubsub import PubSubClient
from integration.mapping_defaults import install_default_mappings
from integration.models import ChangeStream, Connection, CrossRef, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.fixtures_sandbox import control
from tests.sandbox_connections import calls, connect_both, link_products

pytestmark = pytest.mark.django_db(transaction=True)

SEED = "customers=2,accounts=4,products=8,opportunities=30,won_uninvoiced=0"
TOPIC = changestream.OPPORTUNITY_TOPIC


@pytest.fixture
def org(sandbox, settings):
    sandbox.reset(SEED)
    install_default_mappings(django_apps)  # a transactional test's flush removed them
    settings.KASHFORCE = {
        **settings.KASHFORCE,
        "PUBSUB_LEASE_SECONDS": 3.0,
        "STALE_AFTER_SECONDS": 1,
        "PUBSUB_SILENCE_SECONDS": 30.0,
        "PUBSUB_MAX_BACKOFF": 2.0,
    }
    salesforce, _kashflow = connect_both(sandbox)
    link_products()  # an invoice waits for its products' links
    info = sandbox.info["salesforce"]
    salesforce.realtime = Connection.Realtime.PUBSUB
    salesforce.pubsub_endpoint = info["pubsub"]
    salesforce.organization_id = info["organization_id"]
    salesforce.save()
    pubsub(sandbox, pubsub_keepalive_seconds=1)
    subscribers = []
    yield SimpleNamespace(
        sandbox=sandbox,
        connection=salesforce,
        salesperson=Salesperson(info),
        subscribers=subscribers,
    )
    for subscriber in subscribers:
        subscriber.halt()


def pubsub(sandbox, **payload) -> dict:
    return control(sandbox.info["control"]["salesforce"], "pubsub", payload)


class Salesperson:
    """A person closing deals through the REST API: another client than kashforce's, so their
    changes are not mistaken for kashforce's own writes."""

    def __init__(self, info: dict):
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = info["ca_file"]
        token = self.session.post(
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
        self.session.headers["Authorization"] = f"Bearer {token['access_token']}"
        self.base = f"{token['instance_url']}/services/data/v{info['api_version']}"

    def close_won(self, opportunity_id: str) -> None:
        response = self.session.patch(
            f"{self.base}/sobjects/Opportunity/{opportunity_id}",
            json={"StageName": "Closed Won"},
            timeout=10,
        )
        response.raise_for_status()


def open_deals(sandbox, count: int) -> list[str]:
    store = sandbox.salesforce.store
    with store.lock:
        ids = sorted(
            r["Id"]
            for r in store.all("Opportunity")
            if not r["IsClosed"] and not r["IsDeleted"] and r.get("Amount")
        )
    assert len(ids) >= count
    return ids[:count]


class Running:
    def __init__(self, connection, holder, topic=TOPIC):
        self.stop = threading.Event()
        self.subscriber = changestream.Subscriber(connection, topic, holder, self.stop)
        self.thread = threading.Thread(target=self.subscriber.run, daemon=True)
        self.thread.start()

    def halt(self):
        self.stop.set()
        self.thread.join(timeout=15)


def subscribe(org, holder="test-subscriber", topic=TOPIC) -> Running:
    running = Running(org.connection, holder, topic)
    org.subscribers.append(running)
    return running


def wait_for(predicate, timeout=20.0, what="it"):
    """Poll `predicate` until it is true. A read that meets the subscriber thread's table lock
    (the shared-cache SQLite of the tests; production has WAL files or PostgreSQL) looks again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OperationalError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout} s for {what}")


def stream() -> ChangeStream:
    return ChangeStream.objects.get(topic=TOPIC)


def live() -> bool:
    row = ChangeStream.objects.filter(topic=TOPIC).first()
    return bool(row and row.state == ChangeStream.State.LIVE and row.replay_id)


def work_runs() -> None:
    """What the qcluster would do: execute every unfinished run. The test database is SQLite in
    shared-cache memory, where a writer in the subscriber's thread locks whole tables: a worker
    that meets the lock tries again, as the qcluster's retry would."""
    for _ in range(20):
        try:
            for run in SyncRun.objects.unfinished():
                engine.execute_run(run.pk)
            return
        except OperationalError:
            # Events the failed attempt had claimed go back in line as the sweeper would put
            # them (STALE_AFTER_SECONDS is 1 here).
            time.sleep(1.1)
            with contextlib.suppress(OperationalError):
                engine.sweep()


def invoiced_by_the_poll(deal: str) -> None:
    def done():
        work_runs()
        return invoiced(deal)

    wait_for(done, what="the invoice")
    event = SyncEvent.objects.get(source_id=deal)
    assert event.run.trigger == Trigger.POLL


def invoiced(opportunity_id: str) -> bool:
    ref = CrossRef.objects.filter(object_type="invoice", salesforce_id=opportunity_id).first()
    return bool(ref and ref.kashflow_key)


def test_won_deals_are_invoiced_within_seconds_with_no_webhook(org):
    subscribe(org)
    wait_for(live, what="the stream to be live")
    deals = open_deals(org.sandbox, 3)
    started = time.monotonic()
    for deal in deals:
        org.salesperson.close_won(deal)
    # The subscriber's part: every won deal is in the ledger, in a push run, within seconds.
    wait_for(
        lambda: SyncEvent.objects.filter(source_id__in=deals).count() == 3,
        timeout=10,
        what="the deals in the ledger",
    )
    recorded_after = time.monotonic() - started
    assert recorded_after < 5, recorded_after

    def all_invoiced():
        work_runs()  # the qcluster's part (B3 times it with a real one)
        return all(invoiced(deal) for deal in deals)

    wait_for(all_invoiced, timeout=30, what="the invoices")
    runs = SyncRun.objects.filter(flow="invoices")
    assert {run.trigger for run in runs} == {Trigger.PUSH}, list(runs.values("trigger", "summary"))
    assert control(org.sandbox.info["control"]["salesforce"], "outbound")["deliveries"] == []
    for deal in deals:
        assert SyncEvent.objects.filter(source_id=deal).count() == 1


def test_kashforces_own_write_backs_cost_nothing(org):
    running = subscribe(org)
    wait_for(live, what="the stream to be live")
    deal = open_deals(org.sandbox, 1)[0]
    org.salesperson.close_won(deal)
    wait_for(lambda: SyncEvent.objects.filter(source_id=deal).exists(), what="the event")
    running.halt()
    received = stream().events_received
    work_runs()  # invoices it and writes the number back to the Opportunity: kashforce's write
    assert invoiced(deal)
    queries, runs = calls(org.sandbox, "salesforce", "/query"), SyncRun.objects.count()
    subscribe(org)  # resumes after the won deal's event: the write-back's event comes next
    wait_for(lambda: stream().events_received > received, what="the write-back's change event")
    time.sleep(1)
    assert calls(org.sandbox, "salesforce", "/query") == queries  # not even a look
    assert SyncRun.objects.count() == runs


def test_an_unrelated_change_costs_nothing_but_a_won_one_is_recorded(org):
    subscribe(org)
    wait_for(live, what="the stream to be live")
    first, second = open_deals(org.sandbox, 2)
    queries = calls(org.sandbox, "salesforce", "/query")
    response = org.salesperson.session.patch(
        f"{org.salesperson.base}/sobjects/Opportunity/{first}",
        json={"Description": "Called the customer"},
        timeout=10,
    )
    response.raise_for_status()
    org.salesperson.close_won(second)
    wait_for(lambda: SyncEvent.objects.filter(source_id=second).exists(), what="the won deal")
    assert not SyncEvent.objects.filter(source_id=first).exists()
    assert calls(org.sandbox, "salesforce", "/query") == queries + 1  # the won one's check


def test_a_gap_event_runs_the_poll_which_invoices_the_deal(org):
    subscribe(org)
    wait_for(live, what="the stream to be live")
    deal = open_deals(org.sandbox, 1)[0]
    pubsub(org.sandbox, gap_next=1)  # the change arrives only as a GAP_UPDATE event
    org.salesperson.close_won(deal)
    wait_for(
        lambda: SyncRun.objects.filter(trigger=Trigger.POLL).exists(), what="the poll to start"
    )
    assert not SyncEvent.objects.filter(source_id=deal).exists()  # the stream said only "gap"
    invoiced_by_the_poll(deal)


def test_a_replay_id_past_retention_runs_the_poll_and_streams_again_from_now(org):
    running = subscribe(org)
    wait_for(live, what="the stream to be live")
    running.halt()
    stored = stream().replay_id
    deal = open_deals(org.sandbox, 1)[0]
    org.salesperson.close_won(deal)  # while nobody listens
    pubsub(org.sandbox, age_seconds=73 * 3600)  # ...for longer than the 72 hours kept
    subscribe(org)
    wait_for(
        lambda: SyncRun.objects.filter(trigger=Trigger.POLL).exists(), what="the poll to start"
    )
    wait_for(lambda: live() and stream().replay_id != stored, what="a new position")
    invoiced_by_the_poll(deal)
    assert SyncEvent.objects.filter(source_id=deal).count() == 1


def test_a_reset_stream_reconnects_after_its_replay_id_and_loses_nothing(org):
    subscribe(org)
    wait_for(live, what="the stream to be live")
    first, second = open_deals(org.sandbox, 2)
    org.salesperson.close_won(first)
    wait_for(lambda: SyncEvent.objects.filter(source_id=first).exists(), what="the first deal")
    pubsub(org.sandbox, reset_streams=True)
    org.salesperson.close_won(second)  # while the subscriber reconnects
    wait_for(lambda: SyncEvent.objects.filter(source_id=second).exists(), what="the second deal")
    assert SyncEvent.objects.filter(source_id=first).count() == 1
    assert not SyncRun.objects.filter(trigger=Trigger.POLL).exists()  # one reset is no outage


def test_an_expired_token_is_renewed_and_the_stream_resumes(org):
    subscribe(org)
    wait_for(live, what="the stream to be live")
    token = Connection.objects.get(pk=org.connection.pk).get_session()["access_token"]
    org.sandbox.salesforce.sessions.expire(token)
    pubsub(org.sandbox, reset_streams=True)  # the next Subscribe presents the dead token
    wait_for(
        lambda: Connection.objects.get(pk=org.connection.pk).get_session()["access_token"] != token,
        what="a new token",
    )
    wait_for(live, what="the stream to be live again")
    deal = open_deals(org.sandbox, 1)[0]
    org.salesperson.close_won(deal)
    wait_for(lambda: SyncEvent.objects.filter(source_id=deal).exists(), what="the deal")


def test_two_subscribers_started_together_hold_one_stream(org):
    a, b = subscribe(org, "holder-a"), subscribe(org, "holder-b")
    wait_for(live, what="the stream to be live")
    time.sleep(2)
    assert pubsub(org.sandbox)["open_streams"] == 1
    holder = stream().holder
    assert holder in ("holder-a", "holder-b")
    (a if holder == "holder-a" else b).halt()
    other = "holder-b" if holder == "holder-a" else "holder-a"
    wait_for(lambda: stream().holder == other and live(), timeout=20, what="the takeover")
    assert pubsub(org.sandbox)["open_streams"] == 1
    deal = open_deals(org.sandbox, 1)[0]
    org.salesperson.close_won(deal)
    wait_for(lambda: SyncEvent.objects.filter(source_id=deal).exists(), what="the deal")


def test_the_change_events_decode_with_the_schema_getschema_gives(org):
    """A third-party view of the wire: GetTopic's schema id, GetSchema, Avro and the bitmap."""
    client = PubSubClient(org.connection)
    info = client.topic(TOPIC)
    schema, _ = client.schema(info.schema_id)
    assert schema["fields"][0]["name"] == "ChangeEventHeader"
    subscription = client.subscribe(TOPIC, None, 5)
    try:
        time.sleep(1.5)  # subscribed at LATEST
        deal = open_deals(org.sandbox, 1)[0]
        org.salesperson.close_won(deal)
        event = next(r for r in subscription if r.events).events[0]
    finally:
        subscription.cancel()
        client.close()
    payload, written_with = client.decode(event.event)
    header = payload["ChangeEventHeader"]
    assert (header["entityName"], header["recordIds"], header["changeType"]) == (
        "Opportunity",
        [deal],
        "UPDATE",
    )
    changed = changestream.bitmap_fields(header["changedFields"], written_with)
    assert {"StageName", "IsWon", "IsClosed", "LastModifiedDate"} <= set(changed)
    assert payload["IsWon"] is True and payload["Name"] is None  # unchanged fields are null
    assert len(event.replay_id) == 8


def test_a_silent_stream_falls_back_to_the_poll_and_reconnects(org, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "PUBSUB_SILENCE_SECONDS": 3.0}
    subscribe(org)
    wait_for(live, what="the stream to be live")
    pubsub(org.sandbox, hang=True)  # no events and no keepalives, the socket still open
    wait_for(
        lambda: SyncRun.objects.filter(trigger=Trigger.POLL).exists(), what="the poll to start"
    )
    assert stream().state in (ChangeStream.State.SILENT, ChangeStream.State.CONNECTING)
    pubsub(org.sandbox, hang=False)
    wait_for(live, what="the stream to be live again")
    deal = open_deals(org.sandbox, 1)[0]
    org.salesperson.close_won(deal)
    wait_for(lambda: SyncEvent.objects.filter(source_id=deal).exists(), what="the deal")


def test_a_platform_event_naming_a_won_deal_is_recorded(org):
    """/event/Deal_Won__e, which the org's flow publishes when a deal is won, as the only topic."""
    subscribe(org, topic="/event/Deal_Won__e")
    wait_for(
        lambda: ChangeStream.objects.filter(
            topic="/event/Deal_Won__e", state=ChangeStream.State.LIVE
        ).exclude(replay_id=""),
        what="the platform event stream",
    )
    deal = open_deals(org.sandbox, 1)[0]
    org.salesperson.close_won(deal)
    wait_for(lambda: SyncEvent.objects.filter(source_id=deal).exists(), what="the deal")
    assert SyncEvent.objects.get(source_id=deal).run.trigger == Trigger.PUSH
