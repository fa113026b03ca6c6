"""Issue #15 case 3: behind the proxy a stranger cannot lock out the real admin (the client's
address comes from X-Forwarded-For only through trusted proxies, and a lock holds a name for
the address that failed only), and two-step sign-in (TOTP) for Integration admins."""

import re
import time
from datetime import timedelta

import pytest
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from integration.access import client_address
from integration.models import SyncRun
from tests import factories

pytestmark = pytest.mark.django_db

RIGHT, WRONG = "correct horse battery", "wrong horse"
PROXY = "10.0.0.5"


@pytest.fixture
def behind_proxy(settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "TRUSTED_PROXIES": ["10.0.0.0/24"]}


def through_proxy(password, forwarded_for, username="ada", otp_token=""):
    """A sign-in as the documented proxy sends it: from the proxy's address, with the
    address it saw appended to X-Forwarded-For."""
    client = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=forwarded_for)
    data = {"username": username, "password": password}
    if otp_token:
        data["otp_token"] = otp_token
    return client, client.post("/login/", data)


# The client's address -------------------------------------------------------------------------


def request_from(remote, forwarded=None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_without_trusted_proxies_the_header_is_ignored(settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "TRUSTED_PROXIES": []}
    assert client_address(request_from("203.0.113.9", "198.51.100.1")) == "203.0.113.9"


def test_a_header_from_an_untrusted_address_is_ignored(behind_proxy):
    assert client_address(request_from("203.0.113.9", "198.51.100.1")) == "203.0.113.9"


def test_through_trusted_proxies_the_nearest_untrusted_hop_is_the_client(behind_proxy):
    # The client forged "1.2.3.4"; the proxy appended what it saw; a second trusted hop too.
    forwarded = "1.2.3.4, 203.0.113.66, 10.0.0.7"
    assert client_address(request_from(PROXY, forwarded)) == "203.0.113.66"
    assert client_address(request_from(PROXY, "")) == PROXY


def test_a_malformed_trusted_proxy_setting_stops_the_start(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {
        **os.environ,
        "KASHFORCE_TRUSTED_PROXIES": "10.0.0.0/24,not-an-address",
        "KASHFORCE_VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "kashforce.settings",
    }
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "KASHFORCE_TRUSTED_PROXIES is not valid: 'not-an-address'" in result.stderr


# Locking out ------------------------------------------------------------------------------------


def test_behind_the_proxy_a_stranger_cannot_lock_out_the_real_admin(admin_user, behind_proxy):
    for _ in range(5):
        _, response = through_proxy(WRONG, "203.0.113.66")
    assert response.status_code == 429  # the stranger is locked out ...
    client, response = through_proxy(RIGHT, "198.51.100.7")
    assert response.status_code == 302  # ... the real admin elsewhere is not
    assert client.session["_auth_user_id"] == str(admin_user.pk)


def test_a_stranger_cannot_dodge_the_lock_by_forging_the_header(admin_user, behind_proxy):
    for n in range(5):
        through_proxy(WRONG, f"192.0.2.{n}, 203.0.113.66")
    _, response = through_proxy(RIGHT, "192.0.2.200, 203.0.113.66")
    assert response.status_code == 429


def test_without_trusted_proxies_a_forged_header_changes_nothing(admin_user):
    for n in range(5):
        Client(REMOTE_ADDR="203.0.113.66", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}").post(
            "/login/", {"username": "ada", "password": WRONG}
        )
    response = Client(REMOTE_ADDR="203.0.113.66").post(
        "/login/", {"username": "ada", "password": RIGHT}
    )
    assert response.status_code == 429


# Two-step sign-in -------------------------------------------------------------------------------


def current_code(device: TOTPDevice, steps_ahead: int = 0) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + steps_ahead * device.step
    return f"{totp.token():0{device.digits}d}"


def show_key(client) -> str:
    return client.post(reverse("dashboard:two_factor"), {"action": "new"}).content.decode()


def confirm(client, device, code):
    return client.post(
        reverse("dashboard:two_factor"), {"action": "confirm", "device": device.pk, "code": code}
    )


def enrol(client) -> TOTPDevice:
    page = show_key(client)
    device = TOTPDevice.objects.get(confirmed=False)
    response = confirm(client, device, current_code(device))
    assert response.status_code == 302, page
    device.refresh_from_db()
    assert device.confirmed
    return device


def test_the_enrolment_page_shows_a_qr_code_and_the_key_made_here(admin_client_):
    assert (
        "Show a key to scan" in admin_client_.get(reverse("dashboard:two_factor")).content.decode()
    )
    assert not TOTPDevice.objects.exists()  # a GET makes nothing
    page = show_key(admin_client_)
    device = TOTPDevice.objects.get()
    main = page.split("<main", 1)[1].split("</main>", 1)[0]
    assert "<svg" in main and "<script" not in main  # made here, no script, works offline
    assert "otpauth://totp/kashforce%3Aada?secret=" in page
    secret = re.search(r"Or type this key into the app: <code>([A-Z2-7 ]+)</code>", page)[1]
    from base64 import b32encode

    assert secret.replace(" ", "") == b32encode(device.bin_key).decode().rstrip("=")
    # Asked again before confirming: a new key; the first one is gone.
    show_key(admin_client_)
    assert TOTPDevice.objects.get().pk != device.pk
    assert (
        "has been replaced" in confirm(admin_client_, device, current_code(device)).content.decode()
    )


def test_a_wrong_code_does_not_turn_it_on(admin_client_):
    show_key(admin_client_)
    device = TOTPDevice.objects.get()
    response = confirm(admin_client_, device, "000000")
    assert "That code did not match" in response.content.decode()
    device.refresh_from_db()
    assert not device.confirmed


def test_once_on_the_key_is_never_shown_again(admin_client_):
    device = enrol(admin_client_)
    page = admin_client_.get(reverse("dashboard:two_factor")).content.decode()
    assert "Two-step sign-in is <strong>on</strong>" in page
    assert "otpauth://" not in page and "<svg" not in page
    assert TOTPDevice.objects.get().pk == device.pk


def test_with_two_step_on_the_password_alone_is_not_enough(admin_user, admin_client_):
    device = enrol(admin_client_)
    client = Client(REMOTE_ADDR="198.51.100.7")
    response = client.post("/login/", {"username": "ada", "password": RIGHT})
    assert response.status_code == 200
    assert "Enter the 6-digit code from your authenticator app as well" in response.content.decode()
    assert "_auth_user_id" not in client.session

    response = client.post("/login/", {"username": "ada", "password": RIGHT, "otp_token": "123456"})
    assert "That code is not right" in response.content.decode()
    assert "_auth_user_id" not in client.session
    response = client.post(
        "/login/", {"username": "ada", "password": RIGHT, "otp_token": current_code(device)}
    )
    assert "Too many wrong codes" in response.content.decode()  # django-otp's backoff
    assert "_auth_user_id" not in client.session

    TOTPDevice.objects.update(throttling_failure_timestamp=timezone.now() - timedelta(minutes=1))
    device.refresh_from_db()
    response = client.post(
        "/login/",
        {"username": "ada", "password": RIGHT, "otp_token": current_code(device, steps_ahead=1)},
    )
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(admin_user.pk)


def test_the_console_sign_in_cannot_skip_the_code(admin_user, admin_client_):
    admin_user.is_staff = True
    admin_user.save()
    enrol(admin_client_)
    client = Client()
    response = client.post("/admin/login/", {"username": "ada", "password": RIGHT})
    assert "sign in on the main sign-in page" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_admins_can_be_required_to_turn_it_on(admin_user, ops_user, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "REQUIRE_TWO_FACTOR_FOR_ADMINS": True}
    admin = Client()
    admin.force_login(admin_user)
    response = admin.get(reverse("dashboard:connections"))
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:two_factor")
    assert "Integration admins must use two-step sign-in" in (
        admin.get(reverse("dashboard:two_factor")).content.decode()
    )
    assert admin.post(reverse("dashboard:sync_now"), {"flow": "customers"}).status_code == 302
    assert not SyncRun.objects.exists()  # sent to enrol, nothing started
    enrol(admin)
    assert admin.get(reverse("dashboard:connections")).status_code == 200

    ops = Client()
    ops.force_login(ops_user)
    assert ops.get(reverse("dashboard:connections")).status_code == 200  # not required of ops


def test_a_required_admin_signed_in_without_a_code_must_sign_in_again(admin_user, settings):
    device = TOTPDevice.objects.create(user=admin_user, name="phone", confirmed=True)
    settings.KASHFORCE = {**settings.KASHFORCE, "REQUIRE_TWO_FACTOR_FOR_ADMINS": True}
    client = Client()
    client.force_login(admin_user)  # a session from before the requirement, without a code
    assert client.get(reverse("dashboard:audit"))["Location"] == reverse("dashboard:two_factor")
    client.post(reverse("logout"))
    client.post(
        "/login/", {"username": "ada", "password": RIGHT, "otp_token": current_code(device)}
    )
    assert client.get(reverse("dashboard:audit")).status_code == 200


def test_the_console_never_shows_an_authenticators_key(admin_user, admin_client_):
    device = enrol(admin_client_)
    root = Client()
    root.force_login(factories.UserFactory(username="root", is_staff=True, is_superuser=True))
    page = root.get(reverse("admin:otp_totp_totpdevice_change", args=[device.pk]))
    assert page.status_code == 200
    from base64 import b32encode

    text = page.content.decode()
    assert device.key not in text and b32encode(device.bin_key).decode()[:16] not in text
    assert root.get(f"/admin/otp_totp/totpdevice/{device.pk}/config/").status_code in (302, 404)
    # A lost phone: the device can be removed, and its owner enrols again.
    root.post(reverse("admin:otp_totp_totpdevice_delete", args=[device.pk]), {"post": "yes"})
    assert not TOTPDevice.objects.exists()
