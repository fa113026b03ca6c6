import json

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from tests import factories

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/", "/admin/"])
def test_anonymous_is_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_health_is_open_and_reports_database_and_queue(client, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "HEALTH_TOKEN": "monitor-" + "k" * 24}
    response = client.get("/health/", HTTP_AUTHORIZATION="Bearer monitor-" + "k" * 24)
    assert response.status_code == 200
    body = json.loads(response.content)
    assert body["status"] == "ok" and body["database"] is True and body["queue"]["ok"] is True


def test_health_says_503_when_the_queue_is_stuck(client):
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import OrmQ

    OrmQ.objects.create(key="kashforce", payload="x", lock=timezone.now() - timedelta(hours=1))
    client.force_login(factories.UserFactory(is_superuser=True))
    response = client.get("/health/")
    assert response.status_code == 503
    assert json.loads(response.content)["queue"]["stuck"] is True


def test_login_page_is_the_product(client):
    response = client.get("/login/")
    assert response.status_code == 200
    assert b"Sign in to kashforce" in response.content


def test_real_login_with_password_reaches_the_overview(ops_user):
    client = Client()
    response = client.post(
        "/login/", {"username": "olivia", "password": "correct horse battery"}, follow=True
    )
    assert response.status_code == 200
    assert b"Overview" in response.content


def test_roles_exist_with_the_right_permissions():
    ops = Group.objects.get(name="Operations")
    admins = Group.objects.get(name="Integration admin")
    ops_perms = set(ops.permissions.values_list("codename", flat=True))
    admin_perms = set(admins.permissions.values_list("codename", flat=True))
    assert "operate_sync" in ops_perms and "administer_integration" not in ops_perms
    assert "change_connection" not in ops_perms
    assert {
        "operate_sync",
        "administer_integration",
        "change_connection",
        "change_mappingset",
    } <= admin_perms


def test_operations_user_cannot_edit_connections_in_the_console(client, ops_user):
    ops_user.is_staff = True
    ops_user.save()
    client.force_login(ops_user)
    assert client.get(reverse("admin:integration_connection_add")).status_code == 403
    assert client.get(reverse("admin:integration_mappingset_add")).status_code == 403


def test_integration_admin_can_add_a_connection_without_seeing_secrets_back(client, admin_user):
    admin_user.is_staff = True
    admin_user.save()
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:integration_connection_add"),
        {
            "name": "KashFlow live",
            "kind": "kashflow",
            "environment": "production",
            "auth_method": "kf_password",
            "base_url": "https://api.kashflow.com/v2",
            "api_version": "59.0",
            "username": "accounts@example.co.uk",
            "is_active": "on",
            "password": "Hunter2-secret",
            "memorable_word": "pineapple",
        },
    )
    assert response.status_code == 302, response.content
    from integration.models import Connection

    connection = Connection.objects.get(name="KashFlow live")
    assert connection.get_secret("memorable_word") == "pineapple"
    page = client.get(reverse("admin:integration_connection_change", args=[connection.pk]))
    assert b"Hunter2-secret" not in page.content and b"pineapple" not in page.content
    assert b"Stored. Leave blank to keep it." in page.content
