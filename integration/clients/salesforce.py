"""The Salesforce client: the only code that speaks to Salesforce, on unmodified simple-salesforce.

Facts and pitfalls are in shared/reference/salesforce-api.md. How this module meets them:

- **One factory from a Connection.** `SalesforceClient(connection)` signs in with the
  connection's method (JWT bearer, recommended; client credentials; or, legacy, username +
  password + security token, i.e. SOAP login(), off in new orgs and gone from API 65.0)
  through simple-salesforce's own `SalesforceLogin`, then talks to the instance in *direct mode*
  (`session_id` + `instance_url`). simple-salesforce's own re-login is never armed, so its
  SFType endless-retry loop cannot happen; we sign in again once on a 401 and retry once.
- **The login host is configuration.** simple-salesforce always posts logins to
  `https://{domain}.salesforce.com`. For a login URL on salesforce.com we pass its domain; for
  any other login URL (a proxy, the local sandbox) we mount an adapter on the session that sends
  the stand-in salesforce.com host to the configured URL. Production needs no adapter.
- **Timeouts, CA bundle, retries** come from `ApiSession` (http.py), used for every call.
- **Money is Decimal**: responses parse with `parse_float=Decimal`; bodies we send are encoded
  by `http.dumps`, which writes a Decimal as its exact digits.
- **URI limit**: a query travels in the URL and Salesforce refuses URI plus headers over
  16,384 bytes; `query_in` cuts long IN lists into queries that fit.
- **Races**: an upsert that lost to a concurrent one (DUPLICATE_VALUE on its external id) is
  sent again once and updates the winner's record.
- **API budget**: `Sforce-Limit-Info` is read from every response by a hook on the session
  (simple-salesforce reads it only on some calls) and stored on the Connection.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode, urlsplit

import requests
from django.conf import settings
from django.utils import timezone
from requests.adapters import BaseAdapter
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceOperationError,
)
from simple_salesforce.format import quote_soql_value

from integration.clients import http
from integration.clients.errors import ApiError, network_error
from integration.clients.http import RETRY_STATUSES, ApiSession, dumps
from integration.models import Connection
from integration.secrets import remember

log = logging.getLogger(__name__)

SYSTEM = "salesforce"
DEFAULT_API_VERSION = "59.0"
COLLECTION_SIZE = 200  # sObject Collections take at most 200 records a call

# The custom fields kashforce writes, by object. The org must have them (External ID fields
# flagged "External ID" and "Unique"); the connection check names any that are missing.
#   Account / Contact / Product2 .ExternalID__c   the KashFlow key (customer Code, product)
#   Opportunity.KashFlow_Invoice_Number__c         the invoice created for a Closed Won deal
#   Opportunity.KashFlow_Invoice_Status__c         Unpaid / Part paid / Paid, written back
#   Opportunity.KashFlow_Amount_Due__c             currency: what is still owed
#   KashFlow_Payment__c                            one record per payment on the invoice:
#     ExternalID__c (KashFlow payment id), Opportunity__c (lookup), Amount__c (currency),
#     Payment_Date__c (date), Method__c (text), Invoice_Number__c (text)
REQUIRED_FIELDS: dict[str, list[str]] = {
    "Account": ["ExternalID__c"],
    "Contact": ["ExternalID__c"],
    "Product2": ["ExternalID__c"],
    "Opportunity": [
        "KashFlow_Invoice_Number__c",
        "KashFlow_Invoice_Status__c",
        "KashFlow_Amount_Due__c",
    ],
    "KashFlow_Payment__c": [
        "ExternalID__c",
        "Opportunity__c",
        "Amount__c",
        "Payment_Date__c",
        "Method__c",
        "Invoice_Number__c",
    ],
}
# With invoices from Orders (Connection.invoices_orders()), the Order carries the same three
# write-back fields; invoicing from both needs Order.OpportunityId too (not in every org), so
# that an Order of an invoiced Opportunity is not invoiced again.
ORDER_REQUIRED_FIELDS: dict[str, list[str]] = {
    "Order": ["KashFlow_Invoice_Number__c", "KashFlow_Invoice_Status__c", "KashFlow_Amount_Due__c"],
}


def required_fields(connection) -> dict[str, list[str]]:
    """The fields this connection's flows need, by object."""
    required = dict(REQUIRED_FIELDS)
    if connection.invoices_orders():
        order = list(ORDER_REQUIRED_FIELDS["Order"])
        if connection.invoices_opportunities():
            order.append("OpportunityId")
        required["Order"] = order
    return required


# How missing_fields() reports an object that does not exist at all.
OBJECT_MISSING = "(object)"
# The payment records hang off the Opportunity through this lookup; the admin names its child
# relationship (KashFlow_Payments__r by default) when creating it.
PAYMENT_OBJECT, PAYMENT_LOOKUP = "KashFlow_Payment__c", "Opportunity__c"

# Error codes that clear by themselves. REQUEST_LIMIT_EXCEEDED is the daily allocation (or too
# many long requests at once): transient, but not worth retrying within seconds.
TRANSIENT_CODES = {
    "UNABLE_TO_LOCK_ROW",
    "REQUEST_LIMIT_EXCEEDED",
    "SERVER_UNAVAILABLE",
    "QUERY_TIMEOUT",
    "TOO_MANY_REQUESTS",
}
RETRY_CODES = {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "QUERY_TIMEOUT"}

# Salesforce refuses a request whose URI plus headers pass 16,384 bytes (414 / 431; help
# article 000386264). A query goes in the URL, so the IN lists kashforce builds are cut to keep
# the encoded query within this budget, leaving half the room for the path and the headers.
QUERY_URL_BUDGET = 8192

WRONG_LOGIN = "Salesforce rejected the username, password or security token."
LOGIN_MESSAGES = {
    "INVALID_LOGIN": WRONG_LOGIN,
    "authentication failure": WRONG_LOGIN,
    "invalid_client_id": "Salesforce rejected the connected app's consumer key.",
    "invalid_client": "Salesforce rejected the connected app's consumer key or secret.",
    "invalid client credentials": "Salesforce rejected the connected app's consumer key or secret.",
    "user hasn't approved this consumer": (
        "The connected app is not approved for this user; in Salesforce set it to "
        "'Admin approved users are pre-authorized' and give the user its permission set."
    ),
    "invalid assertion": (
        "Salesforce did not accept the signed login: the certificate on the connected app must "
        "match the private key stored here."
    ),
    "expired authorization code": (
        "Salesforce found the signed login expired; check this server's clock."
    ),
    "LOGIN_MUST_USE_SECURITY_TOKEN": (
        "Salesforce wants the security token with the password (or this server's IP address "
        "allowed); add the token."
    ),
    "PASSWORD_LOCKOUT": (
        "The Salesforce user is locked after too many failed sign-ins; unlock it in Setup → Users."
    ),
    "API_DISABLED_FOR_ORG": "API access is turned off for this Salesforce org.",
    "API_CURRENTLY_DISABLED": (
        "API access is turned off for this Salesforce user (the 'API Enabled' permission)."
    ),
    "INVALID AUTH": (
        "Client credentials need your My Domain login URL "
        "(https://yourcompany.my.salesforce.com), not login or test.salesforce.com."
    ),
}
# Password sign-in is Salesforce's SOAP login(): off by default in orgs created from Winter '26,
# unavailable from API version 65.0 and retired in Summer '27.
PASSWORD_SIGN_IN_REFUSED = (
    "Salesforce no longer accepts password sign-in for this connection (SOAP API login() is "
    "switched off in new orgs, unavailable from API version 65.0 and retired in Summer '27). "
    "Switch the connection to JWT bearer sign-in (a connected app with a certificate; the "
    "README says how). Until then an admin can turn on 'Enable SOAP API login()' in Salesforce "
    "Setup → User Interface and keep the API version at 64.0 or lower."
)
PASSWORD_SIGN_IN_MESSAGES = {
    "INVALID_OPERATION": PASSWORD_SIGN_IN_REFUSED,
    "INSUFFICIENT_ACCESS": (
        "Salesforce refused password sign-in: the user lacks the 'Use Any API Auth' permission. "
        "Switch the connection to JWT bearer sign-in (recommended), or give the user that "
        "permission."
    ),
}


def soql_quote(value: object) -> str:
    """A value as a SOQL literal, quoted and escaped by simple-salesforce's own formatter."""
    return quote_soql_value(str(value))


def soql_list(values) -> str:
    """Values as the inside of a SOQL IN (...): each quoted, blanks left out."""
    return ", ".join(soql_quote(value) for value in values if value)


def query_url_bytes(soql: str) -> int:
    """Bytes the query takes in the URL (`q=` and its URL-encoding, as requests sends it)."""
    return len(urlencode({"q": soql}))


def query_chunks(build: Callable[[Sequence], str], values: list, budget: int) -> list[list]:
    """`values` cut into consecutive chunks whose `build(chunk)` fits `budget` bytes encoded.

    Raises ApiError (permanent, in plain words) if even one value makes a query too long.
    """
    chunks: list[list] = []
    chunk: list = []
    for value in values:
        if chunk and query_url_bytes(build([*chunk, value])) > budget:
            chunks.append(chunk)
            chunk = []
        chunk.append(value)
        if len(chunk) == 1 and query_url_bytes(build(chunk)) > budget:
            raise ApiError(
                "kashforce could not read this record from Salesforce: its query would be "
                "longer than Salesforce accepts in one request, even on its own.",
                permanent=True,
                system=SYSTEM,
                code="REQUEST_TOO_LONG",
            )
    if chunk:
        chunks.append(chunk)
    return chunks


@dataclass
class WriteResult:
    """The outcome of one record of a write, in the caller's order (`index` into its list)."""

    index: int
    id: str | None
    created: bool
    success: bool
    error: ApiError | None = None


# --------------------------------------------------------------------------------------------
# Errors


def _error_items(content) -> list[dict]:
    if isinstance(content, list):
        return [item for item in content if isinstance(item, dict)]
    return [content] if isinstance(content, dict) else []


def _retryable(response: requests.Response) -> bool:
    if response.status_code in RETRY_STATUSES:
        return True
    if response.status_code != 400:
        return False
    try:
        items = _error_items(response.json())
    except ValueError:
        return False
    return any(item.get("errorCode") in RETRY_CODES for item in items)


def record_error(errors: list[dict], what: str) -> ApiError:
    """An ApiError for one record's errors in a collections or bulk answer."""
    first = errors[0] if errors else {}
    code = first.get("statusCode") or first.get("errorCode") or "UNKNOWN"
    detail = "; ".join(str(error.get("message", "")).strip() for error in errors) or code
    fields = sorted({field for error in errors for field in error.get("fields") or []})
    if fields:
        detail += f" (fields: {', '.join(fields)})"
    return ApiError(
        f"Salesforce could not {what}: {detail}",
        permanent=code not in TRANSIENT_CODES,
        system=SYSTEM,
        code=code,
    )


def error_from_exception(exc: SalesforceError, what: str) -> ApiError:
    """Plain words for a simple-salesforce exception raised on an error answer."""
    status = getattr(exc, "status", None)
    items = _error_items(getattr(exc, "content", None))
    code = str(items[0].get("errorCode", "")) if items else ""
    detail = "; ".join(str(item.get("message", "")) for item in items) or f"HTTP {status}"
    # A 401 here came straight after a fresh sign-in (see _call): the next attempt signs in anew.
    transient = code in TRANSIENT_CODES or status in RETRY_STATUSES or status == 401
    if status in (414, 431):
        # Salesforce's front server refused the request for its length before reading it.
        # Nothing is wrong with the records: kashforce's own request was too long. Permanent,
        # since the same request fails the same way, but said so in plain words.
        message = (
            f"Salesforce refused kashforce's request to {what} as too long (HTTP {status}: "
            "more than 16,384 bytes of address and headers). The records themselves are fine; "
            "this is a kashforce fault: please report it."
        )
        code = "REQUEST_TOO_LONG"
    elif code == "REQUEST_LIMIT_EXCEEDED":
        message = (
            "Salesforce's API limit is used up (its daily allocation, or too many long calls "
            f"at once), so kashforce could not {what}; it will try again later."
        )
    elif status == 401:
        message = (
            f"Salesforce would not accept a fresh session to {what}; kashforce will try again."
        )
    elif transient:
        message = f"Salesforce was busy and could not {what} ({detail}); kashforce will try again."
    else:
        message = f"Salesforce could not {what}: {detail}"
    return ApiError(
        message, permanent=not transient, system=SYSTEM, code=code or str(status), status=status
    )


def login_error(exc: SalesforceAuthenticationFailed, password: bool = False) -> ApiError:
    # simple-salesforce 1.12 keeps Salesforce's words in `auth_message`; `message` is only its
    # class's template ("Authentication failed. Response content: {content}").
    code, detail = str(exc.code or ""), str(getattr(exc, "auth_message", "") or "").strip()
    message = LOGIN_MESSAGES.get(detail) or LOGIN_MESSAGES.get(code)
    if password and code in PASSWORD_SIGN_IN_MESSAGES:
        message = PASSWORD_SIGN_IN_MESSAGES[code]
    if message is None and isinstance(exc.code, int) and exc.code in RETRY_STATUSES:
        return ApiError(
            f"Salesforce's login service is unavailable (HTTP {exc.code}); kashforce will try again.",
            permanent=False,
            system=SYSTEM,
            code=code,
            status=exc.code,
        )
    return ApiError(
        message or f"Salesforce refused the sign-in: {detail or code}",
        permanent=True,
        system=SYSTEM,
        code=code,
    )


# --------------------------------------------------------------------------------------------
# API budget


USAGE = re.compile(r"(?:^|[\s;,])api-usage=(\d+)/(\d+)")


def parse_limit_info(header: str) -> tuple[int, int] | None:
    """(used, limit) from `Sforce-Limit-Info: api-usage=18/5000; per-app-api-usage=...`."""
    match = USAGE.search(header or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


class ApiUsageRecorder:
    """A response hook storing the org's API usage from every response on the Connection.

    A sync makes hundreds of calls; writing a row for each would add a database write per
    call (and contend for SQLite's single writer), so the figure is stored when it is first
    seen, then at most every `min_seconds` unless it moved by a whole percentage point.
    """

    def __init__(self, connection: Connection, min_seconds: float = 5.0):
        self.connection = connection
        self.min_seconds = min_seconds
        self.latest: tuple[int, int] | None = None
        self._stored: tuple[float, float] | None = None  # (monotonic time, share)
        self._lock = threading.Lock()

    def __call__(self, response: requests.Response, *args, **kwargs) -> None:
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info", ""))
        if usage is None:
            return
        used, limit = usage
        share = used / limit if limit else 0.0
        now = time.monotonic()
        with self._lock:
            self.latest = usage
            if self._stored is not None:
                stored_at, stored_share = self._stored
                if now - stored_at < self.min_seconds and abs(share - stored_share) < 0.01:
                    return
            self._stored = (now, share)
        self.connection.record_api_usage(used, limit)


# A reading older than this does not hold runs back: nothing else would refresh it (scheduled
# runs are what make calls), and Salesforce's allocation is a rolling 24 hours.
USAGE_FRESH_FOR = timedelta(minutes=15)


def budget_exhausted(connection: Connection) -> str | None:
    """Why scheduled, non-urgent runs should wait now, or None when they may go ahead.

    "Salesforce API use is at 12,345 of 15,000 calls today (82%), above the 80% kept for urgent
    work; scheduled syncs wait until it falls."
    """
    connection.refresh_from_db(fields=["api_usage_used", "api_usage_limit", "api_usage_at"])
    if not connection.over_api_budget():
        return None
    if connection.api_usage_at and timezone.now() - connection.api_usage_at > USAGE_FRESH_FOR:
        return None
    budget = settings.KASHFORCE["API_BUDGET_SHARE"]
    return (
        f"Salesforce API use is at {connection.api_usage_used:,} of "
        f"{connection.api_usage_limit:,} calls today ({connection.api_usage_share:.0%}), above "
        f"the {budget:.0%} kept for urgent work; scheduled syncs wait until it falls."
    )


# --------------------------------------------------------------------------------------------
# Session and login


class LoginHostAdapter(BaseAdapter):
    """Sends requests for a stand-in `https://x.salesforce.com` to the configured login URL.

    simple-salesforce can only log in at `https://{domain}.salesforce.com`; this is how a login
    URL elsewhere (a proxy, the sandbox) is reached without changing the library. The rewritten
    request goes through whichever adapter the session has for the real URL.
    """

    def __init__(self, session: requests.Session, stand_in: str, target: str):
        super().__init__()
        self.session = session
        self.stand_in = stand_in.rstrip("/")
        self.target = target.rstrip("/")

    def send(self, request, *args, **kwargs):
        request.url = self.target + request.url[len(self.stand_in) :]
        return self.session.get_adapter(request.url).send(request, *args, **kwargs)

    def close(self) -> None:
        pass


def _salesforce_host_prefix(url: str) -> str | None:
    """ "acme.my" for https://acme.my.salesforce.com; None for a host elsewhere."""
    host = (urlsplit(url).hostname or "").lower()
    return host.removesuffix(".salesforce.com") if host.endswith(".salesforce.com") else None


def login_arguments(connection: Connection) -> tuple[dict, str, bool]:
    """SalesforceLogin's keyword arguments, the host prefix it will post to ("login",
    "acme.my"), and whether that host is a stand-in to redirect to the configured login URL."""
    prefix = _salesforce_host_prefix(connection.login_url or "https://login.salesforce.com")
    my_domain = _salesforce_host_prefix(connection.instance_url or "")
    if my_domain in ("login", "test"):
        my_domain = None
    build = {
        Connection.AuthMethod.SF_PASSWORD: _password_login,
        Connection.AuthMethod.SF_JWT: _jwt_login,
        Connection.AuthMethod.SF_CLIENT_CREDENTIALS: _client_credentials_login,
    }.get(connection.auth_method)
    if build is None:
        raise ValueError(f"{connection!r} has no Salesforce sign-in method")
    kwargs, login_host = build(connection, connection.get_secrets(), prefix, my_domain)
    return kwargs, login_host, prefix is None  # None: the login URL is not on salesforce.com


def _password_login(connection, secrets, prefix, my_domain) -> tuple[dict, str]:
    domain = prefix or "login"
    return {
        "username": connection.username,
        "password": secrets.get("password", ""),
        "security_token": secrets.get("security_token", ""),
        "domain": domain,
    }, domain


def _jwt_login(connection, secrets, prefix, my_domain) -> tuple[dict, str]:
    # The assertion's audience must be login or test.salesforce.com, while the token may be
    # asked of a My Domain (simple-salesforce's `instance_url` is that host's prefix).
    sandbox_org = prefix is not None and (prefix == "test" or ".sandbox." in f".{prefix}.")
    audience = "test" if sandbox_org else "login"
    token_host = prefix if prefix not in (None, "login", "test") else my_domain
    return {
        "username": connection.username,
        "consumer_key": connection.consumer_key,
        "privatekey": secrets.get("private_key", ""),
        "domain": audience,
        "instance_url": token_host,
    }, token_host or audience


def _client_credentials_login(connection, secrets, prefix, my_domain) -> tuple[dict, str]:
    # Only a My Domain serves client credentials (given login/test, simple-salesforce refuses
    # with "INVALID AUTH", which LOGIN_MESSAGES explains); a redirected login URL gets a
    # stand-in My Domain.
    if prefix is None:
        domain = my_domain or "kashforce-login.my"
    elif prefix in ("login", "test"):
        domain = my_domain or prefix
    else:
        domain = prefix
    return {
        "consumer_key": connection.consumer_key,
        "consumer_secret": secrets.get("consumer_secret", ""),
        "domain": domain,
    }, domain


def salesforce_session(connection: Connection) -> ApiSession:
    """The requests session for one connection: timeouts, CA, retries, usage hook, login route."""
    session = ApiSession(SYSTEM, connection.ca_file, retryable=_retryable)
    session.hooks["response"].append(ApiUsageRecorder(connection))
    # Change events carry this client id in changeOrigin: how the subscriber knows its own writes.
    session.headers["Sforce-Call-Options"] = f"client={settings.KASHFORCE['PUBSUB_CLIENT_ID']}"
    _, login_host, redirect = login_arguments(connection)
    if redirect:
        stand_in_url = f"https://{login_host}.salesforce.com/"
        session.mount(stand_in_url, LoginHostAdapter(session, stand_in_url, connection.login_url))
    return session


# --------------------------------------------------------------------------------------------
# The client


class SalesforceClient:
    """One Salesforce org. Raises ApiError for every failure (see errors.py)."""

    def __init__(self, connection: Connection, session: requests.Session | None = None):
        if connection.kind != Connection.Kind.SALESFORCE:
            raise ValueError(f"{connection!r} is not a Salesforce connection")
        self.connection = connection
        self.version = connection.api_version or DEFAULT_API_VERSION
        self.session = session or salesforce_session(connection)
        self._sf: Salesforce | None = None

    # Access token ------------------------------------------------------------------------------

    def login(self) -> dict:
        """Sign in with the connection's method and store the token for every process.

        Raises ApiError with plain words (permanent for wrong credentials and the like). After
        a refusal nothing signs in again until an admin changes the credentials or presses
        Test (Connection.refuse_sign_in): repeated failed logins can lock the user.
        """
        if self.connection.sign_in_refused():
            raise ApiError(
                self.connection.sign_in_pause_reason,
                permanent=True,
                system=SYSTEM,
                code="SIGN_IN_PAUSED",
            )
        try:
            kwargs, _, _ = login_arguments(self.connection)
            token, instance = SalesforceLogin(
                session=self.session, sf_version=self.version, **kwargs
            )
        except SalesforceAuthenticationFailed as exc:
            password = self.connection.auth_method == Connection.AuthMethod.SF_PASSWORD
            error = login_error(exc, password=password)
            if error.permanent:
                self.connection.record_check(False, error.message)
                self.connection.refuse_sign_in(error.message)
            raise error from None
        except requests.RequestException as exc:
            raise network_error(SYSTEM, "GET", exc) from None  # a login repeats safely
        remember(token)  # redacted from logs from now on, like every decrypted secret
        cached = {"access_token": token, "instance_url": f"https://{instance}"}
        self.connection.save_session(cached)
        self._sf = None
        log.info("salesforce signed in connection=%s", self.connection.pk)
        return cached

    def _client(self) -> Salesforce:
        if self._sf is None:
            cached = self.connection.get_session()
            if not cached.get("access_token"):
                cached = self.login()
            self._sf = Salesforce(
                instance_url=cached["instance_url"],
                session_id=cached["access_token"],
                session=self.session,
                version=self.version,
                parse_float=Decimal,
                object_pairs_hook=dict,
            )
        return self._sf

    def _renew(self, stale: str) -> None:
        """After a 401: use a token another process stored meanwhile, or sign in again."""
        self._sf = None
        self.connection.refresh_from_db(fields=["encrypted_session", "session_obtained_at"])
        if self.connection.get_session().get("access_token") in (None, "", stale):
            self.login()

    @property
    def instance_url(self) -> str:
        return f"https://{self._client().sf_instance}"

    # The one choke point --------------------------------------------------------------------------

    def _call(self, method: str, what: str, call: Callable[[Salesforce], object]):
        """Run `call(sf)`; on an expired session sign in again once and retry once."""
        for attempt in (1, 2):
            sf = self._client()
            try:
                return call(sf)
            except SalesforceExpiredSession as exc:
                if attempt == 2:
                    raise error_from_exception(exc, what) from None
                self._renew(stale=sf.session_id)
            except SalesforceError as exc:
                raise error_from_exception(exc, what) from None
            except SalesforceOperationError as exc:
                raise _bulk_error(exc, what) from None
            except requests.RequestException as exc:
                raise network_error(SYSTEM, method, exc) from None
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, what: str, body=None):
        """A REST call under /services/data/vXX.X/; body encoded with exact Decimals."""
        data = None if body is None else dumps(body)
        return self._call(method, what, lambda sf: sf.restful(path, method=method, data=data))

    # Reading --------------------------------------------------------------------------------------

    def query(self, soql: str, include_deleted: bool = False) -> Iterator[dict]:
        """Every record of a SOQL query, following nextRecordsUrl; numbers as Decimal.
        `include_deleted` reads through queryAll, which also returns deleted records (IsDeleted)
        still in the recycle bin."""
        page = self._call(
            "GET", "read records", lambda sf: sf.query(soql, include_deleted=include_deleted)
        )
        while True:
            yield from page["records"]
            next_url = page.get("nextRecordsUrl")
            if page.get("done", True) or not next_url:
                return
            page = self._call(
                "GET",
                "read more records",
                lambda sf, url=next_url: sf.query_more(url, identifier_is_url=True),
            )

    def query_in(
        self,
        build: Callable[[Sequence], str],
        values: Sequence,
        budget: int = QUERY_URL_BUDGET,
    ) -> Iterator[dict]:
        """Every record of `build(chunk)` over chunks of `values`, each chunk's query short
        enough for Salesforce's URI limit (QUERY_URL_BUDGET bytes once URL-encoded).

        `build` makes the SOQL for a list of values (its IN lists). A record returned by two
        chunks (a query with OR'd conditions) is yielded once, by Id.
        """
        seen: set[str] = set()
        for chunk in query_chunks(build, list(values), budget):
            for record in self.query(build(chunk)):
                record_id = record.get("Id")
                if record_id is not None:
                    if record_id in seen:
                        continue
                    seen.add(record_id)
                yield record

    def describe(self, sobject: str) -> dict:
        return self._request("GET", f"sobjects/{sobject}/describe", f"describe {sobject}")

    def payment_relationships(self) -> list[str]:
        """Opportunity's child relationships to KashFlow_Payment__c through Opportunity__c, by
        name, from describe (one call)."""
        described = self.describe("Opportunity").get("childRelationships")
        if not isinstance(described, list):
            raise ApiError(
                "Salesforce's description of Opportunity lists no child relationships.",
                permanent=False,
                system=SYSTEM,
                code="MALFORMED_ANSWER",
            )
        return [
            str(rel["relationshipName"])
            for rel in described
            if isinstance(rel, dict)
            and rel.get("childSObject") == PAYMENT_OBJECT
            and rel.get("field") == PAYMENT_LOOKUP
            and rel.get("relationshipName")
        ]

    def payments_relationship(self) -> str:
        """The relationship name to read an Opportunity's payment records by in SOQL.

        The setting PAYMENTS_RELATIONSHIP when given (the connection check verifies it), else
        the one Salesforce's describe lists. Raises a permanent ApiError in plain words when
        the org has none.
        """
        configured = settings.KASHFORCE.get("PAYMENTS_RELATIONSHIP") or ""
        if configured:
            return configured
        problem, name = self._payments_relationship_check("")
        if problem:
            raise ApiError(problem, permanent=True, system=SYSTEM, code="NO_PAYMENTS_RELATIONSHIP")
        return name

    def payments_relationship_problem(self) -> str | None:
        """What is wrong with the payments relationship, in plain words, or None."""
        return self._payments_relationship_check(
            settings.KASHFORCE.get("PAYMENTS_RELATIONSHIP") or ""
        )[0]

    def _payments_relationship_check(self, configured: str) -> tuple[str | None, str]:
        found = self.payment_relationships()
        if configured:
            if any(name.lower() == configured.lower() for name in found):
                return None, configured
            actual = (
                f" It is called {found[0]}: set KASHFORCE_PAYMENTS_RELATIONSHIP to that, or leave it empty."
                if found
                else ""
            )
            return (
                f"Opportunity has no payments relationship named {configured} (the setting "
                f"KASHFORCE_PAYMENTS_RELATIONSHIP).{actual}",
                configured,
            )
        if not found:
            return (
                f"Opportunity has no child relationship for {PAYMENT_OBJECT} records: the "
                f"{PAYMENT_OBJECT}.{PAYMENT_LOOKUP} field must be a lookup to Opportunity, so "
                "that payments can be read with their deal.",
                "",
            )
        return None, found[0]

    def missing_fields(
        self, required: dict[str, list[str]] = REQUIRED_FIELDS
    ) -> dict[str, list[str]]:
        """The required fields the org lacks, by object: one describe call per object.

        An object that does not exist at all is reported as `{name: [OBJECT_MISSING]}`.
        """
        missing = {}
        for sobject, fields in required.items():
            try:
                present = {field["name"] for field in self.describe(sobject)["fields"]}
            except ApiError as exc:
                if exc.status != 404 and exc.code != "NOT_FOUND":
                    raise
                missing[sobject] = [OBJECT_MISSING]
                continue
            absent = [field for field in fields if field not in present]
            if absent:
                missing[sobject] = absent
        return missing

    def can_edit_activated_orders(self, username: str) -> bool:
        """Whether `username` holds "Edit Activated Orders" through a permission set (a
        profile's permissions are a permission set too, IsOwnedByProfile)."""
        quoted = username.replace("\\", "\\\\").replace("'", "\\'")
        soql = (
            "SELECT Id FROM PermissionSetAssignment WHERE Assignee.Username = "
            f"'{quoted}' AND PermissionSet.PermissionsEditActivatedOrders = true LIMIT 1"
        )
        return bool(list(self.query(soql)))

    # Writing --------------------------------------------------------------------------------------

    def upsert(
        self,
        sobject: str,
        external_id_field: str,
        records: list[dict],
        bulk_threshold: int | None = None,
    ) -> list[WriteResult]:
        """Create or update records matched on an External ID field, one result per record.

        Up to `bulk_threshold` records (default settings BULK_THRESHOLD, 2,000) go through
        sObject Collections, 200 a call; more go through one Bulk API 2.0 job.
        """
        threshold = (
            settings.KASHFORCE["BULK_THRESHOLD"] if bulk_threshold is None else bulk_threshold
        )
        if len(records) > threshold:
            return self._bulk_upsert(sobject, external_id_field, records)
        path = f"composite/sobjects/{sobject}/{external_id_field}"
        return self._collections("PATCH", path, sobject, records, "save", external_id_field)

    def update(self, sobject: str, records: list[dict]) -> list[WriteResult]:
        """Update records by Id (each record carries its "Id"), 200 a call."""
        return self._collections("PATCH", "composite/sobjects", sobject, records, "update")

    def create(self, sobject: str, records: list[dict]) -> list[WriteResult]:
        """Insert records, 200 a call. A lost answer is ApiError(ambiguous=True): prefer upsert."""
        return self._collections("POST", "composite/sobjects", sobject, records, "create")

    def delete(self, record_ids: list[str]) -> list[WriteResult]:
        """Delete records by Id, 200 a call, one result per id in the caller's order.

        A record already gone comes back as a failed result with ENTITY_IS_DELETED or
        INVALID_CROSS_REFERENCE_KEY, which callers may take as done.
        """
        results = []
        for start in range(0, len(record_ids), COLLECTION_SIZE):
            chunk = record_ids[start : start + COLLECTION_SIZE]
            path = f"composite/sobjects?ids={','.join(chunk)}&allOrNone=false"
            answer = self._request("DELETE", path, f"delete {len(chunk)} record(s)") or []
            results += [
                _write_result(start + i, item, f"delete {chunk[i]}")
                for i, item in enumerate(answer)
            ]
        return results

    def _collections(
        self, method, path, sobject, records, verb, upsert_field=None
    ) -> list[WriteResult]:
        results = []
        for start in range(0, len(records), COLLECTION_SIZE):
            chunk = records[start : start + COLLECTION_SIZE]
            results += self._write_chunk(method, path, sobject, chunk, start, verb, upsert_field)
        return results

    def _write_chunk(
        self, method, path, sobject, chunk, start, verb, upsert_field=None
    ) -> list[WriteResult]:
        """One collections call; records that failed on a lock are sent again, with backoff.

        An upsert that lost to a concurrent one (two workers, or two flows, creating the same
        external id at once: both find no record, one insert wins, the other gets
        DUPLICATE_VALUE on that field) is sent again once at once: it now finds the winner's
        record and updates it. It is not the record's fault.
        """
        policy = getattr(self.session, "policy", None) or http.RetryPolicy.from_settings()
        results: dict[int, WriteResult] = {}
        pending = list(range(len(chunk)))
        raced: set[int] = set()
        # Locks are retried within the policy's attempts; a lost race once per record, at once.
        for attempt in itertools.count(1):
            body = {
                "allOrNone": False,
                "records": [{"attributes": {"type": sobject}, **chunk[i]} for i in pending],
            }
            what = f"{verb} {len(pending)} {sobject} record(s)"
            answer = self._request(method, path, what, body) or []
            for i, item in zip(pending, answer, strict=False):
                results[i] = _write_result(start + i, item, f"{verb} {sobject} {_label(chunk[i])}")
            lost = [
                i
                for i in pending
                if i in results and i not in raced and _lost_race(results[i], upsert_field)
            ]
            raced.update(lost)
            locked = [i for i in pending if i in results and _is_transient(results[i])]
            wait = policy.delay(attempt) if locked else 0.0
            if wait is None:
                locked = []  # the locks did not clear in time: those stay transient failures
            pending = sorted({*locked, *lost})
            if not pending:
                break
            if locked:
                http.sleep(wait)
        missing = ApiError(
            f"Salesforce gave no result for this record ({verb} {sobject}).",
            permanent=False,
            system=SYSTEM,
            code="NO_RESULT",
        )
        return [
            results.get(i) or WriteResult(start + i, None, False, False, missing)
            for i in range(len(chunk))
        ]

    # Bulk API 2.0 ----------------------------------------------------------------------------------

    def _bulk_upsert(self, sobject, external_id_field, records) -> list[WriteResult]:
        """One Bulk API 2.0 upsert job; results read back and matched by external id."""
        rows = [
            {name: _csv_value(value) for name, value in record.items() if name != "attributes"}
            for record in records
        ]
        wait = settings.KASHFORCE["BULK_POLL"]
        what = f"save {len(records)} {sobject} records in bulk"
        jobs = self._call(
            "PATCH",
            what,
            lambda sf: getattr(sf.bulk2, sobject).upsert(
                records=rows, external_id_field=external_id_field, wait=wait
            ),
        )
        positions: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            positions.setdefault(row.get(external_id_field, ""), []).append(index)
        results: dict[int, WriteResult] = {}
        for job in jobs:
            self._read_bulk_results(sobject, job["job_id"], external_id_field, positions, results)
        # An upsert that lost to a concurrent one is sent again (once, by collections): it now
        # finds the winner's record and updates it.
        raced = [i for i, result in results.items() if _lost_race(result, external_id_field)]
        if raced:
            path = f"composite/sobjects/{sobject}/{external_id_field}"
            again = self._collections("PATCH", path, sobject, [records[i] for i in raced], "save")
            for i, result in zip(raced, again, strict=True):
                results[i] = WriteResult(i, result.id, result.created, result.success, result.error)
        missing = ApiError(
            f"Salesforce did not process this record in the bulk job ({sobject}).",
            permanent=False,
            system=SYSTEM,
            code="NOT_PROCESSED",
        )
        return [
            results.get(i) or WriteResult(i, None, False, False, missing)
            for i in range(len(records))
        ]

    def _read_bulk_results(self, sobject, job_id, field, positions, results) -> None:
        def fetch(kind):
            return self._call(
                "GET",
                f"read the bulk job's {kind} results",
                lambda sf: getattr(getattr(sf.bulk2, sobject), f"get_{kind}_records")(job_id),
            )

        for row in csv.DictReader(io.StringIO(fetch("successful"))):
            index = _take(positions, row.get(field, ""))
            if index is not None:
                created = row.get("sf__Created", "").lower() == "true"
                results[index] = WriteResult(index, row.get("sf__Id") or None, created, True)
        for row in csv.DictReader(io.StringIO(fetch("failed"))):
            index = _take(positions, row.get(field, ""))
            if index is not None:
                error = _bulk_record_error(row.get("sf__Error", ""), sobject, row.get(field, ""))
                results[index] = WriteResult(index, row.get("sf__Id") or None, False, False, error)


def _write_result(index: int, item: dict, what: str) -> WriteResult:
    if item.get("success"):
        return WriteResult(index, item.get("id"), bool(item.get("created")), True)
    return WriteResult(
        index, item.get("id"), False, False, record_error(item.get("errors") or [], what)
    )


def _lost_race(result: WriteResult, upsert_field: str | None) -> bool:
    """An upsert's DUPLICATE_VALUE on its own external id field: another upsert inserted it."""
    if not upsert_field or result.error is None or result.error.code != "DUPLICATE_VALUE":
        return False
    return f"{upsert_field.lower()} duplicates value" in result.error.message.lower()


def _is_transient(result: WriteResult) -> bool:
    return result.error is not None and result.error.code in RETRY_CODES


def _label(record: dict) -> str:
    """How a record is named in a message: its name or key, never its whole content."""
    for name in ("Name", "ExternalID__c", "Id", "LastName"):
        if record.get(name):
            return str(record[name])
    return ""


def _take(positions: dict[str, list[int]], key: str) -> int | None:
    indexes = positions.get(key)
    return indexes.pop(0) if indexes else None


def _csv_value(value) -> str:
    """A value as Bulk API 2.0 CSV wants it: #N/A clears a field, exact Decimals, ISO dates."""
    if value is None:
        return "#N/A"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _bulk_record_error(text: str, sobject: str, key: str) -> ApiError:
    # sf__Error reads "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --"
    code, _, rest = text.partition(":")
    detail = re.sub(r":[^:]* --\s*$", "", rest)  # drop the trailing ":Field1,Field2 --"
    return ApiError(
        f"Salesforce could not save {sobject} {key}: {detail.strip() or text}",
        permanent=code not in TRANSIENT_CODES,
        system=SYSTEM,
        code=code,
    )


def _bulk_error(exc: SalesforceOperationError, what: str) -> ApiError:
    detail = str(exc)
    invalid = any(marker in detail for marker in ("InvalidBatch", "InvalidJob", "not found"))
    return ApiError(
        f"Salesforce's bulk job failed, so kashforce could not {what}: {detail}",
        permanent=invalid,
        system=SYSTEM,
        code="BULK_JOB_FAILED",
    )
