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
