"""Signing in (throttled) and how long a session lasts."""

import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.utils import timezone

from integration.access import ThrottledAuthenticationForm, _attempts_keys
from tests.chaos_runner import redis_url

pytestmark = pytest.mark.django_db

RIGHT, WRONG = "correct horse battery", "wrong horse"


def sign_in(password, username="olivia", address="203.0.113.7", path="/login/"):
    client = Client(REMOTE_ADDR=address)
    return client, client.post(path, {"username": username, "password": password})


# Throttling ---------------------------------------------------------------------------------


def test_five_wrong_passwords_lock_the_sign_in_even_for_the_right_one(ops_user, settings):
    for _ in range(4):
        _, response = sign_in(WRONG)
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()
    _, response = sign_in(WRONG)
    assert response.status_code == 429
    assert "Too many attempts; wait 15 minutes before trying again." in response.content.decode()

    client, response = sign_in(RIGHT)
    assert response.status_code == 429  # locked: the right password is not even tried
    assert "_auth_user_id" not in client.session


def test_the_lock_is_per_username_and_address(ops_user):
    for _ in range(5):
        sign_in(WRONG)
    _, elsewhere = sign_in(RIGHT, address="198.51.100.20")
    assert elsewhere.status_code == 302
    _, other_name = sign_in(WRONG, username="someone-else")
    assert other_name.status_code == 200


def test_the_lock_ends_after_the_lockout(ops_user, monkeypatch):
    import time

    for _ in range(5):
        sign_in(WRONG)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 14 * 60)
    _, response = sign_in(RIGHT)
    assert "wait 1 minutes" in response.content.decode()
    monkeypatch.setattr(time, "time", lambda: now + 15 * 60 + 1)
    _, response = sign_in(RIGHT)
    assert response.status_code == 302


def test_a_good_sign_in_resets_the_count(ops_user):
    for _ in range(4):
        sign_in(WRONG)
    assert sign_in(RIGHT)[1].status_code == 302
    for _ in range(4):
        assert sign_in(WRONG)[1].status_code == 200


def test_the_consoles_sign_in_counts_too(ops_user):
    for _ in range(5):
        sign_in(WRONG, path="/admin/login/")
    _, response = sign_in(RIGHT)
    assert response.status_code == 429
    _, console = sign_in(RIGHT, path="/admin/login/")
    assert "Too many attempts" in console.content.decode()


def test_a_lockout_is_logged_without_the_password(ops_user, caplog):
    for _ in range(5):
        sign_in("Hunter2-guess")
    assert "sign-in locked for 15 minutes after 5 failures: username='olivia'" in caplog.text
    assert "Hunter2-guess" not in caplog.text


# A shared cache: every web process counts the same failures ------------------------------------


@pytest.fixture
def redis_cache(settings):
    url = redis_url(14)
    if url is None:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    }
    cache.clear()
    yield url
    cache.clear()


def test_failures_in_another_process_count_towards_the_lock(ops_user, redis_cache, tmp_path):
    """Four failures counted by another process (another gunicorn worker), then one here."""
    failures_key, _ = _attempts_keys("olivia", "203.0.113.7")
    code = (
        "import django; django.setup()\n"
        "from integration.access import ThrottledAuthenticationForm as Form\n"
        f"for _ in range(4): Form._count_failure({failures_key!r}, 900)\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kashforce.settings",
        "CACHE_URL": redis_cache,
        "KASHFORCE_VAR_DIR": str(tmp_path),
    }
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True, timeout=60)

    _, response = sign_in(WRONG)
    assert response.status_code == 429
    assert sign_in(RIGHT)[1].status_code == 429


def test_failures_at_the_same_moment_are_all_counted(redis_cache):
    failures_key, _ = _attempts_keys("olivia", "203.0.113.7")
    start = threading.Barrier(12)

    def fail_once():
        start.wait()
        ThrottledAuthenticationForm._count_failure(failures_key, 900)

    threads = [threading.Thread(target=fail_once) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.get(failures_key) == 12


def test_a_database_cache_made_by_migrate_holds_the_lock(ops_user, settings):
    from integration.apps import _create_cache_table

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "kashforce_cache",
        }
    }
    _create_cache_table(sender=None, using="default", verbosity=0)  # what migrate runs
    for _ in range(4):
        assert sign_in(WRONG)[1].status_code == 200
    assert sign_in(WRONG)[1].status_code == 429
    assert sign_in(RIGHT)[1].status_code == 429
    with connection.cursor() as cursor:
        cursor.execute("SELECT cache_key FROM kashforce_cache")
        keys = [row[0] for row in cursor.fetchall()]
    assert any("login-locked-until" in key for key in keys)
    assert not any("olivia" in key for key in keys)  # a digest, not the username


# Sessions -----------------------------------------------------------------------------------


def test_a_session_ends_with_the_browser_or_after_eight_hours(ops_user):
    client, response = sign_in(RIGHT)
    cookie = response.cookies["sessionid"]
    assert cookie["max-age"] == "" and cookie["expires"] == ""  # a browser-session cookie
    assert cookie["httponly"] is True and cookie["samesite"] == "Lax"
    session = Session.objects.get()
    assert abs(session.expire_date - (timezone.now() + timedelta(hours=8))) < timedelta(minutes=1)
    assert client.get("/").status_code == 200
    Session.objects.update(expire_date=timezone.now() - timedelta(seconds=1))
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
