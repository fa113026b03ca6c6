"""Customers: KashFlow customers → Salesforce Accounts and their primary Contacts.

Collect is a change feed that needs no sort and no dates (KashFlow's customer list has neither
a modified-since filter nor dates in its summaries, and sorts only by name, code or balance):
it walks every summary, 200 a call, and compares each one's hash with the one it last saw
(CustomerFeedEntry). Only a new or changed customer costs a read of its full record, and only
when the mappings read a field the summary lacks (TelephoneNumber, Email...; see
`mapping.needs_full_record`). Those fields can change without the summary changing, so each
run also re-reads a slice of customers whose refresh is due: every customer within
CUSTOMER_REFRESH_HOURS. A sync with nothing changed costs ⌈N/200⌉ list calls and no other
call. Process maps a batch of up to 200 customers and
upserts them on the External ID fields with two sObject Collections calls (Accounts, then
Contacts with their AccountId), skipping customers whose mapped payload hashes the same as the
one last written. A full run (`--full`, weekly) reads every customer and compares against what
Salesforce holds now, so drift made by hand in Salesforce is found and put right.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from integration.clients.errors import ApiError
from integration.clients.salesforce import soql_quote
from integration.mapping import (
    apply_mapping,
    content_hash,
    needs_full_record,
    payload_hash,
    source_paths,
    top_field,
)
from integration.models import CrossRef, CustomerFeedEntry, Direction, SyncEvent
from integration.sync import engine
from integration.sync.links import Links
from integration.sync.mappings import MappingMissing, active_rows, context, salesforce_fields

log = logging.getLogger(__name__)

SOURCE = "kashflow.Customer"
ACCOUNT = "salesforce.Account"
CONTACT = "salesforce.Contact"


class CustomersFlow:
    name = "customers"
    batch_size = 200  # one sObject Collections call per object per batch

    # Collect ----------------------------------------------------------------------------------

    def collect(self, ctx: engine.RunContext) -> None:
        feed = _Feed(ctx)
        for page in engine.pages(ctx.kashflow.customers()):
            engine.record_changes(ctx, feed.changes(page))
            feed.save()
        feed.forget_the_unlisted()

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


class _Feed:
    """One collect's walk of the customer list against what the last walks saw."""

    def __init__(self, ctx: engine.RunContext):
        self.ctx = ctx
        self.connection = ctx.kashflow.connection
        self.now = timezone.now()
        self.period = timedelta(hours=engine._setting("CUSTOMER_REFRESH_HOURS"))
        self.fields = _mapped_fields(ctx)
        self.full_needed = self.fields is None or any(
            needs_full_record(SOURCE, name) for name in self.fields
        )
        self.known = CustomerFeedEntry.objects.filter(connection=self.connection)
        self.refresh = self._due() if self.full_needed and not ctx.run.full else set()
        self.seen: set[str] = set()
        self.entries: dict[str, CustomerFeedEntry] = {}
        self.dirty: list[CustomerFeedEntry] = []
        self.deferred = 0

    def _due(self) -> set[str]:
        """The customers whose full record is due for its rolling re-read (oldest first)."""
        due = self.known.filter(refresh_due_at__lte=self.now).order_by("refresh_due_at", "pk")
        limit = engine._setting("CUSTOMER_REFRESH_PER_RUN")
        return set(due.values_list("code", flat=True)[:limit])

    def changes(self, summaries: list[dict]) -> list[engine.Change]:
        """The page's new and changed customers, read in full where the mappings need it."""
        # What the last walks saw of this page's customers: one query a page, whatever N.
        codes = [summary.get("Code") for summary in summaries if summary.get("Code")]
        self.entries = {entry.code: entry for entry in self.known.filter(code__in=codes)}
        wanted = []  # (summary, entry, digest, changed): what this page must look at
        for summary in summaries:
            code = summary.get("Code")
            if not code or code in self.seen:  # a customer added meanwhile shifted the pages
                continue
            self.seen.add(code)
            entry = self.entries.get(code)
            digest = content_hash(_relevant(summary, self.fields))
            listed_change = entry is None or entry.summary_hash != digest
            if listed_change or self.ctx.run.full or code in self.refresh:
                wanted.append((summary, entry, digest, listed_change))
        records = self._full_records([s["Code"] for s, *_ in wanted]) if self.full_needed else {}
        found = []
        for summary, entry, digest, listed_change in wanted:
            code = summary["Code"]
            if self.full_needed and code not in records:
                # This task's time was up (a first load of thousands): the customer stays
                # unseen, so the next run reads it. The list walk itself goes on (it is cheap).
                self.deferred += 1
                if not listed_change:  # a full run's or a due re-read: read it next run
                    entry.summary_hash = ""
                    self.dirty.append(entry)
                continue
            record = records[code] if self.full_needed else summary
            if record is None:
                continue  # deleted between the list and the read: the next walk forgets it
            full_digest = content_hash(_relevant(record, self.fields)) if self.full_needed else ""
            if listed_change or self.ctx.run.full or full_digest != entry.full_hash:
                found.append(_change(self.ctx, record, full_digest or digest))
            self._remember(code, entry, digest, full_digest)
        return found

    def _full_records(self, codes: list[str]) -> dict[str, dict | None]:
        """The full records of `codes` (None for one deleted meanwhile), a few at a time, in a
        few threads: a first load reads thousands. Stops when the task's time is up."""
        records: dict[str, dict | None] = {}
        threads = max(1, engine._setting("KASHFLOW_READ_THREADS"))
        step = threads * 4
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in range(0, len(codes), step):
                if self.ctx.time_left() <= 0:
                    break
                chunk = codes[start : start + step]
                records.update(zip(chunk, pool.map(self._full_record, chunk), strict=True))
        return records

    def _full_record(self, code: str) -> dict | None:
        try:
            return self.ctx.kashflow.get_customer(code)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _remember(self, code, entry, digest: str, full_digest: str) -> None:
        if entry is None:
            entry = self.entries[code] = CustomerFeedEntry(connection=self.connection, code=code)
            # A first read spreads the customers' re-reads over the period (6 to 24 hours by
            # default), so they never all fall due in the same run.
            share = 0.25 + 0.75 * (int(content_hash(code)[:8], 16) / 0xFFFFFFFF)
        else:
            share = 1.0
        entry.summary_hash, entry.full_hash = digest, full_digest
        if self.full_needed:
            entry.full_read_at = self.now
            entry.refresh_due_at = self.now + self.period * share
        self.dirty.append(entry)

    def save(self) -> None:
        """Keep what this page showed, once its changes are in the ledger."""
        if self.dirty and not self.ctx.dry_run:
            fields = ["summary_hash", "full_hash", "full_read_at", "refresh_due_at"]
            rows = [  # without their ids: an upsert on (connection, code), new or known
                CustomerFeedEntry(
                    connection=self.connection,
                    code=entry.code,
                    **{name: getattr(entry, name) for name in fields},
                )
                for entry in self.dirty
            ]
            CustomerFeedEntry.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["connection", "code"],
                update_fields=fields,
            )
        self.dirty = []

    def forget_the_unlisted(self) -> None:
        """After a complete walk: customers no longer listed (deleted) are forgotten."""
        if self.deferred:
            log.info(
                "customers: %s full records left for the next run (time slice used up)",
                self.deferred,
            )
        rows = self.known.values_list("pk", "code").iterator(chunk_size=2000)
        gone = [pk for pk, code in rows if code not in self.seen]
        if gone and not self.ctx.dry_run:
            for start in range(0, len(gone), 500):
                CustomerFeedEntry.objects.filter(pk__in=gone[start : start + 500]).delete()


def _mapped_fields(ctx: engine.RunContext) -> frozenset[str] | None:
    """The customer fields the active mappings read (top level), or None when unknown."""
    try:
        rows = active_rows(ctx, "customers", SOURCE, ACCOUNT)
        rows = rows + active_rows(ctx, "customers", SOURCE, CONTACT)
    except MappingMissing:
        return None  # process says so; collect reads everything meanwhile
    return frozenset(top_field(path) for row in rows for path in source_paths(row)) | {"Code"}


def _relevant(record: dict, fields: frozenset[str] | None) -> dict:
    """The part of a record the mappings can see: what its change is judged on (a balance
    that moved with a payment is no change to a mapping that does not read it)."""
    if fields is None:
        return record
    return {name: record.get(name) for name in sorted(fields) if name in record}


def _change(ctx: engine.RunContext, customer: dict, digest: str) -> engine.Change:
    return engine.Change(
        direction=Direction.KASHFLOW_TO_SALESFORCE,
        source_object=SOURCE,
        source_id=customer["Code"],
        payload=customer,
        # The feed records a customer only when what the mappings see differs from the last
        # read, so each recorded change is new, even A → B → A: the run tells them apart.
        version=f"run-{ctx.run.pk}:{digest[:16]}",
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


engine.register(CustomersFlow())
