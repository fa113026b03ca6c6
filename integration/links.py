"""Links from kashforce to the same record in Salesforce and in KashFlow, made in one place.

Salesforce: the active Salesforce connection's instance URL + "/" + the record id, which
Salesforce Classic and Lightning both redirect to the record's page.
KashFlow: the web app at https://app.kashflow.com, whose customer and invoice pages are keyed
like the API: /customers/{Code} and /invoices/{Number}. Other objects get no link, and
neither does a record of a KashFlow connection that is not the live API (the sandbox, a test
double): its numbers are not the live account's, so a link would open somebody else's invoice.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from integration.models import Connection

KASHFLOW_WEB_APP = "https://app.kashflow.com"
KASHFLOW_LIVE_API_HOST = "api.kashflow.com"
KASHFLOW_PATHS = {"customer": "/customers/{key}", "invoice": "/invoices/{key}"}
SALESFORCE_ID = re.compile(r"[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?")
_ID_SUFFIX_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def salesforce_id18(record_id: str) -> str:
    """The 18-character, case-insensitive form of a 15-character Salesforce id (as stored).

    Each 5-character chunk adds one character encoding which of its letters are upper case.
    """
    if len(record_id) != 15:
        return record_id
    suffix = ""
    for start in (0, 5, 10):
        chunk = record_id[start : start + 5]
        bits = sum(1 << i for i, char in enumerate(chunk) if char.isupper())
        suffix += _ID_SUFFIX_CHARS[bits]
    return record_id + suffix


def kashflow_kind(object_name: str) -> str:
    """'kashflow.Customer' or 'customer' -> 'customer'."""
    return object_name.rpartition(".")[2].lower()


def is_live_kashflow(base_url: str) -> bool:
    """True for the live KashFlow API (a blank address means the default, the live one)."""
    return not base_url or urlsplit(base_url).hostname == KASHFLOW_LIVE_API_HOST


class RecordLinks:
    """Build once per page (one query), then ask for as many rows' links as needed."""

    def __init__(self, salesforce_base: str = "", kashflow_live: bool = True):
        self.salesforce_base = salesforce_base.rstrip("/")
        self.kashflow_live = kashflow_live

    @classmethod
    def load(cls) -> RecordLinks:
        active = dict(
            (kind, (instance_url, base_url))
            for kind, instance_url, base_url in Connection.objects.filter(is_active=True)
            .order_by("-pk")
            .values_list("kind", "instance_url", "base_url")
        )
        instance_url = active.get(Connection.Kind.SALESFORCE, ("", ""))[0]
        kashflow = active.get(Connection.Kind.KASHFLOW)
        return cls(instance_url or "", kashflow is None or is_live_kashflow(kashflow[1]))

    def salesforce(self, record_id: str) -> str | None:
        if not self.salesforce_base or not SALESFORCE_ID.fullmatch(record_id or ""):
            return None
        return f"{self.salesforce_base}/{record_id}"

    def kashflow(self, object_name: str, key: str) -> str | None:
        path = KASHFLOW_PATHS.get(kashflow_kind(object_name))
        if not path or not key or not self.kashflow_live:
            return None
        return KASHFLOW_WEB_APP + path.format(key=quote(str(key), safe=""))

    def for_event(self, event) -> dict[str, str | None]:
        """{'salesforce': url, 'kashflow': url} for the two sides of a ledger row."""
        if event.source_object.startswith("salesforce."):
            sf_id, kf_object, kf_key = event.source_id, event.target_object, event.target_id
        else:
            sf_id, kf_object, kf_key = event.target_id, event.source_object, event.source_id
        return {"salesforce": self.salesforce(sf_id), "kashflow": self.kashflow(kf_object, kf_key)}

    def for_crossref(self, crossref) -> dict[str, str | None]:
        return {
            "salesforce": self.salesforce(crossref.salesforce_id or ""),
            "kashflow": self.kashflow(crossref.object_type, crossref.kashflow_key or ""),
        }
