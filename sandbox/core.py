"""The HTTP core shared by the Salesforce and KashFlow simulators.

A threaded HTTP/1.1 server (plain or TLS) that hands each request to a *simulator app*, counts
calls, injects faults and answers a small control API under `/__sandbox__/`. Plain stdlib so the
simulators run the same in-process (tests) and from `manage.py sandbox`.

The app protocol (duck-typed; `sandbox.salesforce.app.SalesforceApp` is the worked example):

    class SimulatorApp:
        name: str                                    # "salesforce" | "kashflow"
        def handle(self, request: Request) -> Response
        def route_template(self, request: Request) -> str
            # e.g. "GET /v2/customers/{code}": the key under which stats count the call
        def is_write(self, request: Request) -> bool
            # only writes get the "ambiguous" fault (the write commits, the answer is lost)
        def expire_session(self, request: Request) -> None
            # "expire_token" fault: invalidate the token this request carries, so that the
            # request then meets the app's real 401
        def error_response(self, status: int, code: str, message: str) -> Response
            # the app's own error shape, used for injected 429/500/503 and for crashes
        def reset(self, seed: str) -> None           # wipe state and apply a seed
        def close(self) -> None
        # optional:
        def control(self, request: Request, subpath: str) -> Response | None
            # extra control calls under /__sandbox__/ (e.g. "outbound"); None = not mine
        max_uri_and_headers: int | None
            # bytes of request line plus headers above which the server answers 414 (the URI
            # alone too long) or 431 (the headers tip it over), before the app sees the call
        def record_count(self, request: Request, kind: str) -> int
            # how many records this call writes one by one, for a per-record fault kind
            # ("lock_row", "upsert_race"); 0 = that fault does not apply to this call. The
            # fault picks some of them and lists them in request.record_faults

`handle` is called from many threads at once; the app guards its own state.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import random
import socket
import socketserver
import ssl
import struct
import threading
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("sandbox")

CONTROL_PREFIX = "/__sandbox__/"
FAULT_KINDS = (
    "429",
    "500",
    "503",
    "timeout",
    "reset",
    "ambiguous",
    "expire_token",
    "lock_row",
    "upsert_race",
    "error_body",
)
# Faults that hit some records of a collections call, answered 200 record by record.
RECORD_FAULTS = ("lock_row", "upsert_race")
IDLE_KEEPALIVE_SECONDS = 120


@dataclass
class Request:
    method: str
    path: str  # percent-encoded, without the query string
    query: dict[str, list[str]]
    headers: Message  # case-insensitive lookups: request.headers.get("authorization")
    body: bytes = b""
    client: tuple = ()
    head_bytes: tuple[int, int] = (0, 0)  # bytes of the request line, bytes of the headers
    record_faults: dict[int, str] = field(default_factory=dict)  # position -> fault kind

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not JSON."""
        return json.loads(self.body.decode("utf-8") or "null")

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict | None = None) -> Response:
        body = json.dumps(obj).encode("utf-8")
        return cls(
            status, body, {"Content-Type": "application/json;charset=UTF-8", **(headers or {})}
        )

    @classmethod
    def text(
        cls, status: int, text: str, content_type: str, headers: dict | None = None
    ) -> Response:
        return cls(status, text.encode("utf-8"), {"Content-Type": content_type, **(headers or {})})


class SimulatorApp(Protocol):
    name: str

    def handle(self, request: Request) -> Response: ...
    def route_template(self, request: Request) -> str: ...
    def is_write(self, request: Request) -> bool: ...
    def expire_session(self, request: Request) -> None: ...
    def error_response(self, status: int, code: str, message: str) -> Response: ...
    def reset(self, seed: str) -> None: ...
    def close(self) -> None: ...


class Stats:
    """Calls per route template and injected faults per kind, since the last reset."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.total = 0
            self.calls: dict[str, int] = {}
            self.faults: dict[str, int] = {}

    def count_call(self, template: str) -> None:
        with self._lock:
            self.total += 1
            self.calls[template] = self.calls.get(template, 0) + 1

    def count_fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] = self.faults.get(kind, 0) + 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"total": self.total, "calls": dict(self.calls), "faults": dict(self.faults)}


@dataclass
class FaultRule:
    match: str = ""
    rate: float = 1.0
    kind: str = "503"
    seconds: float = 30.0
    count: int = 0  # fire at most this many times (0: no limit)
    fired: int = 0

    def matches(self, request: Request) -> bool:
        """`match` is "METHOD /prefix", "/prefix", "METHOD" or "" (all); method may be "*".
        A prefix may end in "?name=value&..." to match only requests with those parameters."""
        method, _, prefix = self.match.strip().partition(" ")
        if method.startswith("/"):
            method, prefix = "*", method
        if method not in ("", "*") and method.upper() != request.method:
            return False
        prefix, _, query = prefix.strip().partition("?")
        wanted = [pair.partition("=") for pair in query.split("&") if pair]
        if any(value not in request.query.get(name, []) for name, _, value in wanted):
            return False
        return request.path.startswith(prefix)

    def as_dict(self) -> dict:
        return {
            "match": self.match,
            "rate": self.rate,
            "kind": self.kind,
            "seconds": self.seconds,
            "count": self.count,
            "fired": self.fired,
        }


class Faults:
    """Latency and fault rules; draws come from one seeded Random so a run is reproducible."""

    def __init__(self):
        self._lock = threading.Lock()
        self.configure({})

    def configure(self, config: dict) -> None:
        """Replace the whole configuration; raises ValueError on an unknown kind or bad rate."""
        rules = [_parse_rule(rule) for rule in config.get("rules", [])]
        with self._lock:
            self.latency_ms = float(config.get("latency_ms", 0) or 0)
            self.jitter_ms = float(config.get("jitter_ms", 0) or 0)
            self.rules = rules
            self.seed = config.get("seed", 0)
            self._random = random.Random(str(self.seed))

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "latency_ms": self.latency_ms,
                "jitter_ms": self.jitter_ms,
                "seed": self.seed,
                "rules": [rule.as_dict() for rule in self.rules],
            }

    def delay_seconds(self) -> float:
        with self._lock:
            jitter = self._random.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0
            return max(0.0, self.latency_ms + jitter) / 1000

    def pick(self, request: Request, is_write, record_count=None) -> FaultRule | None:
        """The first matching rule whose draw fires. Ambiguous faults only hit writes; record
        faults only calls the app answers record by record (collections)."""
        with self._lock:
            for rule in self.rules:
                if not rule.matches(request) or (rule.count and rule.fired >= rule.count):
                    continue
                if rule.kind == "ambiguous" and not is_write(request):
                    continue
                if rule.kind in RECORD_FAULTS and not (
                    record_count and record_count(request, rule.kind)
                ):
                    continue
                if self._random.random() < rule.rate:
                    rule.fired += 1
                    return rule
        return None

    def chosen_records(self, size: int) -> set[int]:
        """Which of `size` records a record fault hits: each one in two, at least one."""
        with self._lock:
            locked = {i for i in range(size) if self._random.random() < 0.5}
            if not locked and size:
                locked = {self._random.randrange(size)}
        return locked


def _parse_rule(raw: dict) -> FaultRule:
    rule = FaultRule(
        match=str(raw.get("match", "")),
        rate=float(raw.get("rate", 1.0)),
        kind=str(raw.get("kind", "503")),
        seconds=float(raw.get("seconds", 30.0)),
        count=int(raw.get("count", 0) or 0),
    )
    if rule.kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {rule.kind!r}; expected one of {FAULT_KINDS}")
    if not 0 <= rule.rate <= 1:
        raise ValueError(f"rate must be between 0 and 1, got {rule.rate}")
    return rule


class _Dropped(Exception):
    """Raised inside a handler to leave the connection without answering."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients' connection pools are exercised
    timeout = IDLE_KEEPALIVE_SECONDS
    server: SimulatorServer

    def do_any(self) -> None:
        request = self._read_request()
        try:
            response = self.server.dispatch(request, self)
        except _Dropped:
            self.close_connection = True
            return
        self._write(request, response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_any

    def _read_request(self) -> Request:
        parts = urlsplit(self.path)
        return Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=self.headers,
            body=self._read_body(),
            client=self.client_address,
            head_bytes=(
                len(self.requestline.encode("latin-1", "replace")),
                sum(len(f"{name}: {value}\r\n".encode()) for name, value in self.headers.items()),
            ),
        )

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _write(self, request: Request, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if request.method != "HEAD" and response.body:
            self.wfile.write(response.body)

    def reset_connection(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        raise _Dropped

    def log_message(self, format, *args):
        if self.server.verbose:
            log.info("%s %s", self.server.app.name, format % args)


class SimulatorServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One simulator app behind HTTP(S) on 127.0.0.1; `port=0` picks a free port."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self,
        app,
        ssl_context: ssl.SSLContext | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        verbose: bool = False,
    ):
        self.app = app
        self.ssl_context = ssl_context
        self.verbose = verbose
        self.stats = Stats()
        self.faults = Faults()
        self.stopping = threading.Event()
        self._connections: set = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host, port = self.server_address[:2]
        return f"{scheme}://{host}:{port}"

    @property
    def control_url(self) -> str:
        return self.url + CONTROL_PREFIX

    def start(self) -> SimulatorServer:
        """Serve from a background thread; returns once the socket listens (it already does)."""
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name=f"sandbox-{self.app.name}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, drop open keep-alive connections and wake held (timeout) requests."""
        self.stopping.set()
        if self._thread:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    # TLS handshakes run in the connection's own thread, not in the accept loop, so one slow
    # client cannot stall everybody.
    def finish_request(self, request, client_address):
        connection = request
        try:
            if self.ssl_context:
                request.settimeout(10)  # a client that never finishes its handshake
                connection = self.ssl_context.wrap_socket(request, server_side=True)
            with self._connections_lock:
                self._connections.add(connection)
            self.RequestHandlerClass(connection, client_address, self)
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.debug("connection from %s ended: %s", client_address, exc)
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            with contextlib.suppress(OSError):
                connection.close()

    def handle_error(self, request, client_address):
        log.warning("sandbox %s: error on %s", self.app.name, client_address, exc_info=True)

    def dispatch(self, request: Request, handler: _Handler) -> Response:
        if request.path.startswith(CONTROL_PREFIX):
            return self.control(request, request.path[len(CONTROL_PREFIX) :].strip("/"))
        self.stats.count_call(self.app.route_template(request))
        too_long = self._too_long(request)
        if too_long:
            return too_long
        delay = self.faults.delay_seconds()
        if delay:
            self.stopping.wait(delay)
        rule = self.faults.pick(request, self.app.is_write, getattr(self.app, "record_count", None))
        if rule:
            self.stats.count_fault(rule.kind)
            return self._inject(rule, request, handler)
        return self._call_app(request)

    def _too_long(self, request: Request) -> Response | None:
        """414 when the request line alone passes the app's limit, 431 when its headers tip
        it over (Salesforce: URI plus headers over 16,384 bytes). The body is the front
        server's HTML page, not the API's JSON error: the API never saw the call."""
        limit = getattr(self.app, "max_uri_and_headers", None)
        line, headers = request.head_bytes
        if not limit or line + headers <= limit:
            return None
        status, reason = (
            (414, "URI Too Long") if line > limit else (431, "Request Header Fields Too Large")
        )
        page = f"<html><head><title>{status} {reason}</title></head><body><h1>{reason}</h1></body></html>"
        return Response.text(status, page, "text/html;charset=UTF-8")

    def _call_app(self, request: Request) -> Response:
        try:
            return self.app.handle(request)
        except Exception:
            log.exception(
                "sandbox %s crashed on %s %s", self.app.name, request.method, request.path
            )
            return self.app.error_response(
                500, "UNKNOWN_EXCEPTION", "An unexpected error occurred."
            )

    def _inject(self, rule: FaultRule, request: Request, handler: _Handler) -> Response:
        kind = rule.kind
        if kind == "429":
            response = self.app.error_response(429, "TOO_MANY_REQUESTS", "Too many requests.")
            response.headers["Retry-After"] = "1"
            return response
        if kind in ("500", "503"):
            message = "Internal server error." if kind == "500" else "Service unavailable."
            return self.app.error_response(int(kind), f"SANDBOX_FAULT_{kind}", message)
        if kind == "error_body":
            # 200 with ASP.NET's unhandled-error body and no data: what KashFlow sends on some
            # server errors (issue #13 case 1).
            return Response.json(200, {"Message": "An error has occurred."})
        if kind == "timeout":
            self.stopping.wait(rule.seconds)
            raise _Dropped
        if kind == "reset":
            handler.reset_connection()
        if kind == "ambiguous":
            self._call_app(request)  # the write commits; its answer is lost
            handler.reset_connection()
        if kind in RECORD_FAULTS:
            # 200 with some records failed (a row lock; an upsert that lost to a concurrent
            # one), the others written, as real orgs answer
            chosen = self.faults.chosen_records(self.app.record_count(request, kind))
            request.record_faults = dict.fromkeys(chosen, kind)
            return self._call_app(request)
        self.app.expire_session(request)  # expire_token: the app then answers its real 401
        return self._call_app(request)

    # -- control API ---------------------------------------------------------------------------

    def control(self, request: Request, subpath: str) -> Response:
        try:
            payload = request.json() if request.body else {}
        except ValueError:
            return Response.json(400, {"error": "body is not JSON"})
        route = (request.method, subpath)
        try:
            if route == ("GET", "stats"):
                return Response.json(200, self.stats.snapshot())
            if route == ("POST", "stats/reset"):
                self.stats.reset()
                return Response.json(200, self.stats.snapshot())
            if route == ("GET", "faults"):
                return Response.json(200, self.faults.as_dict())
            if route == ("POST", "faults"):
                self.faults.configure(payload or {})
                return Response.json(200, self.faults.as_dict())
            if route == ("POST", "reset"):
                self.app.reset(str((payload or {}).get("seed", "empty")))
                return Response.json(200, {"reset": True})
            extra = getattr(self.app, "control", None)
            response = extra(request, subpath) if extra else None
        except (ValueError, TypeError) as exc:
            return Response.json(400, {"error": str(exc)})
        return response or Response.json(
            404, {"error": f"no control call {request.method} {subpath}"}
        )
