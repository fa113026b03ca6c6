"""The connection check: sign in, and say in plain words whether it worked and why not.

Used by the admin's bulk action and the dashboard; the result is stored on the Connection.
A check always signs in afresh (a cached token proves nothing about the stored credentials).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from integration.clients.errors import ApiError
from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import (
    OBJECT_MISSING,
    PAYMENT_LOOKUP,
    PAYMENT_OBJECT,
    SalesforceClient,
    required_fields,
)
from integration.models import AuditEntry, Connection
from integration.secrets import SecretDecryptionError

SECRET_WORDS = {
    "password": "password",
    "security_token": "security token",
    "consumer_secret": "consumer secret",
    "private_key": "private key",
    "memorable_word": "memorable word",
}


@dataclass
class CheckResult:
    ok: bool
    message: str
    # Salesforce only: required custom fields absent from the org, by object.
    missing_fields: dict[str, list[str]] = field(default_factory=dict)


def check_connection(connection: Connection, user=None) -> CheckResult:
    """Sign in and report; the outcome is stored with `connection.record_check` and the
    audit trail says who tested it."""
    try:
        # Pressing Test is the admin's say-so for one more sign-in after a refusal; a refusal
        # now is recorded again by the client.
        result = _incomplete(connection)
        if result is None:
            connection.clear_sign_in_refusal()
            result = _check(connection)
    except ApiError as exc:
        result = CheckResult(False, exc.message)
    except SecretDecryptionError as exc:
        result = CheckResult(False, str(exc))
    connection.record_check(result.ok, result.message)
    AuditEntry.record(
        user,
        AuditEntry.Action.CONNECTION_TESTED,
        AuditEntry.ObjectType.CONNECTION,
        connection.pk,
        str(connection),
        f"{'Works' if result.ok else 'Not working'}: {connection.last_check_message}",
    )
    return result


def _incomplete(connection: Connection) -> CheckResult | None:
    missing = [SECRET_WORDS.get(name, name) for name in connection.missing_secrets()]
    if missing:
        return CheckResult(
            False, f"No {' or '.join(missing)} is stored; enter it in the connection's settings."
        )
    if connection.kind == Connection.Kind.KASHFLOW and not connection.base_url:
        return CheckResult(False, "No KashFlow API address is set (https://api.kashflow.com/v2).")
    return None


def _check(connection: Connection) -> CheckResult:
    if connection.kind == Connection.Kind.KASHFLOW:
        answer = KashFlowClient(connection).login()
        company = f" ({answer['CompanyName']})" if answer.get("CompanyName") else ""
        return CheckResult(True, f"Signed in to KashFlow as {connection.username}{company}.")
    client = SalesforceClient(connection)
    client.login()
    who = connection.username or urlsplit(client.instance_url).hostname
    missing = client.missing_fields(required_fields(connection))
    lookup_missing = PAYMENT_LOOKUP in missing.get(PAYMENT_OBJECT, []) or missing.get(
        PAYMENT_OBJECT
    ) == [OBJECT_MISSING]
    relationship = None if lookup_missing else client.payments_relationship_problem()
    problems = [f"Missing in the org: {describe_missing(missing)}."] if missing else []
    problems += [relationship] if relationship else []
    if connection.invoices_orders() and "Order" not in missing:
        problems += _order_permission_problem(client, connection)
    if not problems:
        message = f"Connected as {who}. The org has every field kashforce needs."
        if connection.invoices_orders() and not connection.username:
            # Client credentials: the run-as user is the connected app's, unknown here.
            message += (
                " Make sure the connected app's run-as user has the Edit Activated Orders "
                "permission, or invoice numbers cannot be written back to activated Orders."
            )
        return CheckResult(True, message)
    return CheckResult(False, f"Connected as {who}. {' '.join(problems)}", missing)


def _order_permission_problem(client: SalesforceClient, connection: Connection) -> list[str]:
    """Activated Orders are locked: writing the invoice number back onto one needs the
    integration user's Edit Activated Orders permission (held through a permission set)."""
    if not connection.username or client.can_edit_activated_orders(connection.username):
        return []
    return [
        f"The user {connection.username} lacks the Edit Activated Orders permission, so "
        "kashforce cannot write invoice numbers back to activated Orders (Salesforce locks "
        "them); give the user a permission set with Edit Activated Orders."
    ]


def describe_missing(missing: dict[str, list[str]]) -> str:
    """ "Opportunity.KashFlow_Invoice_Number__c, KashFlow_Payment__c (object)"."""
    names = []
    for sobject, fields in missing.items():
        if fields == [OBJECT_MISSING]:
            names.append(f"{sobject} (object)")
        else:
            names += [f"{sobject}.{name}" for name in fields]
    return ", ".join(names)
