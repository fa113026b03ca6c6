"""Issue #15 case 1: where a connection points cannot change without its secrets being entered
again, the stored session token is never sent to a new host, and the KashFlow client gives
away exactly three letters of the memorable word per sign-in."""

import pytest
from django.urls import reverse

from integration.clients.errors import ApiError
from integration.clients.kashflow import KashFlowClient
from integration.models import AuditEntry, Connection
from tests import factories
from tests.fake_api import FakeApi, body_of, reply

pytestmark = pytest.mark.django_db

STEP2 = {"SessionToken": "NEW-SESSION-TOKEN-0001", "CompanyName": "Acme Ltd"}


def kashflow_form(**extra):
    return {
        "name": "KashFlow live",
        "kind": "kashflow",
        "environment": "production",
        "auth_method": "kf_password",
        "base_url": "https://api.kashflow.com/v2",
        "api_version": "59.0",
        "username": "accounts@example.co.uk",
        "is_active": "on",
        **extra,
    }


def salesforce_form(**extra):
    return {
        "name": "SF live",
        "kind": "salesforce",
        "environment": "production",
        "auth_method": "sf_password",
        "login_url": "https://login.salesforce.com",
        "api_version": "59.0",
        "username": "integration@example.co.uk",
        "is_active": "on",
        **extra,
    }


@pytest.fixture
def kashflow():
    connection = factories.KashFlowConnectionFactory(name="KashFlow live")
    connection.save_session({"token": "OLD-SESSION-TOKEN-0000"})
    return connection


# The form ----------------------------------------------------------------------------------


def test_a_new_kashflow_address_without_the_secrets_is_refused(admin_client_, kashflow):
    url = reverse("dashboard:connection_edit", args=[kashflow.pk])
    response = admin_client_.post(url, kashflow_form(base_url="https://kashflow.evil.example/v2"))

    assert response.status_code == 200
    page = response.content.decode()
    assert "You changed where this connection sends its sign-in" in page
    kashflow.refresh_from_db()
    assert kashflow.base_url == "https://api.kashflow.com/v2"
    assert not AuditEntry.objects.exists()


def test_one_secret_of_two_is_not_enough(admin_client_, kashflow):
    url = reverse("dashboard:connection_edit", args=[kashflow.pk])
    response = admin_client_.post(
        url, kashflow_form(base_url="https://kashflow.evil.example/v2", password="N3w-pass!")
    )
    assert response.status_code == 200
    kashflow.refresh_from_db()
    assert kashflow.base_url == "https://api.kashflow.com/v2"


def test_a_new_address_with_the_secrets_again_is_saved_audited_and_drops_the_session(
    admin_client_, kashflow
):
    url = reverse("dashboard:connection_edit", args=[kashflow.pk])
    response = admin_client_.post(
        url,
        kashflow_form(
            base_url="https://eu.api.kashflow.com/v2",
            password="Tr0ub4dor&3",
            memorable_word="pineapple",
        ),
    )
    assert response.status_code == 302
    kashflow.refresh_from_db()
    assert kashflow.base_url == "https://eu.api.kashflow.com/v2"
    assert kashflow.get_session() == {}  # the old host's token is gone
    entry = AuditEntry.objects.get(action=AuditEntry.Action.CONNECTION_CHANGED)
    assert "Base URL: https://api.kashflow.com/v2 → https://eu.api.kashflow.com/v2" in entry.summary
    assert "Tr0ub4dor" not in entry.summary and "pineapple" not in entry.summary


def test_other_changes_still_keep_the_stored_secrets(admin_client_, kashflow):
    url = reverse("dashboard:connection_edit", args=[kashflow.pk])
    response = admin_client_.post(url, kashflow_form(username="finance@example.co.uk"))
    assert response.status_code == 302
    kashflow.refresh_from_db()
    assert kashflow.username == "finance@example.co.uk"
    assert kashflow.get_session() == {"token": "OLD-SESSION-TOKEN-0000"}


@pytest.mark.parametrize(
    "change",
    [
        {"login_url": "https://login.evil.example"},
        {"instance_url": "https://acme.evil.example"},
        {"ca_file": "/tmp/attacker-ca.pem"},
    ],
)
def test_salesforce_login_or_instance_address_or_ca_needs_the_secrets(admin_client_, change):
    connection = factories.SalesforceConnectionFactory(name="SF live")
    url = reverse("dashboard:connection_edit", args=[connection.pk])
    response = admin_client_.post(url, salesforce_form(**change))
    assert response.status_code == 200
    assert "enter the password and security token again" in response.content.decode()
    response = admin_client_.post(
        url, salesforce_form(**change, password="s3cret-Pass", security_token="TOKENabc123")
    )
    assert response.status_code == 302
    connection.refresh_from_db()
    field, value = next(iter(change.items()))
    assert getattr(connection, field) == value


def test_the_console_refuses_a_new_address_without_the_secrets_too(client, kashflow):
    client.force_login(factories.UserFactory(username="root", is_staff=True, is_superuser=True))
    response = client.post(
        reverse("admin:integration_connection_change", args=[kashflow.pk]),
        kashflow_form(base_url="https://kashflow.evil.example/v2"),
    )
    assert response.status_code == 200
    kashflow.refresh_from_db()
    assert kashflow.base_url == "https://api.kashflow.com/v2"


# The stored session token -------------------------------------------------------------------


def test_the_stored_token_is_not_sent_to_a_new_host(kashflow):
    """Even if the address changes another way (a script, a restored backup), the token stays
    bound to the host that issued it: the client signs in afresh at the new one."""
    Connection.objects.filter(pk=kashflow.pk).update(base_url="https://kashflow.other.example/v2")
    moved = Connection.objects.get(pk=kashflow.pk)
    api = (
        FakeApi()
        .on("POST", "/v2/sessiontoken", reply(201, step1([3, 4, 6])))
        .on("PUT", "/v2/sessiontoken", reply(200, STEP2))
        .on("GET", "/v2/customers/ACME01", reply(200, {"Code": "ACME01"}))
    )
    client = KashFlowClient(moved)
    client.session.mount("https://", api)
    client.get_customer("ACME01")
    assert all(
        "OLD-SESSION-TOKEN-0000" not in (r.headers.get("Authorization") or "") for r in api.requests
    )
    assert api.calls("GET")[0].headers["Authorization"] == "KfToken NEW-SESSION-TOKEN-0001"


@pytest.mark.parametrize(
    "field, value",
    [
        ("login_url", "https://login.evil.example"),
        ("instance_url", "https://acme.evil.example"),
        ("ca_file", "/tmp/attacker-ca.pem"),
    ],
)
def test_a_salesforce_token_is_bound_to_where_it_was_issued(field, value):
    connection = factories.SalesforceConnectionFactory()
    connection.save_session(
        {"access_token": "00D!AQ0AQ.token", "instance_url": "https://acme.my.salesforce.com"}
    )
    assert Connection.objects.get(pk=connection.pk).get_session()["access_token"]
    Connection.objects.filter(pk=connection.pk).update(**{field: value})
    assert Connection.objects.get(pk=connection.pk).get_session() == {}


# Three letters of the memorable word, once each -----------------------------------------------


def step1(positions):
    return {
        "TemporaryToken": "6D1E4F0A-3C5B-4D2E-9F7A-0B1C2D3E4F5A",
        "MemorableWordList": [{"Position": p, "Value": ""} for p in positions],
    }


@pytest.mark.parametrize(
    "positions",
    [
        [1, 2, 3, 4, 5, 6, 7, 8, 9],  # the whole word
        [1, 2, 3, 4],
        [3, 3, 3],  # the same letter three times
        [1, 2],
        [],
        ["2", "x", 4],
    ],
)
def test_the_client_refuses_to_give_more_than_three_different_letters(positions):
    connection = factories.KashFlowConnectionFactory()
    api = (
        FakeApi()
        .on("POST", "/v2/sessiontoken", reply(201, step1(positions)))
        .on("PUT", "/v2/sessiontoken", reply(200, STEP2))
    )
    client = KashFlowClient(connection)
    client.session.mount("https://", api)
    with pytest.raises(ApiError) as raised:
        client.login()
    assert raised.value.permanent
    assert "three different letters" in raised.value.message
    assert api.calls("PUT") == []  # not one letter was sent
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAILING


def test_three_different_letters_are_answered(kashflow):
    api = (
        FakeApi()
        .on("POST", "/v2/sessiontoken", reply(201, step1([9, 1, 5])))
        .on("PUT", "/v2/sessiontoken", reply(200, STEP2))
    )
    client = KashFlowClient(kashflow)
    client.session.mount("https://", api)
    client.login()
    sent = body_of(api.calls("PUT")[0])["MemorableWordList"]
    assert sent == [
        {"Position": 9, "Value": "e"},
        {"Position": 1, "Value": "p"},
        {"Position": 5, "Value": "a"},
    ]
