"""The guided first run of a local trial (`make run`): what the demo holds, and a button that
closes one of its deals so a person sees an invoice appear in KashFlow.

It acts only when BOTH active connections point at the sandbox this machine runs, as its
descriptor (sandbox.json in KASHFORCE_SANDBOX_DIR, written by `manage.py sandbox` with the
simulator's process id) says: a deal is never closed in a real org, nor invoiced in a real
KashFlow account.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from django.conf import settings

from integration.models import Connection

# What `manage.py sandbox --seed demo` makes (sandbox/salesforce/seed.py DEMO), in words.
DEMO_HOLDS = (
    "150 companies, each a Salesforce Account and a KashFlow customer with the same name; "
    "60 products; 400 deals at every stage, in each company's currency (GBP, EUR or USD). "
    "Most won deals are already invoiced; the 8 newest wait for their invoices."
)


@dataclass
class ClosedDeal:
    id: str
    name: str
    account: str


class NotTheSandbox(Exception):
    """The connections do not both point at the sandbox running here."""


def sandbox_descriptor() -> dict | None:
    """The running sandbox's descriptor, or None (none written, or its process is gone)."""
    path = Path(settings.KASHFORCE["SANDBOX_STATE_DIR"]) / "sandbox.json"
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def demo_connections() -> tuple[Connection, Connection] | None:
    """(Salesforce, KashFlow) when the active connections are the sandbox's, else None."""
    info = sandbox_descriptor()
    if info is None:
        return None
    active = {c.kind: c for c in Connection.objects.filter(is_active=True).order_by("pk")}
    salesforce, kashflow = (
        active.get(Connection.Kind.SALESFORCE),
        active.get(Connection.Kind.KASHFLOW),
    )
    if salesforce is None or kashflow is None:
        return None
    sf_url = (info.get("salesforce") or {}).get("instance_url", "").rstrip("/")
    kf_url = (info.get("kashflow") or {}).get("base_url", "").rstrip("/")
    if not sf_url or not kf_url:
        return None
    if salesforce.instance_url.rstrip("/") != sf_url:
        return None
    if kashflow.base_url.rstrip("/") not in (kf_url, f"{kf_url}/v2"):
        return None
    return salesforce, kashflow


def close_a_demo_deal() -> ClosedDeal | None:
    """Mark the oldest open demo deal with products and a company Closed Won, as a salesperson
    would; the sandbox then sends its Outbound Message and the invoices flow makes the invoice.
    None when no open deal is left. Raises NotTheSandbox unless both connections are the
    sandbox's."""
    from integration.clients.salesforce import SalesforceClient

    connections = demo_connections()
    if connections is None:
        raise NotTheSandbox
    client = SalesforceClient(connections[0])
    records = client.query(
        "SELECT Id, Name, Account.Name FROM Opportunity WHERE IsClosed = false "
        "AND HasOpportunityLineItem = true AND AccountId != null ORDER BY CreatedDate LIMIT 1"
    )
    deal = next(iter(records), None)
    if deal is None:
        return None
    [result] = client.update(
        "Opportunity",
        [{"Id": deal["Id"], "StageName": "Closed Won", "CloseDate": date.today().isoformat()}],
    )
    if not result.success:
        raise result.error
    account = (deal.get("Account") or {}).get("Name", "")
    return ClosedDeal(deal["Id"], deal["Name"], account)
