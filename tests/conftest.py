import importlib.util

import pytest
from django.contrib.auth.models import Group

from tests import factories

# The sandbox fixtures arrive with sandbox/; until then the suite runs without them.
pytest_plugins = (
    ["tests.fixtures_sandbox"] if importlib.util.find_spec("tests.fixtures_sandbox") else []
)


@pytest.fixture
def ops_user(db):
    user = factories.UserFactory(username="olivia")
    user.groups.add(Group.objects.get(name="Operations"))
    return user


@pytest.fixture
def admin_user(db):
    user = factories.UserFactory(username="ada")
    user.groups.add(Group.objects.get(name="Integration admin"))
    return user


@pytest.fixture
def ops_client(client, ops_user):
    client.force_login(ops_user)
    return client


@pytest.fixture
def admin_client_(client, admin_user):
    """A client signed in as an Integration admin (not a superuser)."""
    client.force_login(admin_user)
    return client


@pytest.fixture
def engine(monkeypatch):
    """The sync engine's interface (integration/sync/engine.py), faked for view tests.

    Runs are rows without a worker; retry_events calls SyncEvent.retry like the real one; the
    calls are recorded in `engine.calls`.
    """
    import sys
    import types

    from integration.models import SyncEvent, SyncRun

    fake = types.SimpleNamespace(calls=[])

    def start_run(flow, trigger, user=None, *, dry_run=False, full=False):
        fake.calls.append(("start_run", flow, trigger, user))
        return SyncRun.objects.create(
            flow=flow, trigger=trigger, triggered_by=user, dry_run=dry_run, full=full
        )

    def retry_events(event_ids, user):
        fake.calls.append(("retry_events", sorted(event_ids), user))
        return sum(event.retry(user) for event in SyncEvent.objects.filter(pk__in=event_ids))

    def start_bulk_retry(filters, user):
        fake.calls.append(("start_bulk_retry", filters, user))
        total = SyncEvent.objects.unresolved().matching(filters).count()
        return SyncRun.objects.create(
            flow=filters.get("flow") or "customers",
            trigger="retry",
            triggered_by=user,
            progress_total=total,
        )

    def next_run_at(flow):
        return None

    for function in (start_run, retry_events, start_bulk_retry, next_run_at):
        setattr(fake, function.__name__, function)
    try:
        from integration.sync import engine as real
    except ImportError:
        package = types.ModuleType("integration.sync")
        package.engine = fake
        monkeypatch.setitem(sys.modules, "integration.sync", package)
        monkeypatch.setitem(sys.modules, "integration.sync.engine", fake)
    else:
        for name in ("start_run", "retry_events", "start_bulk_retry", "next_run_at"):
            monkeypatch.setattr(real, name, getattr(fake, name))
    return fake
