"""The KashFlow REST API v2 simulator: routing and the app the sandbox core serves.

Every route lives under /v2 and speaks JSON. Paths are matched on their percent-encoded form and
each captured key is decoded afterwards, so a customer code containing "/" or spaces works.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

from sandbox.core import Response

from . import auth, customers, invoices, lookups, products, seed
from .store import Store, Txn
from .wire import ApiError, dumps, loads


@dataclass
class Route:
    method: str
    template: str
    handler: Callable
    public: bool = False  # True: no session token needed (the login itself)

    def __post_init__(self):
        pattern = re.sub(r"\{\w+\}", "([^/]+)", self.template)
        self.regex = re.compile(f"^{pattern}/?$", re.IGNORECASE)


def _start_login(txn: Txn, request):
    return 201, auth.start_login(txn, loads(request.body), txn.options)


def _finish_login(txn: Txn, request):
    return auth.finish_login(txn, loads(request.body), txn.options)


def _logout(txn: Txn, request, token: str | None = None):
    auth.end_session(txn, token or auth.session_token(request))
    return 204, None


ROUTES = [
    Route("POST", "/v2/sessiontoken", _start_login, public=True),
    Route("PUT", "/v2/sessiontoken", _finish_login, public=True),
    Route("DELETE", "/v2/sessiontoken", _logout, public=True),
    Route("DELETE", "/v2/sessiontoken/{token}", _logout, public=True),
    Route("GET", "/v2/customers", customers.list_customers),
    Route("POST", "/v2/customers", customers.create_customer),
    Route("POST", "/v2/customers/suggestedcode", customers.suggest_code),
    Route("GET", "/v2/customers/{code}", customers.get_customer),
    Route("PUT", "/v2/customers/{code}", customers.update_customer),
    Route("DELETE", "/v2/customers/{code}", customers.delete_customer),
    Route("GET", "/v2/invoices", invoices.list_invoices),
    Route("POST", "/v2/invoices", invoices.create_invoice),
    Route("POST", "/v2/invoices/bulk/payments", invoices.create_bulk_payment),
    Route("GET", "/v2/invoices/{number}", invoices.get_invoice),
    Route("PUT", "/v2/invoices/{number}", invoices.update_invoice),
    Route("DELETE", "/v2/invoices/{number}", invoices.delete_invoice),
    Route("GET", "/v2/nextavailableinvoicenumber", invoices.next_number),
    Route("GET", "/v2/products", products.list_products),
    Route("POST", "/v2/products", products.create_product),
    Route("GET", "/v2/products/list", products.list_all_products),
    Route("GET", "/v2/products/{nominalCode}/{code}", products.get_product),
    Route("PUT", "/v2/products/{nominalCode}/{code}", products.update_product),
    Route("DELETE", "/v2/products/{nominalCode}/{code}", products.delete_product),
    Route("GET", "/v2/nominals", lookups.list_nominals),
    Route("GET", "/v2/nominals/{code}", lookups.get_nominal),
    Route("GET", "/v2/nominals/{code}/products", products.list_nominal_products),
    Route("GET", "/v2/bankaccounts", lookups.list_bank_accounts),
    Route("GET", "/v2/bankaccounts/{id}", lookups.get_bank_account),
    Route("GET", "/v2/paymentmethods/{type}", lookups.list_payment_methods),
    Route("GET", "/v2/vat/settings/vatrates", lookups.list_vat_rates),
]
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class KashFlowApp:
    """One simulated KashFlow account, kept in `state_dir/kashflow/account.sqlite3`.

    Options: session_minutes (60), temp_token_minutes (5), lockout_after (5), base_url (for
    page URLs; the runner sets the `base_url` attribute instead), api_disabled, seed
    (applied when the state dir is new; default "empty"), and username / password /
    memorable_word / company_name to pin the login instead of making one up. Options meant for
    the other simulator are ignored.
    """

    name = "kashflow"

    def __init__(self, state_dir: Path, options: dict | None = None):
        self.options = {k: v for k, v in (options or {}).items() if v is not None}
        self.base_url = self.options.get("base_url", "")
        self.clock_offset = timedelta()
        self.store = Store(Path(state_dir) / "kashflow" / "account.sqlite3")
        with self.store.transaction(self.now(), options=self.options) as txn:
            fresh = txn.one("SELECT 1 FROM account") is None
            auth.ensure_account(txn, self.options)
            if "api_disabled" in self.options:
                txn.run(
                    "UPDATE account SET api_disabled = ?", (bool(self.options["api_disabled"]),)
                )
            self.credentials = auth.credentials(txn)
        # A new account gets its reference data at once, so it works before any reset.
        self.is_new = fresh
        if fresh:
            self.reset(str(self.options.get("seed", "empty")))

    def now(self) -> datetime:
        """UTC, whole seconds (KashFlow's dates have no finer resolution)."""
        return datetime.now(UTC).replace(tzinfo=None, microsecond=0) + self.clock_offset

    # -- the core's interface -------------------------------------------------------------------

    def handle(self, request) -> Response:
        try:
            route, params = self._match(request)
            with self.store.transaction(self.now(), self._base_url(request), self.options) as txn:
                if not route.public:
                    auth.authenticate(txn, request, self.options)
                result = route.handler(txn, request, *params)
        except ApiError as error:
            return self.error_response(error.status, error.code, error.message)
        status, body = result if isinstance(result, tuple) else (200, result)
        if status == 204:
            return Response(204, b"", {})
        return Response(status, dumps(body), {"Content-Type": "application/json; charset=utf-8"})

    def route_template(self, request) -> str:
        try:
            route, _ = self._match(request)
        except ApiError:
            return f"{request.method} (unknown)"
        return f"{route.method} {route.template}"

    def is_write(self, request) -> bool:
        is_login = request.path.lower().startswith("/v2/sessiontoken")
        return request.method in WRITE_METHODS and not is_login

    def expire_session(self, request) -> None:
        token = auth.session_token(request)
        with self.store.transaction(self.now()) as txn:
            txn.run("DELETE FROM sessions WHERE token = ?", (token,))

    def error_response(self, status: int, code: str, message: str) -> Response:
        # No code at all where KashFlow's code is unknown (ASP.NET's bare {"Message"} answer).
        body = dumps({"Error": code, "Message": message} if code else {"Message": message})
        return Response(status, body, {"Content-Type": "application/json; charset=utf-8"})

    def reset(self, seed_name: str) -> None:
        """Wipe the account's data and apply a seed. The login and open sessions survive, so
        a connected client carries on; a lock-out is lifted and the clock is real again."""
        try:
            seed.parse(seed_name)
        except ValueError as exc:
            raise ValueError(f"bad KashFlow seed {seed_name!r}: {exc}") from exc
        self.clock_offset = timedelta()
        with self.store.transaction(self.now(), options=self.options) as txn:
            self.store.wipe(txn)
            txn.run("UPDATE account SET failures = 0, locked = 0")
            auth.forget_expired(txn, self.options)
            seed.apply(txn, seed_name)

    def close(self) -> None:
        self.store.close()

    def control(self, request, subpath: str) -> Response | None:
        """Extra control calls: GET credentials, POST account {api_disabled, locked},
        POST clock {advance_seconds} (moves the simulator's clock, e.g. past a session's life)."""
        if (request.method, subpath) == ("GET", "credentials"):
            return Response.json(200, self.credentials)
        if (request.method, subpath) == ("POST", "account"):
            return Response.json(200, self._set_account(request.json() or {}))
        if (request.method, subpath) == ("POST", "clock"):
            seconds = float((request.json() or {}).get("advance_seconds", 0))
            self.clock_offset += timedelta(seconds=seconds)
            return Response.json(200, {"now": self.now().isoformat(sep=" ")})
        return None

    # -- helpers --------------------------------------------------------------------------------

    def _match(self, request) -> tuple[Route, list[str]]:
        path_matched = False
        for route in ROUTES:
            match = route.regex.match(request.path)
            if not match:
                continue
            path_matched = True
            if route.method == request.method:
                return route, [unquote(value) for value in match.groups()]
        if path_matched:
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"The requested resource does not support http method '{request.method}'.",
            )
        raise ApiError(
            404, "NotFound", f"No HTTP resource was found that matches the URI {request.path}."
        )

    def _base_url(self, request) -> str:
        base = self.base_url or f"http://{request.headers.get('Host', 'localhost')}"
        base = base.rstrip("/")
        return base[: -len("/v2")] if base.endswith("/v2") else base

    def _set_account(self, changes: dict) -> dict:
        with self.store.transaction(self.now()) as txn:
            if "api_disabled" in changes:
                txn.run("UPDATE account SET api_disabled = ?", (bool(changes["api_disabled"]),))
            if "locked" in changes:
                txn.run("UPDATE account SET locked = ?, failures = 0", (bool(changes["locked"]),))
            row = txn.one("SELECT api_disabled, locked, failures FROM account")
        return {"api_disabled": bool(row[0]), "locked": bool(row[1]), "failures": row[2]}
