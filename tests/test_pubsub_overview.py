"""What a person sees of the change stream, and the pieces of an event read without a server:
the bitmap of changed fields and which changes cost nothing."""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from integration import changestream
from integration.models import ChangeStream, Connection
from tests.factories import SalesforceConnectionFactory

# The documented example (Change Data Capture guide, "enrich" example): an Account update with
# changedFields ["0x400080"] changed Fax (index 7) and LastModifiedDate (index 22).
ACCOUNT_FIELDS = [
    "ChangeEventHeader",
    "Name",
    "Type",
    "ParentId",
    "BillingAddress",
    "ShippingAddress",
    "Phone",
    "Fax",
    *[f"Field{n}" for n in range(8, 22)],
    "LastModifiedDate",
]
ADDRESS = {
    "type": "record",
    "name": "Address",
    "fields": [{"name": n} for n in ("Street", "City", "State", "PostalCode", "Country")],
}
ACCOUNT_SCHEMA = {
    "fields": [
        {
            "name": name,
            "type": ["null", ADDRESS] if name.endswith("Address") else ["null", "string"],
        }
        for name in ACCOUNT_FIELDS
    ]
}


def test_the_documented_bitmap_names_fax_and_last_modified_date():
    assert changestream.bitmap_fields(["0x400080"], ACCOUNT_SCHEMA) == ["Fax", "LastModifiedDate"]


def test_a_compound_field_bitmap_names_its_children():
    names = changestream.bitmap_fields(["0x400000", "4-0x06"], ACCOUNT_SCHEMA)
    assert names == ["LastModifiedDate", "BillingAddress.City", "BillingAddress.State"]


def test_a_bitmap_past_the_schema_is_an_error_not_nothing():
    with pytest.raises(ValueError, match="past the schema"):
        changestream.bitmap_fields(["0x01000000"], ACCOUNT_SCHEMA)


def test_the_invoice_rule_names_the_fields_that_can_make_a_deal_due(settings):
    settings.KASHFORCE = {
        **settings.KASHFORCE,
        "INVOICE_WHEN": "IsWon = true AND Amount > 0 AND Type != 'Renewal AND more'",
    }
    assert changestream.rule_fields() == {"IsWon", "Amount", "Type"}


@pytest.fixture
def pubsub_connection(db):
    return SalesforceConnectionFactory(realtime=Connection.Realtime.PUBSUB)


def test_the_overview_shows_a_live_stream_and_when_the_last_change_arrived(
    ops_client, pubsub_connection
):
    ChangeStream.objects.create(
        connection=pubsub_connection,
        topic=changestream.OPPORTUNITY_TOPIC,
        state=ChangeStream.State.LIVE,
        holder="host:1",
        lease_expires_at=timezone.now() + timedelta(seconds=30),
        last_event_at=timezone.now() - timedelta(minutes=2),
        events_received=7,
    )
    page = ops_client.get("/").content.decode()
    assert "Pub/Sub API" in page
    assert "Live." in page
    assert "Last change arrived:" in page and "2\xa0minutes ago" in page


def test_the_overview_says_when_no_subscriber_holds_the_stream(ops_client, pubsub_connection):
    ChangeStream.objects.create(
        connection=pubsub_connection,
        topic=changestream.OPPORTUNITY_TOPIC,
        state=ChangeStream.State.LIVE,  # what a killed subscriber leaves behind
        holder="host:1",
        lease_expires_at=timezone.now() - timedelta(seconds=5),
    )
    page = ops_client.get("/").content.decode()
    assert "Not live: the regular poll is picking changes up meanwhile." in page
    assert "No subscriber is running" in page


def test_the_overview_names_poll_only_mode(ops_client, db):
    SalesforceConnectionFactory(realtime=Connection.Realtime.POLL)
    assert "Poll only" in ops_client.get("/").content.decode()


class FakeClient:
    """The subscriber's client seam: decoded events as the sandbox sends them."""

    def __init__(self, events):
        self.events = events

    def whoami(self):
        return SimpleNamespace(user_id="005000000000001AAA", organization_id="00D")

    def decode(self, event):
        return event, {
            "fields": [
                {"name": n}
                for n in (
                    "ChangeEventHeader",
                    "StageName",
                    "IsWon",
                    "Description",
                    "KashFlow_Invoice_Number__c",
                )
            ]
        }


def change(
    change_type, changed="", user="005000000000001AAA", origin="", ids=("006000000000001AAA",)
):
    return {
        "ChangeEventHeader": {
            "entityName": "Opportunity",
            "recordIds": list(ids),
            "changeType": change_type,
            "changeOrigin": origin,
            "commitUser": user,
            "changedFields": [changed] if changed else [],
        }
    }


def test_own_writes_unrelated_changes_and_gaps_are_told_apart(db):
    events = [
        SimpleNamespace(event=change("UPDATE", "0x06")),  # StageName, IsWon: a candidate
        SimpleNamespace(event=change("UPDATE", "0x08")),  # Description only: unrelated
        SimpleNamespace(  # the invoice number kashforce wrote back: its own write
            event=change("UPDATE", "0x10", origin="com/salesforce/api/rest/59.0;client=kashforce")
        ),
        SimpleNamespace(  # the same user through another client (a person): not ours
            event=change(
                "UPDATE",
                "0x06",
                origin="com/salesforce/api/rest/59.0;client=other",
                ids=("006000000000002AAA",),
            )
        ),
        SimpleNamespace(event=change("GAP_UPDATE")),
    ]
    reading = changestream.read_events(FakeClient(events), events, changestream.OPPORTUNITY_TOPIC)
    assert reading.candidates == ["006000000000001AAA", "006000000000002AAA"]
    assert (reading.own_writes, reading.unrelated) == (1, 1)
    assert "GAP_UPDATE" in reading.needs_poll
