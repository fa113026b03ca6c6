"""The connection check: a sign-in that reports in plain words and stores the result."""

import logging
import socket

import pytest
from django.urls import reverse

from integration.clients import salesforce
from integration.clients.check import check_connection
from integration.models import Connection
from tests.factories import KashFlowConnectionFactory, SalesforceConnectionFactory
from tests.fake_api import FakeApi, reply, use_fast_retries
from tests.fixtures_sandbox import control
from tests.sandbox_connections import kashflow_connection, org_switches, salesforce_connection

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_retries(settings, monkeypatch):
    return use_fast_retries(settings, monkeypatch)


def stored(connection):
    connection.refresh_from_db()
    return connection.status, connection.last_check_message


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- KashFlow -------------------------------------------------------------------------------------


@pytest.fixture
def kashflow_account():
    """Set the sandbox account's flags; they outlive a sandbox reset, so they are put back."""
    changed = []

    def change(sandbox, flags):
        changed.append(sandbox)
        control(sandbox.info["control"]["kashflow"], "account", flags)

    yield change
    for sandbox in changed:
        control(
            sandbox.info["control"]["kashflow"], "account", {"api_disabled": False, "locked": False}
        )


def test_a_working_kashflow_connection_says_who_it_signed_in_as(sandbox):
    connection = kashflow_connection(sandbox)

    result = check_connection(connection)

    assert result.ok
    assert (
        result.message == "Signed in to KashFlow as sandbox@kashforce.test (Kashforce Sandbox Ltd)."
    )
    assert stored(connection) == (Connection.Status.OK, result.message)


@pytest.mark.parametrize(
    ("account", "message"),
    [
        (
            {"api_disabled": True},
            "API access is turned off for this KashFlow account (Settings → API).",
        ),
        (
            {"locked": True},
            "The KashFlow account is locked after too many failed sign-ins; unlock it in KashFlow.",
        ),
    ],
)
def test_kashflow_account_problems_are_named(sandbox, kashflow_account, account, message):
    kashflow_account(sandbox, account)
    connection = kashflow_connection(sandbox)

    result = check_connection(connection)

    assert not result.ok
    assert stored(connection) == (Connection.Status.FAILING, message)


def test_wrong_kashflow_credentials_are_named_without_repeating_them(sandbox, caplog):
    connection = kashflow_connection(sandbox, password="not-the-password-42")
    caplog.set_level(logging.DEBUG)

    result = check_connection(connection)

    assert result.message == (
        "KashFlow refused the sign-in (HTTP 401). Check the username and password, then press "
        "Test. KashFlow said: Authorization has been denied for this request."
    )
    status, message = stored(connection)
    assert status == Connection.Status.FAILING
    for text in (message, caplog.text):
        assert "not-the-password-42" not in text
        assert sandbox.info["kashflow"]["memorable_word"] not in text


def test_an_unreachable_host_is_named():
    connection = KashFlowConnectionFactory(base_url=f"http://127.0.0.1:{closed_port()}/v2")

    result = check_connection(connection)

    assert not result.ok
    assert result.message == "Could not reach 127.0.0.1 (connection refused)."


def test_missing_secrets_are_named_before_any_call():
    connection = KashFlowConnectionFactory(secrets={"password": "Tr0ub4dor&3"})

    result = check_connection(connection)

    assert result.message == "No memorable word is stored; enter it in the connection's settings."
    assert stored(connection)[0] == Connection.Status.FAILING


# -- Salesforce -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sf_password", "sf_jwt", "sf_client_credentials"])
def test_a_working_salesforce_connection_finds_every_field(sandbox, method):
    org_switches(sandbox, soap_login_enabled=method == "sf_password")  # an older org for SOAP
    connection = salesforce_connection(sandbox, method)

    result = check_connection(connection)

    assert result.ok, result.message
    assert result.message.startswith("Connected as ")
    assert result.message.endswith("The org has every field kashforce needs.")
    assert result.missing_fields == {}
    assert stored(connection)[0] == Connection.Status.OK


def test_wrong_salesforce_password_is_named(sandbox):
    org_switches(sandbox, soap_login_enabled=True)
    connection = salesforce_connection(
        sandbox,
        "sf_password",
        secrets={"password": "Wrong-Pass-99", "security_token": "XYZTOKEN1234"},
    )

    result = check_connection(connection)

    assert result.message == "Salesforce rejected the username, password or security token."
    assert "Wrong-Pass-99" not in stored(connection)[1]


def test_a_private_key_that_does_not_match_the_certificate_is_named(sandbox):
    from tests.test_secrets_never_leak import a_private_key

    connection = salesforce_connection(sandbox, "sf_jwt")
    connection.set_secrets(private_key=a_private_key())
    connection.save()

    result = check_connection(connection)

    assert not result.ok
    assert result.message == (
        "Salesforce did not accept the signed login: the certificate on the connected app must "
        "match the private key stored here."
    )
    assert "{content}" not in stored(connection)[1]


def test_an_untrusted_certificate_is_named(sandbox):
    connection = salesforce_connection(sandbox, ca_file="")  # the system CAs only

    result = check_connection(connection)

    assert not result.ok
    assert result.message.startswith("The server's certificate is not trusted: certificate verify")
    assert result.message.endswith("(127.0.0.1).")


def test_missing_custom_fields_and_objects_are_listed_exactly(monkeypatch):
    connection = SalesforceConnectionFactory(username="integration@acme.co.uk")
    data = "/services/data/v59.0/sobjects/"
    api = FakeApi().on(
        "POST",
        "/services/Soap/u/59.0",
        reply(
            200,
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
            "<soapenv:Body><loginResponse><result>"
            "<serverUrl>https://acme.my.salesforce.com/services/Soap/u/59.0/00D</serverUrl>"
            "<sessionId>00D!AQtoken</sessionId></result></loginResponse></soapenv:Body>"
            "</soapenv:Envelope>",
        ),
    )
    everything = reply(
        200,
        {
            "fields": [
                {"name": name}
                for name in (
                    "ExternalID__c",
                    "KashFlow_Invoice_Status__c",
                    "KashFlow_Amount_Due__c",
                )
            ]
        },
    )
    api.on("GET", data + r"\w+/describe", everything)
    api.on("GET", data + "KashFlow_Payment__c/describe", reply(404, [{"errorCode": "NOT_FOUND"}]))
    real_session = salesforce.salesforce_session

    def session_with_fake(conn):  # the check builds its own client; fake its transport
        session = real_session(conn)
        session.mount("https://", api)
        return session

    monkeypatch.setattr(salesforce, "salesforce_session", session_with_fake)

    result = check_connection(connection)

    assert result.message == (
        "Connected as integration@acme.co.uk. Missing in the org: "
        "Opportunity.KashFlow_Invoice_Number__c, KashFlow_Payment__c (object)."
    )
    assert result.missing_fields == {
        "Opportunity": ["KashFlow_Invoice_Number__c"],
        "KashFlow_Payment__c": ["(object)"],
    }
    assert stored(connection) == (Connection.Status.FAILING, result.message)


# -- The admin action -------------------------------------------------------------------------------


def test_an_integration_admin_checks_the_selected_connections(client, admin_user, sandbox):
    admin_user.is_staff = True
    admin_user.save()
    client.force_login(admin_user)
    good = kashflow_connection(sandbox)
    bad = KashFlowConnectionFactory(
        base_url=f"http://127.0.0.1:{closed_port()}/v2", is_active=False
    )

    response = client.post(
        reverse("admin:integration_connection_changelist"),
        {"action": "check_selected", "_selected_action": [good.pk, bad.pk]},
        follow=True,
    )

    page = response.content.decode()
    assert f"{good.name}: Signed in to KashFlow as sandbox@kashforce.test" in page
    assert f"{bad.name}: Could not reach 127.0.0.1 (connection refused)." in page
    assert stored(good)[0] == Connection.Status.OK
    assert stored(bad)[0] == Connection.Status.FAILING


def test_a_payments_relationship_named_otherwise_is_read_from_the_org(sandbox):
    org_switches(sandbox, payments_relationship="Payments__r")
    connection = salesforce_connection(sandbox)

    result = check_connection(connection)

    assert result.ok, result.message


def test_a_payments_relationship_that_differs_from_the_setting_is_named(sandbox, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "PAYMENTS_RELATIONSHIP": "KashFlow_Payments__r"}
    org_switches(sandbox, payments_relationship="Payments__r")
    connection = salesforce_connection(sandbox)

    result = check_connection(connection)

    assert not result.ok
    assert result.message.endswith(
        "Opportunity has no payments relationship named KashFlow_Payments__r (the setting "
        "KASHFORCE_PAYMENTS_RELATIONSHIP). It is called Payments__r: set "
        "KASHFORCE_PAYMENTS_RELATIONSHIP to that, or leave it empty."
    )
    assert stored(connection)[0] == Connection.Status.FAILING


def test_a_missing_payments_relationship_is_named(sandbox, monkeypatch):
    # An org whose KashFlow_Payment__c has no lookup to Opportunity lists no relationship.
    monkeypatch.setattr(salesforce.SalesforceClient, "payment_relationships", lambda self: [])
    connection = salesforce_connection(sandbox)

    result = check_connection(connection)

    assert not result.ok
    assert "Opportunity has no child relationship for KashFlow_Payment__c records" in result.message
