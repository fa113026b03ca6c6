"""Reference data: nominal codes, bank accounts, payment methods, VAT rates, currencies, countries.

Most of these lists are bare JSON arrays on the real API, not the paged envelope (reference §3).
"""

from decimal import Decimal

from .store import Txn
from .wire import invalid, not_found

CURRENCIES = {
    "GBP": {"Code": "GBP", "Name": "British Pounds", "Symbol": "£", "ExchangeRate": Decimal(1)},
    "EUR": {"Code": "EUR", "Name": "Euro", "Symbol": "€", "ExchangeRate": Decimal("1.1700")},
    "USD": {"Code": "USD", "Name": "US Dollars", "Symbol": "$", "ExchangeRate": Decimal("1.2700")},
}
COUNTRIES = {
    "GB": "United Kingdom",
    "IE": "Ireland",
    "FR": "France",
    "DE": "Germany",
    "US": "United States",
    "ES": "Spain",
    "NL": "Netherlands",
}


def currency(code: str) -> dict:
    code = (code or "GBP").upper()
    if code not in CURRENCIES:
        raise invalid(f"Currency {code} is not enabled on this account.")
    return {**CURRENCIES[code], "DisplaySymbolOnRight": False}


def country_name(code: str) -> str:
    return COUNTRIES.get((code or "").upper(), "")


# -- Nominals -----------------------------------------------------------------------------------


def nominal_json(row) -> dict:
    is_sales = row["type"] == "Sales"
    return {
        "Id": row["id"],
        "Code": row["code"],
        "Name": row["name"],
        "Type": row["type"],
        "NomType": row["type"],
        "Disallowed": False,
        "Archived": False,
        "IsProduct": is_sales,
        "AutoFillLineItem": False,
        "Price": Decimal(0),
        "WholeSalePrice": Decimal(0),
        "VATRate": Decimal(20) if is_sales else Decimal(0),
        "VATExempt": False,
        "Description": "",
        "AllowDelete": False,
        "ManageStockLevel": False,
        "QuantityInStock": Decimal(0),
        "StockWarningQuantity": Decimal(0),
    }


def list_nominals(txn: Txn, request) -> list:
    rows = txn.all("SELECT * FROM nominals ORDER BY code")
    kind = (request.param("type") or "").lower()
    search = (request.param("searchText") or request.param("searchtext") or "").lower()
    return [
        nominal_json(row)
        for row in rows
        if (not kind or row["type"].lower() == kind)
        and (not search or search in row["name"].lower() or search in str(row["code"]))
    ]


def get_nominal(txn: Txn, request, code: str) -> dict:
    return nominal_json(_nominal(txn, code))


def _nominal(txn: Txn, code: str):
    row = txn.one("SELECT * FROM nominals WHERE code = ?", (code,)) if code.isdigit() else None
    if row is None:
        raise not_found(f"Nominal code {code} not found.")
    return row


def sales_nominal(txn: Txn, code: int, field: str):
    """The nominal row for a line item or product; 400 unless it is a sales nominal."""
    row = txn.one("SELECT * FROM nominals WHERE code = ?", (code,))
    if row is None or row["type"] != "Sales":
        raise invalid(f"{field} {code} is not a sales nominal code.")
    return row


# -- Bank accounts and payment methods ----------------------------------------------------------


def bank_account_json(txn: Txn, row) -> dict:
    received = txn.one(
        "SELECT COALESCE(SUM(amount_4), 0) AS total FROM ("
        " SELECT CAST(ROUND(CAST(json_extract(line.value, '$.Amount') AS REAL) * 10000) AS INTEGER)"
        "  AS amount_4 FROM invoices, json_each(invoices.doc, '$.PaymentLines') AS line"
        " WHERE json_extract(line.value, '$.AccountId') = ?)",
        (row["id"],),
    )["total"]
    method = txn.one("SELECT * FROM payment_methods ORDER BY id LIMIT 1")
    default_method = {"Id": method["id"], "Name": method["name"]} if method else None
    return {
        "Id": row["id"],
        "Code": row["code"],
        "AccountName": row["name"],
        "IsDefaultAccount": bool(row["is_default"]),
        "IsArchived": False,
        "StartingDate": "1970-01-01 12:00:00",
        "StartingAmount": Decimal(0),
        "BankBalance": Decimal(received).scaleb(-4),
        "ReconcileDate": "",
        "TransactionLockEnabled": False,
        "TransactionLockDate": "",
        "Note": "",
        "DefaultInvoicePaymentType": default_method,
        "DefaultPurchasePaymentType": default_method,
        # No bank feed is connected: KashFlow sends empty strings, not nulls, then.
        "BankFeedsAccountId": "",
        "FeedAccountName": "",
        "FeedAccountNumber": "",
        "FeedAccountHolder": "",
        "FeedSiteName": "",
        "FeedSource": "",
        "LastTransactionImportDate": "",
        "Order": row["id"],
    }


def list_bank_accounts(txn: Txn, request) -> list:
    return [bank_account_json(txn, row) for row in txn.all("SELECT * FROM bank_accounts")]


def get_bank_account(txn: Txn, request, account_id: str) -> dict:
    row = txn.one("SELECT * FROM bank_accounts WHERE id = ?", (account_id,))
    if row is None:
        raise not_found(f"Bank account {account_id} not found.")
    return bank_account_json(txn, row)


def list_payment_methods(txn: Txn, request, kind: str) -> list:
    if kind.lower() not in ("invoice", "purchase"):
        raise not_found(f"Payment method type {kind} not found.")
    return [
        {"Id": row["id"], "Name": row["name"]} for row in txn.all("SELECT * FROM payment_methods")
    ]


def list_vat_rates(txn: Txn, request) -> list:
    return [
        {"VATId": row["id"], "VATRate": Decimal(row["rate"]), "VATText": row["text"]}
        for row in txn.all("SELECT * FROM vat_rates ORDER BY id")
    ]


def require_bank_account(txn: Txn, account_id: int, field: str) -> None:
    if not txn.one("SELECT 1 FROM bank_accounts WHERE id = ?", (account_id,)):
        raise invalid(f"{field} {account_id} is not a bank account Id (see /bankaccounts).")


def require_payment_method(txn: Txn, method_id: int, field: str) -> None:
    if not txn.one("SELECT 1 FROM payment_methods WHERE id = ?", (method_id,)):
        raise invalid(f"{field} {method_id} is not a payment method Id (see /paymentmethods).")
