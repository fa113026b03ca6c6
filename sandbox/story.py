"""The demo's one story, told to both simulators: which deals were won, which of them were
invoiced in KashFlow before kashforce arrived, with what lines, and what has been paid.

The Salesforce demo seed makes the Opportunities from it and writes each invoiced deal's invoice
number, status and amount due the way kashforce would have; the KashFlow demo seed makes the
same invoices (same number, customer, lines, VAT and payments) among its other, KashFlow-only
invoices. So a reconciliation of the demo finds only the differences the story puts there on
purpose (`Story.differences`; sandbox/README.md, "The demo's story"):

- a deal paid in KashFlow yesterday that Salesforce does not know about yet (status and amount
  due differ until the payments flow runs);
- a deal whose amount was raised in Salesforce after its invoice went out (amount differs);
- an invoice number mistyped into Salesforce with an extra 0 (Salesforce names an invoice
  KashFlow does not have).

Plain data, no I/O (it borrows only the Salesforce simulator's list of stages); both seeds
import it and nothing else of each other. Money in Decimal, rounded half up per line as KashFlow
does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from sandbox.salesforce.schema import STAGES  # (name, probability, closed, won, forecast)

PENNY = Decimal("0.01")
ACCOUNTS = 150  # the Salesforce demo's Accounts: the first 150 of the KashFlow customers
CUSTOMERS = 200
PRODUCTS = 60
OPPORTUNITIES = 400
WON_UNINVOICED = 8  # the most recent won deals, waiting for kashforce's first run
INVOICES = 300  # KashFlow's demo invoices, the story's invoiced deals among them
STAGE_WEIGHTS = [3, 2, 2, 2, 1, 1, 2, 2, 5, 3]

# The differences the demo shows on purpose: (kind as the reconciliation names it, deal).
PAID_YESTERDAY = "paid in KashFlow yesterday, not yet in Salesforce"
RAISED_AFTER = "amount raised in Salesforce after invoicing"
MISTYPED = "invoice number mistyped in Salesforce"


@dataclass
class DealLine:
    product: int  # index into sandbox.fake.products(PRODUCTS)
    quantity: Decimal
    unit_price: Decimal
    discount: Decimal | None  # percent

    @property
    def total(self) -> Decimal:
        share = (100 - (self.discount or 0)) / Decimal(100)
        return (self.quantity * self.unit_price * share).quantize(PENNY, ROUND_HALF_UP)


@dataclass
class Invoice:
    """A KashFlow invoice of the story: a deal's, or one KashFlow has alone."""

    customer: int  # index into sandbox.fake.companies: the Account of the same index
    days_ago: int  # issued this many days before the seed's day
    lines: list[dict]  # {"product", "quantity", "rate", "vat_level"}
    paid_share: Decimal = Decimal(0)  # of the gross, paid
    paid_days_after: int = 1
    number: int = 0  # given once every invoice is dated

    def net(self) -> Decimal:
        return sum((line_net(line) for line in self.lines), Decimal(0))

    def vat(self) -> Decimal:
        return sum((line_vat(line) for line in self.lines), Decimal(0))

    def gross(self) -> Decimal:
        return self.net() + self.vat()

    def paid(self) -> Decimal:
        return (self.gross() * self.paid_share).quantize(PENNY, ROUND_HALF_UP)

    def status(self) -> str:
        paid = self.paid()
        if paid >= self.gross():
            return "Paid"
        return "Part Paid" if paid > 0 else "Unpaid"

    def due(self) -> Decimal:
        return self.gross() - self.paid()


@dataclass
class Deal:
    index: int
    account: int
    stage: tuple
    days_from_today: int  # close date: negative in the past
    lines: list[DealLine]
    invoice: Invoice | None = None
    # What Salesforce shows of the invoice, when the story makes it differ from KashFlow.
    shown_number: str | None = None
    shown_paid: bool | None = None
    difference: str = ""
    extra_in_salesforce: Decimal = Decimal(0)  # added to a line's quantity after invoicing

    @property
    def amount(self) -> Decimal:
        return sum((line.total for line in self.lines), Decimal(0))

    def lines_in_salesforce(self) -> list[DealLine]:
        """The lines as Salesforce has them now: one raised after invoicing, if the story says."""
        if not self.extra_in_salesforce:
            return self.lines
        first, *rest = self.lines
        raised = DealLine(
            first.product,
            first.quantity + self.extra_in_salesforce,
            first.unit_price,
            first.discount,
        )
        return [raised, *rest]


@dataclass
class Story:
    deals: list[Deal]
    invoices: list[Invoice]  # every KashFlow invoice, numbered 1.. in date order
    differences: list[Deal] = field(default_factory=list)


def line_net(line: dict) -> Decimal:
    return (line["quantity"] * line["rate"]).quantize(PENNY, ROUND_HALF_UP)


def line_vat(line: dict) -> Decimal:
    return (line["quantity"] * line["rate"] * line["vat_level"] / 100).quantize(
        PENNY, ROUND_HALF_UP
    )


def demo(products: list[dict]) -> Story:
    """The demo's story for these products (sandbox.fake.products(PRODUCTS, "demo"))."""
    rng = random.Random("story:demo")
    deals = [_deal(rng, index, products) for index in range(OPPORTUNITIES)]
    won = sorted((d for d in deals if d.stage[3]), key=lambda d: (d.days_from_today, d.index))
    invoiced = won[: max(0, len(won) - WON_UNINVOICED)]
    for deal in invoiced:
        deal.invoice = _deal_invoice(rng, deal, products)
    alone = [_invoice_alone(rng, products) for _ in range(max(0, INVOICES - len(invoiced)))]
    invoices = sorted(
        [d.invoice for d in invoiced] + alone, key=lambda i: (-i.days_ago, i.customer, i.net())
    )
    for number, invoice in enumerate(invoices, start=1):
        invoice.number = number
    story = Story(deals=deals, invoices=invoices)
    _differences(story, invoiced)
    return story


def _deal(rng: random.Random, index: int, products: list[dict]) -> Deal:
    stage = rng.choices(STAGES, STAGE_WEIGHTS)[0]
    days = rng.randint(-120, -1) if stage[2] else rng.randint(1, 120)
    lines = []
    for _ in range(rng.randint(1, 4)):
        product = rng.randrange(len(products))
        lines.append(
            DealLine(
                product=product,
                quantity=Decimal(rng.randint(1, 10)),
                unit_price=products[product]["price"],
                discount=rng.choice([None, None, None, Decimal(5), Decimal(10)]),
            )
        )
    return Deal(index, rng.randrange(ACCOUNTS), stage, days, lines)


def _deal_invoice(rng: random.Random, deal: Deal, products: list[dict]) -> Invoice:
    """The deal's lines as kashforce invoices them: the net unit price when it gives the line's
    total exactly, else one unit at the total (so the invoice's net is the deal's amount)."""
    lines = []
    for line in deal.lines:
        unit = (line.total / line.quantity).quantize(Decimal("0.0001"))
        quantity, rate = (
            (line.quantity, unit) if unit * line.quantity == line.total else (1, line.total)
        )
        lines.append(
            {
                "product": line.product,
                "quantity": Decimal(quantity),
                "rate": rate,
                "vat_level": products[line.product]["vat_rate"],
            }
        )
    return Invoice(
        customer=deal.account,
        days_ago=-deal.days_from_today,
        lines=lines,
        paid_share=_paid_share(rng),
        paid_days_after=rng.randint(1, 30),
    )


def _invoice_alone(rng: random.Random, products: list[dict]) -> Invoice:
    """An invoice KashFlow has from before Salesforce (or made there by hand): no deal."""
    lines = []
    for _ in range(rng.randint(1, 4)):
        product = rng.randrange(len(products))
        lines.append(
            {
                "product": product,
                "quantity": Decimal(rng.choice([1, 1, 1, 2, 3, 5, 10])),
                "rate": products[product]["price"],
                "vat_level": products[product]["vat_rate"],
            }
        )
    return Invoice(
        customer=rng.randrange(CUSTOMERS),
        days_ago=rng.randint(0, 365),
        lines=lines,
        paid_share=_paid_share(rng),
        paid_days_after=rng.randint(1, 45),
    )


def _paid_share(rng: random.Random) -> Decimal:
    """About 55% paid in full, 15% part-paid, the rest unpaid."""
    draw = rng.random()
    if draw >= 0.7:
        return Decimal(0)
    return Decimal(1) if draw < 0.55 else Decimal(rng.randint(20, 70)) / 100


def _differences(story: Story, invoiced: list[Deal]) -> None:
    """The three on purpose, on the most recent invoiced deals (clear of each other)."""
    unpaid = [d for d in invoiced if d.invoice.paid_share == 0 and d.invoice.days_ago >= 2]
    paid = unpaid[-1]
    paid.invoice.paid_share, paid.invoice.paid_days_after = Decimal(1), paid.invoice.days_ago - 1
    paid.shown_paid, paid.difference = False, PAID_YESTERDAY
    rest = [d for d in invoiced if d is not paid]
    raised = rest[-1]
    raised.extra_in_salesforce, raised.difference = Decimal(1), RAISED_AFTER
    mistyped = rest[-2]
    mistyped.shown_number, mistyped.difference = f"{mistyped.invoice.number}0", MISTYPED
    story.differences = [paid, raised, mistyped]


def shown(deal: Deal) -> dict:
    """What the Salesforce Opportunity says of its invoice (kashforce's write-back fields)."""
    invoice = deal.invoice
    if deal.shown_paid is False:
        status, due = "Unpaid", invoice.gross()
    else:
        status, due = invoice.status(), invoice.due()
    return {
        "KashFlow_Invoice_Number__c": deal.shown_number or str(invoice.number),
        "KashFlow_Invoice_Status__c": status,
        "KashFlow_Amount_Due__c": float(due),
    }
