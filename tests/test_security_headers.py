"""Security headers on every response, and what production adds."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.urls import reverse

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def test_pages_carry_the_security_headers(ops_client):
    response = ops_client.get(reverse("dashboard:overview"))
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "camera=()" in response["Permissions-Policy"]
    # htmx is told not to inject inline styles or eval anything, which the policy would block.
    assert '"includeIndicatorStyles": false' in response.content.decode()


def test_the_sign_in_page_and_the_webhook_carry_them_too(client):
    for response in (client.get("/login/"), client.get("/health/")):
        assert "default-src 'self'" in response["Content-Security-Policy"]
        assert response["X-Frame-Options"] == "DENY"


def test_production_adds_hsts_secure_cookies_and_the_https_redirect(tmp_path):
    script = (
        "from django.conf import settings; from django.test import Client;"
        "secure = Client().get('/health/', secure=True, HTTP_HOST='kashforce.example.co.uk');"
        "plain = Client().get('/health/', HTTP_HOST='kashforce.example.co.uk');"
        "print(secure['Strict-Transport-Security']);"
        "print(plain.status_code, plain['Location']);"
        "print(settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE)"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env={
            **os.environ,
            "DEBUG": "false",
            "SECRET_KEY": "x" * 60 + "production-secret-key-material",
            "KASHFORCE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "ALLOWED_HOSTS": "kashforce.example.co.uk",
            "KASHFORCE_VAR_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.splitlines()[-3:]  # (after shell's own banner)
    assert lines == [
        "max-age=31536000; includeSubDomains; preload",
        "301 https://kashforce.example.co.uk/health/",
        "True True",
    ], result.stdout + result.stderr
