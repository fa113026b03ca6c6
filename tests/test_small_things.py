"""Issue #19 case 10's small things: the 403 page a refused person reads, the favicon, and no
link from a sandbox record to the live KashFlow site."""

import pytest
from django.contrib.auth.models import Group

from integration.links import RecordLinks
from integration.models import CrossRef
from tests import factories

pytestmark = pytest.mark.django_db


def user_in(group: str, username: str):
    user = factories.UserFactory(username=username)
    user.groups.add(Group.objects.get(name=group))
    return user


def test_an_operations_user_is_told_what_they_cannot_do_and_who_can(client):
    user_in("Integration admin", "ada")
    client.force_login(user_in("Operations", "olivia"))
    response = client.get("/mappings/")
    assert response.status_code == 403
    page = response.content.decode()
    assert "kashforce.css" in page  # the site's own page, not Django's bare one
    assert (
        "To change connections, mappings or VAT rules, or read the audit trail, you need the "
        "Integration admin role." in page
    )
    assert "signed in as <strong>olivia</strong>, with the Operations role" in page
    assert "Someone who can: ada." in page


def test_a_user_without_a_role_is_told_which_roles_see_the_dashboard(client):
    client.force_login(factories.UserFactory(username="nobody"))
    response = client.get("/")
    assert response.status_code == 403
    page = response.content.decode()
    assert "To see the dashboard, you need the Operations or the Integration admin role." in page
    assert "with no role yet" in page


def test_a_refused_post_gets_the_same_page(client):
    client.force_login(factories.UserFactory(username="nobody"))
    response = client.post("/errors/retry/", {"events": ["1"]})
    assert response.status_code == 403
    assert "To start syncs, retry or ignore errors, you need" in response.content.decode()


def test_every_page_has_a_favicon_and_favicon_ico_answers(client):
    client.force_login(user_in("Operations", "olivia"))
    page = client.get("/").content.decode()
    assert 'rel="icon" href="/static/favicon.svg"' in page
    client.logout()
    response = client.get("/favicon.ico")
    assert response.status_code == 302 and response["Location"] == "/static/favicon.svg"


def test_a_sandbox_kashflow_record_gets_no_link_to_the_live_kashflow_site():
    factories.KashFlowConnectionFactory(base_url="http://127.0.0.1:8080/v2", is_active=True)
    ref = CrossRef(object_type="invoice", salesforce_id="0065g00000AbCdEAAV", kashflow_key="1043")
    assert RecordLinks.load().for_crossref(ref)["kashflow"] is None


def test_a_live_kashflow_record_links_to_the_kashflow_web_app():
    factories.KashFlowConnectionFactory(base_url="https://api.kashflow.com/v2", is_active=True)
    ref = CrossRef(object_type="invoice", salesforce_id="0065g00000AbCdEAAV", kashflow_key="1043")
    assert (
        RecordLinks.load().for_crossref(ref)["kashflow"] == "https://app.kashflow.com/invoices/1043"
    )


def admin_client(client):
    client.force_login(user_in("Integration admin", "ada"))
    return client


def test_a_kashflow_connection_page_asks_only_for_kashflow_s_fields(client):
    connection = factories.KashFlowConnectionFactory(name="KashFlow live")
    page = admin_client(client).get(f"/connections/{connection.pk}/").content.decode()
    for salesforce_only in ("Login URL", "CA file", "Consumer key", "Outbound Message secret"):
        assert salesforce_only not in page, salesforce_only
    assert "Base URL" in page and "Memorable word" in page and "Sign-in method" in page
    assert 'type="hidden" name="kind" value="kashflow"' in page


def test_a_salesforce_connection_page_asks_only_for_salesforce_s_fields(client):
    connection = factories.SalesforceConnectionFactory(name="SF live")
    page = admin_client(client).get(f"/connections/{connection.pk}/").content.decode()
    assert "Memorable word" not in page and "Base URL" not in page
    assert "Login URL" in page and "Organisation id" in page and "Outbound Message secret" in page


def test_a_new_connection_starts_by_choosing_the_system(client):
    client = admin_client(client)
    assert "Which system does it connect to?" in client.get("/connections/new/").content.decode()
    page = client.get("/connections/new/?kind=kashflow").content.decode()
    assert "Add a KashFlow connection" in page and "Login URL" not in page
