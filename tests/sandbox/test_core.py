"""The shared HTTP core, driven over real sockets with a tiny in-memory app."""

import ssl
import threading
import time

import pytest
import requests
import trustme

from sandbox.core import Response, SimulatorServer


class NotesApp:
    """A minimal simulator app: a list of notes and a token that can expire."""

    name = "notes"

    def __init__(self):
        self.notes = []
        self.token_valid = True
        self.lock = threading.Lock()

    def handle(self, request):
        if not self.token_valid:
            return self.error_response(401, "EXPIRED", "token expired")
        if request.method == "POST":
            with self.lock:
                self.notes.append(request.json())
            return Response.json(201, {"count": len(self.notes)})
        return Response.json(200, {"notes": self.notes, "q": request.query})

    def route_template(self, request):
        return f"{request.method} /notes"

    def is_write(self, request):
        return request.method != "GET"

    def expire_session(self, request):
        self.token_valid = False

    def error_response(self, status, code, message):
        return Response.json(status, {"code": code, "message": message})

    def reset(self, seed):
        self.notes = [] if seed == "empty" else [{"seeded": seed}]
        self.token_valid = True

    def close(self):
        pass


@pytest.fixture
def server():
    server = SimulatorServer(NotesApp()).start()
    yield server
    server.stop()


@pytest.fixture
def http():
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def faults(http, server, *rules, **extra):
    response = http.post(server.control_url + "faults", json={"rules": list(rules), **extra})
    assert response.status_code == 200, response.text


def test_serves_json_and_parses_query(server, http):
    response = http.get(server.url + "/notes?a=1&a=2&b=")
    assert response.json() == {"notes": [], "q": {"a": ["1", "2"], "b": [""]}}
    assert response.headers["Content-Type"].startswith("application/json")


def test_keeps_the_connection_alive_between_calls(server, http):
    http.get(server.url + "/notes")
    http.post(server.url + "/notes", json={"n": 1})
    # One TCP connection for both: the pool reused it.
    assert len(http.get_adapter(server.url).poolmanager.pools) == 1
    pool = next(iter(http.get_adapter(server.url).poolmanager.pools._container.values()))
    assert pool.num_connections == 1


def test_stats_count_calls_per_template_but_not_control_calls(server, http):
    http.get(server.url + "/notes")
    http.get(server.url + "/notes")
    http.post(server.url + "/notes", json={})
    stats = http.get(server.control_url + "stats").json()
    assert stats == {"total": 3, "calls": {"GET /notes": 2, "POST /notes": 1}, "faults": {}}
    http.post(server.control_url + "stats/reset")
    assert http.get(server.control_url + "stats").json()["total"] == 0


def test_reset_applies_the_seed(server, http):
    http.post(server.url + "/notes", json={"n": 1})
    http.post(server.control_url + "reset", json={"seed": "demo"})
    assert http.get(server.url + "/notes").json()["notes"] == [{"seeded": "demo"}]


def test_429_fault_sets_retry_after_and_is_counted(server, http):
    faults(http, server, {"match": "GET /notes", "rate": 1, "kind": "429"})
    response = http.get(server.url + "/notes")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert http.post(server.url + "/notes", json={}).status_code == 201  # POST not matched
    assert http.get(server.control_url + "stats").json()["faults"] == {"429": 1}


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_error_faults_use_the_apps_error_shape(server, http, kind):
    faults(http, server, {"match": "", "kind": kind})
    response = http.get(server.url + "/notes")
    assert response.status_code == int(kind)
    assert response.json()["code"] == f"SANDBOX_FAULT_{kind}"


def test_error_body_fault_answers_200_with_a_message_and_no_data(server, http):
    faults(http, server, {"match": "GET /notes?page=2", "kind": "error_body"})
    assert http.get(server.url + "/notes?page=1").json()["notes"] == []  # other pages answer
    response = http.get(server.url + "/notes?page=2&perpage=200")
    assert (response.status_code, response.json()) == (200, {"Message": "An error has occurred."})
    assert http.get(server.control_url + "stats").json()["faults"] == {"error_body": 1}


def test_timeout_fault_holds_the_request_then_closes(server, http):
    faults(http, server, {"match": "*", "kind": "timeout", "seconds": 5})
    start = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(server.url + "/notes", timeout=0.3)
    assert time.monotonic() - start < 2


def test_timeout_fault_without_client_timeout_ends_in_a_dropped_connection(server, http):
    faults(http, server, {"match": "*", "kind": "timeout", "seconds": 0.2})
    with pytest.raises(requests.exceptions.ConnectionError):
        http.get(server.url + "/notes")


def test_reset_fault_drops_the_connection_and_nothing_is_written(server, http):
    faults(http, server, {"match": "POST", "kind": "reset"})
    with pytest.raises(requests.exceptions.ConnectionError):
        http.post(server.url + "/notes", json={"n": 1})
    assert server.app.notes == []


def test_ambiguous_fault_commits_the_write_but_loses_the_answer(server, http):
    faults(http, server, {"match": "", "kind": "ambiguous"})
    assert http.get(server.url + "/notes").status_code == 200  # reads are never ambiguous
    with pytest.raises(requests.exceptions.ConnectionError):
        http.post(server.url + "/notes", json={"n": 1})
    assert server.app.notes == [{"n": 1}]


def test_expire_token_fault_lets_the_app_answer_its_real_401(server, http):
    faults(http, server, {"match": "GET", "kind": "expire_token"})
    assert http.get(server.url + "/notes").status_code == 401


def test_fault_rates_are_reproducible_with_a_seed(server, http):
    def run():
        faults(http, server, {"match": "", "kind": "503", "rate": 0.5}, seed="abc")
        return [http.get(server.url + "/notes").status_code for _ in range(20)]

    first = run()
    assert first == run()
    assert 200 in first and 503 in first


def test_unknown_fault_kind_is_refused(server, http):
    response = http.post(server.control_url + "faults", json={"rules": [{"kind": "fire"}]})
    assert response.status_code == 400


def test_latency_delays_counted_calls(server, http):
    faults(http, server, latency_ms=150)
    start = time.monotonic()
    http.get(server.url + "/notes")
    assert time.monotonic() - start >= 0.15
    assert http.get(server.control_url + "faults").json()["latency_ms"] == 150


def test_serves_https_with_a_given_ssl_context(http, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = SimulatorServer(NotesApp(), ssl_context=context).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        http.verify = str(tmp_path / "ca.pem")
        assert http.get(server.url + "/notes").status_code == 200
    finally:
        server.stop()


def test_stop_wakes_a_held_request(http):
    server = SimulatorServer(NotesApp()).start()
    faults(http, server, {"kind": "timeout", "seconds": 30})

    def held_call():
        with pytest.raises(requests.exceptions.ConnectionError):
            http.get(server.url + "/x")

    thread = threading.Thread(target=held_call)
    thread.start()
    time.sleep(0.2)
    start = time.monotonic()
    server.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - start < 3


def test_a_rule_with_a_count_fires_that_many_times(server, http):
    faults(http, server, {"match": "GET /notes", "rate": 1, "kind": "503", "count": 2})
    statuses = [http.get(server.url + "/notes").status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert http.get(server.control_url + "faults").json()["rules"][0]["fired"] == 2


def test_record_faults_skip_apps_and_calls_without_records(server, http):
    # NotesApp answers no call record by record: a lock_row rule never fires on it.
    faults(http, server, {"match": "", "rate": 1, "kind": "lock_row"})
    assert http.post(server.url + "/notes", json={"text": "x"}).status_code == 201
    assert http.get(server.control_url + "stats").json()["faults"] == {}


def test_no_uri_limit_unless_the_app_sets_one(server, http):
    assert http.get(server.url + "/notes?q=" + "x" * 20000).status_code == 200
    server.app.max_uri_and_headers = 1000
    try:
        assert http.get(server.url + "/notes?q=" + "x" * 1000).status_code == 414
        assert http.get(server.url + "/notes", headers={"X-Pad": "y" * 1000}).status_code == 431
        assert http.get(server.url + "/notes").status_code == 200
    finally:
        del server.app.max_uri_and_headers
