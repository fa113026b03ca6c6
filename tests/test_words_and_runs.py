"""Issue #19 cases 5 and 8: words written for a finance user, and a runs list that is not
buried under idle runs and whose counts add up."""

import csv
import io
import re

import pytest
from django.conf import settings
from django.urls import reverse

from integration.models import SyncEvent, SyncRun, Trigger
from tests import factories

pytestmark = pytest.mark.django_db

RUNS = reverse("dashboard:runs")
ERRORS = reverse("dashboard:errors")


def finished_run(**counts) -> SyncRun:
    run = factories.SyncRunFactory(status=SyncRun.Status.RUNNING, **counts)
    run.finish("")
    return run


# Case 8: the runs list ------------------------------------------------------------------------


def test_idle_scheduled_runs_are_hidden_and_folded_into_one_line(ops_client):
    busy = finished_run(read_count=3, written_count=3)
    idle = [finished_run() for _ in range(12)]

    response = ops_client.get(RUNS)

    assert all(run.idle for run in idle) and not busy.idle
    assert [run.pk for run in response.context["page"].rows] == [busy.pk]
    page = response.content.decode()
    assert "12 idle runs between" in page and "are hidden" in page
    assert "Show idle runs" in page
    shown = ops_client.get(RUNS, {"idle": "on"}).context["page"].rows
    assert len(shown) == 13


def test_a_run_a_person_started_is_never_hidden_and_says_who(ops_client, ops_user):
    run = factories.SyncRunFactory(
        status=SyncRun.Status.RUNNING, trigger=Trigger.MANUAL, triggered_by=ops_user
    )
    run.finish("")

    page = ops_client.get(RUNS).content.decode()

    assert not run.idle and f"Started by {ops_user}" in page
    assert "Started by a person" not in page
    detail = ops_client.get(reverse("dashboard:run", args=[run.pk])).content.decode()
    assert f"Started by {ops_user}." in detail and "Started by a person by" not in detail


def test_the_counts_add_up(ops_client):
    # 10 read: 3 synced, 2 compared and unchanged, 4 read again with nothing new, 1 failed.
    run = factories.SyncRunFactory(
        flow="products",
        status=SyncRun.Status.RUNNING,
        read_count=10,
        written_count=3,
        skipped_count=2,
        failed_count=1,
    )
    from integration.sync.engine import _finish_if_done

    _finish_if_done(run)
    run.refresh_from_db()

    assert run.summary == "10 read: 3 synced, 6 unchanged, 1 failed."
    row = ops_client.get(RUNS).content.decode()
    assert '<td class="num">10</td>' in row and '<td class="num">6</td>' in row
    assert run.read_count == run.written_count + run.unchanged_total + run.failed_count
    detail = ops_client.get(reverse("dashboard:run", args=[run.pk])).content.decode()
    assert "<dt>Unchanged</dt><dd>6</dd>" in detail
    assert "4 of the unchanged were read again with nothing new" in detail


def test_retries_of_records_an_earlier_run_read_are_labelled(ops_client):
    finished_run(read_count=0, written_count=2)

    page = ops_client.get(RUNS).content.decode()

    assert "+ 2 retried" in page


def test_a_finished_empty_run_says_nothing_to_do(ops_client):
    run = factories.SyncRunFactory(status=SyncRun.Status.RUNNING, trigger=Trigger.MANUAL)
    from integration.sync.engine import _finish_if_done

    _finish_if_done(run)

    page = ops_client.get(reverse("dashboard:run", args=[run.pk])).content.decode()

    assert "Nothing to do" in page and "No records yet" not in page
    run.refresh_from_db()
    assert run.summary == "Nothing to do: no record had changed since the last run."


# Case 5: words --------------------------------------------------------------------------------


def test_giving_up_does_not_promise_another_try():
    event = factories.SyncEventFactory(
        status=SyncEvent.Status.RUNNING, attempts=settings.KASHFORCE["MAX_ATTEMPTS"]
    )

    event.mark_failed(
        "KashFlow was too busy to create invoice (HTTP 503); kashforce will try again.", False
    )

    event.refresh_from_db()
    assert event.status == SyncEvent.Status.FAILED_PERMANENT
    assert "kashforce will try again" not in event.message
    assert event.message.startswith("Gave up after 5 attempts. KashFlow was too busy")
    assert "press Retry" in event.message


def test_a_simulators_fault_code_is_shown_in_plain_words(ops_client):
    factories.SyncEventFactory(
        status=SyncEvent.Status.FAILED_PERMANENT,
        error_class=SyncEvent.ErrorClass.TRANSIENT,
        error_code="SANDBOX_FAULT_503",
        message="Gave up after 5 attempts. KashFlow was too busy to list customers (HTTP 503).",
    )

    page = ops_client.get(ERRORS).content.decode()

    assert "Temporarily unavailable (HTTP 503)" in page
    assert "Sandbox fault" not in page


def test_raw_codes_sit_in_a_details_line_not_beside_the_label(ops_client):
    factories.SyncEventFactory(
        status=SyncEvent.Status.FAILED_PERMANENT,
        error_class=SyncEvent.ErrorClass.PERMANENT,
        error_code="NO_LINE_ITEMS",
        message="The deal has no products.",
    )

    page = ops_client.get(ERRORS).content.decode()

    assert "No line items</a><br>" in page
    assert "Code for support: <code>NO_LINE_ITEMS</code>" in page


def test_csvs_use_the_labels_people_see_and_uk_time_with_its_zone(ops_client, ops_user):
    run = factories.SyncRunFactory(
        status=SyncRun.Status.RUNNING, trigger=Trigger.MANUAL, triggered_by=ops_user
    )
    run.finish("")
    factories.SyncEventFactory(
        run=run,
        status=SyncEvent.Status.FAILED_PERMANENT,
        error_class=SyncEvent.ErrorClass.PERMANENT,
        error_code="NO_LINE_ITEMS",
        label="Acme Ltd (ACME01)",
    )

    def rows(url):
        body = b"".join(ops_client.get(url).streaming_content).decode("utf-8-sig")
        return list(csv.DictReader(io.StringIO(body)))

    [queue] = rows(reverse("dashboard:errors_csv"))
    assert queue["Status"] == "Needs attention" and queue["Flow"] == "Customers"
    assert queue["Record"] == "Acme Ltd (ACME01)"
    assert queue["Kind"] == "Needs a fix" and queue["Cause"] == "No line items"
    assert queue["First seen"].endswith(" GMT") or queue["First seen"].endswith(" BST")
    [listed] = rows(reverse("dashboard:runs_csv"))
    assert listed["Status"] == "Succeeded" and listed["Started by"] == f"Started by {ops_user}"
    assert listed["Flow"] == "Customers"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (GMT|BST)", listed["Finished"])


def test_mapping_history_shows_changes_in_words_not_python_dicts(admin_client_):
    v1 = factories.MappingSetFactory()
    factories.FieldMappingFactory(mapping_set=v1, source_path="Name", target_path="Name")
    v2 = v1.save_new_version(
        [
            {
                "source_path": "CompanyName",
                "target_path": "Name",
                "transform": "truncate",
                "params": {"max_length": 40},
            }
        ]
    )

    page = admin_client_.get(reverse("dashboard:mapping_history", args=[v2.pk])).content.decode()

    assert "Filled from" in page and "Settings" in page and "Max length: 40" in page
    assert "Cut to a maximum length" in page and "Copy as it is" in page
    for raw in ("source_path", "params", "{&#x27;max_length&#x27;", "{'max_length'"):
        assert raw not in page
