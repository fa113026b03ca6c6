"""A scripted stand-in for a web API, mounted on a client's requests session (the client seam).

    api = FakeApi()
    api.on("POST", "/v2/sessiontoken", reply(201, {...}))
    api.on("GET", "/v2/customers/ACME01", reply(401, {...}), reply(200, {...}))
    client.session.mount("https://", api)

Replies for a route are used in order and the last one repeats. A reply may be an exception
(requests.exceptions.ReadTimeout(...)) or a callable taking the request. Every request is kept in
`api.requests`, so tests assert on what went over the wire.
"""

import json
import re
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from integration.clients import http


def reply(status=200, body=None, headers=None):
    def make(request):
        response = requests.Response()
        response.status_code = status
        response.request = request
        response.url = request.url
        response.headers = CaseInsensitiveDict(headers or {})
        if body is None:
            response._content = b""
        elif isinstance(body, str):
            response._content = body.encode()
        else:
            response._content = http.dumps(body).encode()
            response.headers.setdefault("Content-Type", "application/json")
        return response

    return make


class FakeApi(BaseAdapter):
    def __init__(self):
        super().__init__()
        self.routes = []
        self.requests = []

    def on(self, method, path_pattern, *replies):
        """`path_pattern` is a regular expression matched against the whole URL path."""
        self.routes.insert(0, [method, re.compile(path_pattern + "$"), list(replies)])
        return self

    def send(self, request, **kwargs):
        self.requests.append(request)
        path = urlsplit(request.url).path
        for method, pattern, replies in self.routes:
            if method == request.method and pattern.match(path):
                answer = replies.pop(0) if len(replies) > 1 else replies[0]
                if isinstance(answer, Exception):
                    answer.request = request
                    raise answer
                return answer(request)
        raise AssertionError(f"unexpected {request.method} {request.url}")

    def close(self):
        pass

    def calls(self, method=None, path_pattern=".*"):
        pattern = re.compile(path_pattern + "$")
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and pattern.match(urlsplit(r.url).path)
        ]


def body_of(request):
    """A request's JSON body with Decimal numbers (so tests can see exactness)."""
    return json.loads(request.body, parse_float=Decimal)


def query_of(request):
    return {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}


def use_fast_retries(settings, monkeypatch) -> list[float]:
    """Tiny backoff and recorded waits: retries are exercised without sleeping through them.

    Returns the list the waits are recorded in."""
    settings.KASHFORCE = {
        **settings.KASHFORCE,
        "HTTP_ATTEMPTS": 3,
        "HTTP_BACKOFF": 0.01,
        "HTTP_MAX_WAIT": 5.0,
        "BULK_POLL": 0.01,
    }
    waits = []
    monkeypatch.setattr(http, "sleep", waits.append)
    return waits
