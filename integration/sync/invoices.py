"""Closed Won → invoice: a won Opportunity becomes a KashFlow sales invoice, and the invoice's
number, status and amount due are written back to the Opportunity.

Changes arrive two ways: Salesforce's Outbound Message (integration/webhooks.py) and a poll of
`SystemModstamp` from a cursor. Both record the same event ("won" is the Opportunity's one
version), so an Opportunity is one event however often it is seen.

KashFlow has no idempotency key, so an invoice is made exactly once like this:

1. Before creating, record the *intent*: a CrossRef for the Opportunity with no invoice number.
2. Create the invoice with `CustomerReference` = the Opportunity Id (the marker).
3. Record the number on the CrossRef, then write back to Salesforce (batched).

A retry that finds a number on the CrossRef skips to the write-back. One that finds only the
intent — the worker died, or KashFlow's answer was lost after it saved — first looks for an
invoice carrying the marker and adopts it. So a retry, a replay, a crash or a lost answer never
makes a second invoice, and a new invoice costs one KashFlow call.

Activated Orders are the other source (the connection's `invoices_from()`): integration/sync/
orders.py reads and checks them, then hands them to the same `make_invoices` below, so their
products become lines with the same VAT, currency and money rules and the same exactly-once
machinery; the marker is the Order Id (key prefix 801, never mistaken for an Opportunity's 006).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from integration.clients.errors import ApiError
from integration.mapping import apply_mapping, line_vat_amount, payload_hash
from integration.models import CrossRef, Cursor, Direction, SyncEvent
from integration.sync import amendments, engine, holds
from integration.sync.links import Links
from integration.sync.mappings import MappingMissing, active_rows, context, salesforce_fields
from integration.sync.new_customers import ensure_customers
from integration.sync.products import product_key

SOURCE = "salesforce.Opportunity"
TARGET = "kashflow.Invoice"
LINE_SOURCE = "salesforce.OpportunityLineItem"
LINE_TARGET = "kashflow.InvoiceLine"
# The invoice field that carries the Opportunity Id: how a retry finds an invoice an earlier
# attempt made. The engine sets it, never a mapping row (mapping_defaults fixed_by_engine).
MARKER = "CustomerReference"
# Won deals that are never invoiced, whatever the rule: nothing (or less than nothing) to bill.
NO_AMOUNT = "IsWon = true AND (Amount = null OR Amount <= 0)"
# Salesforce's SystemModstamp can land just behind a read in flight: look a little way back.
OVERLAP = timedelta(minutes=5)
OPPORTUNITY_FIELDS = (
    "Id, Name, AccountId, Account.Name, Account.BillingCountry, Amount, CloseDate, IsWon, "
    "StageName, KashFlow_Invoice_Number__c, SystemModstamp"
)
LINE_FIELDS = (
    "Id, Quantity, UnitPrice, Discount, TotalPrice, Description, Product2Id, Product2.Name, "
    "ProductCode, SortOrder"
)


class InvoicesFlow:
    name = "invoices"
    batch_size = 50  # one Opportunity query and one write-back call per batch

    # Collect ----------------------------------------------------------------------------------

    def collect(self, ctx: engine.RunContext) -> None:
        from integration.sync import orders

        connection = ctx.salesforce.connection
        if connection.invoices_orders():
            orders.collect(ctx)
        if not connection.invoices_opportunities():
            return
        cursor = Cursor.get_value(self.name, connection)
        # Won deals with no amount to invoice are read too, so each leaves a ledger row saying
        # why it was not invoiced instead of no trace at all.
        # The names and amount label the ledger row; the currency too where the org has more
        # than one (describe is cached, and processing reads it anyway).
        currency = ", CurrencyIsoCode" if "CurrencyIsoCode" in _opportunity_fields(ctx) else ""
        soql = (
            f"SELECT Id, Name, Account.Name, Amount{currency}, SystemModstamp FROM Opportunity "
            f"WHERE (({_rule()}) OR ({NO_AMOUNT})) AND KashFlow_Invoice_Number__c = null"
        )
        if cursor and not ctx.run.full:
            since = _salesforce_moment(cursor) - OVERLAP
            soql += f" AND SystemModstamp > {since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        newest = ""
        for page in engine.pages(ctx.salesforce.query(soql + " ORDER BY SystemModstamp, Id")):
            engine.record_changes(ctx, [_change(opportunity) for opportunity in page])
            newest = max(newest, *(opportunity["SystemModstamp"] for opportunity in page))
        if newest and not ctx.dry_run:
            Cursor.advance(self.name, connection, newest)
        amendments.collect(ctx)  # invoiced deals that changed: never dropped (amendments.py)

    # Process ----------------------------------------------------------------------------------

    def process(self, events: list[SyncEvent], ctx: engine.RunContext) -> None:
        changed = [event for event in events if amendments.is_invoiced_change(event)]
        if changed:
            amendments.process(changed, ctx)
            events = [event for event in events if event not in changed]
            if not events:
                return
        from integration.sync import orders

        order_events = [event for event in events if event.source_object == orders.SOURCE]
        if order_events:
            orders.process(order_events, ctx)
        events = [event for event in events if event.source_object != orders.SOURCE]
        if events and not ctx.salesforce.connection.invoices_opportunities():
            for event in events:  # pushed by an Outbound Message set up before the change
                event.mark_skipped(
                    "This Salesforce connection invoices from Orders only, so Closed Won "
                    "Opportunities are not invoiced. To invoice them, set the connection's "
                    "'Invoice from' to Opportunities or Both, then retry."
                )
            return
        events = [event for event in events if not _skipped_for_its_amount(event)]
        if not events:
            return
        try:
            rows = _Rows.load(ctx)
            opportunities = _read_opportunities(ctx, [event.source_id for event in events], rows)
            invoiced_orders = orders.invoiced_orders_of(ctx, list(opportunities))
        except MappingMissing as exc:
            return engine.fail_events(events, str(exc), permanent=True, code="MAPPING_MISSING")
        except ApiError as exc:
            return engine.fail_events(events, exc.message, exc.permanent, exc.code)
        links = Links().prefetch("invoice", "salesforce", [e.source_id for e in events])
        invoices = []
        for event in events:
            if event.source_id in invoiced_orders:
                event.mark_skipped(invoiced_orders[event.source_id])
                continue
            invoice = _check(event, opportunities.get(event.source_id), links)
            if invoice is not None:
                invoices.append(invoice)
        make_invoices(ctx, invoices, links, rows)


def make_invoices(ctx, invoices: list[_Invoice], links: Links, rows: _Rows) -> None:
    """Checked deals (Opportunities or Orders) to KashFlow invoices, exactly once, and their
    number, status and amount due written back."""
    if not invoices:
        return
    _prefetch_links(links, invoices)
    to_make = [i for i in invoices if not i.ref or not i.ref.kashflow_key]
    to_make = [i for i in to_make if not _waits_for_products(i, links)]
    try:
        for invoice in to_make:
            invoice.currency = _deal_currency(ctx, invoice.opportunity)
        ensure_customers(ctx, links, to_make)
        customers = _kashflow_customers(ctx, links, to_make)
        products = _kashflow_products(ctx, links, to_make)
    except ApiError as exc:
        waiting = [i.event for i in invoices if not i.event.is_error]  # keep their reason
        return engine.fail_events(waiting, exc.message, exc.permanent, exc.code)
    for invoice in invoices:
        if not invoice.event.is_error:  # its customer could not be made: keep that reason
            _map(invoice, rows, links, customers, products)
    ready = holds.release([i for i in invoices if not i.event.is_error], ctx)
    if ctx.dry_run:
        return _plan(ctx, ready)
    for invoice in ready:
        if invoice.credit_for:
            from integration.sync.orders import create_credit_note_once

            create_credit_note_once(ctx, invoice, links)
        else:
            _create_once(ctx, invoice, links)
    _write_back(ctx, [i for i in ready if i.created is not None], rows)


def _change(opportunity: dict) -> engine.Change:
    payload = {"Id": opportunity["Id"], "SystemModstamp": opportunity["SystemModstamp"]}
    # One invoice per won Opportunity, however often it is seen.
    version = "won"
    amount = opportunity.get("Amount", 0)  # a pushed change carries no Amount: it is invoiceable
    if amount is None or Decimal(str(amount)) <= 0:
        # Each change of a deal without an amount is one ledger row; once it gets an amount
        # its "won" change is a new event and is invoiced.
        version = f"no-amount {opportunity['SystemModstamp']}"
        payload |= {"Name": opportunity.get("Name") or "", "Amount": amount, "no_amount": True}
    return engine.Change(
        direction=Direction.SALESFORCE_TO_KASHFLOW,
        source_object=SOURCE,
        source_id=opportunity["Id"],
        payload=payload,
        version=version,
        target_object=TARGET,
        # The payload keeps only what decides the invoice; the names people know label it.
        label=engine.describe(engine.Change("", SOURCE, opportunity["Id"], opportunity))[0],
    )


def _skipped_for_its_amount(event: SyncEvent) -> bool:
    """A won deal with an empty, zero or negative amount is not invoiced; its row says why."""
    if not event.payload.get("no_amount"):
        return False
    name = event.payload.get("Name") or event.source_id
    amount = event.payload.get("Amount")
    if amount is None:
        reason = f"Opportunity {name} is Closed Won but has no amount, so no invoice was made."
    elif Decimal(str(amount)) < 0:
        reason = (
            f"Opportunity {name} is Closed Won with a negative amount ({Decimal(str(amount)):.2f}), "
            "so no invoice was made; if money is owed back, raise a credit note in KashFlow."
        )
    else:
        reason = f"Opportunity {name} is Closed Won with an amount of 0.00, so no invoice was made."
    event.mark_skipped(
        reason + " Once it has an amount in Salesforce it is invoiced on the next sync."
    )
    return True


@dataclass
class _Invoice:
    """One Opportunity (or Order: `opportunity` is then the Order) on its way to becoming an
    invoice (or, for a reduction Order, a credit note)."""

    event: SyncEvent
    opportunity: dict
    ref: CrossRef | None = None
    payload: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created: dict | None = None  # the KashFlow invoice, once made or found
    currency: str = ""  # the deal's: the Opportunity's CurrencyIsoCode, else the org's
    vat: list[tuple[int, object, str]] = field(default_factory=list)  # (line, rate, rule)
    credit_for: str = ""  # a credit note: the number of the invoice it credits

    @property
    def opportunity_id(self) -> str:
        return self.event.source_id

    @property
    def is_order(self) -> bool:
        return "OrderItems" in self.opportunity or "OrderNumber" in self.opportunity

    @property
    def label(self) -> str:
        """How a person names it: "Opportunity Acme renewal" or "Order 00000123"."""
        if self.is_order:
            return f"Order {self.opportunity.get('OrderNumber') or self.opportunity_id}"
        return f"Opportunity {self.opportunity.get('Name') or self.opportunity_id}"

    @property
    def amount(self):
        return self.opportunity.get("TotalAmount" if self.is_order else "Amount")


@dataclass
class _Rows:
    invoice: list[dict]
    line: list[dict]
    write_back: list[dict]
    fields: dict
    sobject: str = "Opportunity"  # what the write-back updates

    @classmethod
    def load(cls, ctx, sobject: str = "Opportunity", line_object: str = "OpportunityLineItem"):
        source = f"salesforce.{sobject}"
        return cls(
            invoice=active_rows(ctx, "invoices", source, TARGET),
            line=active_rows(ctx, "invoices", f"salesforce.{line_object}", LINE_TARGET),
            write_back=active_rows(ctx, "invoices", TARGET, source),
            fields=salesforce_fields(ctx, sobject),
            sobject=sobject,
        )


def _opportunity_fields(ctx) -> dict:
    try:
        return salesforce_fields(ctx, "Opportunity")
    except ApiError:
        return {}  # the label goes without the currency; processing will say what is wrong


def _rule() -> str:
    return settings.KASHFORCE["INVOICE_WHEN"]


def _read_opportunities(ctx, ids: list[str], rows: _Rows) -> dict[str, dict]:
    """The batch's Opportunities that still match the rule, with their lines: one query."""
    valid = [opportunity_id for opportunity_id in ids if _is_id(opportunity_id)]
    # CurrencyIsoCode exists only in an org with multi-currency on (its describe says).
    fields = OPPORTUNITY_FIELDS + (", CurrencyIsoCode" if "CurrencyIsoCode" in rows.fields else "")

    def soql(chunk) -> str:
        quoted = ", ".join(f"'{opportunity_id}'" for opportunity_id in chunk)
        return (
            f"SELECT {fields}, (SELECT {LINE_FIELDS} FROM OpportunityLineItems "
            f"ORDER BY SortOrder) FROM Opportunity WHERE Id IN ({quoted}) AND ({_rule()})"
        )

    return {record["Id"]: record for record in ctx.salesforce.query_in(soql, valid)}


def _is_id(value: str) -> bool:
    return len(value) in (15, 18) and value.isalnum()


def _check(event: SyncEvent, opportunity: dict | None, links: Links) -> _Invoice | None:
    """The Opportunity if it should be invoiced now; otherwise the event is finished here."""
    if opportunity is None:
        event.mark_skipped(
            f"Opportunity {event.source_id} is no longer Closed Won with an amount "
            "(or was deleted), so no invoice was made."
        )
        return None
    ref = links.get("invoice", "salesforce", event.source_id)
    number = opportunity.get("KashFlow_Invoice_Number__c")
    if number and not (ref and ref.kashflow_key):
        event.mark_skipped(f"Already invoiced in KashFlow as {number}.", target_id=str(number))
        return None
    lines = (opportunity.get("OpportunityLineItems") or {}).get("records") or []
    if not lines and not (ref and ref.kashflow_key):
        event.mark_failed(
            f"Opportunity {opportunity.get('Name') or event.source_id} has no products. Add its "
            "products in Salesforce, then retry.",
            permanent=True,
            code="NO_LINE_ITEMS",
        )
        return None
    if not opportunity.get("AccountId"):
        event.mark_failed(
            f"Opportunity {opportunity.get('Name') or event.source_id} has no Account, so there "
            "is no one to invoice. Set its Account in Salesforce, then retry.",
            permanent=True,
            code="NO_ACCOUNT",
        )
        return None
    return _Invoice(event=event, opportunity=opportunity, ref=ref)


def _prefetch_links(links: Links, invoices: list[_Invoice]) -> None:
    links.prefetch("customer", "salesforce", [i.opportunity["AccountId"] for i in invoices])
    product_ids = {
        line.get("Product2Id") for invoice in invoices for line in _lines(invoice.opportunity)
    }
    links.prefetch("product", "salesforce", product_ids)


def _lines(opportunity: dict) -> list[dict]:
    """The deal's lines: an Opportunity's OpportunityLineItems, an Order's OrderItems."""
    children = opportunity.get("OpportunityLineItems") or opportunity.get("OrderItems") or {}
    return children.get("records") or []


# Mapping ---------------------------------------------------------------------------------------


def _deal_currency(ctx, opportunity: dict) -> str:
    """The Opportunity's currency: its CurrencyIsoCode in a multi-currency org, else the org's
    one currency (Organization.DefaultCurrencyIsoCode, read once a while)."""
    if opportunity.get("CurrencyIsoCode"):
        return opportunity["CurrencyIsoCode"]
    key = f"kashforce:org-currency:{ctx.salesforce.connection.pk}"
    currency = cache.get(key)
    if currency is None:
        found = list(ctx.salesforce.query("SELECT DefaultCurrencyIsoCode FROM Organization"))
        currency = (found[0].get("DefaultCurrencyIsoCode") or "") if found else ""
        if not currency:
            raise ApiError(
                "Salesforce did not say the organisation's currency, so kashforce cannot tell "
                "which currency to invoice in.",
                permanent=False,
                system="salesforce",
                code="NO_ORG_CURRENCY",
            )
        cache.set(key, currency, 15 * 60)
    return currency


def _kashflow_customers(ctx, links: Links, invoices: list[_Invoice]) -> dict[str, dict]:
    """The KashFlow customers of the invoices still to make, by code: one GET each, for their
    currency and VAT number (a customer summary does not say them for certain)."""
    customers = {}
    for invoice in invoices:
        code = links.lookup("customer", "salesforce", invoice.opportunity["AccountId"])
        if invoice.event.is_error or not code or code in customers:
            continue
        try:
            customers[code] = ctx.kashflow.get_customer(code)
        except ApiError as exc:
            if exc.status != 404:  # 404: a customer a dry run only plans to make
                raise
    return customers


def _kashflow_products(ctx, links: Links, invoices: list[_Invoice]) -> dict[str, dict]:
    """KashFlow's products by key, for the VATRate of the linked ones: read once per task
    (one call per 100 products), and only when a line has a linked product."""
    linked = any(
        links.lookup("product", "salesforce", line.get("Product2Id") or "")
        for invoice in invoices
        for line in _lines(invoice.opportunity)
    )
    if not linked:
        return {}
    if "kashflow_products" not in ctx.cache:
        ctx.cache["kashflow_products"] = {product_key(p): p for p in ctx.kashflow.products()}
    return ctx.cache["kashflow_products"]


def _map(invoice: _Invoice, rows: _Rows, links: Links, customers: dict, products: dict) -> None:
    """Build the KashFlow invoice; a mapping problem fails the event with the rows' reasons."""
    if invoice.ref and invoice.ref.kashflow_key:
        return  # made already: only the write-back is left
    opportunity = invoice.opportunity
    code = links.lookup("customer", "salesforce", opportunity["AccountId"])
    customer = customers.get(code) or {}
    if _currency_differs(invoice, code, customer):
        return
    unlinked = _unlinked_products(opportunity, links)
    mapping_context = context(links)
    header = apply_mapping(rows.invoice, opportunity, mapping_context)
    problems = [error.message for error in header.errors]
    lines = []
    for number, line in enumerate(_lines(opportunity), start=1):
        source = _line_source(line, opportunity, "Order" if invoice.is_order else "Opportunity")
        source["Customer"] = _vat_facts(customer)
        key = links.lookup("product", "salesforce", line.get("Product2Id") or "")
        source["KashFlowProduct"] = products.get(key) or {}
        mapped = apply_mapping(rows.line, source, mapping_context)
        problems += [f"Line {number}: {error.message}" for error in mapped.errors]
        invoice.warnings += mapped.warnings
        if "VATLevel" in mapped.notes:
            invoice.vat.append((number, mapped.payload.get("VATLevel"), mapped.notes["VATLevel"]))
        if invoice.credit_for:
            mapped.payload = _credit_line(mapped.payload, invoice.credit_for)
        lines.append(_finish_line(mapped.payload, number))
    if problems:
        invoice.event.mark_failed(
            f"{invoice.label} cannot be invoiced. " + "; ".join(problems),
            permanent=True,
            code="MAPPING",
        )
        return
    if unlinked:
        invoice.warnings.append(
            f"Products not linked to KashFlow yet ({', '.join(unlinked)}) were invoiced on the "
            "default nominal code with no product code, as set (KASHFORCE_DEFAULT_NOMINAL_FOR_"
            "UNLINKED_PRODUCTS)."
        )
    invoice.payload = {
        **header.payload,
        MARKER: invoice.opportunity_id,
        "Currency": {"Code": invoice.currency},
        "LineItems": lines,
    }
    invoice.warnings += header.warnings


def currency_problem(deal_currency: str, customer_code: str, customer: dict) -> str | None:
    """Why the deal cannot be invoiced to this KashFlow customer, currency-wise, or None.

    KashFlow invoices a customer in the customer's currency: sent another, it would take the
    customer's, and a £1,000 deal would become a €1,000 invoice."""
    theirs = ((customer.get("Currency") or {}).get("Code") or "").strip().upper()
    if not theirs or theirs == deal_currency.strip().upper():
        return None
    return (
        f"This deal is in {deal_currency} but the KashFlow customer {customer_code} invoices in "
        f"{theirs}; change the customer's currency in KashFlow or the deal's currency, then retry."
    )


def _currency_differs(invoice: _Invoice, code: str | None, customer: dict) -> bool:
    """Stop, saying so, when the KashFlow customer invoices in another currency than the deal."""
    problem = currency_problem(invoice.currency, code or "", customer)
    if problem:
        invoice.event.mark_failed(problem, permanent=True, code="CURRENCY_MISMATCH")
    return bool(problem)


def _waits_for_products(invoice: _Invoice, links: Links) -> bool:
    """An invoice whose products are not linked to KashFlow products yet waits for them
    (retried, then Needs attention), and nothing is written for it meanwhile: on the default
    nominal code with no product code it would reach the wrong sales account, silently. Unless
    an admin chose the default nominal code on purpose."""
    unlinked = _unlinked_products(invoice.opportunity, links)
    if not unlinked or settings.KASHFORCE["DEFAULT_NOMINAL_FOR_UNLINKED_PRODUCTS"]:
        return False
    invoice.event.mark_failed(
        f"{invoice.label} waits for its products to be linked to KashFlow products "
        f"({', '.join(unlinked)}), which the products sync does; without the link its lines "
        "would go on the default nominal code with no product code. If the products sync "
        "cannot link them, check those products in both systems, then retry.",
        permanent=False,
        code="PRODUCTS_NOT_LINKED",
    )
    return True


def _unlinked_products(opportunity: dict, links: Links) -> list[str]:
    """The names of the deal's products not linked to a KashFlow product yet."""
    names = []
    for line in _lines(opportunity):
        product_id = line.get("Product2Id")
        if product_id and not links.lookup("product", "salesforce", product_id):
            name = (line.get("Product2") or {}).get("Name") or line.get("ProductCode") or product_id
            if name not in names:
                names.append(name)
    return names


def _vat_facts(customer: dict) -> dict:
    """What VAT needs from the KashFlow customer: its VAT number and country."""
    addresses = customer.get("Addresses") or [{}]
    return {
        "VATNumber": customer.get("VATNumber") or "",
        "CountryCode": (addresses[0] or {}).get("CountryCode") or "",
    }


def _vat_summary(invoice: _Invoice) -> str:
    """ "VAT: line 1 at 0% (the KashFlow product's VAT rate); lines 2, 3 at 20% (…)"."""
    groups: dict[tuple[str, str], list[int]] = {}
    for number, rate, rule in invoice.vat:
        shown = _plain(Decimal(str(rate))) if rate is not None else "no"
        groups.setdefault((shown, rule), []).append(number)
    parts = [
        f"{'lines' if len(numbers) > 1 else 'line'} {', '.join(map(str, numbers))} at {rate}% "
        f"({rule})"
        for (rate, rule), numbers in groups.items()
    ]
    return f"VAT: {'; '.join(parts)}." if parts else ""


def _line_source(line: dict, opportunity: dict, parent: str = "Opportunity") -> dict:
    """The line as the mapping sees it: priced so that KashFlow's line net (Quantity x Rate)
    equals Salesforce's TotalPrice to the penny, and with the Opportunity's Account for VAT.

    KashFlow lines carry no discount. A discounted line is invoiced at its net unit price
    (UnitPrice x (1 - Discount%), exact in Decimal) with the discount named in its description.
    When no unit price of 4 decimal places gives exactly TotalPrice (Salesforce rounded it), the
    line is invoiced as one unit at TotalPrice and its description says the quantity, so the
    invoice's total is always the Opportunity's amount.
    """
    source = {**line, parent: {"Account": opportunity.get("Account") or {}}}
    quantity = Decimal(str(line.get("Quantity") or 0))
    unit = Decimal(str(line.get("UnitPrice") or 0))
    total = Decimal(
        str(line.get("TotalPrice") if line.get("TotalPrice") is not None else quantity * unit)
    )
    discount = Decimal(str(line.get("Discount") or 0))
    name = line.get("Description") or (line.get("Product2") or {}).get("Name") or ""
    net_unit = (unit * (100 - discount) / 100).quantize(Decimal("0.0001"))
    if quantity and quantity * net_unit == total:
        source["UnitPrice"] = net_unit
    elif quantity and (total / quantity).quantize(Decimal("0.0001")) * quantity == total:
        source["UnitPrice"] = (total / quantity).quantize(Decimal("0.0001"))
    else:
        source["Quantity"], source["UnitPrice"] = Decimal(1), total
        name = f"{_plain(quantity)} x {name} at {unit:.2f}".strip()
    if discount:
        name = f"{name} less {_plain(discount)}% discount"
    if name != (line.get("Description") or ""):
        source["Description"] = name
    return source


def _credit_line(payload: dict, invoice_number: str) -> dict:
    """A credit note's line: a negative quantity (whatever sign the source gave it: reduction
    Orders' are negative) that names the invoice credited."""
    quantity = payload.get("Quantity")
    if quantity is not None:
        payload = {**payload, "Quantity": -abs(Decimal(str(quantity)))}
    described = payload.get("Description") or ""
    return {**payload, "Description": f"Credit for invoice {invoice_number}: {described}"[:250]}


def _plain(number: Decimal) -> str:
    return format(number.normalize(), "f")


def _finish_line(payload: dict, number: int) -> dict:
    """Number the line and state its VAT the way KashFlow computes it (half-up per line)."""
    payload = {"Number": number, **payload}
    if {"Quantity", "Rate", "VATLevel"} <= payload.keys():
        payload["VATAmount"] = line_vat_amount(
            payload["Quantity"], payload["Rate"], payload["VATLevel"]
        )
    return payload


# Creating, exactly once --------------------------------------------------------------------------


def _create_once(ctx, invoice: _Invoice, links: Links) -> None:
    kashflow = ctx.kashflow
    try:
        if invoice.ref and invoice.ref.kashflow_key:
            invoice.created = kashflow.get_invoice(int(invoice.ref.kashflow_key))
            return
        if invoice.ref:  # an earlier attempt may have made it: look for the marker first
            found = kashflow.find_invoices_by_reference(invoice.opportunity_id)
            if found:
                invoice.created = kashflow.get_invoice(found[0]["Number"])
                _record_number(invoice, links)
                invoice.warnings.append(
                    f"Invoice {invoice.created['Number']} was already in KashFlow from an "
                    "earlier attempt; it was used, not made again."
                )
                return
        else:
            invoice.ref = links.link(
                "invoice", salesforce_id=invoice.opportunity_id, kashflow_key=None
            )
        if not invoice.event.hold():
            return  # swept while this worker was slow: whoever has the event now makes it
        invoice.created = kashflow.create_invoice(invoice.payload)
        _record_number(invoice, links)
    except ApiError as exc:
        message = exc.message
        if exc.ambiguous:
            message = (
                "KashFlow may have saved the invoice but its answer was lost; before trying "
                f"again kashforce will look for it, so it is not made twice. ({exc.message})"
            )
        invoice.event.mark_failed(message, permanent=exc.permanent, code=exc.code)


def _record_number(invoice: _Invoice, links: Links) -> None:
    number = str(invoice.created["Number"])
    with transaction.atomic():  # the link and its kept history (amendments.py) together
        invoice.ref = links.link(
            "invoice", salesforce_id=invoice.opportunity_id, kashflow_key=number
        )
        links.written(invoice.ref, "kashflow", payload_hash(invoice.payload))
        amendments.remember_invoiced(invoice.opportunity, invoice.created, invoice.event)
    net = invoice.created.get("NetAmount")
    amount = invoice.amount
    if net is not None and amount is not None and Decimal(str(net)) != Decimal(str(amount)):
        invoice.warnings.append(
            f"KashFlow's net total {Decimal(str(net)):.2f} differs from the "
            f"{'Order' if invoice.is_order else 'Opportunity'} amount {Decimal(str(amount)):.2f}."
        )


# Writing back ------------------------------------------------------------------------------------


def _write_back(ctx, invoices: list[_Invoice], rows: _Rows) -> None:
    """The invoice number, status and amount due onto each Opportunity (or Order): one call
    per batch."""
    if not invoices:
        return
    records = []
    for invoice in invoices:
        mapped = apply_mapping(rows.write_back, invoice.created, context(Links(), rows.fields))
        records.append({"Id": invoice.opportunity_id, **mapped.payload})
    try:
        results = ctx.salesforce.update(rows.sobject, records)
    except ApiError as exc:
        return engine.fail_events(
            [i.event for i in invoices], _write_back_failed(exc), exc.permanent, exc.code
        )
    written = []
    for invoice, result in zip(invoices, results, strict=True):
        if result.success:
            number = str(invoice.created["Number"])
            made = f"Invoice {number} made in KashFlow"
            if invoice.credit_for:
                made = f"Credit note {number} (for invoice {invoice.credit_for}) made in KashFlow"
            if invoice.currency:
                made += f" in {invoice.currency}"
            message = [f"{made}.", *invoice.warnings, _vat_summary(invoice)]
            written.append(
                invoice.event.succeeded(
                    target_id=number,
                    content_hash=payload_hash(invoice.payload),
                    message=" ".join(part for part in message if part),
                    warning=bool(invoice.warnings),
                )
            )
        else:
            error = result.error
            message = _write_back_failed(error)
            if error.code == "ENTITY_IS_LOCKED" and invoice.is_order:
                message = _order_locked(invoice)
            invoice.event.mark_failed(message, error.permanent, error.code)
    SyncEvent.objects.finish(written)


def _order_locked(invoice: _Invoice) -> str:
    number = invoice.created["Number"]
    return (
        f"Invoice {number} is in KashFlow, but Salesforce refused to write the invoice number "
        f"on {invoice.label} because activated orders are locked; give the integration user "
        "the Edit Activated Orders permission, then retry (the retry only writes it back)."
    )


def _write_back_failed(error: ApiError) -> str:
    return (
        "The invoice is in KashFlow, but Salesforce did not take its number and status; "
        f"the retry only writes them back. ({error.message})"
    )


# Replacements (amendments.py) -------------------------------------------------------------------


def replacement_payload(ctx, opportunity_id: str) -> tuple[dict | None, dict, str]:
    """The invoice this flow would make for the deal as it is now: (opportunity, payload,
    problem); a problem in plain words when it cannot be invoiced."""
    try:
        rows = _Rows.load(ctx)
        opportunity = _read_opportunities(ctx, [opportunity_id], rows).get(opportunity_id)
    except MappingMissing as exc:
        return None, {}, str(exc)
    if opportunity is None or not _lines(opportunity):
        return None, {}, "The deal is no longer Closed Won with products, so it cannot be invoiced."
    links = Links().prefetch("invoice", "salesforce", [opportunity_id])
    event = SyncEvent(flow="invoices", source_object=SOURCE, source_id=opportunity_id)
    invoice = _Invoice(event=event, opportunity=opportunity)
    _prefetch_links(links, [invoice])
    unlinked = _unlinked_products(opportunity, links)
    if unlinked and not settings.KASHFORCE["DEFAULT_NOMINAL_FOR_UNLINKED_PRODUCTS"]:
        return (
            opportunity,
            {},
            (
                f"Its products are not linked to KashFlow products yet ({', '.join(unlinked)}); "
                "the products sync links them. Try again once it has."
            ),
        )
    invoice.currency = _deal_currency(ctx, opportunity)
    customers = _kashflow_customers(ctx, links, [invoice])
    products = _kashflow_products(ctx, links, [invoice])
    _map(invoice, rows, links, customers, products)
    if invoice.event.is_error:
        return opportunity, {}, invoice.event.message
    return opportunity, invoice.payload, ""


def write_back_invoice(ctx, opportunity_id: str, created: dict) -> None:
    """The invoice's number, status and amount due onto its Opportunity (raises ApiError)."""
    rows = _Rows.load(ctx)
    mapped = apply_mapping(rows.write_back, created, context(Links(), rows.fields))
    [result] = ctx.salesforce.update("Opportunity", [{"Id": opportunity_id, **mapped.payload}])
    if not result.success:
        raise result.error


# Dry run and helpers ------------------------------------------------------------------------------


def _plan(ctx, invoices: list[_Invoice]) -> None:
    for invoice in invoices:
        if invoice.ref and invoice.ref.kashflow_key:
            continue
        ctx.plan(invoice.event, target_object=TARGET, action="create", payload=invoice.payload)


def _salesforce_moment(stamp: str):
    from datetime import datetime

    return datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")


engine.register(InvoicesFlow())
