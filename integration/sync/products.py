"""Products, both ways: KashFlow products ↔ Salesforce Product2 with a standard PricebookEntry.

Each field has a master side (`params.master` on the mapping rows): KashFlow owns the key, code,
name and price; Salesforce owns the description and whether the product is active. A create
sends every row; an update changes only the fields the source side owns, so neither side
overwrites what the other owns. KashFlow's PUT replaces the whole product, so a KashFlow update
reads the product as KashFlow holds it, merges those fields in and writes it whole
(KashFlowClient.update_product).

Collect, one run for both directions:
- KashFlow → Salesforce: every KashFlow product (products are few: one call per 100), recorded
  when its content differs from the one last seen in the ledger.
- Salesforce → KashFlow: the Product2 records changed since a cursor on SystemModstamp, with a
  small overlap (one SOQL). A record is recorded only when a field Salesforce owns differs from
  KashFlow's product, or when it is not linked to one yet. Our own writes bump SystemModstamp;
  they leave nothing different, so they cause no event and the sync does not loop. A Product2
  whose KashFlow-owned fields were changed by hand gets a KashFlow → Salesforce event instead,
  which puts it right.

Process, per batch of up to 200:
- KashFlow → Salesforce: one SOQL reads the batch's Product2 with their standard price book
  entries; one collections upsert on ExternalID__c writes the new and changed products; one
  call creates the missing price book entries and one updates the changed prices. The standard
  Pricebook2 Id is read once per task.
- Salesforce → KashFlow: a linked product gets the fields Salesforce owns (one GET and one
  whole-product PUT each, only when they differ); a Product2 with no KashFlow product becomes one (nominal code from the
  default, price from its standard price book entry) and is linked, and its ExternalID__c is
  set to the KashFlow key in one collections call, so the next KashFlow → Salesforce pass
  matches it instead of making a second Product2.
"""

from __future__ import annotations

from datetime import timedelta

from integration.clients.errors import ApiError
from integration.clients.salesforce import WriteResult, soql_list, soql_quote
from integration.mapping import (
    KASHFLOW_FIELDS,
    apply_mapping,
    payload_hash,
    preview,
    rows_owned_by,
    utc_moment,
)
from integration.models import Cursor, Direction, SyncEvent
from integration.sync import engine
from integration.sync.links import Links
from integration.sync.mappings import MappingMissing, active_rows, context, salesforce_fields

KASHFLOW_PRODUCT = "kashflow.Product"
PRODUCT2 = "salesforce.Product2"
ENTRY = "salesforce.PricebookEntry"
# SystemModstamp is stamped when a save begins; a long save can commit after we read past it.
OVERLAP = timedelta(minutes=2)
SALESFORCE_CURSOR = "salesforce"
TO_SALESFORCE, TO_KASHFLOW = Direction.KASHFLOW_TO_SALESFORCE, Direction.SALESFORCE_TO_KASHFLOW


def product_key(product: dict) -> str:
    """KashFlow's product key, the CrossRef key and Product2.ExternalID__c: "4000-SOF-0001"."""
    return f"{product['NominalCode']}-{product['Code']}"


class ProductsFlow:
    name = "products"
    batch_size = 200  # one sObject Collections call per write per batch

    # Collect ----------------------------------------------------------------------------------

    def collect(self, ctx: engine.RunContext) -> None:
        products = {product_key(p): p for p in ctx.kashflow.products()}
        ctx.cache["kashflow_products"] = products  # the process phase reads the same list
        recorded = self._record_kashflow(ctx, products)
        self._record_salesforce(ctx, products, recorded)

    def _record_kashflow(self, ctx: engine.RunContext, products: dict[str, dict]) -> set[str]:
        seen = (
            {}
            if ctx.run.full
            else SyncEvent.objects.latest_by_source(self.name, KASHFLOW_PRODUCT, products)
        )
        changes = []
        for key, product in products.items():
            before = seen.get(key)
            if before is not None and payload_hash(before.payload) == payload_hash(product):
                if not ctx.dry_run:
                    ctx.seen += 1  # read, and nothing new about it
                continue
            # KashFlow products carry no change stamp: chaining the content to the last event
            # keeps A → B → A three changes.
            version = (
                f"full-{ctx.run.pk}"
                if ctx.run.full
                else f"{payload_hash(product)[:16]}:{before.pk if before else 0}"
            )
            changes.append(
                engine.Change(TO_SALESFORCE, KASHFLOW_PRODUCT, key, product, version, PRODUCT2)
            )
        _record(ctx, changes)
        return {change.source_id for change in changes}

    def _record_salesforce(self, ctx, products: dict[str, dict], recorded: set[str]) -> None:
        connection = ctx.salesforce.connection
        since = None if ctx.run.full else Cursor.get_value(self.name, connection, SALESFORCE_CURSOR)
        records = list(ctx.salesforce.query(_changed_products_soql(ctx, since)))
        links = Links().prefetch("product", "salesforce", [r["Id"] for r in records])
        checks = _OwnershipCheck(ctx, links)
        changes = []
        for record in records:
            key = links.lookup("product", "salesforce", record["Id"])
            product = products.get(key) if key else None
            stamp = record["SystemModstamp"]
            if product is None or checks.salesforce_fields_differ(record, product):
                changes.append(
                    engine.Change(
                        TO_KASHFLOW, PRODUCT2, record["Id"], record, stamp, KASHFLOW_PRODUCT
                    )
                )
            typed_over = product is not None and key not in recorded
            if typed_over and checks.kashflow_fields_differ(product, record):
                # Changed by hand in Salesforce: KashFlow's values go back (KashFlow owns them).
                version = f"repair:{stamp}"
                changes.append(
                    engine.Change(TO_SALESFORCE, KASHFLOW_PRODUCT, key, product, version, PRODUCT2)
                )
        _record(ctx, changes)
        newest = max((r["SystemModstamp"] for r in records), default="")
        if newest and not ctx.dry_run:
            Cursor.advance(self.name, connection, newest, SALESFORCE_CURSOR)

    # Process ----------------------------------------------------------------------------------

    def process(self, events: list[SyncEvent], ctx: engine.RunContext) -> None:
        to_salesforce = [e for e in events if e.direction == TO_SALESFORCE]
        to_kashflow = [e for e in events if e.direction == TO_KASHFLOW]
        if to_salesforce:
            _to_salesforce(ctx, to_salesforce)
        if to_kashflow:
            _to_kashflow(ctx, to_kashflow)


def _record(ctx, changes: list[engine.Change]) -> None:
    for page in engine.pages(changes):
        engine.record_changes(ctx, page)


def _changed_products_soql(ctx, since: str) -> str:
    # What the Salesforce → KashFlow rows read and the KashFlow → Salesforce rows write.
    reads = [row["source_path"] for row in active_rows(ctx, "products", PRODUCT2, KASHFLOW_PRODUCT)]
    writes = [
        row["target_path"] for row in active_rows(ctx, "products", KASHFLOW_PRODUCT, PRODUCT2)
    ]
    fields = {path.split(".")[0] for path in reads + writes if path}
    fields &= set(salesforce_fields(ctx, "Product2"))
    fields |= {"Id", "ExternalID__c", "SystemModstamp"}
    soql = (  # SOQL: field names from the mapping and describe, no values
        f"SELECT {', '.join(sorted(fields))}, (SELECT Id, UnitPrice FROM PricebookEntries "
        "WHERE Pricebook2.IsStandard = true) FROM Product2"
    )
    moment = utc_moment(since) if since else None
    if moment:
        soql += f" WHERE SystemModstamp >= {(moment - OVERLAP).strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return soql + " ORDER BY SystemModstamp"


class _OwnershipCheck:
    """Whether the two sides differ on the fields one of them owns (pure; no calls)."""

    def __init__(self, ctx, links: Links):
        self.to_kashflow = rows_owned_by(
            active_rows(ctx, "products", PRODUCT2, KASHFLOW_PRODUCT), "salesforce"
        )
        self.to_salesforce = rows_owned_by(
            active_rows(ctx, "products", KASHFLOW_PRODUCT, PRODUCT2), "kashflow"
        )
        self.kashflow_context = context(links, KASHFLOW_FIELDS["Product"])
        self.salesforce_context = context(links, salesforce_fields(ctx, "Product2"))

    def salesforce_fields_differ(self, record: dict, product: dict) -> bool:
        return bool(preview(self.to_kashflow, record, self.kashflow_context, product).diff)

    def kashflow_fields_differ(self, product: dict, record: dict) -> bool:
        return bool(preview(self.to_salesforce, product, self.salesforce_context, record).diff)


# KashFlow → Salesforce ------------------------------------------------------------------------


class _ToSalesforce:
    """One KashFlow product's Product2 and price book entry writes."""

    def __init__(self, event: SyncEvent):
        self.event = event
        self.key = event.source_id
        self.current: dict | None = None  # the Product2 as Salesforce holds it, with its entry
        self.product: dict | None = None  # the Product2 write (None: unchanged)
        self.by_id = False  # update by Id: a linked Product2 that does not carry the key
        self.entry: dict | None = None  # the PricebookEntry write (None: unchanged)
        self.product_id = ""
        self.digest = ""
        self.warnings: list[str] = []
        self.failed = False

    @property
    def entry_id(self) -> str | None:
        entries = ((self.current or {}).get("PricebookEntries") or {}).get("records") or []
        return entries[0]["Id"] if entries else None

    def fail(self, message: str, permanent: bool, code: str = "") -> None:
        if not self.failed:
            self.failed = True
            self.event.mark_failed(message, permanent=permanent, code=code)


def _to_salesforce(ctx: engine.RunContext, events: list[SyncEvent]) -> None:
    try:
        product_rows = active_rows(ctx, "products", KASHFLOW_PRODUCT, PRODUCT2)
        entry_rows = active_rows(ctx, "products", KASHFLOW_PRODUCT, ENTRY)
    except MappingMissing as exc:
        return engine.fail_events(events, str(exc), permanent=True, code="MAPPING_MISSING")
    links = Links().prefetch("product", "kashflow", [e.source_id for e in events])
    writes = [_ToSalesforce(event) for event in events]
    try:
        product_context = context(links, salesforce_fields(ctx, "Product2"))
        entry_context = context(links, salesforce_fields(ctx, "PricebookEntry"))
        pricebook_id = _standard_pricebook_id(ctx)
        current = _current_products(ctx, writes, links, product_rows, pricebook_id)
    except ApiError as exc:
        return engine.fail_events(events, exc.message, permanent=not exc.transient, code=exc.code)
    for write in writes:
        write.current = current.get(write.key)
        _plan_product(write, product_rows, product_context)
        _plan_entry(write, entry_rows, entry_context, pricebook_id)
    writes = [write for write in writes if not write.failed]
    if ctx.dry_run:
        return _plan_to_salesforce(ctx, writes)
    _write_products(ctx, writes, links)
    _write_entries(ctx, [write for write in writes if not write.failed])
    for write in writes:
        if not write.failed:
            _finish_to_salesforce(write, links)


def _plan_product(write: _ToSalesforce, rows, product_context) -> None:
    product = write.event.payload
    if write.current is None:
        mapped = apply_mapping(rows, product, product_context)  # a create sends every row
    else:
        mapped = preview(rows_owned_by(rows, "kashflow"), product, product_context, write.current)
    if mapped.errors:
        problems = "; ".join(error.message for error in mapped.errors)
        return write.fail(
            f"Product {write.key} cannot be sent to Salesforce. {problems}", True, "MAPPING"
        )
    write.warnings += mapped.warnings
    write.digest = payload_hash(mapped.payload)
    if write.current is None:
        write.product = mapped.payload
        return
    write.product_id = write.current["Id"]
    if mapped.diff:
        write.product = mapped.payload
        # Found by its link, not its key (the key was never set): update it by Id, key and all.
        write.by_id = write.current.get("ExternalID__c") != mapped.payload.get("ExternalID__c")


def _plan_entry(write: _ToSalesforce, rows, entry_context, pricebook_id: str) -> None:
    if write.failed:
        return
    product = write.event.payload
    entry_id = write.entry_id
    if entry_id is None:
        mapped = apply_mapping(rows, product, entry_context)
        payload = {"Pricebook2Id": pricebook_id, **mapped.payload}  # Product2Id once known
    else:
        current = write.current["PricebookEntries"]["records"][0]
        mapped = preview(rows_owned_by(rows, "kashflow"), product, entry_context, current)
        payload = {"Id": entry_id, **mapped.payload} if mapped.diff else None
    if mapped.errors:
        problems = "; ".join(error.message for error in mapped.errors)
        return write.fail(
            f"Product {write.key}'s price cannot be sent to Salesforce. {problems}", True, "MAPPING"
        )
    write.warnings += mapped.warnings
    write.entry = payload
    write.digest = payload_hash({"product": write.digest, "entry": mapped.payload})


def _standard_pricebook_id(ctx: engine.RunContext) -> str:
    """The standard price book's Id, read once per task."""
    if "standard_pricebook" not in ctx.cache:
        found = list(ctx.salesforce.query("SELECT Id FROM Pricebook2 WHERE IsStandard = true"))
        if not found:
            raise ApiError(
                "Salesforce has no standard price book; products cannot be priced.",
                permanent=True,
                system="salesforce",
                code="NO_STANDARD_PRICEBOOK",
            )
        ctx.cache["standard_pricebook"] = found[0]["Id"]
    return ctx.cache["standard_pricebook"]


def _current_products(ctx, writes, links: Links, rows, pricebook_id: str) -> dict[str, dict]:
    """The batch's Product2 with their standard entry, by key: one SOQL (more if the batch's
    IN lists would pass Salesforce's URI limit; `query_in` cuts them).

    A Product2 is found by its ExternalID__c, else by its link, else (a product both systems had
    before kashforce) as the one Product2 with the same ProductCode and no key yet.
    """
    keys = [write.key for write in writes]
    linked = {key: links.lookup("product", "kashflow", key) for key in keys}
    codes = {key: write.event.payload.get("Code") for key, write in zip(keys, writes, strict=True)}
    fields = {row["target_path"].split(".")[0] for row in rows}
    fields |= {"Id", "ExternalID__c", "ProductCode"}

    def soql(chunk) -> str:
        where = f"ExternalID__c IN ({soql_list(chunk)})"
        if any(linked[key] for key in chunk):
            where += f" OR Id IN ({soql_list(linked[key] for key in chunk)})"
        if any(codes[key] for key in chunk):
            chunk_codes = soql_list(codes[key] for key in chunk)
            where += f" OR (ExternalID__c = null AND ProductCode IN ({chunk_codes}))"
        return (
            f"SELECT {', '.join(sorted(fields))}, (SELECT Id, UnitPrice, IsActive FROM "
            f"PricebookEntries WHERE Pricebook2Id = {soql_quote(pricebook_id)}) "
            f"FROM Product2 WHERE {where}"
        )

    records = list(ctx.salesforce.query_in(soql, keys))
    by_key = {r["ExternalID__c"]: r for r in records if r["ExternalID__c"]}
    by_id = {r["Id"][:15]: r for r in records}
    by_code: dict[str, list[dict]] = {}
    for record in records:
        if not record["ExternalID__c"] and record.get("ProductCode"):
            by_code.setdefault(record["ProductCode"].lower(), []).append(record)
    current = {}
    for key in keys:
        same_code = by_code.get(str(codes[key] or "").lower(), [])
        record = (
            by_key.get(key)
            or (by_id.get(linked[key][:15]) if linked[key] else None)
            or (same_code[0] if len(same_code) == 1 else None)
        )
        if record is not None:
            current[key] = record
    return current


def _write_products(ctx, writes: list[_ToSalesforce], links: Links) -> None:
    upserts = [w for w in writes if w.product is not None and not w.by_id]
    updates = [w for w in writes if w.product is not None and w.by_id]
    salesforce = ctx.salesforce
    if upserts:
        _apply_results(
            upserts,
            lambda: salesforce.upsert("Product2", "ExternalID__c", [w.product for w in upserts]),
        )
    if updates:
        _apply_results(
            updates,
            lambda: salesforce.update(
                "Product2", [{"Id": w.product_id, **w.product} for w in updates]
            ),
        )


def _apply_results(writes: list[_ToSalesforce], call) -> None:
    try:
        results: list[WriteResult] = call()
    except ApiError as exc:
        for write in writes:
            write.fail(exc.message, permanent=not exc.transient, code=exc.code)
        return
    for write, result in zip(writes, results, strict=True):
        if result.success:
            write.product_id = result.id or write.product_id
        else:
            write.fail(result.error.message, not result.error.transient, result.error.code)


def _write_entries(ctx, writes: list[_ToSalesforce]) -> None:
    new = [w for w in writes if w.entry is not None and "Id" not in w.entry]
    changed = [w for w in writes if w.entry is not None and "Id" in w.entry]
    salesforce = ctx.salesforce
    for group, call in (
        (new, lambda: salesforce.create(
            "PricebookEntry", [{**w.entry, "Product2Id": w.product_id} for w in new])),
        (changed, lambda: salesforce.update("PricebookEntry", [w.entry for w in changed])),
    ):  # fmt: skip
        if not group:
            continue
        try:
            results = call()
        except ApiError as exc:
            for write in group:
                write.fail(f"The Product2 was saved but its price was not: {exc.message}",
                           not exc.transient, exc.code)  # fmt: skip
            continue
        for write, result in zip(group, results, strict=True):
            if not result.success:
                write.fail(
                    f"The Product2 was saved but its price was not: {result.error.message}",
                    not result.error.transient,
                    result.error.code,
                )


def _finish_to_salesforce(write: _ToSalesforce, links: Links) -> None:
    ref = links.link("product", salesforce_id=write.product_id, kashflow_key=write.key)
    if write.product is None and write.entry is None:
        write.event.mark_skipped(target_id=write.product_id)
        return
    links.written(ref, "salesforce", write.digest)
    write.event.mark_succeeded(
        target_id=write.product_id, content_hash=write.digest, message=" ".join(write.warnings)
    )


def _plan_to_salesforce(ctx: engine.RunContext, writes: list[_ToSalesforce]) -> None:
    for write in writes:
        if write.product is not None:
            ctx.plan(
                write.event,
                target_object=PRODUCT2,
                action="update" if write.by_id else "upsert",
                payload=write.product,
                target_id=write.product_id,
                current=write.current,
            )
        if write.entry is not None:
            ctx.plan(
                write.event,
                target_object=ENTRY,
                action="update" if "Id" in write.entry else "create",
                payload=write.entry,
                target_id=write.entry.get("Id", ""),
            )


# Salesforce → KashFlow ------------------------------------------------------------------------


def _to_kashflow(ctx: engine.RunContext, events: list[SyncEvent]) -> None:
    try:
        rows = active_rows(ctx, "products", PRODUCT2, KASHFLOW_PRODUCT)
    except MappingMissing as exc:
        return engine.fail_events(events, str(exc), permanent=True, code="MAPPING_MISSING")
    links = Links().prefetch("product", "salesforce", [e.source_id for e in events])
    try:
        products = _kashflow_products(ctx)
    except ApiError as exc:
        return engine.fail_events(events, exc.message, permanent=not exc.transient, code=exc.code)
    mapping_context = context(links, KASHFLOW_FIELDS["Product"])
    keys_to_set = []  # Product2 that must carry their KashFlow key as ExternalID__c
    for event in events:
        try:
            key = _product_to_kashflow(ctx, event, rows, mapping_context, products, links)
        except ApiError as exc:
            event.mark_failed(exc.message, permanent=not exc.transient, code=exc.code)
            continue
        if key is not None and event.payload.get("ExternalID__c") != key:
            keys_to_set.append((event, {"Id": event.source_id, "ExternalID__c": key}))
    _set_external_ids(ctx, keys_to_set)


def _kashflow_products(ctx: engine.RunContext) -> dict[str, dict]:
    """KashFlow's products by key, read once per task (collect leaves its list here)."""
    if "kashflow_products" not in ctx.cache:
        ctx.cache["kashflow_products"] = {product_key(p): p for p in ctx.kashflow.products()}
    return ctx.cache["kashflow_products"]


def _product_to_kashflow(ctx, event, rows, mapping_context, products, links) -> str | None:
    """Bring one Product2 to KashFlow; returns its KashFlow key, or None when it failed."""
    record = event.payload
    key = links.lookup("product", "salesforce", event.source_id)
    if key is not None and key not in products:
        event.mark_failed(
            f"KashFlow product {key}, linked to this Product2, is no longer in KashFlow. "
            "Recreate it there, or delete the link in the admin to make a new one.",
            permanent=True,
            code="KASHFLOW_PRODUCT_MISSING",
        )
        return None
    if key is None:
        mapped = apply_mapping(rows, record, mapping_context)  # a create sends every row
        if mapped.errors:
            problems = "; ".join(error.message for error in mapped.errors)
            name = record.get("Name") or event.source_id
            event.mark_failed(
                f"Product2 {name} cannot become a KashFlow product. {problems}", True, "MAPPING"
            )
            return None
        # Already in KashFlow (both sides had it before kashforce): link, don't duplicate.
        candidates = (record.get("ExternalID__c"), product_key(mapped.payload))
        key = next((k for k in candidates if k in products), None)
        if key is None:
            return _create_product(ctx, event, mapped, products, links)
        if not ctx.dry_run:
            links.link("product", salesforce_id=event.source_id, kashflow_key=key)
    _update_owned_fields(ctx, event, key, rows, mapping_context, products, links)
    return key


def _create_product(ctx, event, mapped, products, links: Links) -> str:
    payload = {**mapped.payload, **_standard_price(event.payload)}
    if ctx.dry_run:
        ctx.plan(event, target_object=KASHFLOW_PRODUCT, action="create", payload=payload)
        return product_key(payload)
    created = ctx.kashflow.create_product(payload)
    key = product_key(created)
    products[key] = created
    ref = links.link("product", salesforce_id=event.source_id, kashflow_key=key)
    links.written(ref, "kashflow", payload_hash(mapped.payload))
    event.mark_succeeded(target_id=key, message=" ".join(mapped.warnings))
    return key


def _standard_price(record: dict) -> dict:
    """A new KashFlow product's Price: the Product2's standard price, when it has one."""
    entries = (record.get("PricebookEntries") or {}).get("records") or []
    return {"Price": entries[0]["UnitPrice"]} if entries else {}


def _update_owned_fields(ctx, event, key, rows, mapping_context, products, links) -> None:
    """Send KashFlow the fields Salesforce owns, when they differ (the client reads the
    product and PUTs it whole with them merged in: KashFlow's PUT replaces every field)."""
    product = products[key]
    mapped = preview(rows_owned_by(rows, "salesforce"), event.payload, mapping_context, product)
    if mapped.errors:
        problems = "; ".join(error.message for error in mapped.errors)
        event.mark_failed(
            f"Product {key} cannot be updated in KashFlow. {problems}", True, "MAPPING"
        )
        return
    if not mapped.diff:
        event.mark_skipped(target_id=key)
        return
    if ctx.dry_run:
        ctx.plan(event, target_object=KASHFLOW_PRODUCT, action="update", payload=mapped.payload,
                 target_id=key, current=product)  # fmt: skip
        return
    code = product["Code"]
    products[key] = ctx.kashflow.update_product(product["NominalCode"], code, mapped.payload)
    ref = links.link("product", salesforce_id=event.source_id, kashflow_key=key)
    links.written(ref, "kashflow", payload_hash(mapped.payload))
    event.mark_succeeded(target_id=key, message=" ".join(mapped.warnings))


def _set_external_ids(ctx, keys_to_set: list[tuple[SyncEvent, dict]]) -> None:
    """One call: each Product2 linked just now carries its KashFlow key, so the next
    KashFlow → Salesforce pass matches it by External ID instead of making a second one."""
    keys_to_set = [(event, change) for event, change in keys_to_set if not event.is_error]
    if not keys_to_set:
        return
    if ctx.dry_run:
        for event, change in keys_to_set:
            ctx.plan(event, target_object=PRODUCT2, action="update", payload=change,
                     target_id=change["Id"])  # fmt: skip
        return
    try:
        results = ctx.salesforce.update("Product2", [change for _, change in keys_to_set])
    except ApiError as exc:
        results = [WriteResult(i, None, False, False, exc) for i in range(len(keys_to_set))]
    for (event, _), result in zip(keys_to_set, results, strict=True):
        if not result.success:
            # KashFlow is right already; the next KashFlow → Salesforce pass updates the linked
            # Product2 by Id (with its key), so this is a note, not a failure.
            event.message = f"{event.message} The Product2's ExternalID__c was not set: "
            event.message += result.error.message
            event.save(update_fields=["message"])


engine.register(ProductsFlow())
