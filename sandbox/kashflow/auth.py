"""KashFlow's two-step login, session tokens and account lock-out.

Step 1 (POST /sessiontoken) checks user name and password and asks for three letters of the
memorable word; step 2 (PUT /sessiontoken) checks them and issues the session token that every
other call sends as `Authorization: KfToken <token>`. A token lives while it is used: the clock
slides on every call (reference §2.2). What KashFlow answers to a wrong password or memorable word
is not documented: the documented auth failures are all 401s, so a wrong password, wrong letters
and an unknown or expired temporary token all get ASP.NET Web API's bare 401 (`{"Message":
"Authorization has been denied for this request."}`), with no error code a client could come to
depend on and no hint of which part was wrong. AccountLocked (401, documented) once
`lockout_after` attempts in a row have failed.
"""

import json
import random
import secrets
import uuid
from datetime import timedelta

from .store import Txn
from .wire import ApiError, Fields, format_datetime, from_db

WORDS = [
    "pineapple",
    "marmalade",
    "lighthouse",
    "harrogate",
    "waterfall",
    "buttercup",
    "kingfisher",
]


def ensure_account(txn: Txn, options: dict) -> None:
    """Make up the login once per state dir; options may pin any part of it."""
    if txn.one("SELECT 1 FROM account"):
        return
    txn.run(
        "INSERT INTO account (id, username, password, memorable_word, company_name)"
        " VALUES (1, ?, ?, ?, ?)",
        (
            options.get("username") or "sandbox@kashforce.test",
            options.get("password") or secrets.token_urlsafe(12),
            options.get("memorable_word") or random.SystemRandom().choice(WORDS),
            options.get("company_name") or "Kashforce Sandbox Ltd",
        ),
    )


def credentials(txn: Txn) -> dict:
    row = txn.one("SELECT * FROM account")
    return {
        "username": row["username"],
        "password": row["password"],
        "memorable_word": row["memorable_word"],
    }


def start_login(txn: Txn, body, options: dict) -> dict:
    account = _usable_account(txn)
    fields = Fields(body)
    user_ok = fields.text("UserName").lower() == account["username"].lower()
    if not (user_ok and secrets.compare_digest(fields.text("Password"), account["password"])):
        _fail(txn, options, refused())
    word_length = len(account["memorable_word"])
    positions = sorted(random.SystemRandom().sample(range(1, word_length + 1), 3))
    token = str(uuid.uuid4()).upper()
    txn.run(
        "INSERT INTO temporary_tokens (token, positions, created) VALUES (?, ?, ?)",
        (token, json.dumps(positions), format_datetime(txn.now)),
    )
    return {
        "TemporaryToken": token,
        "MemorableWordList": [{"Position": position, "Value": ""} for position in positions],
        "MemorableWordPositions": ",".join(map(str, positions)),
        "HasTemporaryPassword": False,
        "IsAdmin": True,
        "IsLockedOut": False,
        "Disabled": False,
        "PackageName": "Business",
        "PartnerBrandingOptOut": False,
        "PartnerId": 0,
        "SubscriptionExpired": False,
        "KeepUserLoggedIn": False,
        "CompanyUserFullName": "Sandbox User",
        "EmailId": account["username"],
    }


def finish_login(txn: Txn, body, options: dict) -> dict:
    account = _usable_account(txn)
    fields = Fields(body)
    token = fields.text("TemporaryToken").upper()
    row = txn.one("SELECT * FROM temporary_tokens WHERE token = ?", (token,))
    # A temporary token is good for one attempt, right or wrong: guessing means starting again.
    txn.run("DELETE FROM temporary_tokens WHERE token = ?", (token,))
    max_age = timedelta(minutes=float(options.get("temp_token_minutes", 5)))
    if row is None or txn.now - from_db(row["created"]) > max_age:
        raise refused(commit=True)  # commit: the token used up stays used up
    if not _word_matches(fields, json.loads(row["positions"]), account["memorable_word"]):
        _fail(txn, options, refused())
    txn.run("UPDATE account SET failures = 0")
    session = str(uuid.uuid4()).upper()
    txn.run(
        "INSERT INTO sessions (token, last_used) VALUES (?, ?)",
        (session, format_datetime(txn.now)),
    )
    return {
        "SessionToken": session,
        "CompanyName": account["company_name"],
        "IsAdmin": True,
        "SubscriptionExpired": False,
        "PartnerId": 0,
        "PackageName": "Business",
        "PartnerBrandingOptOut": False,
        "StartPageUrl": "/dashboard",
        "SubscriptionExpiryDate": "2099-12-31 12:00:00",
        "HasTemporaryPassword": False,
    }


def refused(commit: bool = False) -> ApiError:
    """A refused sign-in step: a bare 401 with no code (see the module's docstring)."""
    return ApiError(401, "", "Authorization has been denied for this request.", commit=commit)


def _word_matches(fields: Fields, positions: list[int], word: str) -> bool:
    given = {}
    for raw in fields.items("MemorableWordList"):
        item = Fields(raw, "MemorableWordList")
        given[item.integer("Position")] = item.text("Value")
    # Case-insensitive, as the sessiontoken page says ("pineapple" at 3, 4, 6 is N, E, P).
    return sorted(given) == positions and all(
        given[position].lower() == word[position - 1].lower() for position in positions
    )


def _usable_account(txn: Txn):
    account = _enabled_account(txn)
    if account["locked"]:
        raise _locked()
    return account


def _fail(txn: Txn, options: dict, error: ApiError):
    """Count a failed attempt and raise: the error itself, or AccountLocked at the limit."""
    txn.run("UPDATE account SET failures = failures + 1")
    failures = txn.one("SELECT failures FROM account")["failures"]
    if failures >= int(options.get("lockout_after", 5)):
        txn.run("UPDATE account SET locked = 1")
        raise _locked(commit=True)
    # The failure must stay counted although the request fails: the store commits errors
    # marked so instead of rolling them back.
    error.commit = True
    raise error


def _locked(commit: bool = False) -> ApiError:
    return ApiError(
        401,
        "AccountLocked",
        "User account is locked due to too many failed login attempts. Contact your administrator.",
        commit=commit,
    )


def _enabled_account(txn: Txn):
    # Synthetic: KashFlow's answer when API access is switched off is not documented; this lets
    # kashforce's connection check say "API disabled" instead of a bare failure.
    account = txn.one("SELECT * FROM account")
    if account["api_disabled"]:
        raise ApiError(
            403, "ApiAccessDisabled", "API access is disabled for this account (Apps > API)."
        )
    return account


def session_token(request) -> str | None:
    scheme, _, token = (request.headers.get("Authorization") or "").strip().partition(" ")
    return token.strip().upper() if scheme.lower() == "kftoken" and token.strip() else None


def authenticate(txn: Txn, request, options: dict) -> str:
    """The request's session token, its inactivity clock restarted; 401 when it is not valid."""
    _enabled_account(txn)
    token = session_token(request)
    row = token and txn.one("SELECT last_used FROM sessions WHERE token = ?", (token,))
    idle = timedelta(minutes=float(options.get("session_minutes", 60)))
    if not row or txn.now - from_db(row["last_used"]) > idle:
        raise invalid_token()
    txn.run("UPDATE sessions SET last_used = ? WHERE token = ?", (format_datetime(txn.now), token))
    return token


def end_session(txn: Txn, token: str | None) -> None:
    if not token or txn.run("DELETE FROM sessions WHERE token = ?", (token.upper(),)).rowcount == 0:
        raise invalid_token()


def forget_expired(txn: Txn, options: dict) -> None:
    idle = timedelta(minutes=float(options.get("session_minutes", 60)))
    txn.run("DELETE FROM sessions WHERE last_used < ?", (format_datetime(txn.now - idle),))


def invalid_token() -> ApiError:
    # The same answer for a bad token and an expired one: KashFlow does not tell them apart.
    return ApiError(401, "InvalidSessionToken", "Session token provided is invalid.")
