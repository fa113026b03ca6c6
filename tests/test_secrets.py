import io
import logging
import sqlite3

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection as db_connection

from integration import secrets
from integration.models import Connection
from tests.factories import KashFlowConnectionFactory, SalesforceConnectionFactory

pytestmark = pytest.mark.django_db

PLAINTEXTS = ["Tr0ub4dor&3", "pineapple", "s3cret-Pass", "TOKENabc123"]


def _all_rows_text() -> str:
    with db_connection.cursor() as cursor:
        tables = db_connection.introspection.table_names(cursor)
        chunks = []
        for table in tables:
            cursor.execute(f'SELECT * FROM "{table}"')
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def test_saved_connection_secrets_are_not_in_any_table():
    KashFlowConnectionFactory()
    SalesforceConnectionFactory(is_active=True)
    dump = _all_rows_text()
    for plaintext in PLAINTEXTS:
        assert plaintext not in dump


@pytest.mark.django_db(transaction=True)
def test_sqlite_database_file_holds_no_plaintext_secret(tmp_path):
    if db_connection.vendor != "sqlite":
        pytest.skip("checks the SQLite file itself; test_saved_connection_secrets_... covers all")
    KashFlowConnectionFactory()
    # Copy the in-test database through SQLite's own backup API and read the raw bytes.
    target = tmp_path / "copy.sqlite3"
    with sqlite3.connect(target) as copy:
        db_connection.connection.backup(copy)
    raw = target.read_bytes()
    for plaintext in ["Tr0ub4dor&3", "pineapple"]:
        assert plaintext.encode() not in raw


def test_secrets_decrypt_back_to_the_values_given():
    connection = KashFlowConnectionFactory()
    fresh = Connection.objects.get(pk=connection.pk)
    assert fresh.get_secret("password") == "Tr0ub4dor&3"
    assert fresh.get_secret("memorable_word") == "pineapple"


def test_blank_secret_keeps_the_stored_one():
    connection = KashFlowConnectionFactory()
    connection.set_secrets(password="", memorable_word=None)
    assert connection.get_secret("password") == "Tr0ub4dor&3"


def test_wrong_key_raises_a_clear_error_not_ciphertext(settings):
    connection = KashFlowConnectionFactory()
    settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    fresh = Connection.objects.get(pk=connection.pk)
    with pytest.raises(secrets.SecretDecryptionError, match="cannot be decrypted"):
        fresh.get_secret("password")


def test_missing_key_configuration_is_reported(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.ENCRYPTION_KEYS = []
    with pytest.raises(ImproperlyConfigured, match="KASHFORCE_ENCRYPTION_KEYS"):
        KashFlowConnectionFactory()


def test_rotate_keys_reencrypts_with_the_newest_key(settings):
    old_key = settings.ENCRYPTION_KEYS[0]
    connection = KashFlowConnectionFactory()
    new_key = Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [new_key, old_key]
    call_command("rotate_keys", stdout=io.StringIO())
    settings.ENCRYPTION_KEYS = [new_key]  # the old key can now be dropped
    assert Connection.objects.get(pk=connection.pk).get_secret("password") == "Tr0ub4dor&3"


def test_repr_and_str_hold_no_secret():
    connection = KashFlowConnectionFactory()
    connection.get_secrets()
    for text in (repr(connection), str(connection)):
        assert "Tr0ub4dor&3" not in text and "pineapple" not in text


def test_log_filter_scrubs_a_decrypted_secret(caplog):
    connection = KashFlowConnectionFactory()
    password = Connection.objects.get(pk=connection.pk).get_secret("password")
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "login failed for %s", (password,), None
    )
    secrets.RedactSecretsFilter().filter(record)
    assert password not in record.getMessage()
    assert secrets.REDACTED in record.getMessage()


def test_error_rows_never_store_a_secret():
    from tests.factories import SyncEventFactory

    connection = KashFlowConnectionFactory()
    password = Connection.objects.get(pk=connection.pk).get_secret("password")
    event = SyncEventFactory()
    event.mark_failed(f"KashFlow said: bad password {password}", permanent=True)
    event.refresh_from_db()
    assert password not in event.message
