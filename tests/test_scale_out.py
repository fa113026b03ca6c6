"""Two qcluster processes working one backlog at once (scripts/chaos.py scale-out): every won
deal is POSTed to KashFlow once and every event attempted once, on the database broker
(PostgreSQL) and on Redis; and under Redis, which loses the task of a killed worker for good,
the sweeper finds the work from the ledger."""

import pytest

from tests.chaos_runner import postgres_url, redis_url, run_chaos

pytestmark = pytest.mark.slow

DEALS = 200


def check_no_double_work(figures):
    assert figures["settled"]
    assert figures["invoices"]["problems"] == []
    assert figures["invoices"]["invoices_in_kashflow"] == DEALS
    assert figures["invoices"]["written_back"] == DEALS
    assert figures["kashflow_invoice_posts"] == DEALS  # one POST per deal, none repeated
    assert figures["ledger"]["problems"] == []


def test_two_clusters_on_the_postgresql_broker_do_no_double_work(tmp_path):
    url = postgres_url()
    if url is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (scripts/ci-services.sh)")
    figures = run_chaos(tmp_path, "scale-out", f"--opportunities={DEALS}", f"--database-url={url}")
    check_no_double_work(figures)
    assert set(figures["attempts"]["events_by_attempts"]) == {"1"}  # each event claimed once
    # Several processes worked the backlog at once. Which cluster's pusher wins the race to the
    # queue is timing (one may take every task); the claims are what must hold either way.
    assert figures["worker_processes"] >= 2, figures["workers_that_processed"]


def test_two_clusters_on_redis_do_no_double_work(tmp_path):
    url = redis_url(12)
    if url is None:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379 (scripts/ci-services.sh)")
    figures = run_chaos(
        tmp_path, "scale-out", "--broker=redis", f"--redis-url={url}", f"--opportunities={DEALS}"
    )
    check_no_double_work(figures)
    assert set(figures["attempts"]["events_by_attempts"]) == {"1"}
    assert figures["worker_processes"] >= 2, figures["workers_that_processed"]


def test_a_task_redis_lost_with_its_killed_worker_is_recovered_by_the_sweeper(tmp_path):
    url = redis_url(13)
    if url is None:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379 (scripts/ci-services.sh)")
    figures = run_chaos(
        tmp_path,
        "scale-out",
        "--broker=redis",
        f"--redis-url={url}",
        f"--opportunities={DEALS}",
        "--kill-mid-task",
    )
    assert figures["killed_worker"]
    assert figures["events_in_hand_at_kill"] > 0  # the task died with work in its hands
    check_no_double_work(figures)
    assert figures["recovered_by_sweeper"] > 0
