"""The audit trail: who changed which connection or mapping, who retried or ignored which
errors, and when; visible to Integration admins, never holding a secret's value."""

import pytest
from django.test import Client
from django.urls import reverse

from integration.models import AuditEntry, Connection, SyncEvent
from tests import factories
from tests.test_connection_pages import check  # noqa: F401 (a fixture)
from tests.test_mapping_editor import ROW, form_data

pytestmark = pytest.mark.django_db

Action = AuditEntry.Action


@pytest.fixture
def root_client(client):
    """A superuser in the console (pytest-django's admin_client would use our `admin_user`)."""
    client.force_login(factories.UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


def only_entry(**filters) -> AuditEntry:
    return AuditEntry.objects.get(**filters)


def failed_event(**kwargs) -> SyncEvent:
    return factories.SyncEventFactory(
        status=SyncEvent.Status.FAILED_PERMANENT,
        error_class="permanent",
        error_code="INVALID_EMAIL_ADDRESS",
        message="Email: invalid email address: bob@",
        **kwargs,
    )


# Connections -------------------------------------------------------------------------------


def test_editing_a_connection_says_which_secrets_changed_never_their_values(
    admin_client_, admin_user
):
    connection = factories.KashFlowConnectionFactory(name="KashFlow live")
    response = admin_client_.post(
        reverse("dashboard:connection_edit", args=[connection.pk]),
        {
            "name": "KashFlow live",
            "kind": "kashflow",
            "environment": "production",
            "auth_method": "kf_password",
            "base_url": "https://api.kashflow.com/v2",
            "api_version": "59.0",
            "username": "finance@example.co.uk",
            "is_active": "on",
            "password": "N3w-Passw0rd!",
            "clear_memorable_word": "on",
        },
    )
    assert response.status_code == 302
    entry = only_entry(action=Action.CONNECTION_CHANGED)
    assert (entry.user, entry.username, entry.object_id) == (
        admin_user,
        "ada",
        str(connection.pk),
    )
    assert "Username" in entry.summary
    assert "Secrets replaced: Password" in entry.summary
    assert "Secrets cleared: Memorable word" in entry.summary
    assert "N3w-Passw0rd!" not in entry.summary and "finance@" not in entry.summary
    page = admin_client_.get(reverse("dashboard:audit")).content.decode()
    assert "Connection changed" in page and "Secrets replaced: Password" in page
    assert "N3w-Passw0rd!" not in page


def test_adding_a_connection_in_the_console_is_in_the_trail(client, admin_user):
    admin_user.is_staff = True
    admin_user.save()
    client.force_login(admin_user)
    client.post(
        reverse("admin:integration_connection_add"),
        {
            "name": "Salesforce live",
            "kind": "salesforce",
            "environment": "production",
            "auth_method": "sf_password",
            "login_url": "https://login.salesforce.com",
            "api_version": "59.0",
            "username": "integration@example.co.uk",
            "is_active": "on",
            "password": "s3cret-Pass",
            "security_token": "TOKENxyz987",
        },
    )
    connection = Connection.objects.get(name="Salesforce live")
    entry = only_entry(action=Action.CONNECTION_ADDED)
    assert entry.object_id == str(connection.pk) and entry.username == "ada"
    assert "Secrets replaced: Password, Security token" in entry.summary
    assert "TOKENxyz987" not in entry.summary and "s3cret-Pass" not in entry.summary


def test_deleting_a_connection_in_the_console_is_in_the_trail(root_client):
    connection = factories.KashFlowConnectionFactory(name="Old KashFlow")
    root_client.post(
        reverse("admin:integration_connection_delete", args=[connection.pk]), {"post": "yes"}
    )
    assert not Connection.objects.exists()
    entry = only_entry(action=Action.CONNECTION_DELETED)
    assert entry.username == "root" and "Old KashFlow" in entry.object_label


def test_testing_a_connection_records_who_and_the_outcome(ops_client, ops_user):
    connection = factories.KashFlowConnectionFactory(name="KashFlow live")
    connection.clear_secret("memorable_word")
    connection.save()
    ops_client.post(reverse("dashboard:connection_test", args=[connection.pk]))
    entry = only_entry(action=Action.CONNECTION_TESTED)
    assert entry.user == ops_user
    assert entry.summary == (
        "Not working: No memorable word is stored; enter it in the connection's settings."
    )


# Mappings ----------------------------------------------------------------------------------


@pytest.fixture
def mapping_v1():
    mapping_set = factories.MappingSetFactory()
    factories.FieldMappingFactory(mapping_set=mapping_set, source_path="Name", target_path="Name")
    factories.FieldMappingFactory(
        mapping_set=mapping_set, source_path="Email", target_path="Email__c"
    )
    return mapping_set


def test_saving_a_mapping_records_which_fields_changed(admin_client_, admin_user, mapping_v1):
    rows = [
        ROW | {"source_path": "Name", "target_path": "Name", "transform": "upper"},
        ROW | {"source_path": "Phone", "target_path": "Phone"},
    ]
    admin_client_.post(
        reverse("dashboard:mapping", args=[mapping_v1.pk]), form_data(rows, note="Phones too")
    )
    entry = only_entry(action=Action.MAPPING_SAVED)
    assert entry.user == admin_user and entry.object_label == "Suppliers to Accounts v2"
    assert entry.summary == (
        "Phones too. Against v1: changed Name (how); removed Email__c; added Phone."
    )


def test_rolling_back_a_mapping_is_in_the_trail(admin_client_, admin_user, mapping_v1):
    v2 = mapping_v1.save_new_version([{"source_path": "Code", "target_path": "AccountNumber"}])
    admin_client_.post(reverse("dashboard:mapping_rollback", args=[mapping_v1.pk]))
    entry = only_entry(action=Action.MAPPING_ROLLED_BACK)
    assert entry.user == admin_user and entry.object_label == "Suppliers to Accounts v3"
    assert entry.summary.startswith(f"Rolled back to v1. Against v{v2.version}:")
    assert "added Name" in entry.summary and "removed AccountNumber" in entry.summary


def test_a_mapping_cannot_be_edited_in_place_in_the_console(root_client, mapping_v1):
    """The console once edited a version in place (audited); now the dashboard's editor is the
    one way to change a mapping, and it makes a new version (issue #15)."""
    row = mapping_v1.fields.get(target_path="Name")
    data = {
        "name": mapping_v1.name,
        "flow": mapping_v1.flow,
        "source_object": mapping_v1.source_object,
        "target_object": mapping_v1.target_object,
        "version": "1",
        "is_active": "on",
        "note": "",
        "created_at_0": "2026-01-01",
        "created_at_1": "10:00:00",
        "fields-TOTAL_FORMS": "1",
        "fields-INITIAL_FORMS": "1",
        "fields-MIN_NUM_FORMS": "0",
        "fields-MAX_NUM_FORMS": "1000",
        "fields-0-id": str(row.pk),
        "fields-0-mapping_set": str(mapping_v1.pk),
        "fields-0-order": "1",
        "fields-0-source_path": "TradingName",
        "fields-0-target_path": "Name",
        "fields-0-transform": "copy",
        "fields-0-params": "{}",
        "fields-0-default": "",
    }
    response = root_client.post(
        reverse("admin:integration_mappingset_change", args=[mapping_v1.pk]), data
    )
    assert response.status_code == 403
    row.refresh_from_db()
    assert row.source_path != "TradingName"
    assert not AuditEntry.objects.exists()


# Errors ------------------------------------------------------------------------------------


def test_retry_and_ignore_on_the_dashboard_name_the_person_and_the_record(ops_client, ops_user):
    retried, ignored = failed_event(source_id="CUST0042"), failed_event(source_id="CUST0043")
    ops_client.post(reverse("dashboard:retry_event", args=[retried.pk]))
    ops_client.post(
        reverse("dashboard:ignore_event", args=[ignored.pk]), {"reason": "Test customer"}
    )
    retry = only_entry(action=Action.ERROR_RETRIED)
    assert (retry.user, retry.object_type, retry.object_id) == (ops_user, "event", str(retried.pk))
    assert "CUST0042" in retry.object_label and "invalid email address" in retry.summary
    ignore = only_entry(action=Action.ERROR_IGNORED)
    assert ignore.object_id == str(ignored.pk) and ignore.summary == "Reason: Test customer"


def test_a_double_clicked_retry_is_one_entry(ops_client):
    event = failed_event()
    for _ in range(2):
        ops_client.post(reverse("dashboard:retry_event", args=[event.pk]))
    assert AuditEntry.objects.filter(action=Action.ERROR_RETRIED).count() == 1


def test_the_admin_bulk_retry_is_in_the_trail(root_client):
    events = [failed_event(), failed_event()]
    root_client.post(
        reverse("admin:integration_syncevent_changelist"),
        {"action": "retry_selected", "_selected_action": [e.pk for e in events]},
    )
    entries = AuditEntry.objects.filter(action=Action.ERROR_RETRIED)
    assert sorted(entries.values_list("object_id", flat=True)) == sorted(str(e.pk) for e in events)
    assert {e.username for e in entries} == {"root"}


def test_a_group_retry_is_one_entry_with_its_cause_and_count(ops_client, ops_user):
    for _ in range(3):
        failed_event()
    response = ops_client.post(
        reverse("dashboard:retry_group"),
        {"flow": "customers", "code": "INVALID_EMAIL_ADDRESS", "error_class": "permanent"},
    )
    assert response.status_code == 302
    entry = only_entry(action=Action.GROUP_RETRIED)
    assert entry.user == ops_user and entry.object_type == "run"
    assert entry.summary.startswith("3 error(s) matching ")
    assert "error_code=INVALID_EMAIL_ADDRESS" in entry.summary


# The page ----------------------------------------------------------------------------------


def test_only_integration_admins_see_the_trail_and_its_link(ops_user, admin_user):
    ops, admin = Client(), Client()
    ops.force_login(ops_user)
    admin.force_login(admin_user)
    assert ops.get(reverse("dashboard:audit")).status_code == 403
    assert "Audit trail" not in ops.get(reverse("dashboard:overview")).content.decode()
    assert "Audit trail" in admin.get(reverse("dashboard:overview")).content.decode()


def test_the_trail_filters_by_action_person_and_name(admin_client_, ops_user, admin_user):
    AuditEntry.record(ops_user, Action.ERROR_RETRIED, "event", 7, "Customers: CUST0007", "Was x")
    AuditEntry.record(admin_user, Action.MAPPING_SAVED, "mapping", 3, "Customers v4", "added Phone")
    url = reverse("dashboard:audit")
    page = admin_client_.get(url, {"action": "error_retried"}).content.decode()
    assert "CUST0007" in page and "Customers v4" not in page
    page = admin_client_.get(url, {"username": "ADA"}).content.decode()
    assert "Customers v4" in page and "CUST0007" not in page
    page = admin_client_.get(url, {"q": "7"}).content.decode()
    assert "CUST0007" in page and "Customers v4" not in page


def test_the_trail_pages_in_a_fixed_number_of_queries(
    admin_client_, admin_user, django_assert_num_queries
):
    for n in range(60):
        AuditEntry.record(admin_user, Action.ERROR_IGNORED, "event", n, f"E{n}", "Reason: x")
    # session, user, permissions (2), the page
    with django_assert_num_queries(5):
        response = admin_client_.get(reverse("dashboard:audit"))
    assert response.content.decode().count("Error ignored") >= 50


def test_the_console_shows_the_trail_read_only(root_client, admin_user):
    entry = AuditEntry.record(None, Action.CONNECTION_TESTED, "connection", 1, "KF", "Works")
    assert root_client.get(reverse("admin:integration_auditentry_changelist")).status_code == 200
    change = root_client.get(reverse("admin:integration_auditentry_change", args=[entry.pk]))
    assert (
        change.status_code == 200 and b'type="submit"' not in change.content.split(b"</form>")[-2]
    )
    assert root_client.get(reverse("admin:integration_auditentry_add")).status_code == 403
    delete = reverse("admin:integration_auditentry_delete", args=[entry.pk])
    assert root_client.post(delete, {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()
    # An Integration admin with console access may read it too.
    admin_user.is_staff = True
    admin_user.save()
    root_client.force_login(admin_user)
    assert root_client.get(reverse("admin:integration_auditentry_changelist")).status_code == 200
