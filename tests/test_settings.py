import os
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent


def _run(args, **env):
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_passes_with_production_variables(tmp_path):
    result = _run(
        ["check", "--deploy", "--fail-level", "WARNING"],
        DEBUG="false",
        SECRET_KEY="x" * 60 + "production-secret-key-material",
        KASHFORCE_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="kashforce.example.co.uk",
        KASHFORCE_VAR_DIR=str(tmp_path),
        CACHE_URL="dbcache://kashforce_cache",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_warns_about_a_per_process_cache(tmp_path):
    result = _run(
        ["check", "--deploy", "--fail-level", "WARNING"],
        DEBUG="false",
        SECRET_KEY="x" * 60 + "production-secret-key-material",
        KASHFORCE_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="kashforce.example.co.uk",
        KASHFORCE_VAR_DIR=str(tmp_path),
        CACHE_URL="",
        REDIS_URL="",
    )
    assert result.returncode != 0
    assert "kashforce.W003" in result.stderr + result.stdout
    assert "failed sign-ins" in result.stderr + result.stdout


def test_the_cache_follows_cache_url_else_redis_url(tmp_path):
    show = "from django.conf import settings; print(settings.CACHES['default']['BACKEND'])"
    by_redis = _run(
        ["shell", "-c", show], REDIS_URL="redis://127.0.0.1:6379/3", CACHE_URL="",
        KASHFORCE_VAR_DIR=str(tmp_path),
    )  # fmt: skip
    assert "django.core.cache.backends.redis.RedisCache" in by_redis.stdout, by_redis.stderr
    by_url = _run(
        ["shell", "-c", show], REDIS_URL="redis://127.0.0.1:6379/3",
        CACHE_URL="dbcache://kashforce_cache", KASHFORCE_VAR_DIR=str(tmp_path),
    )  # fmt: skip
    assert "django.core.cache.backends.db.DatabaseCache" in by_url.stdout, by_url.stderr
    default = _run(["shell", "-c", show], REDIS_URL="", CACHE_URL="",
                   KASHFORCE_VAR_DIR=str(tmp_path))  # fmt: skip
    assert "LocMemCache" in default.stdout, default.stderr


def test_check_deploy_warns_without_an_encryption_key(tmp_path):
    result = _run(
        ["check", "--deploy", "--fail-level", "WARNING"],
        DEBUG="false",
        SECRET_KEY="x" * 60 + "production-secret-key-material",
        KASHFORCE_ENCRYPTION_KEYS="",
        ALLOWED_HOSTS="kashforce.example.co.uk",
        KASHFORCE_VAR_DIR=str(tmp_path),
    )
    assert result.returncode != 0
    assert "kashforce.W001" in result.stderr + result.stdout


def test_malformed_variable_stops_the_start_with_its_name(tmp_path):
    result = _run(["check"], Q_WORKERS="two", KASHFORCE_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "Q_WORKERS is not valid" in result.stderr


def test_timeout_not_below_retry_is_refused(tmp_path):
    result = _run(["check"], Q_TIMEOUT="900", Q_RETRY="600", KASHFORCE_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "Q_TIMEOUT must be smaller than Q_RETRY" in result.stderr


def test_an_unknown_invoice_source_is_refused(tmp_path):
    result = _run(["check"], KASHFORCE_INVOICE_FROM="quotes", KASHFORCE_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "KASHFORCE_INVOICE_FROM is not valid" in result.stderr


def test_sqlite_default_uses_wal_and_immediate_transactions():
    from django.conf import settings
    from django.db import connection

    if connection.vendor != "sqlite":
        return
    assert settings.DATABASES["default"]["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in settings.DATABASES["default"]["OPTIONS"]["init_command"]


def test_redis_url_selects_the_redis_broker(tmp_path):
    result = _run(
        [
            "shell",
            "-c",
            "from django.conf import settings; print(settings.Q_CLUSTER.get('redis'), 'orm' in settings.Q_CLUSTER)",
        ],
        REDIS_URL="redis://127.0.0.1:6379/3",
        KASHFORCE_VAR_DIR=str(tmp_path),
    )
    assert "redis://127.0.0.1:6379/3 False" in result.stdout, result.stderr
