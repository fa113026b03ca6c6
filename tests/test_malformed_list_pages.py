"""Issue #13 case 1 for every flow that walks a KashFlow list: a page answered 200 without
`Data` fails the collect with the reason, records nothing from the bad page on, and the next
run reads again. Real clients over real sockets against the strict sandbox."""

import pytest

from integration.models import SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.fixtures_sandbox import control
from tests.sandbox_connections import connect_both

pytestmark = pytest.mark.django_db


def run(flow: str) -> SyncRun:
    started = engine.start_run(flow, Trigger.MANUAL)
    engine.execute_run(started.pk)
    started.refresh_from_db()
    return started


@pytest.mark.parametrize(
    ("flow", "seed", "path"),
    [
        ("customers", "customers=5,accounts=0", "/v2/customers"),
        ("payments", "customers=2,accounts=0", "/v2/invoices"),
        ("products", "customers=0,products=3,accounts=0", "/v2/products"),
    ],
)
def test_a_list_page_without_data_fails_the_collect_with_the_reason(sandbox, flow, seed, path):
    sandbox.reset(seed)
    connect_both(sandbox)
    faults = {"rules": [{"match": f"GET {path}", "kind": "error_body", "rate": 1.0}]}
    control(sandbox.info["control"]["kashflow"], "faults", faults)

    failed = run(flow)

    assert failed.status == SyncRun.Status.FAILED
    assert failed.summary.startswith("The run stopped while reading changes: KashFlow sent an")
    assert '"An error has occurred."' in failed.summary
    assert not SyncEvent.objects.filter(flow=flow).exists()

    control(sandbox.info["control"]["kashflow"], "faults", {"rules": []})
    assert run(flow).status in (SyncRun.Status.SUCCEEDED, SyncRun.Status.PARTIAL)
