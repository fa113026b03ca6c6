import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from integration import paging
from integration.models import Connection, SyncEvent, SyncRun
from tests import factories

pytestmark = pytest.mark.django_db


def synced(flow="customers", when=None, **kwargs):
    when = when or timezone.now()
    return factories.SyncEventFactory(
        flow=flow, status=SyncEvent.Status.SUCCEEDED, finished_at=when, created_at=when, **kwargs
    )


def test_overview_shows_each_flow_with_counts_and_charts(ops_client, engine):
    run = factories.SyncRunFactory(status=SyncRun.Status.SUCCEEDED, finished_at=timezone.now())
    for _ in range(3):
        synced(run=run)
    synced(flow="payments", when=timezone.now() - timedelta(days=20), run=None)  # long ago
    factories.SyncEventFactory(
        status=SyncEvent.Status.FAILED_PERMANENT, error_code="REQUIRED_FIELD_MISSING", run=None
    )

    response = ops_client.get("/")

    flows = {row["flow"].value: row for row in response.context["flows"]}
    assert flows["customers"]["today"] == 3 and flows["customers"]["week"] == 3
    assert flows["customers"]["open_errors"] == 1 and flows["payments"]["week"] == 0
    assert flows["customers"]["last"] == run
    charts = response.context["charts"]
    assert sum(charts["synced"]["series"][0]["data"]) == 3
    assert charts["causes"]["labels"] == ["Required field missing (Customers)"]
    page = response.content.decode()
    assert 'id="chart-synced"' in page and 'id="chart-data"' in page
    assert "1</strong> record need" in page


def test_overview_query_count_is_fixed(ops_client, engine, django_assert_num_queries):
    for n in range(30):
        synced(when=timezone.now() - timedelta(days=n % 10))
    # session, user, permissions (2), per-day counts, causes, connections, last run of 4 flows,
    # the week's syncs with a warning, the last reconciliation, the open amendments
    with django_assert_num_queries(14):
        ops_client.get("/")


def test_synced_per_day_counts_local_days_across_the_end_of_summer_time(settings):
    settings.TIME_ZONE = "Europe/London"  # BST ends at 02:00 on Sunday 26 October 2025
    days = [date(2025, 10, 25), date(2025, 10, 26), date(2025, 10, 27)]
    for hour, minute, day in [
        (22, 59, 24),  # 23:59 BST on the 24th: before the window
        (23, 0, 24),  # 00:00 BST on the 25th
        (22, 59, 25),  # 23:59 BST on the 25th
        (23, 30, 25),  # 00:30 BST on the 26th
        (23, 30, 26),  # 23:30 GMT on the 26th
        (0, 0, 27),  # 00:00 GMT on the 27th
        (23, 59, 27),  # 23:59 GMT on the 27th
        (0, 0, 28),  # after the window
    ]:
        synced(when=datetime(2025, 10, day, hour, minute, tzinfo=UTC))
    synced(flow="payments", when=datetime(2025, 10, 26, 12, tzinfo=UTC))
    factories.SyncEventFactory(
        status=SyncEvent.Status.FAILED_PERMANENT, finished_at=datetime(2025, 10, 26, tzinfo=UTC)
    )

    with timezone.override("Europe/London"):
        counts = SyncEvent.objects.synced_per_day(days)

    assert counts == {
        (date(2025, 10, 25), "customers"): 2,
        (date(2025, 10, 26), "customers"): 2,
        (date(2025, 10, 26), "payments"): 1,
        (date(2025, 10, 27), "customers"): 2,
    }


def _plan(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        return " ".join(str(row[-1]) for row in cursor.fetchall())


@pytest.mark.skipif(connection.vendor != "sqlite", reason="reads SQLite's query plan")
def test_the_chart_reads_only_its_days_through_an_index(ops_client, engine):
    synced(when=timezone.now() - timedelta(days=40))
    with CaptureQueriesContext(connection) as queries:
        ops_client.get("/")
    [chart] = [q["sql"] for q in queries if "CASE WHEN" in q["sql"]]
    # The synced rows of the chart's days only, from the index alone: not every synced row
    # of the ledger (event_status_recent), and not the table.
    assert (
        "COVERING INDEX event_status_finished (status=? AND finished_at>? AND finished_at<?)"
        in _plan(chart)
    )


def test_banner_when_a_connection_fails(ops_client, engine):
    factories.KashFlowConnectionFactory(
        name="KashFlow live", status=Connection.Status.FAILING, last_check_message="Login refused"
    )
    page = ops_client.get("/").content.decode()
    assert "KashFlow live is failing." in page and "Login refused" in page


def test_banner_when_nothing_has_synced_for_too_long(ops_client, engine):
    factories.SyncRunFactory(created_at=timezone.now() - timedelta(hours=2))
    page = ops_client.get("/").content.decode()
    assert "Nothing has synced since" in page

    factories.SyncRunFactory(flow="payments", created_at=timezone.now())
    assert "Nothing has synced since" not in ops_client.get("/").content.decode()


def test_salesforce_api_usage_against_the_limit(ops_client, engine):
    factories.SalesforceConnectionFactory(
        name="SF", api_usage_used=12_345, api_usage_limit=100_000, api_usage_at=timezone.now()
    )
    response = ops_client.get("/")
    assert response.context["charts"]["api"][0] | {} == {
        "label": "SF",
        "used": 12_345,
        "limit": 100_000,
        "budget": 80_000,
    }
    assert "12,345" in response.content.decode()


def test_sync_now_starts_a_manual_run_and_follows_it(ops_client, ops_user, engine):
    response = ops_client.post(reverse("dashboard:sync_now"), {"flow": "payments"})

    assert engine.calls == [("start_run", "payments", "manual", ops_user)]
    run = SyncRun.objects.get()
    assert response["Location"] == reverse("dashboard:run", args=[run.pk])


def test_sync_now_refuses_get_and_unknown_flows(ops_client, engine):
    assert ops_client.get(reverse("dashboard:sync_now")).status_code == 405
    assert ops_client.post(reverse("dashboard:sync_now"), {"flow": "nope"}).status_code == 404
    assert engine.calls == []


def test_run_page_polls_while_running_and_stops_when_done(ops_client):
    run = factories.SyncRunFactory(
        status=SyncRun.Status.RUNNING, progress_done=40, progress_total=160
    )
    page = ops_client.get(reverse("dashboard:run", args=[run.pk])).content.decode()
    assert 'hx-trigger="every 2s"' in page and 'value="40"' in page and "25%" in page

    SyncRun.objects.filter(pk=run.pk).update(
        status=SyncRun.Status.SUCCEEDED, progress_done=160, finished_at=timezone.now()
    )
    fragment = ops_client.get(reverse("dashboard:run_progress", args=[run.pk])).content.decode()
    assert "hx-trigger" not in fragment and "Succeeded" in fragment
    assert "<html" not in fragment  # a fragment, not a page


@pytest.mark.parametrize("rows", [2, 60])
def test_runs_list_query_count_is_fixed(ops_client, django_assert_num_queries, rows):
    user = factories.UserFactory()
    for _ in range(rows):
        factories.SyncRunFactory(triggered_by=user)
    # session, user, permissions (2), one page of runs with who started them, the idle runs
    # hidden among them
    with django_assert_num_queries(6):
        response = ops_client.get(reverse("dashboard:runs"))
    assert len(response.context["page"].rows) == min(rows, 50)


@pytest.mark.parametrize("rows", [2, 60])
def test_run_page_query_count_is_fixed(ops_client, django_assert_num_queries, rows):
    run = factories.SyncRunFactory()
    for _ in range(rows):
        factories.SyncEventFactory(run=run)
    # session, user, permissions (2), the run, its events page, links
    with django_assert_num_queries(7):
        ops_client.get(reverse("dashboard:run", args=[run.pk]))


@pytest.mark.skipif(connection.vendor != "sqlite", reason="reads SQLite's query plan")
@pytest.mark.parametrize("older", [False, True])
def test_runs_list_reads_one_page_of_an_index(ops_client, older):
    runs = [factories.SyncRunFactory() for _ in range(3)]
    url = reverse("dashboard:runs")
    if older:
        url += f"?older={paging.encode(runs[-1])}"
    with CaptureQueriesContext(connection) as queries:
        ops_client.get(url)
    [page, idle] = [q["sql"] for q in queries if 'FROM "integration_syncrun"' in q["sql"]]
    # Newest first from the index, at any depth: not a scan and sort of every run, and the
    # idle runs are left out by the index, not read and thrown away.
    plan = _plan(page)
    assert "INDEX run_busy_recent" in plan and "TEMP B-TREE" not in plan
    assert "INDEX run_idle_recent" in _plan(idle)


def test_runs_filter_and_csv(ops_client):
    factories.SyncRunFactory(flow="customers", summary="=1+1")
    factories.SyncRunFactory(flow="payments")

    page = ops_client.get(reverse("dashboard:runs") + "?flow=payments").context["page"]
    assert [run.flow for run in page.rows] == ["payments"]

    response = ops_client.get(reverse("dashboard:runs_csv") + "?flow=customers")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode("utf-8-sig"))))
    assert len(rows) == 2 and rows[1][1] == "Customers" and rows[1][-1] == "'=1+1"
