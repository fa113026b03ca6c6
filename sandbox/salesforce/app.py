"""The Salesforce simulator app: routing, authentication, the daily API allocation, control calls.

Plugs into `sandbox.core.SimulatorServer` (see the protocol there). State lives under
`state_dir/salesforce/`: the org database, credentials, the TLS CA and certificate, the JWT key.
"""

import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

from sandbox.core import Request, Response
from sandbox.salesforce import bulk, composite, credentials, pubsub, rest, schema, seed
from sandbox.salesforce.auth import Authenticator, Sessions, bearer_token
from sandbox.salesforce.errors import ApiError
from sandbox.salesforce.org import Org
from sandbox.salesforce.outbound import Outbound
from sandbox.salesforce.store import Store

DEFAULTS = {
    "api_version": "59.0",
    "session_seconds": 7200,
    "daily_api_limit": 15000,
    "query_batch_size": 2000,
    "bulk_max_records": 50000,
    "outbound_url": None,
    "outbound_backoff_seconds": 0.2,
    "outbound_max_backoff_seconds": 5,
    "outbound_retry_for_seconds": 600,
    # Org switches (POST /__sandbox__/org changes them until the next reset). Defaults are the
    # least forgiving: orgs created from Winter '26 have SOAP login() off.
    "soap_login_enabled": False,
    "payments_relationship": schema.DEFAULT_PAYMENTS_RELATIONSHIP,
    # Salesforce refuses a request whose URI plus headers pass 16,384 bytes (414 / 431).
    "max_uri_and_headers": 16384,
}
ORG_SWITCHES = ("soap_login_enabled", "payments_relationship")
COLLECTION_WRITES = re.compile(r"^composite/sobjects(?:/[^/]+/[^/]+)?$")
COLLECTION_UPSERT = re.compile(r"^composite/sobjects/[^/]+/[^/]+$")
SOAP_LOGIN = re.compile(r"^/services/Soap/u/(?P<version>\d+\.\d)(?:/.*)?$")
REST_PREFIX = re.compile(r"^/services/data/v(?P<version>\d+\.\d)(?P<rest>/.*)?$")

# (methods, path under /services/data/vXX.X/, handler). "{x}" is one segment, "{x*}" the rest.
# Literal routes come before the placeholders they would otherwise match.
ROUTES = [
    ("GET", "", rest.resources),
    ("GET", "sobjects", rest.describe_global),
    ("GET", "sobjects/{type_name}/describe", rest.describe),
    ("GET", "sobjects/{type_name}/updated", rest.updated),
    ("GET", "sobjects/{type_name}/deleted", rest.deleted),
    ("GET", "sobjects/{type_name}", rest.sobject_info),
    ("POST", "sobjects/{type_name}", rest.create),
    ("GET PATCH DELETE", "sobjects/{type_name}/{record_id}", rest.row),
    ("GET PATCH DELETE", "sobjects/{type_name}/{field}/{value*}", rest.by_external_id),
    ("GET", "query", rest.query),
    ("GET", "queryAll", rest.query_all),
    ("GET", "query/{locator}", rest.query_more),
    ("GET", "queryAll/{locator}", rest.query_more),
    ("GET", "limits", rest.limits),
    ("POST PATCH", "composite/sobjects", composite.create_or_update),
    ("DELETE", "composite/sobjects", composite.delete),
    ("GET POST", "composite/sobjects/{type_name}", composite.retrieve),
    ("PATCH", "composite/sobjects/{type_name}/{field}", composite.upsert),
    ("POST", "composite", composite.composite),
    ("GET", "jobs/ingest", bulk.list_ingest),
    ("POST", "jobs/ingest", bulk.create_ingest),
    ("PUT", "jobs/ingest/{job_id}/batches", bulk.upload),
    ("GET", "jobs/ingest/{job_id}/{kind}", bulk.ingest_results),
    ("GET PATCH DELETE", "jobs/ingest/{job_id}", bulk.ingest_job),
    ("POST", "jobs/query", bulk.create_query),
    ("GET", "jobs/query/{job_id}/results", bulk.query_results),
    ("GET PATCH DELETE", "jobs/query/{job_id}", bulk.query_job),
]
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}


class SalesforceApp:
    name = "salesforce"

    def __init__(self, state_dir: Path, options: dict | None = None):
        self.directory = Path(state_dir) / "salesforce"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.options = {**DEFAULTS, **{k: v for k, v in (options or {}).items() if v is not None}}
        self.creds = credentials.load_or_create(self.directory)
        self.ssl_context, self.ca_file = credentials.server_tls(self.directory)
        self.jwt_private_key_file, public_key = credentials.jwt_key_pair(self.directory)
        self.store = Store(self.directory / "org.sqlite3")
        self.org = Org(self.store, self.creds["user_id"])
        self.sessions = Sessions(
            self.store, self.creds["organization_id"], float(self.options["session_seconds"])
        )
        self.switches = {name: self.options[name] for name in ORG_SWITCHES}
        self._apply_switches()
        self.max_uri_and_headers = int(self.options["max_uri_and_headers"])
        self.auth = Authenticator(
            self.creds, self.sessions, public_key, lambda: self.base_url, self.switches
        )
        self.cursors = rest.Cursors()
        self.jobs = bulk.Jobs()
        self.outbound = Outbound(self, self.options)
        self.org.won_listeners.append(self.outbound.notify)
        self.pubsub = pubsub.PubSubServer(self, self.options)  # started by the runner
        self.org.activated_listeners.append(self.outbound.notify_order)
        self.daily_api_limit = int(self.options["daily_api_limit"])
        self._usage_lock = threading.Lock()
        self.base_url = ""  # set by the runner once the server has its port
        self.multi_currency = bool(self.store.get_meta("multi_currency", False))

    @property
    def is_new(self) -> bool:
        """No seed was ever applied to this state directory."""
        return self.store.get_meta("seed") is None

    def descriptor(self) -> dict:
        return {
            "login_url": self.base_url,
            "instance_url": self.base_url,
            "ca_file": str(self.ca_file),
            "api_version": self.options["api_version"],
            "username": self.creds["username"],
            "password": self.creds["password"],
            "security_token": self.creds["security_token"],
            "consumer_key": self.creds["consumer_key"],
            "consumer_secret": self.creds["consumer_secret"],
            "jwt_private_key_file": str(self.jwt_private_key_file),
            "organization_id": self.creds["organization_id"],
            "pubsub": self.pubsub.address,
        }

    # -- the core's app protocol ---------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        schema.MULTI_CURRENCY.set(self.multi_currency)  # per request: each has its own thread
        if request.method == "POST" and SOAP_LOGIN.match(request.path):
            return self.auth.soap_login(request, SOAP_LOGIN.match(request.path)["version"])
        if request.method == "POST" and request.path.rstrip("/") == "/services/oauth2/token":
            return self.auth.oauth_token(request)
        if request.method == "GET" and request.path.rstrip("/") == "/services/oauth2/userinfo":
            return self.auth.userinfo(request)
        if request.path.rstrip("/") == "/services/data":
            return rest.versions(self, request)
        if not REST_PREFIX.match(request.path):
            return self.error_response(404, "NOT_FOUND", "The requested resource does not exist")
        if not self.sessions.is_valid(bearer_token(request)):
            return self.error_response(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return self._counted(request)

    def _counted(self, request: Request) -> Response:
        """Every authenticated REST call counts once against the daily allocation (a composite
        or collections request too). Login and token calls are not counted: third parties
        disagree on whether Salesforce counts them, and not counting keeps tests predictable."""
        with self._usage_lock:
            used = self.store.get_meta(_usage_key(), 0)
            if used >= self.daily_api_limit:
                response = self.error_response(
                    403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."
                )
                response.headers["Sforce-Limit-Info"] = f"api-usage={used}/{self.daily_api_limit}"
                return response
            with self.store.lock:
                self.store.set_meta(_usage_key(), used + 1)
        caller = pubsub.CALLER.set(
            (
                pubsub.change_origin(
                    REST_PREFIX.match(request.path)["version"],
                    request.headers.get("Sforce-Call-Options"),
                ),
                self.creds["user_id"],  # one user: the simulator has no others
            )
        )
        try:
            response = self.call_rest(request)
        finally:
            pubsub.CALLER.reset(caller)
        response.headers["Sforce-Limit-Info"] = f"api-usage={used + 1}/{self.daily_api_limit}"
        return response

    def call_rest(self, request: Request) -> Response:
        """Run one REST call in a transaction; also used for composite subrequests."""
        match = REST_PREFIX.match(request.path)
        version = match["version"] if match else ""
        try:
            if not match or float(version) < 50:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            handler, params = self._route(request.method, match["rest"] or "")
            with self.store.transaction():
                return handler(self, request, version, **params)
        except ApiError as error:
            return Response.json(error.status, [error.as_dict()])

    def _route(self, method: str, path: str) -> tuple:
        segments = [s for s in path.strip("/").split("/") if s]
        allowed = []
        for methods, pattern, handler in ROUTES:
            params = _match(pattern, segments)
            if params is None:
                continue
            if method in methods.split():
                return handler, params
            allowed += methods.split()
        if allowed:
            raise ApiError(
                405,
                "METHOD_NOT_ALLOWED",
                f"HTTP Method '{method}' not allowed. Allowed are {','.join(allowed)}",
            )
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    def route_template(self, request: Request) -> str:
        if SOAP_LOGIN.match(request.path):
            return f"{request.method} /services/Soap/u/{{version}}"
        match = REST_PREFIX.match(request.path)
        if not match:
            return f"{request.method} {request.path.rstrip('/') or '/'}"
        segments = [s for s in (match["rest"] or "").strip("/").split("/") if s]
        for _methods, pattern, _handler in ROUTES:
            params = _match(pattern, segments)
            if params is not None:
                # Object names stay in the template: "POST .../sobjects/Account" is what a
                # benchmark wants to count; ids and values do not.
                template = pattern.replace("{type_name}", params.get("type_name", ""))
                return f"{request.method} /services/data/v{{version}}/{template}".rstrip("/")
        return f"{request.method} /services/data/v{{version}}/{{unknown}}"

    def record_count(self, request: Request, kind: str) -> int:
        """The records of a collections write: create, update or upsert for lock_row; upsert
        for upsert_race."""
        match = REST_PREFIX.match(request.path)
        path = (match["rest"] or "").strip("/") if match else ""
        pattern = COLLECTION_UPSERT if kind == "upsert_race" else COLLECTION_WRITES
        if request.method not in ("POST", "PATCH") or not pattern.match(path):
            return 0
        try:
            body = request.json()
            records = body.get("records")
        except (ValueError, AttributeError):
            return 0
        if kind == "upsert_race" and body.get("allOrNone"):
            return 0  # the winner's write would be rolled back with this request's
        return len(records) if isinstance(records, list) else 0

    def is_write(self, request: Request) -> bool:
        return request.method in WRITE_METHODS and "/services/data/" in request.path

    def expire_session(self, request: Request) -> None:
        self.sessions.expire(bearer_token(request))

    def error_response(self, status: int, code: str, message: str) -> Response:
        return Response.json(status, [{"message": message, "errorCode": code, "fields": []}])

    def reset(self, seed_name: str) -> None:
        """Wipe records, counters, cursors, jobs and outbound state; keep credentials and
        sessions (a client logged in before a reset keeps working)."""
        seed.parse(seed_name)  # fail before wiping on a malformed seed
        with self.store.lock:
            self.store.wipe()
            self.store.set_meta("multi_currency", False)  # one currency, unless the seed says
            self.store.set_meta("reduction_orders", False)  # off, as in Order Settings
            seed.apply(self.store, seed_name)
            self.store.set_meta("seed", seed_name)
            self.multi_currency = bool(self.store.get_meta("multi_currency", False))
        self.cursors.clear()
        self.jobs.clear()
        self.outbound.reset()
        self.pubsub.reset()
        self.daily_api_limit = int(self.options["daily_api_limit"])
        self.switches.update({name: self.options[name] for name in ORG_SWITCHES})
        self._apply_switches()

    def _apply_switches(self) -> None:
        schema.set_payments_relationship(str(self.switches["payments_relationship"]))

    def close(self) -> None:
        self.outbound.close()
        self.pubsub.stop()
        self.store.close()

    # -- extra control calls -------------------------------------------------------------------

    def control(self, request: Request, subpath: str) -> Response | None:
        payload = request.json() if request.body else {}
        if subpath == "outbound":
            if request.method == "POST":
                return Response.json(200, self.outbound.configure(payload))
            return Response.json(200, self.outbound.status())
        if subpath == "currencies":
            if request.method == "POST":
                try:
                    self._enable_multi_currency(payload)
                except ApiError as error:
                    return Response.json(error.status, [error.as_dict()])
            return Response.json(200, self._currencies())
        if subpath == "org":
            if request.method == "POST":
                unknown = set(payload) - set(ORG_SWITCHES)
                if unknown:
                    raise ValueError(
                        f"unknown org switch(es) {sorted(unknown)}; known: {ORG_SWITCHES}"
                    )
                if "soap_login_enabled" in payload:
                    self.switches["soap_login_enabled"] = bool(payload["soap_login_enabled"])
                if "payments_relationship" in payload:
                    self.switches["payments_relationship"] = str(payload["payments_relationship"])
                self._apply_switches()
            return Response.json(200, dict(self.switches))
        if subpath == "pubsub":
            if request.method == "POST":
                return Response.json(200, self.pubsub.control(payload))
            return Response.json(200, self.pubsub.status())
        if subpath == "orders":
            if request.method == "POST":
                self._configure_orders(payload)
            return Response.json(200, self._orders_settings())
        if subpath == "limits":
            if request.method == "POST":
                self._set_usage(payload)
            used, maximum = self.api_usage()
            return Response.json(200, {"used": used, "daily_api_limit": maximum})
        return None

    def _enable_multi_currency(self, payload: dict) -> None:
        """Turn multi-currency on: `{"multi_currency": true, "corporate": "GBP",
        "rates": {"EUR": "1.17"}}`. As on a real org it cannot be turned off again (a reset
        gives a single-currency org), and existing records take the corporate currency."""
        if not payload.get("multi_currency"):
            raise ApiError(400, "CANNOT_DISABLE", "Multi-currency cannot be turned off once on.")
        corporate = str(payload.get("corporate") or "GBP").upper()
        rates = {corporate: 1, **{k.upper(): v for k, v in (payload.get("rates") or {}).items()}}
        with self.store.transaction():
            known = {r["IsoCode"] for r in self.store.all("CurrencyType")}
            for code, rate in rates.items():
                if code in known:
                    continue
                stamp = self.store.next_modstamp()
                self.store.put("CurrencyType", {
                    "Id": self.store.new_id(schema.CURRENCY_TYPE.prefix), "IsDeleted": False,
                    "CreatedDate": stamp, "LastModifiedDate": stamp, "SystemModstamp": stamp,
                    "IsoCode": code, "ConversionRate": float(rate), "DecimalPlaces": 2,
                    "IsActive": True, "IsCorporate": code == corporate,
                })  # fmt: skip
            if not self.multi_currency:
                for name in schema.CURRENCY_OBJECTS:
                    for record in self.store.all(name):
                        if not record.get("CurrencyIsoCode"):
                            self.store.put(name, {**record, "CurrencyIsoCode": corporate})
            self.store.set_meta("multi_currency", True)
        self.multi_currency = True

    def _configure_orders(self, payload: dict) -> None:
        """`{"edit_activated_orders": bool, "reduction_orders": bool}`: grant (or take back)
        the integration user's Edit Activated Orders permission, through a permission set as
        an admin would; turn Order Settings' "Enable Reduction Orders" on or off."""
        with self.store.transaction():
            if "reduction_orders" in payload:
                self.store.set_meta("reduction_orders", bool(payload["reduction_orders"]))
            if "edit_activated_orders" in payload:
                self._grant_edit_activated_orders(bool(payload["edit_activated_orders"]))

    def _grant_edit_activated_orders(self, granted: bool) -> None:
        user_id = self.creds["user_id"]
        stamp = self.store.next_modstamp()
        system = {"IsDeleted": False, "CreatedDate": stamp, "LastModifiedDate": stamp,
                  "SystemModstamp": stamp}  # fmt: skip
        if not self.store.get("User", user_id):
            self.store.put("User", {"Id": user_id, **system, "Username": self.creds["username"],
                                    "Name": "Integration User", "IsActive": True})  # fmt: skip
        name = "Kashforce_Edit_Activated_Orders"
        permission_set = next((p for p in self.store.all("PermissionSet") if p["Name"] == name),
                              None)  # fmt: skip
        if permission_set is None:
            permission_set = {"Id": self.store.new_id("0PS"), **system, "Name": name,
                              "Label": "Kashforce: Edit Activated Orders",
                              "IsOwnedByProfile": False, "PermissionsEditActivatedOrders": True}  # fmt: skip
            self.store.put("PermissionSet", permission_set)
        assigned = [a for a in self.store.all("PermissionSetAssignment")
                    if a["PermissionSetId"] == permission_set["Id"] and not a["IsDeleted"]]  # fmt: skip
        if granted and not assigned:
            self.store.put("PermissionSetAssignment", {
                "Id": self.store.new_id("0Pa"), **system, "AssigneeId": user_id,
                "PermissionSetId": permission_set["Id"]})  # fmt: skip
        for assignment in assigned if not granted else []:
            self.store.hard_delete("PermissionSetAssignment", assignment["Id"])

    def _orders_settings(self) -> dict:
        with self.store.lock:
            return {
                "edit_activated_orders": self.org.can_edit_activated_orders(),
                "reduction_orders": self.org.reduction_orders_enabled(),
            }

    def _currencies(self) -> dict:
        rows = self.store.all("CurrencyType") if self.multi_currency else []
        return {
            "multi_currency": self.multi_currency,
            "currencies": {r["IsoCode"]: r["ConversionRate"] for r in rows},
        }

    def _set_usage(self, payload: dict) -> None:
        if "daily_api_limit" in payload:
            self.daily_api_limit = int(payload["daily_api_limit"])
        if "used" in payload:
            with self.store.lock:
                self.store.set_meta(_usage_key(), int(payload["used"]))

    def api_usage(self) -> tuple[int, int]:
        with self.store.lock:
            return self.store.get_meta(_usage_key(), 0), self.daily_api_limit


def _usage_key() -> str:
    # A calendar-day counter (UTC) stands in for Salesforce's rolling 24 hours.
    return f"usage:{datetime.now(UTC).date().isoformat()}"


def _match(pattern: str, segments: list[str]) -> dict | None:
    """Path params of a pattern matching these raw segments; "{x*}" stays percent-encoded for
    its handler (external-id values have their own decoding rules)."""
    parts = pattern.split("/") if pattern else []
    params = {}
    for index, part in enumerate(parts):
        if part.endswith("*}"):
            if index >= len(segments):
                return None
            params[part[1:-2]] = "/".join(segments[index:])
            return params
        if index >= len(segments):
            return None
        if part.startswith("{"):
            params[part[1:-1]] = unquote(segments[index])
        elif part != unquote(segments[index]):
            return None
    return params if len(parts) == len(segments) else None
