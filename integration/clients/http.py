"""The HTTP seam both clients share: default timeouts, the CA bundle, retries with backoff.

`ApiSession` is a `requests.Session`, so simple-salesforce can use it unmodified (it accepts a
`session=`) and every call it makes, logins included, gets the same timeout and retry policy.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime

import requests
from django.conf import settings
from django.utils import timezone

log = logging.getLogger(__name__)

# Statuses that mean "not now": the server did not do the work and asks us to come back.
RETRY_STATUSES = {429, 500, 502, 503, 504}
# For a POST (not idempotent) only answers that promise nothing was done are retried: a 500 or a
# timeout after sending may hide a committed write, and a second POST would create a duplicate.
SAFE_POST_RETRY_STATUSES = {429, 503}


@dataclass
class RetryPolicy:
    attempts: int
    backoff: float  # seconds before the second attempt; doubles each time, with jitter
    max_wait: float  # never sleep longer than this; a longer Retry-After ends the retries

    @classmethod
    def from_settings(cls) -> RetryPolicy:
        conf = settings.KASHFORCE
        return cls(conf["HTTP_ATTEMPTS"], conf["HTTP_BACKOFF"], conf["HTTP_MAX_WAIT"])

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None when we should stop now."""
        if attempt >= self.attempts:
            return None
        if retry_after is not None and retry_after > self.max_wait:
            return None
        exponential = min(self.max_wait, self.backoff * 2 ** (attempt - 1))
        # "Equal jitter": half fixed, half random, so a fleet of workers that failed together
        # does not come back together.
        wait = exponential / 2 + random.uniform(0, exponential / 2)
        return max(wait, retry_after or 0)


def sleep(seconds: float) -> None:
    """Indirection so tests can record the waits instead of sleeping through them."""
    time.sleep(seconds)


def retry_after_seconds(response: requests.Response) -> float | None:
    """The Retry-After header as seconds: either a number or an HTTP date."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
    except (TypeError, ValueError):
        return None


class ApiSession(requests.Session):
    """A session with (connect, read) timeouts on every call and bounded, jittered retries.

    `retryable(response)` says whether an answer is worth another attempt (429, 5xx, and each
    API's own "busy" answers); a POST is retried only when nothing can have been written.
    """

    def __init__(
        self,
        system: str,
        ca_file: str = "",
        retryable: Callable[[requests.Response], bool] | None = None,
        policy: RetryPolicy | None = None,
    ):
        super().__init__()
        self.system = system
        self.timeout = tuple(settings.KASHFORCE["HTTP_TIMEOUT"])
        self.policy = policy or RetryPolicy.from_settings()
        self.retryable = retryable or (lambda response: response.status_code in RETRY_STATUSES)
        self.headers["User-Agent"] = "kashforce"
        if ca_file:
            self.verify = ca_file
            # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override Session.verify
            # (psf/requests#3829), so a configured CA file only holds with trust_env off.
            self.trust_env = False

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        attempt = 1
        while True:
            try:
                response = super().request(method, url, **kwargs)
            except requests.RequestException as exc:
                wait = self.policy.delay(attempt) if _may_retry_error(method, exc) else None
                if wait is None:
                    raise
                reason = type(exc).__name__
            else:
                if not self._may_retry_response(method, response):
                    return response
                wait = self.policy.delay(attempt, retry_after_seconds(response))
                if wait is None:
                    return response
                reason = f"HTTP {response.status_code}"
                response.close()
            log.warning(
                "%s %s %s: %s; attempt %d of %d again in %.2fs",
                self.system,
                method,
                _path(url),
                reason,
                attempt + 1,
                self.policy.attempts,
                wait,
            )
            sleep(wait)
            attempt += 1

    def _may_retry_response(self, method: str, response: requests.Response) -> bool:
        if method.upper() == "POST" and response.status_code not in SAFE_POST_RETRY_STATUSES:
            return False
        return self.retryable(response)


def _may_retry_error(method: str, exc: requests.RequestException) -> bool:
    if isinstance(exc, requests.exceptions.SSLError | requests.exceptions.InvalidURL):
        return False  # configuration, not luck
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True  # nothing was sent
    if not isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return False
    if method.upper() != "POST":
        return True
    # A POST is repeated only if it never left: connection refused or no such host.
    detail = str(exc).lower()
    return "refused" in detail or "name or service not known" in detail


def _path(url: str) -> str:
    """The URL without its query string: SOQL and searches carry customer data."""
    return url.split("?", 1)[0]


# --------------------------------------------------------------------------------------------
# JSON with exact money


def dumps(obj, convert: Callable[[object], object] | None = None) -> str:
    """JSON text in which a Decimal is written as the number it is, never through a float.

    `convert` may turn other values (dates) into JSON-able ones first.
    """
    return "".join(_encode(obj, convert))


def _encode(obj, convert):
    if convert is not None:
        obj = convert(obj)
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ValueError(f"{obj} is not a number JSON can carry")
        yield format(obj, "f")
    elif isinstance(obj, dict):
        yield "{"
        for index, (key, value) in enumerate(obj.items()):
            yield ("," if index else "") + json.dumps(str(key)) + ":"
            yield from _encode(value, convert)
        yield "}"
    elif isinstance(obj, list | tuple):
        yield "["
        for index, value in enumerate(obj):
            yield "," if index else ""
            yield from _encode(value, convert)
        yield "]"
    elif isinstance(obj, datetime | date):
        yield json.dumps(obj.isoformat())
    else:
        yield json.dumps(obj, allow_nan=False)
