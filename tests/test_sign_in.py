"""Signing in (throttled) and how long a session lasts."""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

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


def test_the_lock_ends_after_the_lockout(ops_user):
    for _ in range(5):
        sign_in(WRONG)
    # The lockout counts from the last counted failure (django-axes' attempt_time).
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=14))
    _, response = sign_in(RIGHT)
    assert "wait 1 minutes" in response.content.decode()
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=15, seconds=1))
    _, response = sign_in(RIGHT)
    assert response.status_code == 302


def test_attempts_while_locked_do_not_extend_the_lock(ops_user):
    for _ in range(5):
        sign_in(WRONG)
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=10))
    for _ in range(3):
        assert sign_in(WRONG)[1].status_code == 429
    assert "wait 5 minutes" in sign_in(RIGHT)[1].content.decode()


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


# The count lives in the database every web process shares -----------------------------------


def test_the_count_is_kept_in_the_database_without_the_password(ops_user):
    for _ in range(3):
        sign_in("Hunter2-guess")
    attempt = AccessAttempt.objects.get()
    assert (attempt.username, attempt.ip_address, attempt.failures_since_start) == (
        "olivia",
        "203.0.113.7",
        3,
    )
    assert "Hunter2-guess" not in attempt.post_data


def test_the_name_counts_whatever_its_case(ops_user):
    for name in ("olivia", "OLIVIA", "Olivia ", "oLiViA", "olivia"):
        sign_in(WRONG, username=name)
    assert sign_in(RIGHT)[1].status_code == 429


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
