"""The KashFlow REST API v2 client: the only code that speaks to KashFlow.

Intent-level methods over one `_request()`. Facts about the API are in
shared/reference/kashflow-api.md; the ones that shape this module:

- Login is two steps: POST /sessiontoken with user name and password answers a temporary token
  and three 1-based positions of the memorable word; PUT /sessiontoken with those letters
  answers the session token, sent as `Authorization: KfToken <token>`. The token lives while it
  is used (60 idle minutes), so it is kept encrypted on the Connection and reused by every task
  in every process; an invalid or expired one is a 401 InvalidSessionToken, and we sign in again
  once.
- Lists are `{"MetaData": {..., "NextPageUrl"}, "Data": [...]}` (a few are bare arrays), and list
  items are summaries.
- Money is a JSON number with 4 places: parsed as Decimal, written exactly. Dates are
  "YYYY-MM-DD HH:MM:SS", sometimes with an offset, sometimes date-only.
- A server-side SQL timeout comes back as HTTP 400 with Error "-2146232060": transient.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal
from urllib.parse import quote
from zoneinfo import ZoneInfo

import requests
from django.conf import settings

from integration.clients.errors import ApiError, network_error
from integration.clients.http import RETRY_STATUSES, ApiSession, dumps, retry_after_seconds
from integration.models import Connection
from integration.secrets import remember

log = logging.getLogger(__name__)

SYSTEM = "kashflow"
PAGE_SIZE = 100  # the spec's cap for products
# Customers and invoices allow more: a production integration (hcs-sync) reads 200 a page
# (reference §6), which halves the calls of a long walk.
LONG_PAGE_SIZE = 200
SQL_TIMEOUT = "-2146232060"  # KashFlow's "Execution Timeout Expired" (reference §7)
# KashFlow's wall clock: its dates carry no zone (or one we are told to ignore).
KASHFLOW_TIME_ZONE = ZoneInfo("Europe/London")
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
# Fields of a full customer that KashFlow computes: not sent back in a whole-object PUT.
CUSTOMER_READ_ONLY = frozenset(
    [
        "DisplayName",
        "CreatedDate",
        "LastUpdatedDate",
        "FirstInvoiceDate",
        "LastInvoiceDate",
        "InvoiceCount",
        "InvoicedNetAmount",
        "InvoicedVATAmount",
        "TotalPaidAmount",
        "OutstandingBalance",
        "OverdueAmount",
        "AverageDaysToPay",
        "EnvelopeUrl",
    ]
)

LOGIN_MESSAGES = {
    "InvalidCredentials": "KashFlow rejected the username or password.",
    "InvalidMemorableWord": "KashFlow rejected the memorable word.",
    "AccountLocked": (
        "The KashFlow account is locked after too many failed sign-ins; unlock it in KashFlow."
    ),
    "ApiAccessDisabled": "API access is turned off for this KashFlow account (Settings → API).",
    "PasswordExpired": "The KashFlow password has expired; set a new one in KashFlow, then here.",
}


# --------------------------------------------------------------------------------------------
# Dates

_DATE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?"
    r"\s*(?:Z|[+-]\d{2}:?\d{2})?$"
)


def parse_kashflow_datetime(text: str | None) -> datetime | None:
    """A KashFlow date as a naive datetime on KashFlow's wall clock; None for null or "".

    Accepts "YYYY-MM-DD HH:MM:SS", an ISO "T", fractions, a trailing offset (ignored, as the
    reference advises: KashFlow's offsets are not reliable) and a date alone (taken as midday).
    """
    if not text:
        return None
    match = _DATE.match(text.strip())
    if not match:
        raise ValueError(f"Not a KashFlow date: {text!r}")
    year, month, day, hour, minute, second = match.groups()
    if hour is None:
        return datetime(int(year), int(month), int(day), 12)
    return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))


def parse_kashflow_date(text: str | None) -> date | None:
    """The calendar day of a KashFlow date ("2024-10-09 12:00:00" -> 2024-10-09)."""
    value = parse_kashflow_datetime(text)
    return value.date() if value else None


def format_kashflow_date(value: date | datetime) -> str:
    """How KashFlow writes a date: a calendar day at midday, so no time zone can shift it.

    A datetime keeps its time (converted to KashFlow's wall clock when it is aware).
    """
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(KASHFLOW_TIME_ZONE).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return datetime.combine(value, time(12)).strftime("%Y-%m-%d %H:%M:%S")


def _to_wire(value: object) -> object:
    return format_kashflow_date(value) if isinstance(value, date | datetime) else value


# --------------------------------------------------------------------------------------------
# Errors


def _retryable(response: requests.Response) -> bool:
    if _is_sign_in(response) and 400 <= response.status_code < 500:
        return False  # a refused sign-in is never repeated: each try nears the lock-out
    return response.status_code in RETRY_STATUSES or _error_code(response) == SQL_TIMEOUT


def _is_sign_in(response: requests.Response) -> bool:
    url = getattr(response.request, "url", None) or response.url or ""
    return url.split("?", 1)[0].rstrip("/").lower().endswith("/sessiontoken")


def sign_in_error(response: requests.Response, step: str = "POST") -> ApiError:
    """Any 4xx from /sessiontoken: the sign-in was refused, permanently.

    KashFlow does not document its answer to a wrong password or memorable word (only that
    auth failures are 401s and that failed attempts lock the account), so no code is relied
    on: the known codes only choose the words.
    """
    body = _error_body(response)
    code = str(body.get("Error") or "")
    detail = str(body.get("Message") or "").strip()
    # Step 2 is only reached with the password accepted: its refusal is the memorable word's.
    what = "the memorable word" if step == "PUT" else "the username and password"
    message = LOGIN_MESSAGES.get(code) or (
        f"KashFlow refused the sign-in (HTTP {response.status_code}). Check {what}, then "
        "press Test." + (f" KashFlow said: {detail}" * bool(detail))
    )
    return ApiError(
        message, permanent=True, system=SYSTEM, code=code or str(response.status_code),
        status=response.status_code,
    )  # fmt: skip


def _error_body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_code(response: requests.Response) -> str:
    if response.status_code < 400:
        return ""
    return str(_error_body(response).get("Error") or "")


def error_from_response(response: requests.Response, what: str) -> ApiError:
    """Plain words for a KashFlow error answer; `what` says what we were doing ("create ...")."""
    body = _error_body(response)
    code = str(body.get("Error") or "")
    detail = str(body.get("Message") or "").strip() or f"HTTP {response.status_code}"
    status = response.status_code
    fields = {"system": SYSTEM, "code": code or str(status), "status": status}
    if code in LOGIN_MESSAGES or status == 403:
        message = LOGIN_MESSAGES.get(code, f"KashFlow refused access: {detail}")
        return ApiError(message, permanent=True, **fields)
    if code == SQL_TIMEOUT or status in RETRY_STATUSES:
        return ApiError(
            f"KashFlow was too busy to {what} (HTTP {status}); kashforce will try again.",
            permanent=False,
            retry_after=retry_after_seconds(response),
            **fields,
        )
    if status == 401:  # InvalidSessionToken again, straight after a fresh sign-in
        return ApiError(
            f"KashFlow would not accept a fresh session to {what}; kashforce will try again.",
            permanent=False,
            **fields,
        )
    return ApiError(f"KashFlow could not {what}: {detail}", permanent=True, **fields)


# --------------------------------------------------------------------------------------------
# The client


class KashFlowClient:
    """One KashFlow account. Raises ApiError for every failure (see errors.py)."""

    def __init__(self, connection: Connection, session: requests.Session | None = None):
        if connection.kind != Connection.Kind.KASHFLOW:
            raise ValueError(f"{connection!r} is not a KashFlow connection")
        self.connection = connection
        self.base_url = connection.base_url.rstrip("/")
        self.session = session or ApiSession(SYSTEM, connection.ca_file, retryable=_retryable)
        self._token: str | None = None

    # Session token ------------------------------------------------------------------------------

    def login(self) -> dict:
        """Sign in (both steps), store the session token for every process; returns step 2's
        answer (CompanyName, ...). Raises ApiError(permanent=True) with plain words on a wrong
        password or memorable word, a locked account or API access turned off."""
        if self.connection.sign_in_refused():
            raise ApiError(
                self.connection.sign_in_pause_reason,
                permanent=True,
                system=SYSTEM,
                code="SIGN_IN_PAUSED",
            )
        secrets = self.connection.get_secrets()
        try:
            step1 = self._login_step(
                "POST",
                {"UserName": self.connection.username, "Password": secrets.get("password", "")},
            )
            letters = _memorable_letters(step1, secrets.get("memorable_word", ""))
            step2 = self._login_step(
                "PUT",
                {"TemporaryToken": step1["TemporaryToken"], "MemorableWordList": letters},
            )
        except ApiError as exc:
            if exc.permanent:
                # Say so on the Connection at once, and sign in no more with these credentials
                # until an admin changes them or presses Test: runs retrying a wrong password
                # would lock the account after a few attempts.
                self.connection.record_check(False, exc.message)
                self.connection.refuse_sign_in(exc.message)
            raise
        self._token = step2["SessionToken"]
        remember(self._token)  # redacted from logs from now on, like every decrypted secret
        self.connection.save_session({"token": self._token})
        log.info("kashflow signed in connection=%s", self.connection.pk)
        return step2

    def _login_step(self, method: str, body: dict) -> dict:
        url = f"{self.base_url}/sessiontoken"
        try:
            response = self.session.request(method, url, data=dumps(body), headers=JSON_HEADERS)
        except requests.RequestException as exc:
            raise network_error(SYSTEM, "GET", exc) from None  # a login repeats safely
        if 400 <= response.status_code < 500:
            raise sign_in_error(response, method)
        if response.status_code >= 400:
            raise error_from_response(response, "sign in")
        return response.json()

    def _current_token(self) -> str:
        if self._token is None:
            self._token = self.connection.get_session().get("token")
        if not self._token:
            self.login()
        return self._token

    def _renew_token(self, stale: str) -> None:
        """After a 401: use a token another process saved meanwhile, or sign in again."""
        self.connection.refresh_from_db(fields=["encrypted_session", "session_obtained_at"])
        stored = self.connection.get_session().get("token")
        if stored and stored != stale:
            self._token = stored
        else:
            self.login()

    # The one choke point --------------------------------------------------------------------------

    def _request(self, method: str, path: str, what: str, params=None, body=None):
        """Send one call; sign in again once on a 401; return the JSON with Decimal money."""
        token = self._current_token()
        response = self._send(method, path, token, params, body)
        if response.status_code == 401 and _error_code(response) == "InvalidSessionToken":
            self._renew_token(stale=token)
            response = self._send(method, path, self._token, params, body)
        if response.status_code >= 400:
            if _error_code(response) == SQL_TIMEOUT:
                self._note_busy()
            raise error_from_response(response, what)
        self.connection.clear_busy()  # a write only when it was backing off
        if response.status_code == 204 or not response.content:
            return None
        try:
            return json.loads(response.text, parse_float=Decimal)
        except ValueError:
            raise unreadable(what, f"HTTP {response.status_code} that is not JSON") from None

    def _note_busy(self) -> None:
        """KashFlow timed out on its database even after the session's retries: scheduled runs
        leave this account alone for a while, longer each time in a row (engine)."""
        conf = settings.KASHFORCE
        until = self.connection.note_busy(
            conf["KASHFLOW_BUSY_BACKOFF_SECONDS"], conf["KASHFLOW_BUSY_MAX_SECONDS"]
        )
        log.warning(
            "kashflow too busy connection=%s count=%s until=%s",
            self.connection.pk,
            self.connection.busy_count,
            until.isoformat(),
        )

    def _send(self, method, path, token, params, body) -> requests.Response:
        headers = {**JSON_HEADERS, "Authorization": f"KfToken {token}"}
        data = None if body is None else dumps(body, convert=_to_wire)
        try:
            return self.session.request(
                method, self.base_url + path, params=params, data=data, headers=headers
            )
        except requests.RequestException as exc:
            raise network_error(SYSTEM, method, exc) from None

    def _pages(
        self, path: str, what: str, params: dict | None = None, paged: bool = True
    ) -> Iterator[dict]:
        """Every item of a list, page by page.

        A paged list (`paged`) must answer `{"MetaData": {..., "NextPageUrl"}, "Data": [...]}`
        on every page; a look-up list is a bare array (or, sometimes, that envelope). Any other
        answer (a 200 carrying `{"Message": "An error has occurred."}`, Data that is not a list,
        no MetaData) is an unreadable answer: ApiError, never the end of the list, so a walk
        that could not read every page fails instead of skipping the rest.
        """
        params = {"perpage": PAGE_SIZE, **(params or {})} if paged else dict(params or {})
        page = 1
        while True:
            query = {**params, "page": page} if paged else params or None
            answer = self._request("GET", path, what, params=query)
            if isinstance(answer, list) and not paged:
                yield from _items(answer, what, page)
                return
            items, more = _page_items(answer, what, page)
            yield from items
            # Loop on `page` rather than follow NextPageUrl: whether that URL is absolute or
            # relative is not documented (reference §6).
            if not more:
                return
            page += 1

    # Customers ----------------------------------------------------------------------------------

    def customers(self, **filters) -> Iterator[dict]:
        """Customer summaries, every page (filters: searchtext, namestartswith, sortby, order).

        Summaries carry Code, Name, VATNumber, Currency, Contacts[] and Addresses[], but no
        dates, TelephoneNumber, Email, Note or PaymentTerms: those are on the full record.
        KashFlow sorts customers only by Name, Code, TotalPaidAmount or OutstandingBalance
        (sortby 0, 1, 3, 4) and has no modified-since filter, so a change feed walks the whole
        list (200 a call) and compares each summary with the last one seen
        (integration/sync/customers.py).
        """
        params = {"perpage": LONG_PAGE_SIZE, "sortby": 1, "order": "asc", **filters}
        return self._pages("/customers", "list customers", params)

    def get_customer(self, code: str) -> dict:
        return self._request("GET", f"/customers/{_key(code)}", f"read customer {code}")

    def create_customer(self, customer: dict) -> dict:
        """Create; returns the stored customer (KashFlow may have made up its Code)."""
        what = f"create customer {customer.get('Code') or customer.get('Name', '')}".strip()
        return self._request("POST", "/customers", what, body=customer)

    def update_customer(self, code: str, changes: dict) -> dict:
        """Change some fields of a customer: read it, merge `changes` (each top-level field
        given replaces the current one; lists such as Contacts are replaced whole) and PUT the
        whole customer, since KashFlow's PUT replaces the whole object (a field left out would
        be cleared). Returns the stored customer."""
        current = self.get_customer(code)
        whole = {name: value for name, value in current.items() if name not in CUSTOMER_READ_ONLY}
        whole.update(changes)
        return self._request(
            "PUT", f"/customers/{_key(code)}", f"update customer {code}", body=whole
        )

    # Invoices -------------------------------------------------------------------------------------

    def invoices(self, **filters) -> Iterator[dict]:
        """Invoice summaries, every page. Filters as KashFlow names them: customercode,
        issuedatefrom / issuedateto (dates), searchtext, statusfilter, sortby, order."""
        params = {
            name: value.isoformat() if isinstance(value, date) else value
            for name, value in filters.items()
        }
        return self._pages("/invoices", "list invoices", {"perpage": LONG_PAGE_SIZE, **params})

    def find_invoices_by_reference(self, reference: str) -> list[dict]:
        """Invoice summaries whose CustomerReference is exactly `reference`.

        KashFlow's searchtext matches loosely (parts of names, numbers...), so the exact match
        is made here. This is how kashforce finds an invoice it may already have created.
        """
        return [
            invoice
            for invoice in self.invoices(searchtext=reference)
            if (invoice.get("CustomerReference") or "") == reference
        ]

    def get_invoice(self, number: int) -> dict:
        """The full invoice: LineItems, PaymentLines, Permalink.

        Raises ApiError (UNREADABLE_ANSWER, transient) when the answer is not an invoice with
        its LineItems and PaymentLines lists: a missing list is never read as an empty one."""
        invoice = _record(
            self._request("GET", f"/invoices/{int(number)}", f"read invoice {number}")
        )
        for name in ("LineItems", "PaymentLines"):
            items = invoice.get(name)
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise unexpected_shape(f"invoice {number} with its {name} list", items)
        return invoice

    def create_invoice(self, invoice: dict) -> dict:
        """Create; returns the stored invoice with its Number and computed totals.

        Not retried after a lost answer (ApiError.ambiguous): KashFlow has no idempotency key,
        so the caller looks for the invoice by reference before creating it again.
        """
        what = f"create an invoice for customer {invoice.get('CustomerCode', '')}"
        return self._request("POST", "/invoices", what, body=invoice)

    def update_invoice(self, number: int, changes: dict) -> dict:
        """Change the fields in `changes` and keep the rest; returns the stored invoice.

        KashFlow's PUT replaces the whole invoice (a field left out is cleared: its payments,
        its lines, its reference), so this reads the invoice, merges the changes in and sends
        the whole of it. PaymentLines, when given, are the invoice's whole set of payments.
        """
        current = self.get_invoice(number)
        return self._request(
            "PUT",
            f"/invoices/{int(number)}",
            f"update invoice {number}",
            body=_merged(current, changes, INVOICE_READ_ONLY),
        )

    def invoices_with_payments(self, issued_from: date | None = None) -> Iterator[dict]:
        """Full invoices (with PaymentLines) that have any payment, optionally issued since a day.

        KashFlow has no payments list for sales invoices: payments live on the invoice. One
        list call per page, one GET per paid or part-paid invoice.
        """
        filters = {"issuedatefrom": issued_from} if issued_from else {}
        for summary in self.invoices(**filters):
            paid = summary.get("TotalPaidAmount")
            if paid is None or Decimal(paid) != 0:
                yield self.get_invoice(summary["Number"])

    # Reference data ----------------------------------------------------------------------------

    def products(self) -> Iterator[dict]:
        return self._pages("/products", "list products")

    def create_product(self, product: dict) -> dict:
        """Create; returns the stored product. Its key is the pair (NominalCode, Code), which
        KashFlow keeps unique, so a create repeated after a lost answer fails instead of
        making a second product."""
        what = f"create product {product.get('NominalCode', '')}/{product.get('Code', '')}"
        return self._request("POST", "/products", what, body=product)

    def get_product(self, nominal_code: int | str, code: str) -> dict:
        path = f"/products/{int(nominal_code)}/{_key(code)}"
        return _record(self._request("GET", path, f"read product {nominal_code}/{code}"))

    def update_product(self, nominal_code: int | str, code: str, changes: dict) -> dict:
        """Change the fields in `changes` and keep the rest; returns the stored product.

        KashFlow's PUT replaces the whole product (a field left out is cleared or the call is
        refused), so this reads the product as KashFlow holds it now, merges the changes in
        and sends the whole of it.
        """
        path = f"/products/{int(nominal_code)}/{_key(code)}"
        current = self.get_product(nominal_code, code)
        body = _merged(current, changes, PRODUCT_READ_ONLY)
        return self._request("PUT", path, f"update product {nominal_code}/{code}", body=body)

    def nominals(self) -> list[dict]:
        return list(self._pages("/nominals", "list nominal codes", paged=False))

    def bank_accounts(self) -> list[dict]:
        return list(self._pages("/bankaccounts", "list bank accounts", paged=False))

    def payment_methods(self, kind: str = "invoice") -> list[dict]:
        return list(self._pages(f"/paymentmethods/{kind}", "list payment methods", paged=False))

    def vat_rates(self) -> list[dict]:
        return list(self._pages("/vat/settings/vatrates", "list VAT rates", paged=False))


def unreadable(what: str, reason: str, answer: object = None) -> ApiError:
    """A 2xx answer that is not what the API promises: transient (KashFlow sends such answers
    on a server error), so the run fails and the next one reads again; nothing is skipped."""
    said = answer.get("Message") if isinstance(answer, dict) else None
    detail = f' KashFlow said: "{str(said).strip()[:200]}".' if said else ""
    return ApiError(
        f"KashFlow sent an answer kashforce cannot read when asked to {what} ({reason})."
        f"{detail} Nothing was skipped; kashforce will read it again on the next run.",
        permanent=False,
        system=SYSTEM,
        code="UNREADABLE_ANSWER",
    )


def _items(items: list, what: str, page: int) -> list[dict]:
    if not all(isinstance(item, dict) for item in items):
        raise unreadable(what, f"page {page} lists something that is not a record")
    return items


def _page_items(answer: object, what: str, page: int) -> tuple[list[dict], bool]:
    """A paged list answer's items and whether another page follows; ApiError if malformed."""
    if not isinstance(answer, dict):
        raise unreadable(what, f"page {page} is not a list page")
    data, meta = answer.get("Data"), answer.get("MetaData")
    if not isinstance(data, list):
        reason = "it has no list of records" if data is None else "its records are not a list"
        raise unreadable(what, f"page {page}: {reason}", answer)
    if not isinstance(meta, dict) or "NextPageUrl" not in meta:
        raise unreadable(what, f"page {page} does not say whether more pages follow", answer)
    more = bool(meta["NextPageUrl"])
    if more and not data:
        raise unreadable(what, f"page {page} is empty but says more pages follow", answer)
    return _items(data, what, page), more


# Fields KashFlow computes or sets itself: never sent back in a whole-object PUT.
PRODUCT_READ_ONLY = {"Id", "NominalId", "PurchaseNominalId", "PurchaseSubNominalId"}
INVOICE_READ_ONLY = {
    "Id", "CustomerId", "CustomerName", "CustomerKey", "CustomerContactName",
    "CustomerContactFirstName", "CustomerContactLastName", "CreatedDate", "OverdueDays",
    "NetAmount", "VATAmount", "GrossAmount", "TotalPaidAmount", "DueAmount", "FormattedDueAmount",
    "HomeCurrencyGrossAmount", "HomeCurrencyVATAmount", "ProjectGrossAmount", "Status", "PaidDate",
    "LastPaymentDate", "Permalink", "PackingSlipPermalink", "PreviousNumber", "NextNumber",
    "FileCount", "VATReturnId", "EmailCount", "ReminderLetters", "VATNumber", "CustomerDiscount",
}  # fmt: skip


def _merged(current: dict, changes: dict, read_only: set[str]) -> dict:
    """The whole object for a PUT: what KashFlow holds now, with `changes` on top."""
    whole = {name: value for name, value in current.items() if name not in read_only}
    return {**whole, **changes}


def _record(answer) -> dict:
    """A single-record answer, or ApiError: a list or nothing where a record should be is not a
    record (and must never be merged into a PUT as if it were)."""
    if not isinstance(answer, dict) or not answer:
        raise unexpected_shape("a record", answer)
    return answer


def unexpected_shape(expected: str, answer) -> ApiError:
    """KashFlow answered 2xx with something that is not what the API promises: transient (a
    server hiccup usually clears), so it is retried and then goes to the error queue."""
    shape = type(answer).__name__ if answer is not None else "nothing"
    return ApiError(
        f"KashFlow answered with {shape} where {expected} was expected; nothing was changed "
        "on the strength of it, and kashforce will try again.",
        permanent=False,
        system=SYSTEM,
        code="UNREADABLE_ANSWER",
    )


def _key(code: str) -> str:
    """A customer code as one path segment: codes are opaque and may hold spaces or slashes."""
    return quote(str(code), safe="")


def _memorable_letters(step1: dict, word: str) -> list[dict]:
    """The letters asked for: exactly three different positions within the word. Any other
    request (the whole word, a letter twice) is refused unanswered, since a host that is not
    KashFlow could collect the word that way (issue #15)."""
    asked = step1.get("MemorableWordList")
    try:
        positions = [int(item["Position"]) for item in asked]  # 1-based
    except (TypeError, KeyError, ValueError):
        positions = []
    if len(positions) != 3 or len(set(positions)) != 3:
        raise ApiError(
            "The KashFlow sign-in did not ask for three different letters of the memorable "
            "word, as KashFlow always does; kashforce sent none. Check the connection's KashFlow "
            "address.",
            permanent=True,
            system=SYSTEM,
            code="UnexpectedMemorableWordRequest",
        )
    letters = []
    for position in positions:
        if not 1 <= position <= len(word):
            raise ApiError(
                f"KashFlow asked for letter {position} of the memorable word, but the stored "
                "word is shorter; check the memorable word.",
                permanent=True,
                system=SYSTEM,
                code="InvalidMemorableWord",
            )
        letters.append({"Position": position, "Value": word[position - 1]})
    return letters
