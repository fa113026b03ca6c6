"""Secrets at rest: Fernet encryption with keys from the environment, and log redaction.

Keys come from settings.ENCRYPTION_KEYS (KASHFORCE_ENCRYPTION_KEYS), newest first. Encryption always
uses the newest key; decryption tries each (MultiFernet), so a key can be rotated in without a
flag day, and `manage.py rotate_keys` re-encrypts every stored secret with the newest one.
"""

import json
import logging
import threading
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

REDACTED = "[redacted]"


class SecretDecryptionError(Exception):
    """A stored secret could not be decrypted with any configured key.

    Raised instead of ever handing back ciphertext as if it were the secret.
    """


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("KASHFORCE_ENCRYPTION_KEYS is empty: secrets cannot be stored.")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError:
        raise ImproperlyConfigured(
            "KASHFORCE_ENCRYPTION_KEYS holds a value that is not a Fernet key "
            "(32 url-safe base64-encoded bytes; make one with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)."
        ) from None


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.ENCRYPTION_KEYS))


def encrypt_json(values: dict) -> str:
    """Encrypt a dict of secrets with the newest key; the empty dict is stored as ''."""
    if not values:
        return ""
    return fernet().encrypt(json.dumps(values, sort_keys=True).encode()).decode()


def decrypt_json(token: str) -> dict:
    if not token:
        return {}
    try:
        values = json.loads(fernet().decrypt(token.encode()))
    except InvalidToken:
        raise SecretDecryptionError(
            "A stored secret cannot be decrypted with the configured KASHFORCE_ENCRYPTION_KEYS. "
            "Was a key removed before `manage.py rotate_keys` re-encrypted the data?"
        ) from None
    remember(*values.values())
    return values


def rotate(token: str) -> str:
    """Re-encrypt a token with the newest key (MultiFernet.rotate)."""
    if not token:
        return token
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretDecryptionError(
            "A stored secret cannot be decrypted with any configured key; nothing was rotated."
        ) from None


# Every secret decrypted in this process, so that the log filter can scrub it should one ever
# slip into a message (an exception from a library that echoes a request body, say).
_known: set[str] = set()
_known_lock = threading.Lock()
MIN_REDACT_LENGTH = 4


def remember(*values: object) -> None:
    with _known_lock:
        for value in values:
            if isinstance(value, str) and len(value) >= MIN_REDACT_LENGTH:
                _known.add(value)


def redact(text: str) -> str:
    """Replace every known secret in text. Longest first, so a token's prefix can't survive."""
    if not text:
        return text
    with _known_lock:
        secrets = sorted(_known, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
