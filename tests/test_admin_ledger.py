"""Issue #15 case 2: the console shows the ledger read-only to everyone, superusers included;
an event changes only through the engine's own actions (retry, ignore), which are audited."""

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from integration.models import AuditEntry, CrossRef, Cursor, MappingSet, SyncEvent, SyncRun
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def ops_console():
    """The demo `ops` user: staff, in Operations (which holds change_syncevent)."""
    user = factories.UserFactory(username="ops", is_staff=True)
    user.groups.add(Group.objects.get(name="Operations"))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def root_console():
    client = Client()
    client.force_login(factories.UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def failed():
    return factories.SyncEventFactory(
        source_id="CUST0042",
        status=SyncEvent.Status.FAILED_PERMANENT,
        error_class="permanent",
        error_code="INVALID_EMAIL_ADDRESS",
        message="Email: invalid email address: bob@",
    )


def event_form(event, **changes):
    return {
        "run": event.run_id,
        "flow": event.flow,
        "direction": event.direction,
        "source_object": event.source_object,
        "source_id": event.source_id,
        "target_object": event.target_object,
        "dedupe_key": event.dedupe_key,
        "payload": "{}",
        "status": "succeeded",
        "attempts": "0",
        **changes,
    }


@pytest.mark.parametrize("who", ["ops_console", "root_console"])
def test_posting_succeeded_to_an_events_console_page_changes_nothing(who, failed, request):
    console = request.getfixturevalue(who)
    url = reverse("admin:integration_syncevent_change", args=[failed.pk])
    assert console.get(url).status_code == 200  # it can be read

    response = console.post(url, event_form(failed))

    assert response.status_code == 403
    failed.refresh_from_db()
    assert failed.status == SyncEvent.Status.FAILED_PERMANENT
    ops = factories.UserFactory(username="viewer")
    ops.groups.add(Group.objects.get(name="Operations"))
    viewer = Client()
    viewer.force_login(ops)
    assert "CUST0042" in viewer.get(reverse("dashboard:errors")).content.decode()


def test_the_event_page_has_no_save_button(root_console, failed):
    page = root_console.get(reverse("admin:integration_syncevent_change", args=[failed.pk]))
    assert 'name="_save"' not in page.content.decode()


@pytest.mark.parametrize(
    "model, make",
    [
        (SyncEvent, lambda: factories.SyncEventFactory()),
        (SyncRun, lambda: factories.SyncRunFactory()),
        (CrossRef, lambda: factories.CrossRefFactory()),
        (
            Cursor,
            lambda: Cursor.objects.create(
                flow="customers", connection=factories.KashFlowConnectionFactory(), value="x"
            ),
        ),
        (AuditEntry, lambda: AuditEntry.record(None, "error_retried", "event", 1, "x", "y")),
        (MappingSet, lambda: factories.MappingSetFactory()),
    ],
)
def test_no_one_adds_changes_or_deletes_ledger_rows_in_the_console(root_console, model, make):
    row = make() or model.objects.get()
    opts = model._meta
    base = f"admin:{opts.app_label}_{opts.model_name}"
    assert root_console.post(reverse(f"{base}_add"), {}).status_code == 403
    assert root_console.post(reverse(f"{base}_change", args=[row.pk]), {}).status_code == 403
    delete = reverse(f"{base}_delete", args=[row.pk])
    assert root_console.post(delete, {"post": "yes"}).status_code == 403
    changelist = root_console.post(
        reverse(f"{base}_changelist"),
        {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"},
    )
    assert changelist.status_code in (200, 302)
    assert model.objects.filter(pk=row.pk).exists()


def test_ops_retry_in_the_console_goes_through_the_engine_and_is_audited(ops_console, failed):
    response = ops_console.post(
        reverse("admin:integration_syncevent_changelist"),
        {"action": "retry_selected", "_selected_action": [failed.pk]},
    )
    assert response.status_code == 302
    failed.refresh_from_db()
    assert failed.status == SyncEvent.Status.PENDING
    entry = AuditEntry.objects.get(action=AuditEntry.Action.ERROR_RETRIED)
    assert entry.username == "ops" and entry.object_id == str(failed.pk)


def test_ignore_in_the_console_asks_why_and_is_audited(ops_console, failed):
    url = reverse("admin:integration_syncevent_changelist")
    asked = ops_console.post(url, {"action": "ignore_selected", "_selected_action": [failed.pk]})
    assert asked.status_code == 200
    assert "Why ignore" in asked.content.decode()
    failed.refresh_from_db()
    assert failed.status == SyncEvent.Status.FAILED_PERMANENT  # not yet

    ops_console.post(
        url,
        {
            "action": "ignore_selected",
            "_selected_action": [failed.pk],
            "apply": "yes",
            "reason": "Test customer, not real",
        },
    )
    failed.refresh_from_db()
    assert failed.status == SyncEvent.Status.IGNORED
    assert failed.ignored_reason == "Test customer, not real"
    entry = AuditEntry.objects.get(action=AuditEntry.Action.ERROR_IGNORED)
    assert entry.username == "ops" and entry.summary == "Reason: Test customer, not real"


def test_a_signed_in_user_without_operate_sees_no_engine_actions(failed):
    user = factories.UserFactory(username="auditor", is_staff=True)
    from django.contrib.auth.models import Permission

    user.user_permissions.add(Permission.objects.get(codename="view_syncevent"))
    client = Client()
    client.force_login(user)
    page = client.get(reverse("admin:integration_syncevent_changelist")).content.decode()
    assert "retry_selected" not in page
    client.post(
        reverse("admin:integration_syncevent_changelist"),
        {"action": "retry_selected", "_selected_action": [failed.pk]},
    )
    failed.refresh_from_db()
    assert failed.status == SyncEvent.Status.FAILED_PERMANENT
