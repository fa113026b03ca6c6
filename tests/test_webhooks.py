"""The Outbound Message endpoint: authenticated by secret path and org id, replay-safe."""

import pytest
from django.test import Client

from integration.models import SyncEvent, SyncRun
from tests.factories import SalesforceConnectionFactory

pytestmark = pytest.mark.django_db

ORG = "00D5g000004XyZAEA0"
SECRET = "b4c1f0d2-outbound-9a7e"


def envelope(*notifications, org=ORG) -> bytes:
    items = "".join(
        f"""<Notification><Id>{nid}</Id><sObject xsi:type="sf:Opportunity"
              xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
              <sf:Id>{opp}</sf:Id><sf:AccountId>0015g00000AbCdEAAV</sf:AccountId>
              <sf:Amount>1200.50</sf:Amount><sf:CloseDate>2026-03-31</sf:CloseDate>
              <sf:IsWon>true</sf:IsWon><sf:Name>Acme renewal &amp; support</sf:Name>
              <sf:Description xsi:nil="true"/>
            </sObject></Notification>"""
        for nid, opp in notifications
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId><ActionId>04k5g000000abcdAAA</ActionId>
   <SessionId xsi:nil="true"/><EnterpriseUrl>https://x/services/Soap/c/59.0/{org}</EnterpriseUrl>
   <PartnerUrl>https://x/services/Soap/u/59.0/{org}</PartnerUrl>
   {items}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>""".encode()


@pytest.fixture
def salesforce():
    connection = SalesforceConnectionFactory(organization_id=ORG)
    connection.set_secrets(outbound_secret=SECRET)
    connection.save()
    return connection


def post(body: bytes, secret: str = SECRET):
    # A CSRF-enforcing client: Salesforce sends no token, and the endpoint must not need one.
    return Client(enforce_csrf_checks=True).post(
        f"/hooks/salesforce/outbound/{secret}/", body, content_type="text/xml; charset=utf-8"
    )


def test_a_notification_is_recorded_acknowledged_and_starts_a_push_run(salesforce):
    response = post(envelope(("04l000000000001AAA", "0065g00000Opp01AAA")))
    assert response.status_code == 200
    assert b"<Ack>true</Ack>" in response.content
    event = SyncEvent.objects.get()
    assert (event.flow, event.source_id, event.status) == (
        "invoices",
        "0065g00000Opp01AAA",
        "pending",
    )
    assert event.payload["Amount"] == "1200.50"  # kept as text: money never passes through float
    assert event.payload["Name"] == "Acme renewal & support"
    assert "Description" not in event.payload
    run = SyncRun.objects.get()
    assert (run.trigger, run.flow, run.read_count) == ("push", "invoices", 1)


def test_a_repeated_notification_is_acknowledged_but_recorded_once(salesforce):
    body = envelope(("04l000000000001AAA", "0065g00000Opp01AAA"))
    assert post(body).status_code == 200
    assert post(body).status_code == 200
    again = envelope(("04l000000000099AAA", "0065g00000Opp01AAA"))  # a new notification, same deal
    assert post(again).status_code == 200
    assert SyncEvent.objects.count() == 1


def test_several_notifications_in_one_message(salesforce):
    body = envelope(("04l1", "0065g00000Opp01AAA"), ("04l2", "0065g00000Opp02AAA"))
    assert post(body).status_code == 200
    assert SyncEvent.objects.count() == 2


def test_an_unknown_secret_is_refused_and_records_nothing(salesforce):
    response = post(envelope(("04l1", "0065g00000Opp01AAA")), secret="guess")
    assert response.status_code == 404
    assert SyncEvent.objects.count() == 0


def test_another_orgs_message_is_refused(salesforce):
    response = post(envelope(("04l1", "0065g00000Opp01AAA"), org="00D000000000001AAA"))
    assert response.status_code == 403
    assert SyncEvent.objects.count() == 0


@pytest.mark.parametrize(
    "body, says",
    [
        (b"not xml at all", b"not valid XML"),
        (b"<a><b/></a>", b"not a Salesforce Outbound Message"),
        (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>', b"Document type"),
    ],
)
def test_malformed_messages_get_a_400_with_the_reason(salesforce, body, says):
    response = post(body)
    assert response.status_code == 400
    assert says in response.content
    assert SyncEvent.objects.count() == 0


def test_get_is_not_allowed(salesforce):
    assert Client().get(f"/hooks/salesforce/outbound/{SECRET}/").status_code == 405


def test_a_replayed_message_changes_nothing_not_even_a_new_run(salesforce):
    body = envelope(("04l000000000001AAA", "0065g00000Opp01AAA"))
    assert post(body).status_code == 200
    SyncRun.objects.update(status=SyncRun.Status.SUCCEEDED)  # the push's run has finished
    runs = SyncRun.objects.count()
    for _ in range(3):  # Salesforce's retries, or someone replaying a captured message
        response = post(body)
        assert response.status_code == 200 and b"<Ack>true</Ack>" in response.content
    assert SyncRun.objects.count() == runs
    assert SyncEvent.objects.count() == 1


def test_a_connection_without_an_org_id_accepts_no_messages(salesforce):
    salesforce.organization_id = ""
    salesforce.save()
    response = post(envelope(("04l000000000001AAA", "0065g00000Opp01AAA")))
    assert response.status_code == 403
    assert b"does not know this Salesforce org" in response.content
    assert SyncEvent.objects.count() == 0 and SyncRun.objects.count() == 0


def test_the_15_character_org_id_is_the_same_org(salesforce):
    response = post(envelope(("04l000000000001AAA", "0065g00000Opp01AAA"), org=ORG[:15]))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "notification, record, says",
    [
        ("04l1", "0065g00000Opp01AAA' OR Name != '", b"record Id is not a Salesforce id"),
        ("04l1", "x" * 5000, b"record Id is not a Salesforce id"),
        ("04l1", "0065g00000Opp01", None),  # the 15-character form is an id too
        ("04l-1; DROP", "0065g00000Opp01AAA", b"notification Id is not a Salesforce id"),
        ("04l1", "006\u00e90000Opp01AAA", b"record Id is not a Salesforce id"),
    ],
)
def test_ids_that_are_not_salesforce_ids_are_refused(salesforce, notification, record, says):
    response = post(envelope((notification, record)))
    if says is None:
        assert response.status_code == 200
        assert SyncEvent.objects.get().source_id == record
    else:
        assert response.status_code == 400, response.content
        assert says in response.content
        assert SyncEvent.objects.count() == 0


def test_odd_field_values_are_kept_as_text(salesforce):
    odd = "Caf\u00e9 \U0001f600 \u202egnp.exe & co"  # accents, an emoji, a right-to-left override
    body = envelope(("04l1", "0065g00000Opp01AAA")).replace(
        b"Acme renewal &amp; support", odd.replace("&", "&amp;").encode()
    )
    assert post(body).status_code == 200
    assert SyncEvent.objects.get().payload["Name"] == odd


def test_a_message_over_the_size_limit_is_refused(salesforce):
    huge = envelope(("04l1", "0065g00000Opp01AAA")).replace(
        b"<sf:Name>", b"<sf:Name>" + b"x" * (2 * 1024 * 1024)
    )
    response = post(huge)
    assert response.status_code in (400, 413)
    assert SyncEvent.objects.count() == 0
