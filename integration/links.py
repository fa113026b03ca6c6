"""Links from kashforce to the same record in Salesforce and in KashFlow, made in one place.

Salesforce: the active Salesforce connection's instance URL + "/" + the record id, which
Salesforce Classic and Lightning both redirect to the record's page.
KashFlow: the web app at https://app.kashflow.com, whose customer and invoice pages are keyed
like the API: /customers/{Code} and /invoices/{Number}. Other objects get no link.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from integration.models import Connection

KASHFLOW_WEB_APP = "https://app.kashflow.com"
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


class RecordLinks:
    """Build once per page (one query), then ask for as many rows' links as needed."""

    def __init__(self, salesforce_base: str = ""):
        self.salesforce_base = salesforce_base.rstrip("/")

    @classmethod
    def load(cls) -> RecordLinks:
        instance_url = (
            Connection.objects.filter(kind=Connection.Kind.SALESFORCE, is_active=True)
            .values_list("instance_url", flat=True)
            .first()
        )
        return cls(instance_url or "")

    def salesforce(self, record_id: str) -> str | None:
        if not self.salesforce_base or not SALESFORCE_ID.fullmatch(record_id or ""):
            return None
        return f"{self.salesforce_base}/{record_id}"

    def kashflow(self, object_name: str, key: str) -> str | None:
        path = KASHFLOW_PATHS.get(kashflow_kind(object_name))
        if not path or not key:
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
