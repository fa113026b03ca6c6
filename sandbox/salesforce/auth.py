"""Login flows (SOAP partner login, OAuth password / client credentials / JWT bearer) and sessions.

Tokens are valid from the moment they are issued: simple-salesforce's SFType retries a 401 forever
by logging in again, so a token that needed time to "propagate" would loop it.
"""

import base64
import hmac
import re
import secrets
import time
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import jwt

from sandbox.core import Request, Response
from sandbox.salesforce.store import Store

OAUTH_AUDIENCES = {"https://login.salesforce.com", "https://test.salesforce.com"}
SOAP_FAULT = """<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" \
xmlns:sf="urn:fault.partner.soap.sforce.com" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>\
<faultcode>sf:INVALID_LOGIN</faultcode><faultstring>INVALID_LOGIN: Invalid username, password, \
security token; or user locked out.</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault">\
<sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode><sf:exceptionMessage>Invalid username, \
password, security token; or user locked out.</sf:exceptionMessage></sf:LoginFault></detail>\
</soapenv:Fault></soapenv:Body></soapenv:Envelope>"""


# SOAP login() is off by default in orgs created from Winter '26 and unavailable from API 65.0
# (developer.salesforce.com sforce_api_calls_login). The disabled text is as reported from
# real orgs (OpenFn/adaptors#1715); the 65.0 text is reconstructed (least forgiving: the same
# INVALID_OPERATION fault shape).
SOAP_LOGIN_DISABLED = (
    "SOAP API login() is disabled by default in this org. Contact the org administrator to "
    "enable SOAP API login()."
)
SOAP_LOGIN_LAST_VERSION = 64.0
SOAP_LOGIN_UNAVAILABLE = "SOAP API login() is not available in API version 65.0 and later."


def soap_fault(code: str, message: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:sf="urn:fault.partner.soap.sforce.com" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>sf:{code}</faultcode><faultstring>{escape(f'{code}: {message}')}"
        '</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault">'
        f"<sf:exceptionCode>{code}</sf:exceptionCode><sf:exceptionMessage>{escape(message)}"
        "</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault></soapenv:Body>"
        "</soapenv:Envelope>"
    )


class Sessions:
    """Access tokens with an expiry, kept in the store's meta table so a restart keeps them."""

    def __init__(self, store: Store, org_id: str, lifetime_seconds: float):
        self.store = store
        self.org_id = org_id
        self.lifetime_seconds = lifetime_seconds

    def issue(self, username: str) -> str:
        token = f"{self.org_id[:15]}!AQ{secrets.token_urlsafe(72)}"
        expires = time.time() + self.lifetime_seconds
        with self.store.lock:
            self.store.set_meta(f"session:{token}", {"username": username, "expires": expires})
        return token

    def is_valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self.store.lock:
            session = self.store.get_meta(f"session:{token}")
        return bool(session) and session["expires"] > time.time()

    def expire(self, token: str | None) -> None:
        if token:
            with self.store.lock:
                self.store.db.execute("DELETE FROM meta WHERE key = ?", (f"session:{token}",))


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("Authorization") or ""
    if header.lower().startswith(("bearer ", "oauth ")):
        return header.split(" ", 1)[1].strip()
    return request.headers.get("X-SFDC-Session")


class Authenticator:
    def __init__(
        self, creds: dict, sessions: Sessions, public_key: bytes, base_url_of, switches=None
    ):
        self.switches = switches if switches is not None else {"soap_login_enabled": True}
        self.creds = creds
        self.sessions = sessions
        self.public_key = public_key
        self.base_url_of = base_url_of  # callable: the simulator's own https://127.0.0.1:port

    def soap_login(self, request: Request, version: str) -> Response:
        if float(version) > SOAP_LOGIN_LAST_VERSION:
            fault = soap_fault("INVALID_OPERATION", SOAP_LOGIN_UNAVAILABLE)
            return Response.text(500, fault, "text/xml;charset=UTF-8")
        if not self.switches.get("soap_login_enabled"):
            fault = soap_fault("INVALID_OPERATION", SOAP_LOGIN_DISABLED)
            return Response.text(500, fault, "text/xml;charset=UTF-8")
        body = request.body.decode("utf-8", "replace")
        username = _xml_text(body, "username")
        password = _xml_text(body, "password")
        expected = self.creds["password"] + self.creds["security_token"]
        if username != self.creds["username"] or not _same(password, expected):
            return Response.text(500, SOAP_FAULT, "text/xml;charset=UTF-8")
        token = self.sessions.issue(username)
        return Response.text(200, self._soap_result(version, token), "text/xml;charset=UTF-8")

    def _soap_result(self, version: str, token: str) -> str:
        base, org = self.base_url_of(), self.creds["organization_id"]
        return (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse><result>'
            f"<metadataServerUrl>{base}/services/Soap/m/{version}/{org}</metadataServerUrl>"
            "<passwordExpired>false</passwordExpired><sandbox>true</sandbox>"
            f"<serverUrl>{base}/services/Soap/u/{version}/{org}</serverUrl>"
            f"<sessionId>{escape(token)}</sessionId><userId>{self.creds['user_id']}</userId>"
            f"<userInfo><organizationId>{org}</organizationId>"
            f"<userName>{escape(self.creds['username'])}</userName></userInfo>"
            "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
        )

    def oauth_token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type", "")
        grants = {
            "password": self._password_grant,
            "client_credentials": self._client_credentials_grant,
            "urn:ietf:params:oauth:grant-type:jwt-bearer": self._jwt_grant,
        }
        if grant not in grants:
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        return grants[grant](request, form)

    def _password_grant(self, request: Request, form: dict) -> Response:
        if not self._client_ok(form.get("client_id"), form.get("client_secret")):
            return _oauth_error("invalid_client_id", "client identifier invalid")
        password = form.get("password", "")
        valid_passwords = (
            self.creds["password"],
            self.creds["password"] + self.creds["security_token"],
        )
        if form.get("username") != self.creds["username"] or not any(
            _same(password, p) for p in valid_passwords
        ):
            return _oauth_error("invalid_grant", "authentication failure")
        return self._token_response(form["username"])

    def _client_credentials_grant(self, request: Request, form: dict) -> Response:
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        header = request.headers.get("Authorization") or ""
        if header.lower().startswith("basic "):
            decoded = base64.b64decode(header.split(" ", 1)[1]).decode("utf-8", "replace")
            client_id, _, client_secret = decoded.partition(":")
        if not self._client_ok(client_id, client_secret):
            return _oauth_error("invalid_client", "invalid client credentials")
        return self._token_response(self.creds["username"])

    def _jwt_grant(self, request: Request, form: dict) -> Response:
        audiences = [*OAUTH_AUDIENCES, self.base_url_of()]
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self.public_key,
                algorithms=["RS256"],
                audience=audiences,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            return _oauth_error("invalid_grant", "expired authorization code")
        except jwt.InvalidTokenError:
            return _oauth_error("invalid_grant", "invalid assertion")
        if claims["iss"] != self.creds["consumer_key"]:
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if claims["sub"] != self.creds["username"]:
            return _oauth_error("invalid_grant", "user hasn't approved this consumer")
        return self._token_response(claims["sub"])

    def userinfo(self, request: Request) -> Response:
        """OpenID Connect userinfo: who the token belongs to (Pub/Sub clients read the org id
        for the `tenantid` header here). A bad token is a 403 `Bad_OAuth_Token`, as live."""
        if not self.sessions.is_valid(bearer_token(request)):
            return Response.text(403, "Bad_OAuth_Token", "text/plain")
        base, org, user = self.base_url_of(), self.creds["organization_id"], self.creds["user_id"]
        return Response.json(
            200,
            {
                "sub": f"{base}/id/{org}/{user}",
                "user_id": user,
                "organization_id": org,
                "preferred_username": self.creds["username"],
                "active": True,
            },
        )

    def _client_ok(self, client_id, client_secret) -> bool:
        return _same(client_id, self.creds["consumer_key"]) and _same(
            client_secret, self.creds["consumer_secret"]
        )

    def _token_response(self, username: str) -> Response:
        token = self.sessions.issue(username)
        issued_at = str(int(time.time() * 1000))
        base, org, user = self.base_url_of(), self.creds["organization_id"], self.creds["user_id"]
        signature = base64.b64encode(
            hmac.digest(
                self.creds["consumer_secret"].encode(), (base + issued_at).encode(), "sha256"
            )
        ).decode()
        return Response.json(
            200,
            {
                "access_token": token,
                "instance_url": base,
                "id": f"{base}/id/{org}/{user}",
                "token_type": "Bearer",
                "issued_at": issued_at,
                "signature": signature,
                "scope": "api",
            },
        )


def _oauth_error(error: str, description: str) -> Response:
    return Response.json(400, {"error": error, "error_description": description})


def _xml_text(xml: str, local_name: str) -> str | None:
    """Text of the first element with this local name, whatever its namespace prefix."""
    match = re.search(
        rf"<(?:\w+:)?{local_name}(?:\s[^>]*)?>(.*?)</(?:\w+:)?{local_name}>", xml, re.DOTALL
    )
    if not match:
        return None
    text = match.group(1)
    for entity, char in (
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", '"'),
        ("&apos;", "'"),
        ("&amp;", "&"),
    ):
        text = text.replace(entity, char)
    return text


def _same(given, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())
