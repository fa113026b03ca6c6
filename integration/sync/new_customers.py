"""A Salesforce Account becomes a KashFlow customer when it is first invoiced.

The customer's `Code` is made from the Account's name (ACMEL001, ACMEL002 … on a clash), and it
is made exactly once, the same way invoices are:

1. Choose the code and record the intent (a CrossRef with the code, not yet confirmed).
2. Put the code on the Account's ExternalID__c first, so the customers flow, seeing the new
   KashFlow customer, updates this Account instead of creating a second one.
3. Create the customer. A retry finds the intent and first asks KashFlow whether the customer
   with that code is already there (its answer may have been lost); a code that turns out to
   belong to someone else moves on to the next number.
"""

from __future__ import annotations

import re
import unicodedata

from integration.clients.errors import ApiError
from integration.mapping import apply_mapping, payload_hash
from integration.models import CrossRef
from integration.sync.links import Links
from integration.sync.mappings import active_rows, context

SOURCE = "salesforce.Account"
TARGET = "kashflow.Customer"
MAX_CLASHES = 20


def ensure_customers(ctx, links: Links, invoices: list) -> None:
    """Make every invoice's Account a KashFlow customer; an invoice whose Account cannot be
    made one is failed with the reason. Needs `invoice.opportunity["AccountId"]`, `invoice.event`.
    """
    waiting: dict[str, list] = {}
    for invoice in invoices:
        account_id = invoice.opportunity["AccountId"]
        if not _confirmed(links.get("customer", "salesforce", account_id)):
            waiting.setdefault(account_id, []).append(invoice)
    if not waiting:
        return
    rows = active_rows(ctx, "customers", SOURCE, TARGET)
    accounts = _read_accounts(ctx, rows, list(waiting))
    for account_id, account_invoices in waiting.items():
        account = accounts.get(account_id)
        try:
            problem = (
                _make_customer(ctx, links, rows, account, _currency(account_invoices))
                if account
                else f"Account {account_id} was not found in Salesforce."
            )
        except ApiError as exc:
            name = account["Name"] if account else account_id
            message = f"Account {name} could not be made a KashFlow customer: {exc.message}"
            for invoice in account_invoices:
                invoice.event.mark_failed(message, permanent=exc.permanent, code=exc.code)
            continue
        if problem:
            for invoice in account_invoices:
                invoice.event.mark_failed(problem, permanent=True, code="CUSTOMER")


def _currency(invoices: list) -> str:
    """The currency a new customer invoices in: its first deal's (so the deal's invoice can be
    raised in it); "" leaves KashFlow's default."""
    return next((i.currency for i in invoices if getattr(i, "currency", "")), "")


def _confirmed(ref: CrossRef | None) -> bool:
    """A customer that exists in KashFlow: synced from it, or created and confirmed by us."""
    return bool(ref and ref.kashflow_key and (ref.kashflow_synced_at or ref.salesforce_synced_at))


def _read_accounts(ctx, rows: list[dict], account_ids: list[str]) -> dict[str, dict]:
    """The Accounts with the fields the mapping reads and their first Contact: one query."""
    fields = {"Id", "Name"} | {
        path.split(".")[0]
        for row in rows
        for path in [row.get("source_path", ""), *(row.get("params") or {}).get("sources", [])]
        if isinstance(path, str) and path and not path.startswith("PrimaryContact")
    }

    def soql(chunk) -> str:
        quoted = ", ".join(f"'{account_id}'" for account_id in chunk)
        return (
            f"SELECT {', '.join(sorted(fields))}, (SELECT FirstName, LastName, Email, Phone FROM "
            f"Contacts ORDER BY CreatedDate LIMIT 1) FROM Account WHERE Id IN ({quoted})"
        )

    accounts = {}
    valid = [account_id for account_id in account_ids if account_id.isalnum()]
    for record in ctx.salesforce.query_in(soql, valid):
        contacts = (record.pop("Contacts", None) or {}).get("records") or []
        record["PrimaryContact"] = contacts[0] if contacts else {}
        accounts[record["Id"]] = record
    return accounts


def _make_customer(
    ctx, links: Links, rows: list[dict], account: dict, currency: str = ""
) -> str | None:
    """Create the Account's customer; returns the reason it cannot be made, or None.

    Raises ApiError when an API call fails (transient ones are retried later)."""
    mapped = apply_mapping(rows, account, context(links))
    if mapped.errors:
        problems = "; ".join(error.message for error in mapped.errors)
        return f"Account {account['Name']} cannot become a KashFlow customer. {problems}"
    if currency and "Currency" not in mapped.payload:
        mapped.payload["Currency"] = {"Code": currency}
    # Read afresh: the customers flow may have linked this Account to its KashFlow namesake since
    # the batch began, and a code chosen from the stale view would make the company twice.
    ref = links.reload("customer", "salesforce", account["Id"])
    if _confirmed(ref):
        return None
    code = (
        ref.kashflow_key
        if ref and ref.kashflow_key
        else _free_code(account["Name"], None, account["Id"])
    )
    if ctx.dry_run:
        links.assume("customer", salesforce_id=account["Id"], kashflow_key=code)
        ctx.plan(
            _DryEvent(account["Id"]),
            target_object=TARGET,
            action="create",
            payload={**mapped.payload, "Code": code},
        )
        return None
    for _ in range(MAX_CLASHES):
        ref = links.link("customer", salesforce_id=account["Id"], kashflow_key=code)
        _mark_account(ctx, account["Id"], code)
        if _create_or_adopt(ctx, {**mapped.payload, "Code": code}, account["Name"]):
            links.written(ref, "kashflow", payload_hash(mapped.payload))
            return None
        code = _free_code(account["Name"], after=code)
    return f"No free KashFlow customer code was found for {account['Name']}."


def _mark_account(ctx, account_id: str, code: str) -> None:
    result = ctx.salesforce.update("Account", [{"Id": account_id, "ExternalID__c": code}])[0]
    if not result.success:
        raise result.error


def _create_or_adopt(ctx, customer: dict, name: str) -> bool:
    """True once the customer with this code is ours; False if the code is someone else's."""
    kashflow = ctx.kashflow
    existing = _get(kashflow, customer["Code"])
    if existing is None:
        try:
            kashflow.create_customer(customer)
            return True
        except ApiError as exc:
            if exc.transient or exc.status != 400:
                raise
            existing = _get(kashflow, customer["Code"])
            if existing is None:
                raise  # a validation problem, not a clash: the message says what
    # The code exists: ours if it is this Account's customer (a lost answer), else a clash.
    return _same_name(existing.get("Name"), name)


def _get(kashflow, code: str) -> dict | None:
    try:
        return kashflow.get_customer(code)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _same_name(a: str | None, b: str | None) -> bool:
    return (a or "").strip().casefold() == (b or "").strip().casefold()


def customer_code_base(name: str) -> str:
    """Up to five letters of the name, upper case, accents and punctuation dropped."""
    plain = unicodedata.normalize("NFKD", name or "").encode("ascii", "ignore").decode()
    letters = re.sub(r"[^A-Za-z0-9]", "", plain).upper()
    return (letters or "CUST")[:5]


def _free_code(name: str, after: str | None = None, account_id: str = "") -> str:
    """The first code for the name not linked to another Account (KashFlow decides the rest).

    A code linked to this very Account is its own: the customers flow may have linked it to its
    KashFlow namesake a moment ago, and counting that as taken would make the company twice.
    """
    base = customer_code_base(name)
    start = int(after[len(base) :]) + 1 if after and after[len(base) :].isdigit() else 1
    links = CrossRef.objects.filter(object_type="customer", kashflow_key__startswith=base)
    taken = set()
    for salesforce_id, code in links.values_list("salesforce_id", "kashflow_key"):
        if account_id and salesforce_id == account_id and not after:
            return code
        taken.add(code)
    number = start
    while f"{base}{number:03d}" in taken:
        number += 1
    return f"{base}{number:03d}"


class _DryEvent:
    """What ctx.plan needs to name a customer a dry run would create."""

    source_object = SOURCE

    def __init__(self, account_id: str):
        self.source_id = account_id
