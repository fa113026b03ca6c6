"""Issue #19 case 9: UK dates and money whatever the browser's locale. The date filters are
text boxes read as day/month/year (the browser's own date input follows its locale), and every
page writes times in UK time with the zone named."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group

from integration.forms import RunFilterForm
from integration.models import Flow, SyncRun, Trigger
from integration.templatetags.kashforce import money, when
from tests import factories

pytestmark = pytest.mark.django_db


def test_the_date_filters_are_text_boxes_asking_for_day_month_year():
    box = str(RunFilterForm()["date_from"])
    assert 'type="text"' in box and 'placeholder="dd/mm/yyyy"' in box
    assert 'type="date"' not in box


@pytest.mark.parametrize(
    "typed", ["03/12/2026", "3/12/2026", "03-12-2026", "3.12.2026", "2026-12-03"]
)
def test_a_date_is_read_day_first(typed):
    form = RunFilterForm({"date_from": typed})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["date_from"].isoformat() == "2026-12-03"


def test_a_us_style_date_is_refused_with_a_plain_message_on_the_page(client):
    user = factories.UserFactory(username="olivia")
    user.groups.add(Group.objects.get(name="Operations"))
    client.force_login(user)
    page = client.get("/runs/", {"date_from": "12/31/2026"}).content.decode()
    assert "Write the date as day/month/year, for example 03/12/2026." in page
    queue = client.get("/errors/", {"date_to": "12/31/2026"}).content.decode()
    assert "To: Write the date as day/month/year" in queue
    assert "date_to" not in queue.split('role="alert"')[1][:200]


def test_times_are_uk_time_with_the_zone_named():
    assert when(datetime(2026, 12, 3, 14, 2, tzinfo=UTC)) == "3 Dec 2026 14:02 GMT"
    assert when(datetime(2026, 7, 3, 14, 2, tzinfo=UTC)) == "3 Jul 2026 15:02 BST"
    assert when(datetime(2026, 7, 3, 14, 2, 9, tzinfo=UTC), "seconds") == "3 Jul 2026 15:02:09 BST"


def test_a_page_with_a_time_names_the_zone(client):
    user = factories.UserFactory(username="olivia")
    user.groups.add(Group.objects.get(name="Operations"))
    client.force_login(user)
    SyncRun.objects.create(
        flow=Flow.CUSTOMERS,
        trigger=Trigger.SCHEDULE,
        created_at=datetime(2026, 12, 3, 14, 2, tzinfo=UTC),
    )
    assert "3 Dec 2026 14:02" in client.get("/runs/").content.decode()


def test_money_is_written_the_uk_way_in_the_invoice_s_currency():
    assert money(Decimal("1234.5")) == "£1,234.50"
    assert money("1234.50", "EUR") == "€1,234.50"
    assert money("-20", "USD") == "-$20.00"
    assert money("99", "CHF") == "CHF 99.00"
    assert money("n/a") == "n/a"
