"""The demo's waiting deals are invoiced in their customers' currencies, with their products'
VAT, once the products are linked: a fresh trial shows no currency or product error."""

import re

import pytest

from integration.models import SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.sandbox_connections import connect_both

pytestmark = pytest.mark.django_db


def run(flow: str) -> SyncRun:
    sync_run = engine.start_run(flow, Trigger.MANUAL)
    engine.execute_run(sync_run.pk)
    sync_run.refresh_from_db()
    return sync_run


def test_the_demo_s_waiting_deals_are_invoiced_without_a_currency_or_product_error(sandbox):
    sandbox.reset("demo")
    connect_both(sandbox)
    run("customers")
    run("invoices")  # before the products are linked: the deals wait for them
    waiting = SyncEvent.objects.filter(flow="invoices", error_code="PRODUCTS_NOT_LINKED")
    assert waiting.count() == 8
    run("products")
    waiting.update(next_attempt_at=None, status=SyncEvent.Status.PENDING)
    invoices = run("invoices")
    events = SyncEvent.objects.filter(flow="invoices")
    assert [e.message for e in events if e.status != SyncEvent.Status.SUCCEEDED] == []
    assert invoices.written_count == 8
    currencies = {re.search(r"made in KashFlow in (\w+)\.", e.message)[1] for e in events}
    assert len(currencies) >= 1 and currencies <= {"GBP", "USD", "EUR"}
