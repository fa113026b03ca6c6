"""Issue #19's "Done when", in Debian's Chromium: a fresh trial on the demo, the guided deal
becoming an invoice, the queue on a phone, British dates in an American browser, and every
page at laptop and phone width (screenshots kept for a person to look at)."""

import re

import pytest
from django.contrib.auth.models import Group

from integration.clients.kashflow import KashFlowClient
from integration.models import Connection, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests import factories
from tests.browser.conftest import ensure_roles, screenshot, sign_in
from tests.browser.seed import seed_dashboard
from tests.sandbox_connections import connect_both

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

expect = pytest.importorskip("playwright.sync_api").expect
PHONE = {"width": 390, "height": 844}
UK_TIME = re.compile(r"\b\d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}(:\d{2})? (GMT|BST)\b")
US_DATE = re.compile(r"\b\d{2}/\d{2}/\d{4}\b")


@pytest.fixture
def olivia(transactional_db):
    ensure_roles()
    user = factories.UserFactory(username="olivia")
    user.groups.add(Group.objects.get(name="Operations"))
    return user


@pytest.fixture
def ada(transactional_db):
    ensure_roles()
    user = factories.UserFactory(username="ada")
    user.groups.add(Group.objects.get(name="Integration admin"))
    return user


@pytest.fixture
def trial(sandbox, settings, transactional_db):
    """The demo as `make run` makes it, connected, after its first syncs."""
    from django.core.management import call_command

    # A transactional test empties the database after it, the default mappings too.
    call_command("install_default_mappings", verbosity=0)
    sandbox.reset("demo")
    settings.KASHFORCE = {**settings.KASHFORCE, "SANDBOX_STATE_DIR": str(sandbox.state_dir)}
    connect_both(sandbox)
    return sandbox


def run(flow: str) -> SyncRun:
    sync_run = engine.start_run(flow, Trigger.SCHEDULE)
    engine.execute_run(sync_run.pk)
    return sync_run


def first_minute() -> None:
    """The schedule's first runs: customers, the invoices (which wait for their products'
    links), the products, then the invoices again once their wait is over."""
    run("customers")
    run("invoices")
    run("products")
    SyncEvent.objects.filter(flow="invoices", error_code="PRODUCTS_NOT_LINKED").update(
        next_attempt_at=None, status=SyncEvent.Status.PENDING
    )
    run("invoices")


def fits(page, width: int) -> None:
    """Nothing on the page is wider than the window (no sideways scrolling)."""
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{page.url} is {scroll} px wide at {width} px"


def test_a_fresh_trial_shows_no_unexplained_error_and_no_invoice_on_a_default_nominal(
    page, trial, olivia
):
    first_minute()
    sign_in(page, "olivia")
    expect(page.get_by_role("heading", name="This is the demo: try it")).to_be_visible()
    expect(page.get_by_role("button", name="Close a demo deal")).to_be_visible()
    expect(page.get_by_text("No records need attention.")).to_be_visible()
    screenshot(page, "trial-overview")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Needs attention").click()
    expect(page.get_by_text("Nothing here.")).to_be_visible()

    invoices = SyncEvent.objects.filter(flow="invoices", status=SyncEvent.Status.SUCCEEDED)
    assert invoices.count() == 8
    kashflow = KashFlowClient(Connection.active(Connection.Kind.KASHFLOW))
    for event in invoices:
        invoice = kashflow.get_invoice(int(event.target_id))
        lines = invoice["LineItems"]
        assert lines and all(line.get("ProductCode") for line in lines), invoice


def test_the_guided_deal_appears_as_an_invoice(page, trial, olivia):
    first_minute()
    sign_in(page, "olivia")
    page.get_by_role("button", name="Close a demo deal").click()
    expect(page.get_by_role("status")).to_contain_text("as won in the demo Salesforce")
    run("invoices")  # what the sandbox's Outbound Message starts in a running trial
    page.get_by_role("link", name=re.compile("see its timeline")).click()
    expect(page.locator("main")).to_contain_text(re.compile("made in KashFlow", re.I))
    screenshot(page, "trial-guided-deal-timeline")
    deal_id = page.url.split("q=")[1]
    event = SyncEvent.objects.get(flow="invoices", source_id=deal_id)
    assert event.status == SyncEvent.Status.SUCCEEDED and event.target_id


def test_the_queue_is_usable_on_a_phone(browser, live_server, olivia):
    seed = seed_dashboard()
    context = browser.new_context(viewport=PHONE, base_url=live_server.url)
    page = context.new_page()
    try:
        sign_in(page, "olivia")
        page.goto("/errors/")
        fits(page, PHONE["width"])
        event = seed["failed"][0]
        retry = page.locator(f"#event-{event.pk}").get_by_role(
            "button", name=f"Retry {event.source_id}"
        )
        retry.scroll_into_view_if_needed()
        box = retry.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        expect(page.locator(f"#event-{event.pk}").get_by_text("Ignore…")).to_be_visible()
        retry.click()
        expect(page.get_by_role("status")).to_contain_text(f"Retrying {event.source_id}")
        fits(page, PHONE["width"])
    finally:
        context.close()


def test_british_dates_in_an_american_browser(browser, live_server, olivia):
    seed_dashboard()
    context = browser.new_context(
        viewport={"width": 1366, "height": 768},
        base_url=live_server.url,
        locale="en-US",
        timezone_id="America/New_York",
    )
    page = context.new_page()
    try:
        sign_in(page, "olivia")
        for path in ("/", "/runs/", "/errors/?show=attention", "/records/?q=0065g00000AbCdEAAV"):
            page.goto(path)
            text = page.locator("main").inner_text()
            assert UK_TIME.search(text), (path, text[:500])
            assert not US_DATE.search(text), path
        page.goto("/runs/")
        box = page.get_by_label("From")
        assert box.get_attribute("type") == "text"
        assert box.get_attribute("placeholder") == "dd/mm/yyyy"
        box.fill("31/12/2026")
        page.get_by_role("button", name="Filter").click()
        expect(page.get_by_label("From")).to_have_value("31/12/2026")
        expect(page.get_by_role("alert")).to_have_count(0)
        page.get_by_label("From").fill("12/31/2026")
        page.get_by_role("button", name="Filter").click()
        expect(page.get_by_role("alert")).to_contain_text("Write the date as day/month/year")
    finally:
        context.close()


def pages_to_look_at(seed: dict, ada) -> list[tuple[str, str]]:
    # A transactional test empties the database after it, default mappings too: make one.
    mapping = factories.MappingSetFactory()
    factories.FieldMappingFactory(mapping_set=mapping, source_path="Name", target_path="Name")
    factories.FieldMappingFactory(
        mapping_set=mapping,
        source_path="Email",
        target_path="Email__c",
        transform="truncate",
        params={"length": 80},
    )
    run_pk = SyncRun.objects.order_by("-pk").values_list("pk", flat=True).first()
    connection = Connection.objects.filter(kind=Connection.Kind.KASHFLOW).first()
    return [
        ("overview", "/"),
        ("queue", "/errors/"),
        ("queue-warnings", "/errors/?show=warnings"),
        ("runs", "/runs/"),
        ("run", f"/runs/{run_pk}/"),
        ("timeline", "/records/?q=0065g00000AbCdEAAV"),
        ("connections", "/connections/"),
        ("connection-kashflow", f"/connections/{connection.pk}/"),
        ("connection-new", "/connections/new/?kind=salesforce"),
        ("mappings", "/mappings/"),
        ("mapping-editor", f"/mappings/{mapping.pk}/"),
        ("mapping-history", f"/mappings/{mapping.pk}/history/"),
        ("vat-rules", "/vat-rules/"),
        ("audit", "/audit/"),
        ("alerts", "/alerts/"),
        ("profile", "/profile/"),
        ("two-step", "/account/two-step/"),
    ]


@pytest.mark.parametrize("width", [1366, 390])
def test_every_page_fits_the_screen(browser, live_server, ada, olivia, width):
    seed = seed_dashboard()
    context = browser.new_context(
        viewport={"width": width, "height": 900}, base_url=live_server.url
    )
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto("/login/")
        screenshot(page, f"{width}-login")
        fits(page, width)
        sign_in(page, "ada")
        too_wide = []
        for name, path in pages_to_look_at(seed, ada):
            response = page.goto(path)
            assert response.status == 200, (path, response.status)
            screenshot(page, f"{width}-{name}")
            if page.evaluate("document.documentElement.scrollWidth") > width:
                too_wide.append(name)
        page.context.clear_cookies()
        sign_in(page, "olivia")
        response = page.goto("/mappings/")
        assert response.status == 403
        screenshot(page, f"{width}-refused")
        fits(page, width)
        assert too_wide == [], too_wide
        assert errors == []
    finally:
        context.close()
