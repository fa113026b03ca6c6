import csv
import io
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from integration.models import SyncEvent
from tests import factories

pytestmark = pytest.mark.django_db

ERRORS = reverse("dashboard:errors")


def failed(**kwargs) -> SyncEvent:
    values = {
        "status": SyncEvent.Status.FAILED_PERMANENT,
        "error_class": SyncEvent.ErrorClass.PERMANENT,
        "error_code": "INVALID_EMAIL_ADDRESS",
        "message": "Email: invalid email address: x@",
        "attempts": 1,
    }
    return factories.SyncEventFactory(**(values | kwargs))


def test_queue_groups_errors_by_cause_with_readable_labels(ops_client):
    for _ in range(3):
        failed()
    failed(error_code="", message="Gave up after 5 attempts. Read timed out talking to KashFlow")
    factories.SyncEventFactory(status=SyncEvent.Status.SUCCEEDED)

    page = ops_client.get(ERRORS).content.decode()

    assert "Invalid email address" in page and "INVALID_EMAIL_ADDRESS" in page
    assert "Read timed out talking to KashFlow" in page
    assert "Retry all 3" in page and "Retry all 1" in page
    assert "(4 records)" in page


def test_rows_name_the_record_with_links_to_both_systems(ops_client):
    factories.SalesforceConnectionFactory(instance_url="https://acme.my.salesforce.com")
    failed(
        flow="invoices",
        direction="sf_to_kf",
        source_object="salesforce.Opportunity",
        source_id="0065g00000AbCdEAAV",
        target_object="kashflow.Invoice",
        target_id="1043",
        message="Nominal code 4001 does not exist.",
        attempts=3,
    )

    page = ops_client.get(ERRORS).content.decode()

    assert "Salesforce Opportunity" in page and "0065g00000AbCdEAAV" in page
    assert 'href="https://acme.my.salesforce.com/0065g00000AbCdEAAV"' in page
    assert 'href="https://app.kashflow.com/invoices/1043"' in page
    assert "Nominal code 4001 does not exist." in page


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ("flow=invoices", "INV1", "CUS1"),
        ("q=CUS1", "CUS1", "INV1"),
        ("q=nominal", "INV1", "CUS1"),
        ("source_object=kashflow.Customer", "CUS1", "INV1"),
        ("code=-", "INV1", "CUS1"),
        (f"date_from={(timezone.localdate() - timedelta(days=1)).isoformat()}", "CUS1", "OLD1"),
    ],
)
def test_filters(ops_client, query, shown, hidden):
    failed(source_id="CUS1")
    failed(
        flow="invoices",
        source_id="INV1",
        source_object="salesforce.Opportunity",
        error_code="",
        message="Nominal code 4001 does not exist.",
    )
    failed(source_id="OLD1", created_at=timezone.now() - timedelta(days=10))

    page = ops_client.get(f"{ERRORS}?{query}").content.decode()

    assert f"<strong>{shown}</strong>" in page
    assert f"<strong>{hidden}</strong>" not in page


def test_paging_walks_every_row_once_by_keyset(ops_client, settings):
    now = timezone.now()
    # Several rows share one timestamp: the cursor's pk tie-break must not skip or repeat them.
    ids = [
        failed(source_id=f"R{n:03d}", created_at=now - timedelta(minutes=n // 3)).source_id
        for n in range(120)
    ]
    seen, url = [], ERRORS
    while url:
        response = ops_client.get(url)
        page = response.context["page"]
        seen += [event.source_id for event in page.rows]
        url = f"{ERRORS}?older={page.older}" if page.older else None
    assert sorted(seen) == sorted(ids) and len(seen) == 120
    back = ops_client.get(f"{ERRORS}?newer={response.context['page'].newer}").context["page"]
    assert [e.source_id for e in back.rows] == seen[50:100]


@pytest.mark.parametrize("rows", [3, 60])
def test_queue_query_count_does_not_grow_with_the_page(ops_client, django_assert_num_queries, rows):
    factories.SalesforceConnectionFactory(instance_url="https://acme.my.salesforce.com")
    user = factories.UserFactory()
    for n in range(rows):
        failed(source_id=f"R{n}", resolved_by=user, error_code=f"CODE_{n % 4}")
    # session, user, permissions (2), groups, page rows, links (the Salesforce address),
    # object names for the filter
    with django_assert_num_queries(8):
        response = ops_client.get(ERRORS)
    assert response.status_code == 200


def test_retry_one_puts_it_back_in_line_and_it_leaves_the_queue(ops_client, ops_user, engine):
    event = failed()

    response = ops_client.post(
        reverse("dashboard:retry_event", args=[event.pk]), {"next": "/errors/?flow=customers"}
    )

    assert response.status_code == 302 and response["Location"] == "/errors/?flow=customers"
    event.refresh_from_db()
    assert event.status == SyncEvent.Status.PENDING and event.resolved_by == ops_user
    assert f"<strong>{event.source_id}</strong>" not in ops_client.get(ERRORS).content.decode()


def test_retry_does_not_redirect_off_site(ops_client, engine):
    event = failed()
    response = ops_client.post(
        reverse("dashboard:retry_event", args=[event.pk]), {"next": "https://evil.example/"}
    )
    assert response["Location"] == ERRORS


def test_retry_selected(ops_client, engine):
    first, second, third = failed(), failed(), failed()

    ops_client.post(reverse("dashboard:retry_selected"), {"ids": [first.pk, second.pk]})

    statuses = dict(SyncEvent.objects.values_list("pk", "status"))
    assert statuses[first.pk] == statuses[second.pk] == SyncEvent.Status.PENDING
    assert statuses[third.pk] == SyncEvent.Status.FAILED_PERMANENT


def test_retry_the_whole_group_starts_a_background_run_and_shows_it(ops_client, ops_user, engine):
    for _ in range(3):
        failed()
    failed(error_code="OTHER")

    response = ops_client.post(
        reverse("dashboard:retry_group"),
        {
            "flow": "customers",
            "code": "INVALID_EMAIL_ADDRESS",
            "error_class": "permanent",
            "q": "x@",
        },
    )

    call = engine.calls[-1]
    assert call[0] == "start_bulk_retry" and call[2] == ops_user
    assert call[1] == {
        "flow": "customers",
        "error_code": "INVALID_EMAIL_ADDRESS",
        "error_class": "permanent",
        "q": "x@",
    }
    assert response.status_code == 302 and "/runs/" in response["Location"]
    run_page = ops_client.get(response["Location"]).content.decode()
    assert "3 records" not in run_page  # progress is a bar, not a sentence
    assert 'max="3"' in run_page  # the run's progress_total


def test_group_filters_match_blank_codes_only_when_asked(ops_client, engine):
    failed(error_code="")
    failed(error_code="SOMETHING")
    ops_client.post(reverse("dashboard:retry_group"), {"flow": "customers", "code": "-"})
    assert engine.calls[-1][1]["error_code"] == ""
    assert SyncEvent.objects.unresolved().matching(engine.calls[-1][1]).count() == 1


def test_ignore_needs_a_reason_and_records_who(ops_client, ops_user):
    event = failed()
    url = reverse("dashboard:ignore_event", args=[event.pk])

    ops_client.post(url, {"reason": "  "})
    event.refresh_from_db()
    assert event.status == SyncEvent.Status.FAILED_PERMANENT

    ops_client.post(url, {"reason": "Duplicate customer, merged by hand"})
    event.refresh_from_db()
    assert event.status == SyncEvent.Status.IGNORED and event.resolved_by == ops_user

    ignored = ops_client.get(f"{ERRORS}?show=ignored").content.decode()
    assert "Ignored by olivia" in ignored and "Duplicate customer, merged by hand" in ignored


def test_actions_are_post_only_and_need_the_operate_permission(client, engine):
    event = failed()
    viewer = factories.UserFactory(username="viewer")
    client.force_login(viewer)
    assert client.get(ERRORS).status_code == 403  # no role, no dashboard
    ops = factories.UserFactory(username="ops2")
    from django.contrib.auth.models import Group

    ops.groups.add(Group.objects.get(name="Operations"))
    client.force_login(ops)
    assert client.get(reverse("dashboard:retry_event", args=[event.pk])).status_code == 405


def test_csrf_is_checked_on_actions(ops_user, engine):
    from django.test import Client

    event = failed()
    client = Client(enforce_csrf_checks=True)
    client.force_login(ops_user)
    response = client.post(reverse("dashboard:retry_event", args=[event.pk]))
    assert response.status_code == 403
    event.refresh_from_db()
    assert event.status == SyncEvent.Status.FAILED_PERMANENT


def test_csv_export_streams_and_defuses_formulas(ops_client):
    failed(source_id='=HYPERLINK("http://evil")', message="+cmd|' /C calc'!A0")
    failed(source_id="ACME01", message="Ordinary message")

    response = ops_client.get(reverse("dashboard:errors_csv"))

    assert response.streaming
    text = b"".join(response.streaming_content).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:4] == ["Event", "Flow", "Source object", "Source id"]
    by_id = {row[3]: row for row in rows[1:]}
    assert '\'=HYPERLINK("http://evil")' in by_id
    assert by_id['\'=HYPERLINK("http://evil")'][9] == "'+cmd|' /C calc'!A0"
    assert by_id["ACME01"][9] == "Ordinary message"


def test_the_admin_bulk_retry_is_the_same_retry(client, admin_user, engine):
    admin_user.is_staff = True
    admin_user.save()
    client.force_login(admin_user)
    first, second = failed(), failed()

    client.post(
        reverse("admin:integration_syncevent_changelist"),
        {"action": "retry_selected", "_selected_action": [first.pk, second.pk]},
    )

    assert engine.calls == [("retry_events", sorted([first.pk, second.pk]), admin_user)]
    assert SyncEvent.objects.filter(status=SyncEvent.Status.PENDING).count() == 2
