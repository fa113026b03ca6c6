"""Seeds: deterministic org contents for a seed string.

- `empty`: the schema and the standard price book only.
- `demo`: 150 Accounts (the first companies of `sandbox.fake`, which the KashFlow simulator's
  customers share, so names line up), a Contact each, 60 Product2 with standard price book
  entries, 400 Opportunities across the stages with 1-4 line items, from the story the KashFlow
  demo tells too (sandbox/story.py): Closed Won ones carry their KashFlow invoice's number,
  status and amount due, except the 8 most recent, which are waiting to be invoiced.
- `key=value,...` (shared with the KashFlow app; each reads the keys it knows): `customers`,
  `accounts` (default: as many as `customers`; `accounts=0` leaves the org without Accounts, for a
  first load from KashFlow), `contacts` (default: one per Account), `products`,
  `opportunities`, `won_uninvoiced`, and `names` (the fake-data seed, default `demo`, as on the
  KashFlow side, so the first N Accounts and the first N KashFlow customers share their names).

Records are written with executemany in one transaction, so 10,000+ rows take a second or two.
"""

import random
from datetime import UTC, date, datetime, timedelta

from sandbox import fake, story
from sandbox.salesforce import schema
from sandbox.salesforce.store import Store, format_datetime

DEMO = {
    "customers": 150, "products": 60, "opportunities": 400, "won_uninvoiced": 8,
    "multicurrency": 1,
}  # fmt: skip
# With `multicurrency=1` (the demo) the org has multi-currency on, and a deal is in the currency
# its company has as a KashFlow customer (the KashFlow seed's rule: GBP in the UK, USD in the
# US, EUR elsewhere), at the KashFlow simulator's rates.
CURRENCY_BY_COUNTRY = {"United Kingdom": "GBP", "United States": "USD"}
RATES = {"GBP": 1.0, "EUR": 1.17, "USD": 1.27}
COUNTRIES = {
    "GB": "United Kingdom",
    "IE": "Ireland",
    "FR": "France",
    "DE": "Germany",
    "NL": "Netherlands",
    "US": "United States",
}
STAGE_WEIGHTS = [3, 2, 2, 2, 1, 1, 2, 2, 5, 3]


def parse(seed: str) -> dict:
    """The counts a seed string asks for; raises ValueError on a malformed one."""
    seed = (seed or "empty").strip()
    if seed == "empty":
        return {}
    if seed == "demo":
        return dict(DEMO)
    counts = {}
    for part in seed.split(","):
        key, sep, value = part.partition("=")
        if key.strip() == "names" and value.strip():
            counts["names"] = value.strip()  # the fake-data seed, shared with KashFlow's
            continue
        if not sep or not value.strip().isdigit():
            raise ValueError(f"bad seed part {part!r}: expected demo, empty or key=N,key=N")
        counts[key.strip()] = int(value)
    return counts


def apply(store: Store, seed: str) -> None:
    counts = parse(seed)
    with store.lock:
        store.db.execute("BEGIN")
        try:
            last_stamp = _build(store, seed, counts)
        except BaseException:
            store.db.execute("ROLLBACK")
            raise
        store.db.execute("COMMIT")
        store.settle_modstamp(last_stamp)


def _build(store: Store, seed: str, counts: dict) -> str:
    rng = random.Random(f"salesforce:{seed}")
    rows: list[tuple[str, dict]] = []
    stamps = _Stamps(store, _estimate(counts))
    pricebook = _record(
        "Pricebook2",
        _next_id(store, "Pricebook2"),
        stamps(),
        Name="Standard Price Book",
        IsActive=True,
        IsStandard=True,
    )
    rows.append(("Pricebook2", pricebook))
    organization = _record(
        "Organization",
        store.new_id(schema.ORG_PREFIX),
        stamps(),
        Name="Sandbox Ltd",
        DefaultCurrencyIsoCode="GBP",
    )
    rows.append(("Organization", organization))
    entries = _products(
        store, rows, stamps, pricebook, counts.get("products", 0), counts.get("names", "demo")
    )
    names = counts.get("names", "demo")
    accounts = _accounts(store, rows, stamps, _account_count(counts), names, counts.get("contacts"))
    if seed == "demo":
        _story_opportunities(store, rows, stamps, accounts, entries, pricebook)
    elif accounts and entries:
        _opportunities(store, rows, stamps, rng, accounts, entries, pricebook, counts)
    if counts.get("multicurrency"):
        _multi_currency(store, rows, stamps)
    store.bulk_load(rows)
    return stamps.last


def _multi_currency(store: Store, rows: list, stamps) -> None:
    """Turn multi-currency on: the currency types, and CurrencyIsoCode on every record that has
    one (a line item its deal's; a deal its Account's; the rest the corporate GBP)."""
    for code, rate in RATES.items():
        rows.append(("CurrencyType", {
            "Id": store.new_id(schema.CURRENCY_TYPE.prefix), "IsDeleted": False,
            "CreatedDate": stamps(), "LastModifiedDate": stamps.last,
            "SystemModstamp": stamps.last, "IsoCode": code, "ConversionRate": rate,
            "DecimalPlaces": 2, "IsActive": True, "IsCorporate": code == "GBP",
        }))  # fmt: skip
    by_id = {record["Id"]: record for _, record in rows}
    for type_name, record in rows:
        if type_name not in schema.CURRENCY_OBJECTS:
            continue
        code = "GBP"
        if type_name == "Opportunity" and record.get("AccountId"):
            country = by_id[record["AccountId"]].get("BillingCountry")
            code = CURRENCY_BY_COUNTRY.get(country, "EUR")
        record["CurrencyIsoCode"] = code
    for type_name, record in rows:
        if type_name == "OpportunityLineItem":
            record["CurrencyIsoCode"] = by_id[record["OpportunityId"]]["CurrencyIsoCode"]
    store.set_meta("multi_currency", True)


def _account_count(counts: dict) -> int:
    return counts.get("accounts", counts.get("customers", 0))


def _estimate(counts: dict) -> int:
    return (
        1
        + 2 * counts.get("products", 0)
        + 2 * _account_count(counts)
        + 6 * counts.get("opportunities", 0)
    )


class _Stamps:
    """Strictly increasing SystemModstamps 1 ms apart, ending now (never stamping the future)."""

    def __init__(self, store: Store, expected: int):
        self.moment = datetime.now(UTC) - timedelta(milliseconds=expected + 1)
        self.last = ""

    def __call__(self) -> str:
        self.moment += timedelta(milliseconds=1)
        self.last = format_datetime(self.moment)
        return self.last


def _next_id(store: Store, type_name: str) -> str:
    return store.new_id(schema.sobject(type_name).prefix)


def _record(type_name: str, record_id: str, stamp: str, **values) -> dict:
    sobj = schema.sobject(type_name)
    record = {f.name: None for f in sobj.fields.values() if f.type != "address"}
    record.update(
        Id=record_id,
        IsDeleted=False,
        CreatedDate=stamp,
        LastModifiedDate=stamp,
        SystemModstamp=stamp,
        **values,
    )
    return record


def _products(store, rows, stamps, pricebook, count, names) -> list[dict]:
    entries = []
    for product in fake.products(count, names):
        record = _record(
            "Product2",
            _next_id(store, "Product2"),
            stamps(),
            Name=product["name"],
            ProductCode=product["code"],
            Description=product["description"],
            Family=product["family"],
            IsActive=True,
            # kashforce's product key, as KashFlow's pair (nominal, code) reads: "4000-SOF-0001".
            ExternalID__c=f"{product['nominal_code']}-{product['code']}",
        )
        entry = _record(
            "PricebookEntry",
            _next_id(store, "PricebookEntry"),
            stamps(),
            Name=record["Name"],
            Pricebook2Id=pricebook["Id"],
            Product2Id=record["Id"],
            UnitPrice=float(product["price"]),
            IsActive=True,
            UseStandardPrice=False,
            ProductCode=record["ProductCode"],
        )
        rows += [("Product2", record), ("PricebookEntry", entry)]
        entries.append((entry, record))
    return entries


def _accounts(store, rows, stamps, count, names, contacts) -> list[dict]:
    accounts = []
    for number, company in enumerate(fake.companies(count, names)):
        domain = company["email"].split("@", 1)[1]
        account = _record(
            "Account",
            _next_id(store, "Account"),
            stamps(),
            Name=company["name"],
            Phone=company["phone"],
            Website=f"https://www.{domain}",
            Type="Customer - Direct",
            BillingStreet="\n".join(company["street"]),
            BillingCity=company["city"],
            BillingState=company["county"],
            BillingPostalCode=company["postcode"],
            BillingCountry=COUNTRIES.get(company["country_code"], company["country_code"]),
        )
        rows.append(("Account", account))
        accounts.append(account)
        if contacts is None or number < contacts:
            first, last = company["contact_first"], company["contact_last"]
            rows.append(
                (
                    "Contact",
                    _record(
                        "Contact",
                        _next_id(store, "Contact"),
                        stamps(),
                        AccountId=account["Id"],
                        FirstName=first,
                        LastName=last,
                        Name=f"{first} {last}",
                        Email=company["email"],
                        Phone=company["phone"],
                        Title="Accounts Payable",
                    ),
                )
            )
    return accounts


def _opportunities(store, rows, stamps, rng, accounts, entries, pricebook, counts) -> None:
    today = date.today()
    opportunities = []
    for number in range(counts.get("opportunities", 0)):
        account = rng.choice(accounts)
        stage = rng.choices(schema.STAGES, STAGE_WEIGHTS)[0]
        close = today + timedelta(days=rng.randint(-120, -1) if stage[2] else rng.randint(1, 120))
        opportunity = _record(
            "Opportunity",
            _next_id(store, "Opportunity"),
            stamps(),
            AccountId=account["Id"],
            Name=f"{account['Name']} - order {number + 1}",
            StageName=stage[0],
            CloseDate=close.isoformat(),
            Probability=stage[1],
            IsClosed=stage[2],
            IsWon=stage[3],
            ForecastCategoryName=stage[4],
            Pricebook2Id=pricebook["Id"],
            HasOpportunityLineItem=True,
        )
        lines = [
            _line(store, stamps, rng, opportunity, sort, *rng.choice(entries))
            for sort in range(1, rng.randint(1, 4) + 1)
        ]
        opportunity["Amount"] = round(sum(line["TotalPrice"] for line in lines), 2)
        rows += [("Opportunity", opportunity), *(("OpportunityLineItem", line) for line in lines)]
        opportunities.append(opportunity)
    _invoice_numbers(opportunities, counts.get("won_uninvoiced", 0))


def _story_opportunities(store, rows, stamps, accounts, entries, pricebook) -> None:
    """The demo's deals from sandbox/story.py, which the KashFlow demo invoices alike: the
    invoiced ones carry their KashFlow invoice's number, status and amount due."""
    today = date.today()
    for deal in story.demo(fake.products(story.PRODUCTS, "demo")).deals:
        account = accounts[deal.account]
        stage = deal.stage
        opportunity = _record(
            "Opportunity",
            _next_id(store, "Opportunity"),
            stamps(),
            AccountId=account["Id"],
            Name=f"{account['Name']} - order {deal.index + 1}",
            StageName=stage[0],
            CloseDate=(today + timedelta(days=deal.days_from_today)).isoformat(),
            Probability=stage[1],
            IsClosed=stage[2],
            IsWon=stage[3],
            ForecastCategoryName=stage[4],
            Pricebook2Id=pricebook["Id"],
            HasOpportunityLineItem=True,
        )
        lines = []
        for sort, line in enumerate(deal.lines_in_salesforce(), start=1):
            entry, product = entries[line.product]
            lines.append(
                _record(
                    "OpportunityLineItem",
                    _next_id(store, "OpportunityLineItem"),
                    stamps(),
                    OpportunityId=opportunity["Id"],
                    PricebookEntryId=entry["Id"],
                    Product2Id=product["Id"],
                    Name=f"{opportunity['Name']} {product['Name']}"[:376],
                    ProductCode=product["ProductCode"],
                    Quantity=float(line.quantity),
                    UnitPrice=entry["UnitPrice"],
                    ListPrice=entry["UnitPrice"],
                    Discount=float(line.discount) if line.discount is not None else None,
                    TotalPrice=float(line.total),
                    SortOrder=sort,
                )
            )
        opportunity["Amount"] = float(sum(line.total for line in deal.lines_in_salesforce()))
        if deal.invoice is not None:
            opportunity.update(story.shown(deal))
        rows += [("Opportunity", opportunity), *(("OpportunityLineItem", line) for line in lines)]


def _line(store, stamps, rng, opportunity, sort_order, entry, product) -> dict:
    quantity = float(rng.randint(1, 10))
    discount = rng.choice([None, None, None, 5.0, 10.0])
    total = round(quantity * entry["UnitPrice"] * (1 - (discount or 0) / 100), 2)
    return _record(
        "OpportunityLineItem",
        _next_id(store, "OpportunityLineItem"),
        stamps(),
        OpportunityId=opportunity["Id"],
        PricebookEntryId=entry["Id"],
        Product2Id=product["Id"],
        Name=f"{opportunity['Name']} {product['Name']}"[:376],
        ProductCode=product["ProductCode"],
        Quantity=quantity,
        UnitPrice=entry["UnitPrice"],
        ListPrice=entry["UnitPrice"],
        Discount=discount,
        TotalPrice=total,
        SortOrder=sort_order,
    )


def _invoice_numbers(opportunities: list[dict], uninvoiced: int) -> None:
    """Won deals were invoiced in KashFlow, except the most recent few (the sync's first job)."""
    won = sorted((o for o in opportunities if o["IsWon"]), key=lambda o: (o["CloseDate"], o["Id"]))
    invoiced = won[: max(0, len(won) - uninvoiced)]
    for number, opportunity in enumerate(invoiced, start=1001):
        opportunity.update(
            KashFlow_Invoice_Number__c=str(number),
            KashFlow_Invoice_Status__c="Paid" if number % 3 else "Sent",
            KashFlow_Amount_Due__c=0.0 if number % 3 else opportunity["Amount"],
        )
