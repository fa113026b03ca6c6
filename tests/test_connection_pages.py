import sys
import types

import pytest
from django.urls import reverse

from integration.models import Connection
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def check(monkeypatch):
    """integration.clients.check.check_connection, faked: it answers what `check.result` says."""
    calls = []
    fake = types.SimpleNamespace(calls=calls)

    def check_connection(connection, user=None):
        calls.append(connection)
        return fake.result

    fake.result = types.SimpleNamespace(ok=True, message="Signed in.", missing_fields=[])
    try:
        from integration.clients import check as real
    except ImportError:
        module = types.ModuleType("integration.clients.check")
        module.check_connection = check_connection
        monkeypatch.setitem(sys.modules, "integration.clients.check", module)
    else:
        monkeypatch.setattr(real, "check_connection", check_connection)
    return fake


def test_list_shows_status_and_api_usage_to_operations(ops_client):
    factories.SalesforceConnectionFactory(
        name="SF live", api_usage_used=1500, api_usage_limit=15000
    )
    page = ops_client.get(reverse("dashboard:connections")).content.decode()
    assert "SF live" in page and "1,500 of 15,000" in page
    assert "Edit" not in page and "Test" in page


def test_operations_cannot_edit_or_add(ops_client):
    connection = factories.KashFlowConnectionFactory()
    assert (
        ops_client.get(reverse("dashboard:connection_edit", args=[connection.pk])).status_code
        == 403
    )
    assert ops_client.post(reverse("dashboard:connection_new"), {"name": "x"}).status_code == 403


def test_admin_edits_without_seeing_secrets(admin_client_):
    connection = factories.KashFlowConnectionFactory(
        name="KF", secrets={"password": "Hunter2-secret", "memorable_word": "pineapple"}
    )
    url = reverse("dashboard:connection_edit", args=[connection.pk])
    page = admin_client_.get(url).content.decode()
    assert "Hunter2-secret" not in page and "pineapple" not in page
    assert "Stored. Leave blank to keep it." in page

    response = admin_client_.post(
        url,
        {
            "name": "KashFlow live",
            "kind": "kashflow",
            "environment": "production",
            "auth_method": "kf_password",
            "base_url": "https://api.kashflow.com/v2",
            "api_version": "59.0",
            "username": "accounts@example.co.uk",
            "is_active": "on",
            "password": "",
            "memorable_word": "mango",
        },
    )
    assert response.status_code == 302
    connection.refresh_from_db()
    assert connection.name == "KashFlow live"
    assert connection.get_secret("password") == "Hunter2-secret"  # blank kept it
    assert connection.get_secret("memorable_word") == "mango"


def test_test_button_reports_the_result(ops_client, check):
    connection = factories.SalesforceConnectionFactory(name="SF")
    check.result.ok = False
    check.result.message = "Connected as sf. Missing in the org: Account.KashFlow_Code__c."
    check.result.missing_fields = {"Account": ["KashFlow_Code__c"]}

    response = ops_client.post(
        reverse("dashboard:connection_test", args=[connection.pk]), follow=True
    )

    assert check.calls == [connection]
    page = response.content.decode()
    assert (
        "SF is not working: Connected as sf. Missing in the org: Account.KashFlow_Code__c." in page
    )


def test_test_button_is_post_only(ops_client, check):
    connection = factories.SalesforceConnectionFactory()
    assert (
        ops_client.get(reverse("dashboard:connection_test", args=[connection.pk])).status_code
        == 405
    )
    assert check.calls == []
    assert Connection.objects.count() == 1


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


def test_a_short_outbound_secret_is_refused(admin_client_):
    response = admin_client_.post(
        reverse("dashboard:connection_new"),
        salesforce_form(outbound_secret="hunter2", organization_id="00D5g000004XyZAEA0"),
    )
    assert response.status_code == 200
    assert "Use at least 24 random characters" in response.content.decode()
    assert not Connection.objects.exists()


def test_an_outbound_secret_needs_the_org_id(admin_client_):
    secret = "k" * 32
    response = admin_client_.post(
        reverse("dashboard:connection_new"), salesforce_form(outbound_secret=secret)
    )
    assert "Outbound Messages are only accepted from a known org" in response.content.decode()
    assert not Connection.objects.exists()
    admin_client_.post(
        reverse("dashboard:connection_new"),
        salesforce_form(outbound_secret=secret, organization_id="00D5g000004XyZAEA0"),
    )
    connection = Connection.objects.get()
    # Removing the org id later, with the secret still stored, is refused too.
    response = admin_client_.post(
        reverse("dashboard:connection_edit", args=[connection.pk]), salesforce_form()
    )
    assert "Outbound Messages are only accepted from a known org" in response.content.decode()
    connection.refresh_from_db()
    assert connection.organization_id == "00D5g000004XyZAEA0"


def test_the_form_recommends_jwt_and_labels_password_sign_in_legacy(admin_client_):
    page = admin_client_.get(reverse("dashboard:connection_new"), {"kind": "salesforce"})
    page = page.content.decode()
    assert "JWT bearer (recommended" in page
    assert "username, password and security token (legacy" in page
    assert "Password sign-in is legacy: new Salesforce orgs have it switched off" in page
