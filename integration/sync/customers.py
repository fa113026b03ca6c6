"""Customers: KashFlow customers → Salesforce Accounts and their primary Contacts.

Collect walks KashFlow's customer list newest change first and stops at the cursor, so a sync
with nothing changed costs one list call. Process maps a batch of up to 200 customers and
upserts them on the External ID fields with two sObject Collections calls (Accounts, then
Contacts with their AccountId), skipping customers whose mapped payload hashes the same as the
one last written. A full run (`--full`, weekly) reads every customer and compares against what
Salesforce holds now, so drift made by hand in Salesforce is found and put right.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction

from integration.clients.errors import ApiError
from integration.clients.kashflow import parse_kashflow_datetime
from integration.clients.salesforce import soql_quote
from integration.mapping import apply_mapping, payload_hash
from integration.models import CrossRef, Cursor, Direction, SyncEvent
from integration.sync import engine
from integration.sync.links import Links
from integration.sync.mappings import MappingMissing, active_rows, context, salesforce_fields

SOURCE = "kashflow.Customer"
ACCOUNT = "salesforce.Account"
CONTACT = "salesforce.Contact"
# KashFlow stamps changes to the second and a save can land while we page: read a little back.
OVERLAP = timedelta(minutes=2)


class CustomersFlow:
    name = "customers"
    batch_size = 200  # one sObject Collections call per object per batch

    # Collect ----------------------------------------------------------------------------------

    def collect(self, ctx: engine.RunContext) -> None:
        connection = ctx.kashflow.connection
        watermark = None if ctx.run.full else _watermark(Cursor.get_value(self.name, connection))
        newest = ""
        customers = ctx.kashflow.customers_changed_since(watermark, full_records=False)
        for page in engine.pages(customers):
            engine.record_changes(ctx, [_change(ctx, customer) for customer in page])
            newest = max(newest, *(_sortable(c.get("LastUpdatedDate") or "") for c in page))
        if newest and not ctx.dry_run:
            Cursor.advance(self.name, connection, newest)

    # Process ----------------------------------------------------------------------------------

    def process(self, events: list[SyncEvent], ctx: engine.RunContext) -> None:
        try:
            account_rows = active_rows(ctx, self.name, SOURCE, ACCOUNT)
            contact_rows = active_rows(ctx, self.name, SOURCE, CONTACT)
        except MappingMissing as exc:
            return engine.fail_events(events, str(exc), permanent=True, code="MAPPING_MISSING")
        codes = [event.source_id for event in events]
        links = (
            Links().prefetch("customer", "kashflow", codes).prefetch("contact", "kashflow", codes)
        )
        try:
            account_context = context(links, salesforce_fields(ctx, "Account"))
            contact_context = context(links, salesforce_fields(ctx, "Contact"))
        except ApiError as exc:
            return engine.fail_events(events, exc.message, permanent=exc.permanent, code=exc.code)
        current = _current_records(ctx, codes, account_rows, contact_rows) if ctx.run.full else {}
        writes, unchanged = [], []
        for event in events:
            write = _map_customer(
                event, account_rows, contact_rows, account_context, contact_context
            )
            if write is None:
                continue  # failed: the event says why
            ref = links.get("customer", "kashflow", event.source_id)
            if _unchanged(write, ref, current.get(event.source_id), ctx.run.full):
                unchanged.append(event.skipped(target_id=ref.salesforce_id if ref else ""))
                continue
            writes.append(write)
        SyncEvent.objects.finish(unchanged)
        if not writes:
            return
        if ctx.dry_run:
            return _plan(ctx, writes, links, current)
        _write(ctx, writes, links)


def _change(ctx: engine.RunContext, customer: dict) -> engine.Change:
    stamp = customer.get("LastUpdatedDate") or ""
    return engine.Change(
        direction=Direction.KASHFLOW_TO_SALESFORCE,
        source_object=SOURCE,
        source_id=customer["Code"],
        payload=customer,
        # KashFlow stamps to the second, so two saves in one second share a stamp: the
        # content tells them apart. A full run looks at every customer again.
        version=f"full-{ctx.run.pk}" if ctx.run.full else f"{stamp}:{payload_hash(customer)[:16]}",
        target_object=ACCOUNT,
    )


class _Write:
    """One customer's Account and Contact payloads on their way to Salesforce."""

    def __init__(self, event: SyncEvent, account: dict, contact: dict | None, warnings: list[str]):
        self.event, self.account, self.contact, self.warnings = event, account, contact, warnings
        self.digest = payload_hash({"account": account, "contact": contact})


def _map_customer(
    event, account_rows, contact_rows, account_context, contact_context
) -> _Write | None:
    customer = event.payload
    account = apply_mapping(account_rows, customer, account_context)
    contact = (
        apply_mapping(contact_rows, customer, contact_context) if _has_contact(customer) else None
    )
    errors = account.errors + (contact.errors if contact else [])
    if errors:
        problems = "; ".join(error.message for error in errors)
        event.mark_failed(
            f"Customer {event.source_id} cannot be sent to Salesforce. {problems}",
            permanent=True,
            code="MAPPING",
        )
        return None
    warnings = account.warnings + (contact.warnings if contact else [])
    return _Write(event, account.payload, contact.payload if contact else None, warnings)


def _has_contact(customer: dict) -> bool:
    return any(
        (c.get("Name") or c.get("LastName") or "").strip() for c in customer.get("Contacts") or []
    )


def _unchanged(write: _Write, ref: CrossRef | None, current: dict | None, full: bool) -> bool:
    if full:
        # Compare with what Salesforce holds now, not with what we last sent.
        return (
            current is not None
            and _same(write.account, current.get("account"))
            and _same(write.contact, current.get("contact"))
        )
    return ref is not None and ref.salesforce_id and ref.salesforce_hash == write.digest


def _same(payload: dict | None, record: dict | None) -> bool:
    if payload is None:
        return True
    if record is None:
        return False
    return all(_text(record.get(name)) == _text(value) for name, value in payload.items())


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _write(ctx: engine.RunContext, writes: list[_Write], links: Links) -> None:
    salesforce = ctx.salesforce
    try:
        unlinked = [w for w in writes if not links.get("customer", "kashflow", w.event.source_id)]
        _key_linked_accounts(ctx, writes, links)
        _adopt_accounts_by_name(ctx, unlinked, links)
        accounts = salesforce.upsert("Account", "ExternalID__c", [w.account for w in writes])
    except ApiError as exc:
        return engine.fail_events(
            [w.event for w in writes], exc.message, not exc.transient, exc.code
        )
    with_contact, done = [], []
    for write, result in zip(writes, accounts, strict=True):
        if not result.success:
            write.event.mark_failed(
                result.error.message, not result.error.transient, result.error.code
            )
            continue
        write.account_id = result.id
        if write.contact is not None:
            write.contact = {**write.contact, "AccountId": result.id}
            with_contact.append(write)
        else:
            done.append((write, None))
    try:
        contacts = (
            salesforce.upsert("Contact", "ExternalID__c", [w.contact for w in with_contact])
            if with_contact
            else []
        )
    except ApiError as exc:
        engine.fail_events(
            [w.event for w in with_contact], exc.message, not exc.transient, exc.code
        )
        contacts = []
    for write, result in zip(with_contact, contacts, strict=False):
        if result.success:
            done.append((write, result.id))
        else:
            # The Account is in; the hash is not stored, so the retry sends both again (upserts).
            write.event.mark_failed(
                f"The Account was saved but its Contact was not: {result.error.message}",
                not result.error.transient,
                result.error.code,
            )
    _succeeded(done, links)


def _adopt_accounts_by_name(ctx, unlinked: list[_Write], links: Links) -> None:
    """Before a customer's first upsert, give its External ID to an existing Account of the
    same name that has none, so an org that already holds the company gets no duplicate.

    Costs nothing in an org where every Account already has an External ID (one query a task
    finds that out); otherwise one query and at most one update per batch.
    """
    if not unlinked or not _org_has_accounts_without_key(ctx):
        return
    names = {w.account["Name"].casefold(): w for w in unlinked if w.account.get("Name")}
    matches: dict[str, list[str]] = {}

    def soql(chunk) -> str:
        quoted = ", ".join(soql_quote(name) for name in chunk)
        return f"SELECT Id, Name FROM Account WHERE ExternalID__c = null AND Name IN ({quoted})"

    account_names = [w.account["Name"] for w in names.values()]
    for record in ctx.salesforce.query_in(soql, account_names):
        matches.setdefault(record["Name"].casefold(), []).append(record["Id"])
    # Only an unambiguous match: two Accounts of one name are left for a person to merge.
    adopted = [
        (names[name], ids[0]) for name, ids in matches.items() if len(ids) == 1 and name in names
    ]
    if not adopted:
        return
    results = ctx.salesforce.update(
        "Account",
        [{"Id": account_id, "ExternalID__c": w.event.source_id} for w, account_id in adopted],
    )
    for (write, account_id), result in zip(adopted, results, strict=True):
        if result.success:
            links.link("customer", salesforce_id=account_id, kashflow_key=write.event.source_id)
            write.warnings.append("Matched to the existing Account of the same name.")


def _key_linked_accounts(ctx, writes: list[_Write], links: Links) -> None:
    """Put the customer's code on the Account it is linked to but kashforce has never written.

    The invoices flow links an Account to its KashFlow customer, then puts the code on the
    Account (new_customers). A batch arriving between the two would upsert a second Account
    with that code, and the invoices flow's write would then fail on DUPLICATE_VALUE. Writing
    the same code to the same Account is what the invoices flow does: whichever is first, the
    other changes nothing. Costs one update call, only for such links (none in steady state).
    """
    unkeyed = [
        (write, ref.salesforce_id)
        for write in writes
        for ref in [links.get("customer", "kashflow", write.event.source_id)]
        if ref and ref.salesforce_id and not ref.salesforce_synced_at
    ]
    if unkeyed:
        # A failure (the Account deleted, or another one holds the code) leaves the upsert to
        # go where the code is, as before.
        ctx.salesforce.update(
            "Account",
            [{"Id": account_id, "ExternalID__c": w.event.source_id} for w, account_id in unkeyed],
        )


def _org_has_accounts_without_key(ctx) -> bool:
    if "unkeyed_accounts" not in ctx.cache:
        found = ctx.salesforce.query("SELECT Id FROM Account WHERE ExternalID__c = null LIMIT 1")
        ctx.cache["unkeyed_accounts"] = any(True for _ in found)
    return ctx.cache["unkeyed_accounts"]


def _succeeded(done: list[tuple[_Write, str | None]], links: Links) -> None:
    """Record what Salesforce accepted: cross-references, hashes and events, a batch at a time
    and in one transaction, so an event never says "written" without its cross-reference.

    The links are facts (this Account is that customer) whoever holds the events now. The
    outcome and the hash are not: an event the sweeper took from this worker (slow, not dead)
    keeps what the ledger says now, and its hash is left to whoever finishes it.
    """
    if not done:
        return
    with transaction.atomic():
        refs = links.link_many(
            "customer", [(write.account_id, write.event.source_id) for write, _ in done]
        )
        links.link_many(
            "contact",
            [(contact_id, write.event.source_id) for write, contact_id in done if contact_id],
        )
        finished = SyncEvent.objects.finish(
            write.event.succeeded(
                target_id=write.account_id,
                content_hash=write.digest,
                message=" ".join(write.warnings),
            )
            for write, _ in done
        )
        held = {event.pk for event in finished}
        links.written_many(
            "salesforce",
            [(ref, w.digest) for ref, (w, _) in zip(refs, done, strict=True) if w.event.pk in held],
        )


def _current_records(ctx, codes, account_rows, contact_rows) -> dict[str, dict]:
    """What Salesforce holds now for these customers (a full run's comparison): two queries."""
    current: dict[str, dict] = {}
    codes = list(codes)

    def accounts(chunk) -> str:
        return _select("Account", account_rows, [soql_quote(code) for code in chunk])

    def contacts(chunk) -> str:
        return _select("Contact", contact_rows, [soql_quote(f"{code}-primary") for code in chunk])

    for record in ctx.salesforce.query_in(accounts, codes):
        current.setdefault(record["ExternalID__c"], {})["account"] = record
    for record in ctx.salesforce.query_in(contacts, codes):
        current.setdefault(record["ExternalID__c"].removesuffix("-primary"), {})["contact"] = record
    return current


def _select(sobject: str, rows: list[dict], keys: list[str]) -> str:
    fields = sorted({row["target_path"].split(".")[0] for row in rows} | {"Id", "ExternalID__c"})
    # SOQL, not SQL: field names come from the mapping, values are quoted by soql_quote.
    return f"SELECT {', '.join(fields)} FROM {sobject} WHERE ExternalID__c IN ({', '.join(keys)})"


def _plan(ctx: engine.RunContext, writes: list[_Write], links: Links, current: dict) -> None:
    for write in writes:
        ref = links.get("customer", "kashflow", write.event.source_id)
        now = current.get(write.event.source_id, {})
        ctx.plan(
            write.event,
            target_object=ACCOUNT,
            action="upsert",
            payload=write.account,
            target_id=ref.salesforce_id if ref else "",
            current=now.get("account"),
        )
        if write.contact is not None:
            ctx.plan(
                write.event,
                target_object=CONTACT,
                action="upsert",
                payload=write.contact,
                current=now.get("contact"),
            )


def _watermark(value: str):
    moment = parse_kashflow_datetime(value) if value else None
    return moment - OVERLAP if moment else None


def _sortable(stamp: str) -> str:
    """KashFlow's "YYYY-MM-DD HH:MM:SS" sorts as text; an offset or odd form is normalised."""
    moment = parse_kashflow_datetime(stamp) if stamp else None
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


engine.register(CustomersFlow())
