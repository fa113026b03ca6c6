"""pytest fixtures for running the real clients against the sandbox simulators.

Use from a conftest: `pytest_plugins = ["tests.fixtures_sandbox"]`.

- `sandbox_server` (session): both simulators in-process, seed "empty", random ports, tmp state.
- `sandbox` (function): the same server reset to "empty" with faults and stats cleared.
- `control(url, path, payload=None)`: call a control endpoint (POST with a payload, else GET).
- `LoginRedirect`: a requests adapter that sends simple-salesforce's fixed login hosts
  (https://login.salesforce.com, https://test.salesforce.com, https://*.salesforce.com) to the
  simulator. For tests only: simple-salesforce cannot be pointed at a login host by parameters.
"""

import re
import warnings

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InsecureRequestWarning

from sandbox.runner import SandboxServer


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory):
    server = SandboxServer(tmp_path_factory.mktemp("sandbox"), seed="empty").start()
    yield server
    server.stop()


@pytest.fixture
def sandbox(sandbox_server):
    sandbox_server.reset("empty")
    yield sandbox_server


def control(url: str, path: str, payload=None) -> dict:
    """GET (or POST when a payload is given) `url + path` on a control base URL."""
    session = requests.Session()
    session.trust_env = False
    # The control API is on the simulator's own port; its CA is not worth threading through here.
    with session, warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)
        if payload is None:
            response = session.get(url + path, timeout=10, verify=False)
        else:
            response = session.post(url + path, json=payload, timeout=10, verify=False)
    response.raise_for_status()
    return response.json()


class LoginRedirect(HTTPAdapter):
    """Rewrites https://<anything>.salesforce.com/... to the simulator's base URL."""

    HOST = re.compile(r"^https://[^/]*\.salesforce\.com")

    def __init__(self, target: str, **kwargs):
        self.target = target.rstrip("/")
        super().__init__(**kwargs)

    def send(self, request, **kwargs):
        request.url = self.HOST.sub(self.target, request.url)
        return super().send(request, **kwargs)


def simulator_session(info: dict) -> requests.Session:
    """A session that trusts the simulator CA and sends login hosts to the simulator."""
    session = requests.Session()
    session.verify = info["ca_file"]
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify
    adapter = LoginRedirect(info["login_url"])
    for prefix in ("https://login.salesforce.com/", "https://test.salesforce.com/"):
        session.mount(prefix, adapter)
    session.mount("https://", _AnySalesforceHost(adapter))
    return session


class _AnySalesforceHost(HTTPAdapter):
    """Mounted on https://: *.salesforce.com goes to the redirect, everything else is direct."""

    def __init__(self, redirect: LoginRedirect):
        super().__init__()
        self.redirect = redirect

    def send(self, request, **kwargs):
        if LoginRedirect.HOST.match(request.url):
            return self.redirect.send(request, **kwargs)
        return super().send(request, **kwargs)
