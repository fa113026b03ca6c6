"""Customers, keyed by `Code` (reference §4.1).

A PUT replaces the whole customer, as KashFlow's PUTs do (real-api-corrections.md row 2): a
field the body leaves out is cleared to its empty value, as on a create. Every write stamps
LastUpdatedDate to the second; only the full customer carries it (and CreatedDate): list
summaries have neither, and the list sorts only on the spec's columns.
"""

import json
import re
import uuid
from decimal import Decimal

from . import lookups
from .listing import envelope, flag, order_of, page_of, sort_column
from .store import Txn
from .wire import Fields, format_datetime, from_pence4, invalid, loads, not_found

TEXT_FIELDS = [
    "Name", "Note", "Email", "TelephoneNumber", "MobileNumber", "FaxNumber", "Website",
    "VATNumber", "DefaultCustomerReference", "TradeBorderType",
]  # fmt: skip
FLAG_FIELDS = [
    "IsArchived", "ShowDiscount", "ReceivesWholesalePricing", "EnableCreditLimit",
    "AutomaticCreditControlEnabled", "IsCISReverseCharge", "AutoIncludeVATNumber",
    "IsRegisteredInEC", "IsRegisteredOutsideEC", "UseCustomDeliveryAddress",
    "ApplyWithholdingTax",
]  # fmt: skip
CONTACT_TEXT = [
    "Name", "Title", "Firstname", "LastName", "Telephone", "Mobile", "Fax", "Email", "Website",
]  # fmt: skip
ADDRESS_TEXT = ["Line1", "Line2", "Line3", "Line4", "PostCode", "CountryCode"]
PAYMENT_TERM_TYPES = ("AfterIssuedDate", "AfterMonthEnd")
# `sortby`: the spec's integer enum (0 Name, 1 Code, 3 TotalPaidAmount, 4 OutstandingBalance),
# or the same four columns by the names older docs and live clients use. Anything else (2,
# LastUpdatedDate, CreatedDate...) is a 400: KashFlow's enum binding cannot honour it.
SORT_COLUMNS = {
    "code": "c.code", "1": "c.code",
    "name": "c.name", "0": "c.name",
    "totalpaidamount": "paid_4", "3": "paid_4",
    "outstandingbalance": "outstanding_4", "4": "outstanding_4",
}  # fmt: skip
WITH_AGGREGATES = """
SELECT c.*, COALESCE(a.invoice_count, 0) AS invoice_count, COALESCE(a.net_4, 0) AS net_4,
       COALESCE(a.vat_4, 0) AS vat_4, COALESCE(a.paid_4, 0) AS paid_4,
       COALESCE(a.gross_4, 0) - COALESCE(a.paid_4, 0) AS outstanding_4,
       COALESCE(a.overdue_4, 0) AS overdue_4, a.first_issued, a.last_issued
FROM customers AS c LEFT JOIN (
    SELECT customer_id, COUNT(*) AS invoice_count, SUM(net_4) AS net_4, SUM(vat_4) AS vat_4,
           SUM(gross_4) AS gross_4, SUM(paid_4) AS paid_4, MIN(issued) AS first_issued,
           MAX(issued) AS last_issued,
           SUM(CASE WHEN due < :now AND paid_4 < gross_4 THEN gross_4 - paid_4 ELSE 0 END)
               AS overdue_4
    FROM invoices GROUP BY customer_id
) AS a ON a.customer_id = c.id
"""
NO_INVOICE_DATE = "1900-01-01 12:00:00"  # KashFlow's "no value" sentinel


# -- Reading ------------------------------------------------------------------------------------


def find(txn: Txn, code: str):
    row = txn.one(WITH_AGGREGATES + " WHERE c.code = :code", _params(txn, code=code))
    if row is None:
        raise not_found(f"Customer {code} not found.")
    return row


def _params(txn: Txn, **params) -> dict:
    return {"now": format_datetime(txn.now), **params}


def get_customer(txn: Txn, request, code: str) -> dict:
    return customer_json(find(txn, code))


def customer_json(row) -> dict:
    doc = json.loads(row["doc"])
    primary = next((c for c in doc["Contacts"] if c["IsPrimary"]), None) or {}
    return {
        "Id": row["id"],
        "Code": row["code"],
        "Name": row["name"],
        "DisplayName": row["name"],
        "Note": doc["Note"],
        "Source": doc["Source"],
        "Key": doc["Key"],
        "CustomerKey": doc["Key"],
        "Contacts": doc["Contacts"],
        "Email": doc["Email"] or primary.get("Email", ""),
        "TelephoneNumber": doc["TelephoneNumber"] or primary.get("Telephone", ""),
        "MobileNumber": doc["MobileNumber"] or primary.get("Mobile", ""),
        "FaxNumber": doc["FaxNumber"],
        "Website": doc["Website"],
        "Addresses": [_address_out(a) for a in doc["Addresses"]],
        "DeliveryAddresses": [_address_out(a) for a in doc["DeliveryAddresses"]],
        "UseCustomDeliveryAddress": doc["UseCustomDeliveryAddress"],
        "VATNumber": doc["VATNumber"],
        "AutoIncludeVATNumber": doc["AutoIncludeVATNumber"],
        "IsRegisteredInEC": doc["IsRegisteredInEC"],
        "IsRegisteredOutsideEC": doc["IsRegisteredOutsideEC"],
        "TradeBorderType": doc["TradeBorderType"],
        "IsCISReverseCharge": doc["IsCISReverseCharge"],
        "ApplyWithholdingTax": doc["ApplyWithholdingTax"],
        "Currency": lookups.currency(doc["Currency"]),
        "PaymentTerms": doc["PaymentTerms"],
        "DiscountRate": Decimal(doc["DiscountRate"]),
        "ShowDiscount": doc["ShowDiscount"],
        "ReceivesWholesalePricing": doc["ReceivesWholesalePricing"],
        "DefaultNominalCode": doc["DefaultNominalCode"],
        "DefaultCustomerReference": doc["DefaultCustomerReference"],
        "EnableCreditLimit": doc["EnableCreditLimit"],
        "CreditLimit": Decimal(doc["CreditLimit"]),
        "AutomaticCreditControlEnabled": doc["AutomaticCreditControlEnabled"],
        "CustomTextBoxes": doc["CustomTextBoxes"],
        "CustomCheckBoxes": doc["CustomCheckBoxes"],
        "IsArchived": bool(row["archived"]),
        "CreatedDate": row["created"],
        "LastUpdatedDate": row["updated"],
        **_aggregates(row),
    }


def _aggregates(row) -> dict:
    return {
        "FirstInvoiceDate": row["first_issued"] or NO_INVOICE_DATE,
        "LastInvoiceDate": row["last_issued"] or NO_INVOICE_DATE,
        "InvoiceCount": row["invoice_count"],
        "InvoicedNetAmount": from_pence4(row["net_4"]),
        "InvoicedVATAmount": from_pence4(row["vat_4"]),
        "TotalPaidAmount": from_pence4(row["paid_4"]),
        "OutstandingBalance": from_pence4(row["outstanding_4"]),
        "OverdueAmount": from_pence4(row["overdue_4"]),
    }


def _address_out(address: dict) -> dict:
    return {**address, "CountryName": lookups.country_name(address.get("CountryCode", ""))}


def summary_json(row) -> dict:
    full = customer_json(row)
    keys = [
        "Id", "Code", "Name", "TotalPaidAmount", "OutstandingBalance", "DefaultNominalCode",
        "IsArchived", "VATNumber", "TradeBorderType", "IsCISReverseCharge",
        "ApplyWithholdingTax", "CustomerKey", "Contacts", "Addresses", "Currency",
    ]  # fmt: skip
    summary = {key: full[key] for key in keys}
    summary.update(IsSchedule=False, SourceName="")
    return summary


def list_customers(txn: Txn, request) -> dict:
    page = page_of(request)
    where, params = _filters(txn, request)
    column = sort_column(request, SORT_COLUMNS, default="code")
    order = order_of(request)
    total = txn.one(f"SELECT COUNT(*) AS n FROM customers AS c WHERE {where}", params)["n"]
    rows = txn.all(
        f"{WITH_AGGREGATES} WHERE {where} ORDER BY {column} {order}, c.id {order}"
        " LIMIT :limit OFFSET :offset",
        {**params, "limit": page.size, "offset": page.offset},
    )
    data = [summary_json(row) for row in rows]
    return envelope(request, txn.base_url, page, total, data)


def _filters(txn: Txn, request) -> tuple[str, dict]:
    clauses, params = ["1 = 1"], _params(txn)
    if starts := request.param("namestartswith"):
        clauses.append("c.name LIKE :starts ESCAPE '\\'")
        params["starts"] = _like(starts) + "%"
    if search := request.param("searchtext"):
        clauses.append(
            "(c.name LIKE :search ESCAPE '\\' OR c.code LIKE :search ESCAPE '\\'"
            " OR c.email LIKE :search ESCAPE '\\')"
        )
        params["search"] = "%" + _like(search) + "%"
    # Unknown upstream whether true hides archived or shows only them; we read it as "hide".
    if flag(request, "filterarchived"):
        clauses.append("c.archived = 0")
    for name, operator in (("startcreationdate", ">="), ("endcreationdate", "<=")):
        if value := request.param(name):
            day = Fields({name: value}).when(name).date().isoformat()
            clauses.append(f"substr(c.created, 1, 10) {operator} :{name}")
            params[name] = day
    return " AND ".join(clauses), params


def _like(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text)


# -- Writing ------------------------------------------------------------------------------------


def create_customer(txn: Txn, request) -> tuple[int, dict]:
    fields = Fields(loads(request.body))
    code = fields.text("Code").strip()
    generate = fields.flag("CreateCustomerCodeIfDuplicate")
    name = fields.text("Name").strip()
    if not name and fields.flag("CreateCustomerNameIfEmptyOrNull"):
        name = code or "New Customer"
    if not name:
        raise invalid("Name is required.")
    if not code and not generate:
        raise invalid("Code is required.")
    if not code or _code_taken(txn, code):
        if not generate:
            raise invalid(f"Customer code {code} already exists.")
        code = suggested_code(txn, name)
    doc = _apply(txn, fields, _blank_doc(), name)
    now = format_datetime(txn.now)
    txn.run(
        "INSERT INTO customers (code, name, email, archived, created, updated, doc)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (code, name, doc["Email"], doc["IsArchived"], now, now, json.dumps(doc)),
    )
    return 201, customer_json(find(txn, code))


def update_customer(txn: Txn, request, code: str) -> tuple[int, dict]:
    """PUT replaces the whole customer: what the body leaves out is cleared (the read-only Key
    stays). Code and Name must be sent; a different Code renames the customer."""
    row = find(txn, code)
    fields = Fields(loads(request.body))
    new_code = fields.text("Code").strip()
    if not new_code:
        raise invalid("Code is required.")
    renamed = new_code != row["code"]
    if renamed and new_code.lower() != row["code"].lower() and _code_taken(txn, new_code):
        raise invalid(f"Customer code {new_code} already exists.")
    name = fields.text("Name").strip()
    if not name:
        raise invalid("Name is required.")
    old = json.loads(row["doc"])
    doc = _apply(txn, fields, _blank_doc() | {"Key": old["Key"]}, name)
    txn.run(
        "UPDATE customers SET code = ?, name = ?, email = ?, archived = ?, updated = ?, doc = ?"
        " WHERE id = ?",
        (
            new_code,
            name,
            doc["Email"],
            doc["IsArchived"],
            format_datetime(txn.now),
            json.dumps(doc),
            row["id"],
        ),
    )
    # The spec answers 201 when the PUT renamed the customer's code.
    return (201 if renamed else 200), customer_json(find(txn, new_code))


def delete_customer(txn: Txn, request, code: str) -> tuple[int, None]:
    row = find(txn, code)
    # Assumed from the KashFlow UI: a customer with transactions cannot be deleted.
    if row["invoice_count"]:
        raise invalid(f"Customer {row['code']} has invoices and cannot be deleted.")
    txn.run("DELETE FROM customers WHERE id = ?", (row["id"],))
    return 204, None


def suggest_code(txn: Txn, request) -> str:
    name = Fields(loads(request.body)).text("Name").strip()
    if not name:
        raise invalid("Name is required to suggest a code.")
    return suggested_code(txn, name)


def suggested_code(txn: Txn, name: str) -> str:
    letters = re.sub(r"[^A-Z0-9]", "", name.upper())[:5] or "CUST"
    number = 1
    while _code_taken(txn, f"{letters}{number:03d}"):
        number += 1
    return f"{letters}{number:03d}"


def _code_taken(txn: Txn, code: str) -> bool:
    return txn.one("SELECT 1 FROM customers WHERE code = ?", (code,)) is not None


def _blank_doc() -> dict:
    doc = {name: "" for name in TEXT_FIELDS} | {name: False for name in FLAG_FIELDS}
    doc.update(
        Key=str(uuid.uuid4()),
        Source=0,
        Contacts=[],
        Addresses=[],
        DeliveryAddresses=[],
        Currency="GBP",
        PaymentTerms={"Days": 30, "Type": "AfterIssuedDate"},
        DiscountRate="0",
        CreditLimit="0",
        DefaultNominalCode=0,
        CustomTextBoxes=[],
        CustomCheckBoxes=[],
    )
    return doc


def _apply(txn: Txn, fields: Fields, doc: dict, name: str) -> dict:
    """The customer document with the sent fields applied; 400 naming a field that is wrong."""
    doc = dict(doc, Name=name)
    for field in TEXT_FIELDS[1:]:
        if fields.has(field):
            doc[field] = fields.text(field)
    for field in FLAG_FIELDS:
        if fields.has(field):
            doc[field] = fields.flag(field)
    if fields.has("Source"):
        doc["Source"] = fields.integer("Source")
    if fields.has("Contacts"):
        doc["Contacts"] = [
            _contact(txn, raw, index) for index, raw in enumerate(fields.items("Contacts"))
        ]
    for field in ("Addresses", "DeliveryAddresses"):
        if fields.has(field):
            doc[field] = [_address(raw, field) for raw in fields.items(field)]
    if fields.has("Currency"):
        doc["Currency"] = lookups.currency(fields.child("Currency").text("Code", "GBP"))["Code"]
    if fields.has("PaymentTerms"):
        doc["PaymentTerms"] = _payment_terms(fields.child("PaymentTerms"))
    for field in ("DiscountRate", "CreditLimit"):
        if fields.has(field):
            doc[field] = str(fields.money(field))
    if not 0 <= Decimal(doc["DiscountRate"]) <= 100:
        raise invalid("DiscountRate must be between 0 and 100.")
    if fields.has("DefaultNominalCode"):
        code = fields.integer("DefaultNominalCode")
        if code:
            lookups.sales_nominal(txn, code, "DefaultNominalCode")
        doc["DefaultNominalCode"] = code
    for field in ("CustomTextBoxes", "CustomCheckBoxes"):
        if fields.has(field):
            doc[field] = fields.items(field)
    return doc


def _contact(txn: Txn, raw, index: int) -> dict:
    fields = Fields(raw, f"Contacts[{index}]")
    contact = {"Id": fields.integer("Id") or txn.next_id("contact")}
    contact["IsPrimary"] = fields.flag("IsPrimary", default=index == 0)
    contact["ReceiveEmails"] = fields.flag("ReceiveEmails", default=True)
    contact.update({name: fields.text(name) for name in CONTACT_TEXT})
    return contact


def _address(raw, where: str) -> dict:
    fields = Fields(raw, where)
    address = {name: fields.text(name) for name in ADDRESS_TEXT}
    address["CountryCode"] = address["CountryCode"].upper() or "GB"
    if where == "DeliveryAddresses":
        address["Name"] = fields.text("Name")
    return address


def _payment_terms(fields: Fields) -> dict:
    days, kind = fields.integer("Days", 30), fields.text("Type", "AfterIssuedDate")
    if days < 0:
        raise invalid("PaymentTerms.Days must not be negative.")
    if kind not in PAYMENT_TERM_TYPES:
        raise invalid(f"PaymentTerms.Type must be one of {', '.join(PAYMENT_TERM_TYPES)}.")
    return {"Days": days, "Type": kind}
