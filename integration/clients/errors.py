"""The one error type both API clients raise, and the plain words for network failures.

Every failure says whether it is **permanent** (a person must fix something: a validation rule,
a missing field, a duplicate, a wrong password) or **transient** (timeouts, resets, 429, 5xx,
locks: trying again later will do). The sync engine retries transient failures and puts permanent
ones in the error queue, showing `message` to a finance user, so it is written for them.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import requests

from integration.secrets import redact


class ApiError(Exception):
    """A Salesforce or KashFlow call that failed.

    message:     plain words a finance user can act on (secrets already redacted)
    permanent:   True when trying again will not help until a person changes something
    code:        the API's own code (INVALID_EMAIL_ADDRESS, InvalidSessionToken) or ours
                 (timeout, unreachable, connection_reset, certificate)
    status:      the HTTP status, None when no answer came
    system:      "salesforce" or "kashflow"
    retry_after: seconds the server asked us to wait, when it said
    ambiguous:   True when a write was sent but its answer was lost: it may have been saved
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        system: str,
        code: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
    ):
        self.message = redact(message)
        super().__init__(self.message)
        self.permanent = permanent
        self.system = system
        self.code = code
        self.status = status
        self.retry_after = retry_after
        self.ambiguous = ambiguous

    @property
    def transient(self) -> bool:
        return not self.permanent

    def __repr__(self) -> str:
        kind = "permanent" if self.permanent else "transient"
        return f"<ApiError {self.system} {kind} {self.code or self.status}: {self.message}>"


SYSTEM_NAMES = {"salesforce": "Salesforce", "kashflow": "KashFlow"}


def network_error(system: str, method: str, exc: requests.RequestException) -> ApiError:
    """Plain words for a call that got no HTTP answer: unreachable, timed out, cut off, bad TLS."""
    host = urlsplit(getattr(exc.request, "url", "") or "").hostname or SYSTEM_NAMES[system]
    detail = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return ApiError(
            f"The server's certificate is not trusted: {_ssl_reason(detail)} ({host}).",
            permanent=True,
            system=system,
            code="certificate",
        )
    sent = not isinstance(exc, requests.exceptions.ConnectTimeout) and not _never_connected(detail)
    # A write whose answer was lost may have been saved: the caller must look before repeating it.
    ambiguous = sent and method.upper() not in ("GET", "HEAD", "OPTIONS")
    maybe = " The change may have been saved; kashforce checks before trying again." * ambiguous
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        message, code = f"Could not reach {host} (no answer to the connection).", "timeout"
    elif isinstance(exc, requests.exceptions.Timeout):
        message, code = f"{host} did not answer in time.{maybe}", "timeout"
    elif "refused" in detail.lower():
        message, code = f"Could not reach {host} (connection refused).", "unreachable"
    elif _name_not_found(detail):
        message, code = f"Could not reach {host} (the name does not resolve).", "unreachable"
    else:
        message, code = f"The connection to {host} was cut off.{maybe}", "connection_reset"
    return ApiError(message, permanent=False, system=system, code=code, ambiguous=ambiguous)


def _never_connected(detail: str) -> bool:
    return "refused" in detail.lower() or _name_not_found(detail)


def _name_not_found(detail: str) -> bool:
    markers = ("NameResolutionError", "Name or service not known", "getaddrinfo", "nodename")
    return any(marker in detail for marker in markers)


def _ssl_reason(detail: str) -> str:
    # "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate
    # (_ssl.c:1006)" -> "certificate verify failed: self-signed certificate"
    match = re.search(r"certificate verify failed: ([^(\"')]+)", detail)
    if match:
        return f"certificate verify failed: {match.group(1).strip()}"
    match = re.search(r"(Hostname mismatch[^\"')]*)", detail)
    return match.group(1).strip() if match else "the TLS handshake failed"
