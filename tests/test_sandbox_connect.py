"""`manage.py sandbox_connect` points kashforce at a running sandbox."""

import io

import pytest
from django.core.management import CommandError, call_command

from integration.models import Connection
from tests.factories import KashFlowConnectionFactory
from tests.fixtures_sandbox import control

pytestmark = pytest.mark.django_db


def test_connect_creates_both_connections_and_routes_outbound_messages(sandbox):
    out = io.StringIO()
    call_command(
        "sandbox_connect",
        state_dir=sandbox.state_dir,
        webhook_base="http://127.0.0.1:9",
        stdout=out,
    )
    salesforce = Connection.active("salesforce")
    kashflow = Connection.active("kashflow")
    info = sandbox.info
    assert salesforce.instance_url == info["salesforce"]["instance_url"]
    assert salesforce.auth_method == Connection.AuthMethod.SF_JWT
    assert salesforce.get_secret("private_key").startswith("-----BEGIN")
    assert kashflow.base_url == info["kashflow"]["base_url"] + "/v2"
    assert kashflow.get_secret("memorable_word") == info["kashflow"]["memorable_word"]
    secret = salesforce.get_secret("outbound_secret")
    outbound = control(info["control"]["salesforce"], "outbound")
    assert outbound["url"] == f"http://127.0.0.1:9/hooks/salesforce/outbound/{secret}/"
    assert outbound["enabled"] is True


def test_connecting_again_updates_in_place_and_keeps_the_outbound_secret(sandbox):
    call_command("sandbox_connect", state_dir=sandbox.state_dir, stdout=io.StringIO())
    secret = Connection.active("salesforce").get_secret("outbound_secret")
    call_command(
        "sandbox_connect", state_dir=sandbox.state_dir, auth="password", stdout=io.StringIO()
    )
    assert Connection.objects.count() == 2
    salesforce = Connection.active("salesforce")
    assert salesforce.auth_method == Connection.AuthMethod.SF_PASSWORD
    assert salesforce.get_secret("outbound_secret") == secret


def test_a_production_connection_is_not_replaced_without_asking(sandbox):
    KashFlowConnectionFactory(is_active=True, environment="production")
    with pytest.raises(CommandError, match="--replace"):
        call_command("sandbox_connect", state_dir=sandbox.state_dir, stdout=io.StringIO())
    assert Connection.objects.filter(environment="sandbox").count() == 0


def test_no_running_sandbox_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="No sandbox is running"):
        call_command("sandbox_connect", state_dir=tmp_path, stdout=io.StringIO())


def test_the_connection_it_makes_signs_in_to_a_new_org_where_soap_login_is_off(sandbox):
    from integration.clients.check import check_connection

    assert control(sandbox.info["control"]["salesforce"], "org")["soap_login_enabled"] is False
    call_command("sandbox_connect", state_dir=sandbox.state_dir, stdout=io.StringIO())

    result = check_connection(Connection.active("salesforce"))

    assert result.ok, result.message
