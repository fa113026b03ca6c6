"""Sales invoices, keyed by `Number`, and the server-side money maths (reference §4.2-4.4, §5).

The maths, all in Decimal with half-up rounding:
- line net = round(Quantity x Rate, 2); line VAT = the VATAmount sent, else
  round(Quantity x Rate x VATLevel / 100, 2) (the reference's proposal), 0 when VATExempt;
- NetAmount = sum of line nets, VATAmount = sum of line VATs, GrossAmount = Net + VAT;
- TotalPaidAmount = sum of PaymentLines, DueAmount = Gross - Paid (negative when overpaid);
- Status "Paid" when Paid >= Gross, "Part Paid" when something is paid, else "Unpaid". The exact
  part-paid string is not documented; "Part Paid" is our choice.

PUT replaces the whole invoice, as KashFlow's PUTs are reported to ("a full replacement, not a
partial update; leaving lines out clears them", hcs-app's notes from live use): a field left out
is cleared (CustomerReference to "", LineItems and PaymentLines to none, the addresses, project
and flags to empty), DueDate left out is worked out again from the customer's terms, Currency
left out is the customer's, and a body without CustomerCode or IssuedDate is refused. Payments
travel inside the invoice as PaymentLines, the complete new set (lines keep their Id; a line
without one is new).
"""

import json
import uuid
from calendar import monthrange
from datetime import datetime, timedelta
from decimal import Decimal

from . import lookups
from .listing import envelope, order_of, page_of, sort_column
from .store import Txn
from .wire import (
    MIDDAY,
    Fields,
    format_datetime,
    from_db,
    from_pence4,
    invalid,
    loads,
    not_found,
    round_money,
    to_pence4,
)

ZERO = Decimal(0)
SELECT = """
SELECT i.*, c.code AS customer_code, c.name AS customer_name, c.doc AS customer_doc,
       (SELECT MAX(number) FROM invoices WHERE number < i.number) AS previous_number,
       (SELECT MIN(number) FROM invoices WHERE number > i.number) AS next_number
FROM invoices AS i JOIN customers AS c ON c.id = i.customer_id
"""
SORT_COLUMNS = {
    "number": "i.number", "0": "i.number",
    "customerref": "i.customer_reference", "customerreference": "i.customer_reference",
    "1": "i.customer_reference",
    "customername": "c.name", "2": "c.name",
    "invoicedate": "i.issued", "issueddate": "i.issued", "3": "i.issued",
    "paymentduedate": "i.due", "duedate": "i.due", "4": "i.due",
    "grossamount": "i.gross_4", "5": "i.gross_4",
    "netamount": "i.net_4", "6": "i.net_4",
    "status": "i.status", "7": "i.status",
    "paymentpaiddate": "i.paid_date", "paiddate": "i.paid_date", "8": "i.paid_date",
    "dueamount": "(i.gross_4 - i.paid_4)", "9": "(i.gross_4 - i.paid_4)",
    "vatamount": "i.vat_4", "11": "i.vat_4",
    "createddate": "i.created",
}  # fmt: skip
# `statusfilter` by name or by the spec's enum (0 All, 1 Unpaid, 2 PartPaid, 3 Overdue, ...).
STATUS_FILTERS = {
    "all": "1 = 1",
    "unpaid": "i.status = 'Unpaid'",
    "partpaid": "i.status = 'Part Paid'",
    "overdue": "i.paid_4 < i.gross_4 AND i.due < :now",
    "overduepartpaid": "i.status = 'Part Paid' AND i.due < :now",
    "overpaid": "i.paid_4 > i.gross_4",
    "paid": "i.status = 'Paid'",
    "notfullypaid": "i.paid_4 < i.gross_4",
}
STATUS_FILTER_NUMBERS = dict(enumerate(STATUS_FILTERS))


# -- Money maths --------------------------------------------------------------------------------


def line_amounts(quantity: Decimal, rate: Decimal, vat_level: Decimal, exempt: bool,
                 vat_sent: Decimal | None) -> tuple[Decimal, Decimal]:  # fmt: skip
    """(net, VAT) of one line item."""
    net = round_money(quantity * rate)
    if exempt:
        return net, ZERO
    if vat_sent is not None:
        return net, vat_sent
    return net, round_money(quantity * rate * vat_level / 100)


def payment_state(gross: Decimal, payments: list[dict]) -> dict:
    """Paid total, status and payment dates from the payment lines."""
    paid, paid_date = ZERO, None
    for payment in sorted(payments, key=lambda p: (p["Date"], p["Id"])):
        paid += Decimal(payment["Amount"])
        if paid_date is None and paid >= gross:
            paid_date = payment["Date"]
    if paid >= gross:
        status = "Paid"
    else:
        status, paid_date = ("Part Paid" if paid > 0 else "Unpaid"), None
    last = max((p["Date"] for p in payments), default=None)
    return {"paid": paid, "status": status, "paid_date": paid_date, "last_payment_date": last}


def due_date(issued: datetime, terms: dict) -> datetime:
    if terms.get("Type") == "AfterMonthEnd":
        month_end = issued.replace(day=monthrange(issued.year, issued.month)[1])
        return month_end + timedelta(days=terms["Days"])
    return issued + timedelta(days=terms.get("Days", 30))


# -- Reading ------------------------------------------------------------------------------------


def find(txn: Txn, number: str | int):
    text = str(number)
    row = txn.one(SELECT + " WHERE i.number = ?", (int(text),)) if text.isdigit() else None
    if row is None:
        raise not_found(f"Invoice {number} not found.")
    return row


def get_invoice(txn: Txn, request, number: str) -> dict:
    return invoice_json(txn, find(txn, number))


def invoice_json(txn: Txn, row) -> dict:
    doc, customer = json.loads(row["doc"]), json.loads(row["customer_doc"])
    contact = next((c for c in customer["Contacts"] if c["IsPrimary"]), None) or {}
    gross, paid = from_pence4(row["gross_4"]), from_pence4(row["paid_4"])
    rate = Decimal(doc["ExchangeRate"])
    due = from_db(row["due"])
    overdue = (txn.now - due).days if row["status"] != "Paid" and due < txn.now else 0
    return {
        "Id": row["id"],
        "Number": row["number"],
        "CustomerId": row["customer_id"],
        "CustomerCode": row["customer_code"],
        "CustomerName": row["customer_name"],
        "CustomerKey": customer["Key"],
        "CustomerContactName": contact.get("Name", ""),
        "CustomerContactFirstName": contact.get("Firstname", ""),
        "CustomerContactLastName": contact.get("LastName", ""),
        "CustomerReference": row["customer_reference"],
        "IssuedDate": row["issued"],
        "DueDate": row["due"],
        "PaidDate": row["paid_date"],
        "LastPaymentDate": row["last_payment_date"],
        "CreatedDate": row["created"],
        "OverdueDays": max(overdue, 0),
        "NetAmount": from_pence4(row["net_4"]),
        "VATAmount": from_pence4(row["vat_4"]),
        "GrossAmount": gross,
        "TotalPaidAmount": paid,
        "DueAmount": gross - paid,
        "FormattedDueAmount": f"{lookups.currency(doc['Currency'])['Symbol']}{gross - paid:,.2f}",
        "HomeCurrencyGrossAmount": round_money(gross / rate),
        "HomeCurrencyVATAmount": round_money(from_pence4(row["vat_4"]) / rate),
        "Status": row["status"],
        "Type": "Invoice",
        "IsArchived": doc["IsArchived"],
        "EmailCount": 0,
        "ReminderLetters": [],
        "Currency": {**lookups.currency(doc["Currency"]), "ExchangeRate": rate},
        "Address": doc["Address"],
        "DeliveryAddress": doc["DeliveryAddress"],
        "UseCustomDeliveryAddress": doc["UseCustomDeliveryAddress"],
        "ProjectNumber": doc["ProjectNumber"],
        "ProjectName": "",
        "VATNumber": customer["VATNumber"],
        "CustomerDiscount": Decimal(customer["DiscountRate"]),
        "LineItems": [_line_out(line) for line in doc["LineItems"]],
        "PaymentLines": [_payment_out(p) for p in doc["PaymentLines"]],
        "Permalink": f"/v2/documents/invoice/{doc['Document']}",
        "PackingSlipPermalink": f"/v2/documents/invoice/packingslip/{doc['Document']}",
        "PreviousNumber": row["previous_number"] or 0,
        "NextNumber": row["next_number"] or 0,
        "FileCount": 0,
        "VATReturnId": 0,
    }


def _line_out(line: dict) -> dict:
    money = ("Quantity", "Rate", "VATLevel", "VATAmount")
    return {
        key: Decimal(value) if key in money else value
        for key, value in line.items()
        if key != "Net"
    }


def _payment_out(payment: dict) -> dict:
    return {**payment, "Amount": Decimal(payment["Amount"])}


# The list shape leaves these out (reference §3, from live responses).
SUMMARY_DROPS = (
    "PaymentLines", "ReminderLetters", "DeliveryAddress", "Permalink", "PackingSlipPermalink",
)  # fmt: skip


def list_invoices(txn: Txn, request) -> dict:
    page = page_of(request)
    where, params = _filters(txn, request)
    column = sort_column(request, SORT_COLUMNS, default="number")
    order = order_of(request)
    totals = txn.one(
        "SELECT COUNT(*) AS n, COALESCE(SUM(i.gross_4), 0) AS gross_4 FROM invoices AS i"
        f" JOIN customers AS c ON c.id = i.customer_id WHERE {where}",
        params,
    )
    rows = txn.all(
        f"{SELECT} WHERE {where} ORDER BY {column} {order}, i.number {order}"
        " LIMIT :limit OFFSET :offset",
        {**params, "limit": page.size, "offset": page.offset},
    )
    data = [_summary(invoice_json(txn, row)) for row in rows]
    total_amount = from_pence4(totals["gross_4"])
    return envelope(request, txn.base_url, page, totals["n"], data, TotalAmount=total_amount)


def _summary(invoice: dict) -> dict:
    return {key: value for key, value in invoice.items() if key not in SUMMARY_DROPS}


def _filters(txn: Txn, request) -> tuple[str, dict]:
    clauses, params = ["1 = 1"], {"now": format_datetime(txn.now)}
    if code := request.param("customercode"):
        clauses.append("c.code = :customer_code")
        params["customer_code"] = code
    if status := (request.param("statusfilter") or "").strip().lower():
        status = STATUS_FILTER_NUMBERS.get(int(status), "") if status.isdigit() else status
        if status not in STATUS_FILTERS:
            raise invalid(f"statusfilter {request.param('statusfilter')!r} is not known.")
        clauses.append(STATUS_FILTERS[status])
    for name, operator in (("issuedatefrom", ">="), ("issuedateto", "<=")):
        if value := request.param(name):
            clauses.append(f"substr(i.issued, 1, 10) {operator} :{name}")
            params[name] = Fields({name: value}).when(name).date().isoformat()
    if search := request.param("searchtext"):
        # The spec says only "Search by reference"; what it matches is unknown, so it is as
        # loose as plausible: the number exactly, or a case-insensitive substring of the
        # CustomerReference, the customer's name or code, or a line's description. A client
        # looking for an exact reference must check it on its side.
        clauses.append(
            "(CAST(i.number AS TEXT) = :search_exact OR i.customer_reference LIKE :search"
            " OR c.name LIKE :search OR c.code LIKE :search"
            " OR EXISTS (SELECT 1 FROM json_each(i.doc, '$.LineItems') AS line"
            " WHERE json_extract(line.value, '$.Description') LIKE :search))"
        )
        params.update(search_exact=search.strip(), search=f"%{search.strip()}%")
    return " AND ".join(clauses), params


def next_number(txn: Txn, request=None) -> int:
    return (txn.one("SELECT MAX(number) AS n FROM invoices")["n"] or 0) + 1


# -- Writing ------------------------------------------------------------------------------------


def create_invoice(txn: Txn, request) -> tuple[int, dict]:
    fields = Fields(loads(request.body))
    customer = _customer(txn, fields)
    number = fields.integer("Number") or next_number(txn)
    _check_number_free(txn, number)
    customer_doc = json.loads(customer["doc"])
    issued = _day(fields.when("IssuedDate", txn.now))
    due = _day(fields.when("DueDate") or due_date(issued, customer_doc["PaymentTerms"]))
    addresses = customer_doc["Addresses"]
    doc = {
        "Currency": lookups.currency(
            fields.child("Currency").text("Code", customer_doc["Currency"])
        )["Code"],
        "Address": _address(fields, "Address", addresses[0] if addresses else {}),
        "DeliveryAddress": _address(fields, "DeliveryAddress", None),
        "UseCustomDeliveryAddress": fields.flag("UseCustomDeliveryAddress"),
        "ProjectNumber": fields.integer("ProjectNumber"),
        "IsArchived": False,
        "Document": str(uuid.uuid4()),
        "LineItems": _lines(txn, fields.items("LineItems")),
        "PaymentLines": _payments(txn, fields.items("PaymentLines"), []),
    }
    doc["ExchangeRate"] = str(fields.child("Currency").money("ExchangeRate", None)
                              or lookups.CURRENCIES[doc["Currency"]]["ExchangeRate"])  # fmt: skip
    txn.run(
        "INSERT INTO invoices (number, customer_id, customer_reference, issued, due, created,"
        " net_4, vat_4, gross_4, status, doc) VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, '', '{}')",
        (number, customer["id"], fields.text("CustomerReference"), format_datetime(issued),
         format_datetime(due), format_datetime(txn.now)),
    )  # fmt: skip
    _save(txn, number, doc)
    return 201, invoice_json(txn, find(txn, number))


def update_invoice(txn: Txn, request, number: str) -> tuple[int, dict]:
    row = find(txn, number)
    fields = Fields(loads(request.body))
    old = json.loads(row["doc"])
    new_number = fields.integer("Number") or row["number"]
    if new_number != row["number"]:
        _check_number_free(txn, new_number)
    customer = _customer(txn, fields)  # required: the PUT is the whole invoice
    if fields.when("IssuedDate") is None:
        raise invalid("IssuedDate is required.")
    customer_doc = json.loads(customer["doc"])
    issued = _day(fields.when("IssuedDate"))
    due = _day(fields.when("DueDate") or due_date(issued, customer_doc["PaymentTerms"]))
    currency = fields.child("Currency")
    doc = {
        "Currency": lookups.currency(currency.text("Code", customer_doc["Currency"]))["Code"],
        "Address": _address(fields, "Address", None),
        "DeliveryAddress": _address(fields, "DeliveryAddress", None),
        "UseCustomDeliveryAddress": fields.flag("UseCustomDeliveryAddress"),
        "ProjectNumber": fields.integer("ProjectNumber"),
        "IsArchived": fields.flag("IsArchived"),
        "Document": old["Document"],
        "LineItems": _lines(txn, fields.items("LineItems")),
        "PaymentLines": _payments(txn, fields.items("PaymentLines"), old["PaymentLines"]),
    }
    doc["ExchangeRate"] = str(currency.money("ExchangeRate", None)
                              or lookups.CURRENCIES[doc["Currency"]]["ExchangeRate"])  # fmt: skip
    txn.run(
        "UPDATE invoices SET number = ?, customer_id = ?, customer_reference = ?, issued = ?,"
        " due = ? WHERE id = ?",
        (new_number, customer["id"], fields.text("CustomerReference"), format_datetime(issued),
         format_datetime(due), row["id"]),
    )  # fmt: skip
    _save(txn, new_number, doc)
    # The spec answers 201 when the PUT changed the invoice number.
    return (201 if new_number != row["number"] else 200), invoice_json(txn, find(txn, new_number))


def delete_invoice(txn: Txn, request, number: str) -> tuple[int, None]:
    txn.run("DELETE FROM invoices WHERE id = ?", (find(txn, number)["id"],))
    return 204, None


def _save(txn: Txn, number: int, doc: dict) -> None:
    """Store the document with the totals and payment state computed from it."""
    net = sum((Decimal(line["Net"]) for line in doc["LineItems"]), ZERO)
    vat = sum((Decimal(line["VATAmount"]) for line in doc["LineItems"]), ZERO)
    state = payment_state(net + vat, doc["PaymentLines"])
    txn.run(
        "UPDATE invoices SET net_4 = ?, vat_4 = ?, gross_4 = ?, paid_4 = ?, status = ?,"
        " paid_date = ?, last_payment_date = ?, doc = ? WHERE number = ?",
        (to_pence4(net), to_pence4(vat), to_pence4(net + vat), to_pence4(state["paid"]),
         state["status"], state["paid_date"], state["last_payment_date"], json.dumps(doc),
         number),
    )  # fmt: skip


def _customer(txn: Txn, fields: Fields):
    code = fields.text("CustomerCode").strip()
    if not code:
        raise invalid("CustomerCode is required.")
    customer = txn.one("SELECT * FROM customers WHERE code = ?", (code,))
    if customer is None:
        raise invalid(f"CustomerCode {code} does not match any customer.")
    return customer


def _check_number_free(txn: Txn, number: int) -> None:
    if number < 1:
        raise invalid("Number must be a positive whole number.")
    if txn.one("SELECT 1 FROM invoices WHERE number = ?", (number,)):
        raise invalid(f"Invoice number {number} already exists.")


def _day(moment: datetime) -> datetime:
    """KashFlow dates are days: stored at midday whatever time was sent."""
    return datetime.combine(moment.date(), MIDDAY)


def _address(fields: Fields, name: str, default: dict | None) -> dict | None:
    if not fields.has(name) or fields.raw[name.lower()] is None:
        return None if default is None else _address_out(default)
    raw = fields.child(name)
    address = {key: raw.text(key) for key in ("Line1", "Line2", "Line3", "Line4", "PostCode")}
    if name == "DeliveryAddress":
        address["Name"] = raw.text("Name")
    address["CountryCode"] = raw.text("CountryCode", "GB").upper()
    return _address_out(address)


def _address_out(address: dict) -> dict:
    out = {key: address.get(key, "") for key in ("Line1", "Line2", "Line3", "Line4", "PostCode")}
    out["CountryCode"] = address.get("CountryCode", "GB")
    out["CountryName"] = lookups.country_name(out["CountryCode"])
    return {**address, **out}


def _lines(txn: Txn, raw_lines: list) -> list[dict]:
    lines = [_line(txn, raw, index) for index, raw in enumerate(raw_lines)]
    # "Set Number to 0 for a new line": numbered after the highest one given.
    highest = max((line["Number"] for line in lines), default=0)
    for line in lines:
        if not line["Number"]:
            highest += 1
            line["Number"] = highest
    return sorted(lines, key=lambda line: line["Number"])


def _line(txn: Txn, raw, index: int) -> dict:
    fields = Fields(raw, f"LineItems[{index}]")
    label = f"LineItems[{index}]"
    nominal_code = fields.integer("NominalCode")
    if not nominal_code:
        raise invalid(f"{label}.NominalCode is required.")
    nominal = lookups.sales_nominal(txn, nominal_code, f"{label}.NominalCode")
    product = _product(txn, nominal_code, fields.text("ProductCode").strip(), label)
    default_vat = Decimal(json.loads(product["doc"])["VATRate"]) if product else ZERO
    quantity, rate = fields.money("Quantity", Decimal(1)), fields.money("Rate")
    vat_level, exempt = fields.money("VATLevel", default_vat), fields.flag("VATExempt")
    if vat_level < 0:
        raise invalid(f"{label}.VATLevel must not be negative.")
    net, vat = line_amounts(quantity, rate, vat_level, exempt, fields.money("VATAmount", None))
    return {
        "Number": fields.integer("Number"),
        "Description": fields.text("Description", product["name"] if product else ""),
        "Quantity": str(quantity),
        "Rate": str(rate),
        "VATLevel": str(ZERO if exempt else vat_level),
        "VATAmount": str(vat),
        "VATExempt": exempt,
        "NominalCode": nominal_code,
        "NominalId": nominal["id"],
        "NominalName": nominal["name"],
        "ProductCode": product["code"] if product else "",
        "ProductName": product["name"] if product else "",
        "ProjectNumber": fields.integer("ProjectNumber"),
        "Net": str(net),  # kept for the totals; not on the wire (KashFlow has no line net)
    }


def _product(txn: Txn, nominal_code: int, code: str, label: str):
    if not code:
        return None
    product = txn.one(
        "SELECT * FROM products WHERE nominal_code = ? AND code = ?", (nominal_code, code)
    )
    if product is None:
        raise invalid(f"{label}.ProductCode {code} does not exist under nominal {nominal_code}.")
    return product


def _payments(txn: Txn, raw_lines: list, existing: list[dict]) -> list[dict]:
    known = {payment["Id"]: payment for payment in existing}
    return [_payment(txn, raw, index, known) for index, raw in enumerate(raw_lines)]


def _payment(txn: Txn, raw, index: int, known: dict) -> dict:
    label = f"PaymentLines[{index}]"
    fields = Fields(raw, label)
    payment_id = fields.integer("Id")
    if payment_id and payment_id not in known:
        raise invalid(f"{label}.Id {payment_id} is not a payment on this invoice.")
    amount = fields.money("Amount")
    if amount <= 0:
        raise invalid(f"{label}.Amount must be more than zero.")
    if not fields.has("AccountId"):
        raise invalid(f"{label}.AccountId is required.")
    if not fields.has("Method"):
        raise invalid(f"{label}.Method is required.")
    lookups.require_bank_account(txn, fields.integer("AccountId"), f"{label}.AccountId")
    lookups.require_payment_method(txn, fields.integer("Method"), f"{label}.Method")
    previous = known.get(payment_id, {})
    return {
        "Id": payment_id or txn.next_id("payment"),
        "Date": format_datetime(_day(fields.when("Date", txn.now))),
        "Amount": str(amount),
        "Method": fields.integer("Method"),
        "AccountId": fields.integer("AccountId"),
        "Reference": fields.text("Reference"),
        "Note": fields.text("Note"),
        "BulkId": fields.integer("BulkId", previous.get("BulkId", 0)),
        "BulkPaymentNumber": previous.get("BulkPaymentNumber", 0),
        "BFSTransactionId": fields.integer("BFSTransactionId"),
        "BankTransactionId": 0,
        "BankReconciliationId": 0,
        "PaymentProcessor": fields.integer("PaymentProcessor"),
        "PaymentProcessorEnumValue": 0,
        "Permalink": previous.get("Permalink") or f"/v2/documents/invoice/payment/{uuid.uuid4()}",
        "VATReturnId": 0,
        "IsPaymentCreditNote": False,
        "InvoiceNumber": 0,
    }


def create_bulk_payment(txn: Txn, request) -> tuple[int, dict]:
    """POST /invoices/bulk/payments: one receipt spread over several invoices, each getting a
    payment line that carries the bulk payment's number."""
    fields = Fields(loads(request.body))
    header = {"AccountId": fields.integer("AccountId"), "Method": fields.integer("Method")}
    lookups.require_bank_account(txn, header["AccountId"], "AccountId")
    lookups.require_payment_method(txn, header["Method"], "Method")
    bulk_number = fields.integer("Number") or txn.next_id("bulk_payment")
    paid_on = format_datetime(_day(fields.when("Date", txn.now)))
    items = []
    for index, raw in enumerate(fields.items("PaymentItems")):
        item = Fields(raw, f"PaymentItems[{index}]")
        items.append(_apply_bulk_item(txn, item, header, bulk_number, paid_on))
    if not items:
        raise invalid("PaymentItems must list at least one invoice.")
    body = {"Number": bulk_number, "Date": paid_on, "Comment": fields.text("Comment"), **header}
    return 201, {**body, "Reconciled": False, "PaymentItems": items, "ExportDetails": None}


def _apply_bulk_item(txn: Txn, item: Fields, header: dict, bulk_number: int, paid_on: str):
    number = item.integer("ObjectNumber")
    row = txn.one("SELECT * FROM invoices WHERE number = ?", (number,))
    if row is None:
        raise invalid(f"{item.where}.ObjectNumber {number} is not an invoice.")
    amount = item.money("Amount")
    if amount <= 0:
        raise invalid(f"{item.where}.Amount must be more than zero.")
    doc = json.loads(row["doc"])
    line = {**header, "Amount": str(amount), "Date": paid_on, "BulkId": bulk_number}
    payment = _payment(txn, line, len(doc["PaymentLines"]), {})
    payment["BulkPaymentNumber"] = bulk_number
    doc["PaymentLines"].append(payment)
    _save(txn, number, doc)
    invoice = find(txn, number)
    return {
        "Id": payment["Id"],
        "Amount": amount,
        "PaidDate": paid_on,
        "ObjectNumber": number,
        "ContactCode": invoice["customer_code"],
        "ContactName": invoice["customer_name"],
        "ContactId": invoice["customer_id"],
        "ContactReference": invoice["customer_reference"],
        "ObjectIssuedDate": invoice["issued"],
        "ObjectDueDate": invoice["due"],
    }
