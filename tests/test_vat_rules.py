"""The VAT rules page: versions like mappings, each save on the audit trail, and the invoices
flow reads the version in use (issue #14)."""

import pytest
from django.urls import reverse

from integration.mapping import MappingContext
from integration.models import AuditEntry, VatRuleSet
from integration.sync.links import Links
from integration.sync.mappings import context

pytestmark = pytest.mark.django_db
URL = reverse("dashboard:vat_rules")


def test_an_admin_saves_rules_as_a_new_version_on_the_audit_trail(admin_client_, admin_user):
    admin_client_.post(URL, {"countries": "no 25", "products": "BOO-0001 0", "note": "First"})
    response = admin_client_.post(URL, {"countries": "NO 25\nch 8.1%", "products": "BOO-0001 5"})
    assert response.status_code == 302
    assert list(VatRuleSet.objects.values_list("version", "is_active")) == [(2, True), (1, False)]
    assert VatRuleSet.current_rules() == {
        "countries": {"NO": "25", "CH": "8.1"},
        "products": {"BOO-0001": "5"},
    }
    entry = AuditEntry.objects.filter(action=AuditEntry.Action.VAT_RULES_SAVED).first()
    assert entry.user == admin_user
    assert entry.summary == ("Against v1: customers in CH: 8.1% added; product BOO-0001: 0% → 5%.")
    page = admin_client_.get(URL).content.decode()
    assert "version 2 in use" in page and "BOO-0001 5" in page and "First" in page


@pytest.mark.parametrize(
    ("countries", "problem"),
    [
        ("Norway 25", "is not a two-letter country code"),
        ("NO twenty", "should be a code, a space and a rate"),
        ("NO 250", "should be a code, a space and a rate"),
        ("NO 25\nNO 20", "NO has two rules"),
    ],
)
def test_a_rule_that_cannot_be_read_is_refused_in_plain_words(admin_client_, countries, problem):
    response = admin_client_.post(URL, {"countries": countries, "products": ""})
    assert response.status_code == 200
    assert problem in response.content.decode()
    assert not VatRuleSet.objects.exists()


def test_the_flows_read_the_rules_in_use_not_the_environment(settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "VAT_RULES": {"countries": {"NO": "99"}}}
    assert context(Links()).vat_rules == {}
    VatRuleSet.save_new_version({"countries": {"NO": "25"}, "products": {}})
    assert isinstance(context(Links()), MappingContext)
    assert context(Links()).vat_rules["countries"] == {"NO": "25"}


def test_the_old_environment_variable_is_reported_as_no_longer_read(settings):
    from integration.checks import check_vat_rules_variable

    assert check_vat_rules_variable(None) == []
    settings.KASHFORCE = {**settings.KASHFORCE, "VAT_RULES": {"countries": {"NO": "25"}}}
    [warning] = check_vat_rules_variable(None)
    assert "no longer read" in warning.msg


def test_the_queue_s_warnings_view_and_its_csv_list_only_syncs_with_a_warning(ops_client):
    from tests.factories import SyncEventFactory

    warned = SyncEventFactory(
        status="succeeded", warning=True, message="Put on the default nominal code."
    )
    plain = SyncEventFactory(status="succeeded", message="Synced.")
    page = ops_client.get(reverse("dashboard:errors") + "?show=warnings").content.decode()
    assert warned.source_id in page and plain.source_id not in page
    assert "Retry" not in page.split('<table class="table errors">')[1]  # nothing to retry
    csv = b"".join(
        ops_client.get(reverse("dashboard:errors_csv") + "?show=warnings").streaming_content
    ).decode()
    assert warned.source_id in csv and plain.source_id not in csv


def test_the_old_environment_variable_becomes_the_first_version_once(settings):
    from django.apps import apps

    from integration.mapping_defaults import import_vat_rules_variable

    rules = {"countries": {"no": 25}, "products": {"BOO-0001": 0}}
    settings.KASHFORCE = {**settings.KASHFORCE, "VAT_RULES": rules}
    assert import_vat_rules_variable(apps) is True
    assert import_vat_rules_variable(apps) is False  # once: the page's versions rule after
    [first] = VatRuleSet.objects.all()
    assert (first.version, first.is_active) == (1, True)
    assert first.rules == {"countries": {"NO": "25"}, "products": {"BOO-0001": "0"}}
