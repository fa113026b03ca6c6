"""The dashboard in a real browser (Chromium) against live_server, at laptop size."""

import re

import pytest
from django.contrib.auth.models import Group

from integration.models import MappingSet, SyncEvent
from tests import factories
from tests.browser.conftest import ensure_roles, screenshot, sign_in
from tests.browser.seed import seed_dashboard

# live_server needs real transactions (so the roles are remade per test: see ensure_roles).
pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

expect = pytest.importorskip("playwright.sync_api").expect


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


def test_operations_sees_the_charts_retries_an_error_and_is_refused_the_mappings(page, olivia):
    seed = seed_dashboard()
    sign_in(page, "olivia")

    expect(page.locator("#chart-synced")).to_have_attribute("data-drawn", "true")
    expect(page.locator("#chart-causes")).to_have_attribute("data-drawn", "true")
    expect(page.get_by_role("link", name="7 records need attention")).to_be_visible()
    expect(
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Mappings")
    ).to_have_count(0)
    screenshot(page, "ops-overview")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Needs attention").click()
    event = seed["failed"][0]
    row = page.locator(f"#event-{event.pk}")
    expect(row).to_contain_text("accounts@acme0")
    row.get_by_role("button", name=f"Retry {event.source_id}").click()

    expect(page.get_by_role("status")).to_contain_text(f"Retrying {event.source_id}")
    expect(page.locator(f"#event-{event.pk}")).to_have_count(0)
    expect(page.get_by_role("heading", name=re.compile("By cause"))).to_contain_text("6 records")
    screenshot(page, "ops-after-retry")
    event.refresh_from_db()
    assert event.status == SyncEvent.Status.PENDING and event.resolved_by == olivia

    response = page.goto("/mappings/")
    assert response.status == 403
    response = page.goto(
        f"/mappings/{MappingSet.objects.create(name='x', flow='customers', source_object='a', target_object='b').pk}/"
    )
    assert response.status == 403


def test_ignoring_with_the_keyboard(page, olivia):
    seed = seed_dashboard()
    sign_in(page, "olivia")
    page.goto("/errors/")
    event = seed["failed"][1]
    row = page.locator(f"#event-{event.pk}")
    row.get_by_text("Ignore…").focus()
    page.keyboard.press("Enter")  # opens the <details>
    reason = row.get_by_label("Ignore (say why)")
    reason.focus()
    page.keyboard.type("Duplicate of ACME00")
    page.keyboard.press("Enter")

    expect(page.get_by_role("status")).to_contain_text("Ignored ACME01: Duplicate of ACME00")
    event.refresh_from_db()
    assert event.status == SyncEvent.Status.IGNORED and event.resolved_by == olivia


def test_a_running_run_updates_in_place(page, olivia):
    from integration.models import SyncRun

    run = SyncRun.objects.create(
        flow="customers",
        trigger="manual",
        status=SyncRun.Status.RUNNING,
        progress_done=10,
        progress_total=200,
    )
    sign_in(page, "olivia")
    page.goto(f"/runs/{run.pk}/")
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#run-bar")).to_have_attribute("value", "10")

    SyncRun.objects.filter(pk=run.pk).update(progress_done=150)
    expect(page.locator("#run-bar")).to_have_attribute("value", "150", timeout=6000)
    SyncRun.objects.filter(pk=run.pk).update(status=SyncRun.Status.SUCCEEDED, progress_done=200)
    expect(page.locator("#run-progress")).to_contain_text("Succeeded", timeout=6000)
    assert page.evaluate("window.notReloaded") is True  # htmx swapped a fragment, no reload


def test_admin_edits_a_mapping_saves_and_rolls_back(page, ada):
    mapping_set = factories.MappingSetFactory()
    factories.FieldMappingFactory(mapping_set=mapping_set, source_path="Name", target_path="Name")
    factories.FieldMappingFactory(
        mapping_set=mapping_set, source_path="Email", target_path="Email__c"
    )
    sign_in(page, "ada")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Mappings").click()
    page.get_by_role("link", name="Suppliers to Accounts").first.click()
    page.get_by_label("Row 2 transform").select_option(label="Lower case")
    page.get_by_label("Row 3 source field").fill("TelephoneNumber")  # the blank row
    page.get_by_label("Row 3 target field").fill("Phone")
    page.get_by_role("button", name="Add a row").click()
    expect(page.get_by_label("Row 4 source field")).to_be_focused()
    page.keyboard.type("Website")
    page.get_by_label("Row 4 target field").fill("Website")
    page.get_by_label("What changed and why").fill("Lower-case emails, add phone")
    screenshot(page, "admin-mapping-editor")
    page.get_by_role("button", name="Save as a new version").click()

    expect(page.get_by_role("status")).to_contain_text("Saved as version 2")
    v2 = MappingSet.objects.history(
        mapping_set.flow, mapping_set.source_object, mapping_set.target_object
    ).get(is_active=True)
    assert [r["target_path"] for r in v2.as_rows()] == ["Name", "Email__c", "Phone", "Website"]
    assert v2.as_rows()[1]["transform"] == "lower"

    page.get_by_role("link", name="History and rollback").click()
    expect(page.locator("#v2")).to_contain_text("Email__c")
    screenshot(page, "admin-mapping-history")
    page.get_by_role("button", name="Roll back to version 1").click()

    expect(page.get_by_role("status")).to_contain_text("version 3 now has the rows of version 1")
    v3 = MappingSet.objects.history(
        mapping_set.flow, mapping_set.source_object, mapping_set.target_object
    ).get(is_active=True)
    assert v3.version == 3 and v3.as_rows() == mapping_set.as_rows()


def test_admin_previews_a_mapping_against_a_real_record(page, ada):
    pytest.importorskip("integration.mapping")  # the mapping engine (branch `mapping`)
    mapping_set = factories.MappingSetFactory()
    factories.FieldMappingFactory(mapping_set=mapping_set, source_path="Name", target_path="Name")
    factories.SyncEventFactory(
        source_object=mapping_set.source_object,
        source_id="ACME01",
        payload={"Code": "ACME01", "Name": "Acme Ltd"},
    )
    sign_in(page, "ada")
    page.goto(f"/mappings/{mapping_set.pk}/")

    page.get_by_label("Row 1 transform").select_option(label="Upper case")
    page.get_by_label(f"{mapping_set.source_object} id").fill("ACME01")
    page.get_by_role("button", name="Preview").click()

    expect(page.locator("#preview")).to_contain_text("ACME LTD")
    screenshot(page, "admin-mapping-preview")
    assert MappingSet.objects.filter(source_object=mapping_set.source_object).count() == 1
