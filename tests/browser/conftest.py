"""Browser tests: Playwright drives Debian's Chromium against live_server.

Chromium starts once for the browser tests. Playwright's own browser download does not work offline, so
the system's /usr/bin/chromium is launched (set KASHFORCE_CHROMIUM to use another).
"""

import os

import pytest

CHROMIUM = os.environ.get("KASHFORCE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def browser():
    """Chromium, once per module (all the browser tests are in one module, so once per run).

    Playwright's sync API keeps an event loop running in this thread while it is open, and
    Django refuses ORM calls from a thread with a running loop unless DJANGO_ALLOW_ASYNC_UNSAFE
    is set. So the variable is set only while the browser is open, and the browser is closed
    before the next module's tests (which keep Django's protection; one of them runs
    `check --deploy`, which refuses the variable).
    """
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"No Chromium at {CHROMIUM}")
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


def ensure_roles() -> None:
    """The two roles, as the data migration 0002_roles makes them. A transactional test empties
    the database after it, so the next test makes them again with the migration's function."""
    import importlib

    from django.contrib.auth.models import Group
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    if Group.objects.filter(name__in=["Operations", "Integration admin"]).count() == 2:
        return
    migration = importlib.import_module("integration.migrations.0002_roles")
    state = MigrationExecutor(connection).loader.project_state(("integration", "0002_roles"))
    migration.create_roles(state.apps, None)


@pytest.fixture
def page(browser, live_server):
    # A laptop screen.
    context = browser.new_context(viewport={"width": 1366, "height": 768}, base_url=live_server.url)
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


def sign_in(page, username: str) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")


def screenshot(page, name: str) -> None:
    """Kept in /tmp (or KASHFORCE_SCREENSHOTS) for a person to look at; never compared."""
    folder = os.environ.get("KASHFORCE_SCREENSHOTS", "/tmp/kashforce-screenshots")
    os.makedirs(folder, exist_ok=True)
    page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)
