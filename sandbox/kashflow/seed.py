"""Seeds: what a reset puts in the simulated account.

- `empty`: reference data only (nominals, bank accounts, payment methods, VAT rates);
- `demo`: about 200 customers, 60 products and 300 invoices, some paid, some part-paid, told
  by sandbox/story.py with the Salesforce demo: the invoices of its invoiced deals are here;
- `key=value,...`, e.g. `customers=10000,invoices=0,products=60`: the same generators at other
  sizes. Keys for the other simulator are ignored. `names=<seed>` picks another fake data seed.

Names come from `sandbox.fake` with the seed "demo", so the Salesforce demo, which takes the first
part of the same list, has Accounts that match KashFlow customers by name. Contents are
deterministic; dates are laid out backwards from the day of the reset (invoices over the last
year), so two resets on one day give identical accounts.
"""

import json
import random
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from sandbox import fake, story

from .invoices import due_date, line_amounts, payment_state
from .lookups import CURRENCIES, country_name
from .store import Txn
from .wire import MIDDAY, format_datetime, invalid, round_money, to_pence4

DEMO = {"customers": 200, "products": 60, "invoices": 300}
NOMINALS = [
    (30001, 4000, "Sales - Consulting", "Sales"),
    (30002, 4010, "Sales - Software", "Sales"),
    (30003, 4020, "Sales - Hardware", "Sales"),
    (30004, 4030, "Sales - Support Contracts", "Sales"),
    (30005, 4040, "Sales - Training", "Sales"),
    (30006, 4050, "Sales - Publications", "Sales"),
    (30007, 4060, "Sales - Energy and Safety", "Sales"),
    (30008, 4900, "Other Income", "Sales"),
    (30009, 1100, "Debtors Control Account", "Current Assets"),
    (30010, 1200, "Current Account", "Bank"),
    (30011, 1210, "Savings Account", "Bank"),
    (30012, 2200, "VAT Liability", "Current Liabilities"),
    (30013, 5000, "Cost of Sales", "Cost of Sales"),
]
# Bank account Ids are deliberately not their nominal codes (PaymentLines.AccountId is the Id).
BANK_ACCOUNTS = [(101, 1200, "Current Account", 1), (102, 1210, "Savings", 0)]
PAYMENT_METHODS = [(1, "BACS"), (2, "Cheque"), (3, "Card"), (4, "Cash")]
VAT_RATES = [
    (1, "20", "Standard 20%"), (2, "5", "Reduced 5%"), (3, "0", "Zero 0%"), (4, "0", "Exempt"),
]  # fmt: skip
CURRENCY_BY_COUNTRY = {"GB": "GBP", "US": "USD"}
PAYMENT_TERMS = [(30, "AfterIssuedDate")] * 4 + [(14, "AfterIssuedDate"), (30, "AfterMonthEnd")]


def parse(seed: str) -> dict:
    """Sizes for a seed string; 400-style ValueError on a malformed one."""
    seed = (seed or "empty").strip()
    if seed == "empty":
        return {"customers": 0, "products": 0, "invoices": 0, "names": "demo"}
    if seed == "demo":
        return {**DEMO, "names": "demo"}
    sizes = {"customers": 0, "products": 0, "invoices": 0, "names": "demo"}
    for part in filter(None, (p.strip() for p in seed.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise ValueError(f"seed part {part!r} is not key=value")
        if key == "names":
            sizes["names"] = value.strip()
        elif key in sizes:
            sizes[key] = int(value)
    return sizes


def apply(txn: Txn, seed: str) -> None:
    sizes = parse(seed)
    _reference_data(txn)
    today = datetime.combine(txn.now.date(), MIDDAY)
    rng = random.Random(f"kashflow:{seed}")
    # Change stamps are moments, never later than now (midday today may still be to come), or a
    # watermark taken from them would hide the next real change.
    latest = txn.now.replace(microsecond=0) - timedelta(seconds=1)
    customers = _customers(txn, fake.companies(sizes["customers"], sizes["names"]), latest, rng)
    products = fake.products(sizes["products"], sizes["names"])
    _products(txn, products)
    if sizes["invoices"] and not customers:
        raise invalid("A seed with invoices needs customers.")
    if seed.strip() == "demo":
        _story_invoices(txn, story.demo(products), customers, products, today)
    else:
        _invoices(txn, sizes["invoices"], customers, products, today, rng)


def _reference_data(txn: Txn) -> None:
    txn.db.executemany("INSERT INTO nominals VALUES (?, ?, ?, ?)", NOMINALS)
    txn.db.executemany("INSERT INTO bank_accounts VALUES (?, ?, ?, ?)", BANK_ACCOUNTS)
    txn.db.executemany("INSERT INTO payment_methods VALUES (?, ?)", PAYMENT_METHODS)
    txn.db.executemany("INSERT INTO vat_rates VALUES (?, ?, ?)", VAT_RATES)


def _customers(txn: Txn, companies: list[dict], latest: datetime, rng: random.Random) -> list:
    rows, seeded = [], []
    for index, company in enumerate(companies):
        created = latest - timedelta(days=rng.randint(30, 900), seconds=rng.randint(0, 36000))
        # Last changed at some moment between creation and now. (Clamping a random date to now
        # would stamp a fifth of all customers with the same second, like a bulk import.)
        updated = created + timedelta(
            seconds=int(rng.random() * (latest - created).total_seconds())
        )
        terms = rng.choice(PAYMENT_TERMS)
        doc = _customer_doc(company, index + 1, terms, rng)
        rows.append(
            (company["code"], company["name"], company["email"], format_datetime(created),
             format_datetime(updated), json.dumps(doc))
        )  # fmt: skip
        address = {**doc["Addresses"][0], "CountryName": country_name(company["country_code"])}
        seeded.append(
            {"terms": doc["PaymentTerms"], "address": address, "currency": doc["Currency"]}
        )
    txn.db.executemany(
        "INSERT INTO customers (code, name, email, created, updated, doc)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    ids = txn.all("SELECT id FROM customers ORDER BY id")
    for customer, row in zip(seeded, ids, strict=True):
        customer["id"] = row["id"]
    _set_counter(txn, "contact", len(companies))
    return seeded


def _customer_doc(company: dict, contact_id: int, terms: tuple, rng: random.Random) -> dict:
    country = company["country_code"]
    street = company["street"]
    name = f"{company['contact_first']} {company['contact_last']}"
    contact = {
        "Id": contact_id, "IsPrimary": True, "ReceiveEmails": True, "Name": name, "Title": "",
        "Firstname": company["contact_first"], "LastName": company["contact_last"],
        "Telephone": company["phone"], "Mobile": "", "Fax": "", "Email": company["email"],
        "Website": "",
    }  # fmt: skip
    address = {
        "Line1": street[0], "Line2": ", ".join(street[1:]), "Line3": company["city"],
        "Line4": company["county"], "PostCode": company["postcode"], "CountryCode": country,
    }  # fmt: skip
    return {
        "Name": company["name"], "Note": "", "Email": company["email"],
        "TelephoneNumber": company["phone"], "MobileNumber": "", "FaxNumber": "", "Website": "",
        "VATNumber": _vat_number(country, rng), "DefaultCustomerReference": "",
        "TradeBorderType": "", "IsArchived": False, "ShowDiscount": False,
        "ReceivesWholesalePricing": False, "EnableCreditLimit": False,
        "AutomaticCreditControlEnabled": False, "IsCISReverseCharge": False,
        "AutoIncludeVATNumber": False, "IsRegisteredInEC": country in ("IE", "FR", "DE"),
        "IsRegisteredOutsideEC": country == "US", "UseCustomDeliveryAddress": False,
        "ApplyWithholdingTax": False, "Key": _guid(rng),
        "Source": 0, "Contacts": [contact], "Addresses": [address], "DeliveryAddresses": [],
        "Currency": CURRENCY_BY_COUNTRY.get(country, "EUR"),
        "PaymentTerms": {"Days": terms[0], "Type": terms[1]}, "DiscountRate": "0",
        "CreditLimit": "0", "DefaultNominalCode": 4000, "CustomTextBoxes": [],
        "CustomCheckBoxes": [],
    }  # fmt: skip


def _vat_number(country: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return ""
    digits = f"{rng.randrange(10**9):09d}"
    return {"GB": f"GB{digits}", "IE": f"IE{digits[:7]}W", "FR": f"FR12{digits}"}.get(country, "")


def _products(txn: Txn, products: list[dict]) -> None:
    rows = [
        (p["nominal_code"], p["code"], p["name"], json.dumps(_product_doc(p))) for p in products
    ]
    txn.db.executemany(
        "INSERT INTO products (nominal_code, code, name, doc) VALUES (?, ?, ?, ?)", rows
    )


def _product_doc(product: dict) -> dict:
    return {
        "Description": product["description"], "AutoFillLineItem": True,
        "ManageStockLevel": False, "IsDefault": False, "Price": str(product["price"]),
        "WholeSalePrice": str((product["price"] * Decimal("0.8")).quantize(Decimal("0.01"))),
        "VATRate": str(product["vat_rate"]), "QuantityInStock": "0", "StockWarningQuantity": "0",
    }  # fmt: skip


def _invoices(txn, count, customers, products, today, rng) -> None:
    nominal_names = {code: name for _, code, name, _ in NOMINALS}
    nominal_ids = {code: nominal_id for nominal_id, code, _, _ in NOMINALS}
    rows, payment_id = [], 0
    for number in range(1, count + 1):
        customer = rng.choice(customers)
        issued = today - timedelta(days=rng.randint(0, 365))
        lines = [
            _seed_line(rng, index, products, nominal_names, nominal_ids)
            for index in range(1, rng.randint(1, 4) + 1)
        ]
        gross = sum(Decimal(line["Net"]) + Decimal(line["VATAmount"]) for line in lines)
        payments, payment_id = _seed_payments(rng, gross, issued, today, payment_id)
        rows.append(_invoice_row(rng, number, customer, issued, lines, payments))
    _insert_invoices(txn, rows)
    _set_counter(txn, "payment", payment_id)


def _story_invoices(txn, told, customers, products, today) -> None:
    """The demo's invoices from sandbox/story.py: the invoices of the Salesforce demo's invoiced
    deals (same numbers, customers, lines and payments) among KashFlow's own."""
    nominal_names = {code: name for _, code, name, _ in NOMINALS}
    nominal_ids = {code: nominal_id for nominal_id, code, _, _ in NOMINALS}
    rng = random.Random("kashflow:story")  # only for ids and references: the money is told
    rows, payment_id = [], 0
    for invoice in told.invoices:
        customer = customers[invoice.customer]
        issued = today - timedelta(days=invoice.days_ago)
        lines = []
        for index, line in enumerate(invoice.lines, start=1):
            product = products[line["product"]]
            nominal = product["nominal_code"]
            net, vat = story.line_net(line), story.line_vat(line)
            lines.append(
                {
                    "Number": index,
                    "Description": product["description"],
                    "Quantity": str(line["quantity"]),
                    "Rate": str(line["rate"]),
                    "VATLevel": str(line["vat_level"]),
                    "VATAmount": str(vat),
                    "VATExempt": False,
                    "NominalCode": nominal,
                    "NominalId": nominal_ids[nominal],
                    "NominalName": nominal_names[nominal],
                    "ProductCode": product["code"],
                    "ProductName": product["name"],
                    "ProjectNumber": 0,
                    "Net": str(net),
                }
            )
        payments = []
        if invoice.paid() > 0:
            payment_id += 1
            paid_on = min(issued + timedelta(days=invoice.paid_days_after), today)
            payments.append(_payment(rng, payment_id, invoice.paid(), paid_on))
        rows.append(_invoice_row(rng, invoice.number, customer, issued, lines, payments))
    _insert_invoices(txn, rows)
    _set_counter(txn, "payment", payment_id)


def _payment(rng, payment_id: int, amount: Decimal, paid_on: datetime) -> dict:
    return {
        "Id": payment_id, "Date": format_datetime(paid_on), "Amount": str(amount),
        "Method": rng.choice(PAYMENT_METHODS)[0], "AccountId": 101 if rng.random() < 0.9 else 102,
        "Reference": f"BACS{rng.randint(100000, 999999)}", "Note": "", "BulkId": 0,
        "BulkPaymentNumber": 0, "BFSTransactionId": 0, "BankTransactionId": 0,
        "BankReconciliationId": 0, "PaymentProcessor": 0, "PaymentProcessorEnumValue": 0,
        "Permalink": f"/v2/documents/invoice/payment/{_guid(rng)}",
        "VATReturnId": 0, "IsPaymentCreditNote": False, "InvoiceNumber": 0,
    }  # fmt: skip


def _invoice_row(rng, number, customer, issued, lines, payments) -> tuple:
    net = sum(Decimal(line["Net"]) for line in lines)
    vat = sum(Decimal(line["VATAmount"]) for line in lines)
    state = payment_state(net + vat, payments)
    doc = {
        # An invoice is in its customer's currency, as KashFlow raises it by default.
        "Currency": customer.get("currency", "GBP"),
        "ExchangeRate": str(CURRENCIES[customer.get("currency", "GBP")]["ExchangeRate"]),
        "Address": customer["address"],
        "DeliveryAddress": None,
        "UseCustomDeliveryAddress": False, "ProjectNumber": 0, "IsArchived": False,
        "Document": _guid(rng),
        "LineItems": lines, "PaymentLines": payments,
    }  # fmt: skip
    reference = f"PO-{rng.randint(10000, 99999)}" if rng.random() < 0.4 else ""
    return (
        number, customer["id"], reference, format_datetime(issued),
        format_datetime(due_date(issued, customer["terms"])), format_datetime(issued),
        to_pence4(net), to_pence4(vat), to_pence4(net + vat), to_pence4(state["paid"]),
        state["status"], state["paid_date"], state["last_payment_date"], json.dumps(doc),
    )  # fmt: skip


def _insert_invoices(txn, rows: list[tuple]) -> None:
    txn.db.executemany(
        "INSERT INTO invoices (number, customer_id, customer_reference, issued, due, created,"
        " net_4, vat_4, gross_4, paid_4, status, paid_date, last_payment_date, doc)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def _seed_line(rng, index, products, nominal_names, nominal_ids) -> dict:
    product = rng.choice(products) if products else None
    quantity = Decimal(rng.choice([1, 1, 1, 2, 3, 5, 10])) if rng.random() < 0.9 else Decimal("1.5")
    rate = product["price"] if product else Decimal(rng.randint(5000, 200000)).scaleb(-2)
    vat_level = product["vat_rate"] if product else Decimal(20)
    nominal = product["nominal_code"] if product else 4000
    net, vat = line_amounts(quantity, rate, vat_level, False, None)
    return {
        "Number": index, "Description": product["description"] if product else "Services",
        "Quantity": str(quantity), "Rate": str(rate), "VATLevel": str(vat_level),
        "VATAmount": str(vat), "VATExempt": False, "NominalCode": nominal,
        "NominalId": nominal_ids[nominal], "NominalName": nominal_names[nominal],
        "ProductCode": product["code"] if product else "",
        "ProductName": product["name"] if product else "", "ProjectNumber": 0, "Net": str(net),
    }  # fmt: skip


def _seed_payments(rng, gross, issued, today, payment_id) -> tuple[list, int]:
    """About 55% paid in full, 15% part-paid, the rest unpaid."""
    draw = rng.random()
    if draw >= 0.7 or gross <= 0:
        return [], payment_id
    share = Decimal(1) if draw < 0.55 else Decimal(rng.randint(20, 70)) / 100
    amount = round_money(gross * share)
    payment_id += 1
    paid_on = min(issued + timedelta(days=rng.randint(1, 45)), today)
    payment = _payment(rng, payment_id, amount, paid_on)
    return [payment], payment_id


def _set_counter(txn: Txn, name: str, value: int) -> None:
    txn.run(
        "INSERT INTO counters (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
        (name, value),
    )


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
