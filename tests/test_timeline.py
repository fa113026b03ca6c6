from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from integration.links import salesforce_id18
from integration.models import CrossRef, SyncEvent
from tests import factories

pytestmark = pytest.mark.django_db

TIMELINE = reverse("dashboard:timeline")
OPPORTUNITY = "0065g00000AbCdEAAV"


@pytest.fixture
def invoice_1043():
    factories.SalesforceConnectionFactory(instance_url="https://acme.my.salesforce.com")
    CrossRef.objects.create(object_type="invoice", salesforce_id=OPPORTUNITY, kashflow_key="1043")
    values = {
        "flow": "invoices",
        "direction": "sf_to_kf",
        "source_object": "salesforce.Opportunity",
        "source_id": OPPORTUNITY,
        "target_object": "kashflow.Invoice",
        "target_id": "1043",
    }
    first = factories.SyncEventFactory(
        **values,
        payload={"Amount": "1000.00", "Name": "Renewal"},
        status=SyncEvent.Status.SUCCEEDED,
        created_at=timezone.now() - timedelta(days=2),
    )
    second = factories.SyncEventFactory(
        **values,
        payload={"Amount": "1200.00", "Name": "Renewal"},
        status=SyncEvent.Status.FAILED_PERMANENT,
        message="Nominal code 4001 does not exist.",
    )
    factories.SyncEventFactory(source_id="SOMEONE-ELSE")
    return first, second


@pytest.mark.parametrize("query", ["1043", OPPORTUNITY, OPPORTUNITY[:15]])
def test_what_happened_to_invoice_1043(ops_client, invoice_1043, query):
    first, second = invoice_1043

    response = ops_client.get(TIMELINE, {"q": query})

    entries = response.context["entries"]
    assert [entry["event"] for entry in entries] == [second, first]
    assert [tuple(change) for change in entries[0]["changes"]] == [("Amount", "1000.00", "1200.00")]
    page = response.content.decode()
    assert "Nominal code 4001 does not exist." in page
    assert f'href="https://acme.my.salesforce.com/{OPPORTUNITY}"' in page
    assert 'href="https://app.kashflow.com/invoices/1043"' in page
    assert "SOMEONE-ELSE" not in page


def test_timeline_query_count_is_fixed(ops_client, invoice_1043, django_assert_num_queries):
    # session, user, permissions (2), records by name, cross-refs, events with their runs and
    # resolvers, their attempts, links, the kept history of writes
    with django_assert_num_queries(10):
        ops_client.get(TIMELINE, {"q": "1043"})


def test_unknown_record_says_so(ops_client):
    page = ops_client.get(TIMELINE, {"q": "NOPE"}).content.decode()
    assert "No sync events mention “NOPE”." in page


def test_salesforce_id18_matches_salesforce():
    # Known pair from Salesforce's documentation of the case-safe id.
    assert salesforce_id18("001A0000006Vm9r") == "001A0000006Vm9rIAC"
    assert salesforce_id18(OPPORTUNITY) == OPPORTUNITY


def test_the_kept_history_outlives_the_cleanup_and_the_timeline_shows_it(ops_client, ops_user):
    from integration.models import SyncRun, WriteRecord
    from integration.sync import engine

    run = factories.SyncRunFactory(flow="payments", trigger="manual", triggered_by=ops_user)
    event = factories.SyncEventFactory(
        run=run,
        flow="payments",
        source_object="kashflow.Payment",
        source_id="PAY-77",
        target_object="salesforce.KashFlow_Payment__c",
        payload={"Amount": "109.9950", "InvoiceNumber": 1043},
        status=SyncEvent.Status.RUNNING,
        claimed_at=timezone.now(),
    )
    assert event.mark_succeeded(target_id="a0B000000000001AAA", message="Payment synced.")
    long_ago = timezone.now() - timedelta(days=400)
    SyncEvent.objects.update(created_at=long_ago)
    SyncRun.objects.update(created_at=long_ago)
    WriteRecord.objects.update(created_at=long_ago)

    assert engine.cleanup()["events"] == 1  # the payload goes after the retention period...

    [kept] = WriteRecord.objects.all()  # ...the history of the write stays
    assert (kept.source_id, kept.target_id, str(kept.amount), kept.username) == (
        "PAY-77",
        "a0B000000000001AAA",
        "109.9950",
        "olivia",
    )
    response = ops_client.get(TIMELINE, {"q": "PAY-77"})
    assert response.status_code == 200, response
    page = response.content.decode()
    assert "Kept history of writes" in page and "109.9950" in page and "olivia" in page
