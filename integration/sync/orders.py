"""Activated Orders → invoices, activated reduction Orders → credit notes (issue #16).

Part of the `invoices` flow: a Salesforce connection invoices from Closed Won Opportunities,
activated Orders or both (`Connection.invoices_from()`, default KASHFORCE_INVOICE_FROM). This
module reads and checks the Orders; integration/sync/invoices.py's `make_invoices` does the rest
exactly as for Opportunities: lines, VAT, currency, customers, the marker (the Order Id, key
prefix 801) and the write-back, to the Order's own KashFlow_* fields.

"Activated" is the Status *category*: `StatusCode = 'Activated'`, whatever the admin named the
Status values (reference/orders-currency-vat-alerts.md §A1).

One deal, one invoice:
- An Order whose Opportunity is invoiced (or is being invoiced) is not invoiced again, whatever
  the setting; that needs Order.OpportunityId, which some orgs lack (then no Order has one).
- With `both`, **the Opportunity wins**: an Order whose Opportunity matches KASHFORCE_INVOICE_WHEN
  (so is invoiced as the Opportunity) is not invoiced; an Opportunity one of whose Orders was
  invoiced first (while the deal was not yet won) is not invoiced either (`invoiced_orders_of`).

An activated Order is locked: writing the invoice number back needs the integration user's
"Edit Activated Orders" permission. Without it Salesforce answers ENTITY_IS_LOCKED; the invoice
is made once, the event waits in Needs attention saying so, and the retry only writes back.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from integration.clients.errors import ApiError
from integration.mapping import line_vat_amount
from integration.models import Cursor, Direction, SyncEvent
from integration.sync import engine
from integration.sync.invoices import (
    TARGET,
    _create_once,
    _Invoice,
    _is_id,
    _lines,
    _Rows,
    _rule,
    _salesforce_moment,
    make_invoices,
)
from integration.sync.links import Links
from integration.sync.mappings import MappingMissing, salesforce_fields

SOURCE = "salesforce.Order"
CURSOR = "orders"  # the invoices flow's cursor name for Orders (Opportunities use "default")
OVERLAP = timedelta(minutes=5)
ORDER_FIELDS = (
    "Id, OrderNumber, AccountId, Account.Name, Account.BillingCountry, EffectiveDate, "
    "TotalAmount, StatusCode, IsReductionOrder, OriginalOrderId, KashFlow_Invoice_Number__c, "
    "SystemModstamp"
)
ITEM_FIELDS = (
    "Id, Quantity, UnitPrice, TotalPrice, Description, Product2Id, Product2.Name, "
    "Product2.ProductCode, OrderItemNumber"
)


# Collect ------------------------------------------------------------------------------------------


def collect(ctx: engine.RunContext) -> None:
    """Activated Orders not yet carrying an invoice number, from the Orders cursor."""
    connection = ctx.salesforce.connection
    cursor = Cursor.get_value("invoices", connection, CURSOR)
    soql = (
        "SELECT Id, OrderNumber, SystemModstamp FROM Order "
        "WHERE StatusCode = 'Activated' AND KashFlow_Invoice_Number__c = null"
    )
    if cursor and not ctx.run.full:
        since = _salesforce_moment(cursor) - OVERLAP
        soql += f" AND SystemModstamp > {since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    newest = ""
    for page in engine.pages(ctx.salesforce.query(soql + " ORDER BY SystemModstamp, Id")):
        engine.record_changes(ctx, [_change(order) for order in page])
        newest = max(newest, *(order["SystemModstamp"] for order in page))
    if newest and not ctx.dry_run:
        Cursor.advance("invoices", connection, newest, CURSOR)


def _change(order: dict) -> engine.Change:
    return engine.Change(
        direction=Direction.SALESFORCE_TO_KASHFLOW,
        source_object=SOURCE,
        source_id=order["Id"],
        payload={
            "Id": order["Id"],
            "OrderNumber": order.get("OrderNumber") or "",
            "SystemModstamp": order["SystemModstamp"],
        },
        version="activated",  # one invoice per Order, however often it is seen
        target_object=TARGET,
    )


# Process ------------------------------------------------------------------------------------------


def process(events: list[SyncEvent], ctx: engine.RunContext) -> None:
    if not ctx.salesforce.connection.invoices_orders():
        for event in events:
            event.mark_skipped(
                "This Salesforce connection invoices from Opportunities only, so Orders are "
                "not invoiced. To invoice Orders, set the connection's 'Invoice from' to Orders "
                "or Both, then retry."
            )
        return
    try:
        rows = _Rows.load(ctx, "Order", "OrderItem")
        orders = _read_orders(ctx, [event.source_id for event in events], rows)
        won = _opportunities_invoiced_as_such(ctx, orders.values())
    except MappingMissing as exc:
        return engine.fail_events(events, str(exc), permanent=True, code="MAPPING_MISSING")
    except ApiError as exc:
        return engine.fail_events(events, exc.message, exc.permanent, exc.code)
    links = Links()
    related = [
        key
        for order in orders.values()
        for key in (order.get("OpportunityId"), order.get("OriginalOrderId"))
    ]
    links.prefetch("invoice", "salesforce", [e.source_id for e in events] + related)
    invoices = []
    for event in events:
        invoice = _check(event, orders.get(event.source_id), links, won)
        if invoice is not None:
            invoices.append(invoice)
    make_invoices(ctx, invoices, links, rows)


def _read_orders(ctx, ids: list[str], rows: _Rows) -> dict[str, dict]:
    """The batch's Orders that are still activated, with their products: one query."""
    quoted = ", ".join(f"'{order_id}'" for order_id in ids if _is_id(order_id))
    if not quoted:
        return {}
    fields = ORDER_FIELDS
    if "OpportunityId" in rows.fields:  # not in every org (reference §A1, §F3)
        fields += ", OpportunityId, Opportunity.Name, Opportunity.KashFlow_Invoice_Number__c"
    if "CurrencyIsoCode" in rows.fields:  # multi-currency orgs only
        fields += ", CurrencyIsoCode"
    soql = (
        f"SELECT {fields}, (SELECT {ITEM_FIELDS} FROM OrderItems ORDER BY OrderItemNumber) "
        f"FROM Order WHERE Id IN ({quoted}) AND StatusCode = 'Activated'"
    )
    return {record["Id"]: record for record in ctx.salesforce.query(soql)}


def _opportunities_invoiced_as_such(ctx, orders) -> dict[str, str]:
    """With `both`: the Orders' Opportunities that the Opportunity rule invoices, by id, with
    their names (the Opportunity wins). One query; none without `both`."""
    if not ctx.salesforce.connection.invoices_opportunities():
        return {}
    ids = {o.get("OpportunityId") for o in orders if not o.get("IsReductionOrder")} - {None}
    quoted = ", ".join(f"'{opportunity_id}'" for opportunity_id in sorted(ids))
    if not quoted:
        return {}
    soql = f"SELECT Id, Name FROM Opportunity WHERE Id IN ({quoted}) AND ({_rule()})"
    return {record["Id"]: record.get("Name") or "" for record in ctx.salesforce.query(soql)}


def _check(event: SyncEvent, order: dict | None, links: Links, won: dict) -> _Invoice | None:
    """The Order if it should be invoiced (or credited) now; otherwise the event ends here."""
    label = f"Order {event.payload.get('OrderNumber') or event.source_id}"
    if order is None:
        event.mark_skipped(
            f"{label} is no longer activated (or was deleted), so no invoice was made."
        )
        return None
    ref = links.get("invoice", "salesforce", event.source_id)
    made = ref and ref.kashflow_key
    number = order.get("KashFlow_Invoice_Number__c")
    if number and not made:
        event.mark_skipped(f"Already invoiced in KashFlow as {number}.", target_id=str(number))
        return None
    if not made and not order.get("IsReductionOrder"):
        reason = _invoiced_as_opportunity(order, links, won)
        if reason:
            event.mark_skipped(f"{label} {reason}")
            return None
    if not _lines(order) and not made:
        event.mark_failed(
            f"{label} has no products. Add its products in Salesforce, then retry.",
            permanent=True,
            code="NO_LINE_ITEMS",
        )
        return None
    invoice = _Invoice(event=event, opportunity=order, ref=ref)
    if order.get("IsReductionOrder"):
        invoice.credit_for = _credited_invoice(order, links) or ""
        if not invoice.credit_for:
            event.mark_failed(
                f"{label} is a reduction order of an order that has no KashFlow invoice yet, "
                "so its credit note waits for that invoice; it is retried by itself.",
                permanent=False,
                code="ORIGINAL_NOT_INVOICED",
            )
            return None
    return invoice


def _invoiced_as_opportunity(order: dict, links: Links, won: dict) -> str:
    """Why the Order is invoiced through its Opportunity instead, or ""."""
    opportunity_id = order.get("OpportunityId")
    if not opportunity_id:
        return ""
    opportunity = order.get("Opportunity") or {}
    name = opportunity.get("Name") or opportunity_id
    ref = links.get("invoice", "salesforce", opportunity_id)
    number = opportunity.get("KashFlow_Invoice_Number__c") or (ref and ref.kashflow_key)
    if number:
        return (
            f"belongs to Opportunity {name}, already invoiced in KashFlow as {number}, so it "
            "was not invoiced again."
        )
    if ref:
        return f"belongs to Opportunity {name}, which is being invoiced, so it was not invoiced."
    if opportunity_id in won:
        return (
            f"belongs to Opportunity {name}, which is Closed Won and invoiced as the Opportunity "
            "(invoicing from both, the Opportunity wins), so the Order is not invoiced."
        )
    return ""


def invoiced_orders_of(ctx, opportunity_ids: list[str]) -> dict[str, str]:
    """Opportunities (by id) one of whose Orders is invoiced or being invoiced, with the reason
    the Opportunity is not invoiced again. Only when the connection invoices Orders too."""
    connection = ctx.salesforce.connection
    if not connection.invoices_orders() or not opportunity_ids:
        return {}
    if "OpportunityId" not in salesforce_fields(ctx, "Order"):
        return {}
    quoted = ", ".join(f"'{i}'" for i in opportunity_ids if _is_id(i))
    soql = (
        "SELECT Id, OrderNumber, OpportunityId, KashFlow_Invoice_Number__c FROM Order "
        f"WHERE OpportunityId IN ({quoted}) AND IsReductionOrder = false"
    )
    orders = list(ctx.salesforce.query(soql)) if quoted else []
    links = Links().prefetch("invoice", "salesforce", [order["Id"] for order in orders])
    reasons = {}
    for order in orders:
        ref = links.get("invoice", "salesforce", order["Id"])
        number = order.get("KashFlow_Invoice_Number__c") or (ref and ref.kashflow_key)
        if number or ref:
            done = f"invoiced in KashFlow as {number}" if number else "being invoiced"
            reasons[order["OpportunityId"]] = (
                f"Its Order {order.get('OrderNumber') or order['Id']} was {done}, so the "
                "Opportunity was not invoiced again."
            )
    return reasons


# Credit notes -------------------------------------------------------------------------------------


def _credited_invoice(order: dict, links: Links) -> str | None:
    """The KashFlow invoice a reduction Order credits: its original Order's, or, when that
    Order was invoiced as its Opportunity, the Opportunity's."""
    return links.lookup("invoice", "salesforce", order.get("OriginalOrderId") or "") or (
        links.lookup("invoice", "salesforce", order.get("OpportunityId") or "")
    )


def create_credit_note_once(ctx, invoice: _Invoice, links: Links) -> None:
    """Make the credit note of a reduction Order in KashFlow exactly once.

    A KashFlow credit note is an invoice for a negative amount (reference §C1): the payload's
    lines already carry negative quantities and name the invoice credited
    (`invoices._credit_line`); each takes the VAT rate of the original invoice's line for the
    same product (HMRC: a credit note follows the original supply's rate). Exactly once the way
    invoices are: the intent is recorded, the reduction Order's Id is the marker in
    CustomerReference, and a retry adopts what it finds.

    The seam for finance-amend's credit notes (integration/sync/amendments.py): this body can
    call that implementation instead, with `invoice.payload` (the lines), `invoice.credit_for`
    (the invoice credited) and `invoice.opportunity_id` (the marker).
    """
    if not (invoice.ref and invoice.ref.kashflow_key):
        try:
            original = ctx.kashflow.get_invoice(int(invoice.credit_for))
        except ApiError as exc:
            return invoice.event.mark_failed(exc.message, permanent=exc.permanent, code=exc.code)
        invoice.payload = at_original_vat_rates(invoice.payload, original)
        rule = f"the rate invoice {invoice.credit_for} charged"
        invoice.vat = [(line["Number"], line.get("VATLevel"), rule)
                       for line in invoice.payload["LineItems"]]  # fmt: skip
    _create_once(ctx, invoice, links)


def at_original_vat_rates(payload: dict, original: dict) -> dict:
    """The credit note's lines at the VAT rate the original invoice charged for the same
    product (nominal code and product code); a line with no such product keeps its own."""
    charged = {_product_of(line): line for line in original.get("LineItems") or []}
    lines = []
    for line in payload.get("LineItems") or []:
        before = charged.get(_product_of(line))
        if before is not None:
            line = {**line, "VATLevel": Decimal(str(before.get("VATLevel") or 0))}
            if before.get("VATExempt"):
                line["VATExempt"] = True
            line["VATAmount"] = line_vat_amount(line["Quantity"], line["Rate"], line["VATLevel"])
        lines.append(line)
    return {**payload, "LineItems": lines}


def _product_of(line: dict) -> tuple[str, str]:
    return str(line.get("NominalCode") or ""), str(line.get("ProductCode") or "")
