"""VAT from the KashFlow product and the customer, the currency from the deal, and invoices that
wait for their products: end to end over real sockets against the sandbox (issues #14, #19)."""

from datetime import date
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone

from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import SalesforceClient
from integration.models import CrossRef, SyncEvent, SyncRun, Trigger, VatRuleSet
from integration.sync import engine
from tests.fixtures_sandbox import control
from tests.sandbox_connections import connect_both

pytestmark = pytest.mark.django_db

# Two Accounts (in the UK), twelve products on both sides, no deals: each test makes its own.
SEED = "customers=0,accounts=2,products=12,opportunities=0"
ZERO_RATED, REDUCED, STANDARD = "BOO-0008", "ENE-0005", "CON-0001"  # 0%, 5%, 20% in KashFlow


@pytest.fixture
def org(sandbox):
    sandbox.reset(SEED)
    salesforce, kashflow = connect_both(sandbox)
    org = SimpleNamespace(
        sandbox=sandbox, salesforce=SalesforceClient(salesforce), kashflow=KashFlowClient(kashflow)
    )
    org.accounts = [a["Id"] for a in org.salesforce.query("SELECT Id FROM Account ORDER BY Name")]
    return org


def run(flow: str) -> SyncRun:
    sync_run = engine.start_run(flow, Trigger.MANUAL)
    engine.execute_run(sync_run.pk)
    sync_run.refresh_from_db()
    return sync_run


def entries(org) -> dict[str, dict]:
    """The standard price book entries, by product code."""
    found = org.salesforce.query(
        "SELECT Id, UnitPrice, Product2Id, Product2.ProductCode FROM PricebookEntry"
    )
    return {entry["Product2"]["ProductCode"]: entry for entry in found}


def won_deal(org, account_id: str, codes: list[str], currency: str | None = None) -> str:
    """A Closed Won Opportunity of `account_id` with one line per product code."""
    deal = {
        "Name": f"Deal {len(codes)} {'-'.join(codes)}",
        "AccountId": account_id,
        "StageName": "Closed Won",
        "CloseDate": date.today().isoformat(),
    }
    if currency:
        deal["CurrencyIsoCode"] = currency
    [result] = org.salesforce.create("Opportunity", [deal])
    assert result.success, result.error
    prices = entries(org)
    lines = [
        {"OpportunityId": result.id, "PricebookEntryId": prices[code]["Id"], "Quantity": 2,
         "UnitPrice": 100}
        for code in codes
    ]  # fmt: skip
    assert all(r.success for r in org.salesforce.create("OpportunityLineItem", lines))
    return result.id


def kashflow_customer(org, account_id: str, code: str, country: str, vat_number="", currency="GBP"):
    """A KashFlow customer already linked to the Account (as the customers flow would)."""
    org.kashflow.create_customer(
        {
            "Code": code,
            "Name": f"Customer {code}",
            "VATNumber": vat_number,
            "Currency": {"Code": currency},
            "Addresses": [{"Line1": "1 Main St", "Line3": "Town", "CountryCode": country}],
        }
    )
    CrossRef.objects.create(
        object_type="customer",
        salesforce_id=account_id,
        kashflow_key=code,
        kashflow_synced_at=timezone.now(),
    )


def invoice_of(org, opportunity_id: str) -> dict:
    [summary] = org.kashflow.find_invoices_by_reference(opportunity_id)
    return org.kashflow.get_invoice(summary["Number"])


def event_of(opportunity_id: str) -> SyncEvent:
    return SyncEvent.objects.get(flow="invoices", source_id=opportunity_id)


def multi_currency(org, **rates):
    control(
        org.sandbox.info["control"]["salesforce"],
        "currencies",
        {"multi_currency": True, "corporate": "GBP", "rates": rates},
    )


# VAT -------------------------------------------------------------------------------------------


def test_zero_rated_and_reduced_rate_products_are_invoiced_at_their_rates_with_no_configuration(
    org,
):
    run("products")
    deal = won_deal(org, org.accounts[0], [ZERO_RATED, REDUCED, STANDARD])
    assert run("invoices").written_count == 1
    lines = invoice_of(org, deal)["LineItems"]
    assert [(line["ProductCode"], line["VATLevel"]) for line in lines] == [
        (ZERO_RATED, Decimal(0)),
        (REDUCED, Decimal(5)),
        (STANDARD, Decimal(20)),
    ]
    assert [line["VATAmount"] for line in lines] == [Decimal(0), Decimal(10), Decimal(40)]
    assert "line 2 at 5% (the KashFlow product's VAT rate)" in event_of(deal).message


def test_an_eu_business_customer_with_a_vat_number_is_zero_rated_under_the_reverse_charge(org):
    run("products")
    kashflow_customer(org, org.accounts[0], "DUBLIN01", "IE", vat_number="IE1234567W")
    # The Account says the UK; the KashFlow customer, who is invoiced, is in Ireland.
    deal = won_deal(org, org.accounts[0], [STANDARD, REDUCED])
    run("invoices")
    assert [line["VATLevel"] for line in invoice_of(org, deal)["LineItems"]] == [0, 0]
    message = event_of(deal).message
    assert "EU business customer (IE, VAT number IE1234567W): reverse charge" in message


def test_an_eu_customer_without_a_vat_number_is_charged_uk_vat(org):
    run("products")
    kashflow_customer(org, org.accounts[0], "PARIS01", "FR")
    org.salesforce.update("Account", [{"Id": org.accounts[0], "BillingCountry": "France"}])
    deal = won_deal(org, org.accounts[0], [STANDARD, REDUCED])
    run("invoices")
    assert [line["VATLevel"] for line in invoice_of(org, deal)["LineItems"]] == [20, 5]
    assert "EU customer (FR) without a VAT number: UK VAT" in event_of(deal).message


def test_a_vat_rule_from_the_rules_page_applies_where_the_product_says_nothing(org):
    run("products")
    VatRuleSet.save_new_version({"countries": {"NO": "25"}, "products": {}}, note="Norway")
    kashflow_customer(org, org.accounts[0], "OSLO01", "NO")
    org.salesforce.update("Account", [{"Id": org.accounts[0], "BillingCountry": "NO"}])
    deal = won_deal(org, org.accounts[0], [STANDARD])
    run("invoices")
    assert invoice_of(org, deal)["LineItems"][0]["VATLevel"] == 25
    assert "the VAT rule for customers in NO" in event_of(deal).message


# Currency ----------------------------------------------------------------------------------------


def test_a_deal_in_the_org_s_currency_for_a_customer_in_another_waits_saying_why(org):
    # A single-currency GBP org: a £ deal for a customer KashFlow invoices in EUR was a € invoice.
    run("products")
    kashflow_customer(org, org.accounts[0], "ACME01", "IE", currency="EUR")
    deal = won_deal(org, org.accounts[0], [STANDARD])
    run("invoices")
    event = event_of(deal)
    assert event.status == SyncEvent.Status.FAILED_PERMANENT
    assert event.message == (
        "This deal is in GBP but the KashFlow customer ACME01 invoices in EUR; change the "
        "customer's currency in KashFlow or the deal's currency, then retry."
    )
    assert org.kashflow.find_invoices_by_reference(deal) == []


def test_an_eur_deal_for_a_gbp_customer_waits_with_a_clear_reason(org):
    multi_currency(org, EUR="1.17")
    run("products")
    kashflow_customer(org, org.accounts[0], "ACME01", "GB", currency="GBP")
    deal = won_deal(org, org.accounts[0], [STANDARD], currency="EUR")
    run("invoices")
    event = event_of(deal)
    assert (event.status, event.error_code) == (
        SyncEvent.Status.FAILED_PERMANENT,
        "CURRENCY_MISMATCH",
    )
    assert event.message.startswith("This deal is in EUR but the KashFlow customer ACME01 ")
    assert org.kashflow.find_invoices_by_reference(deal) == []


def test_an_eur_deal_for_an_eur_customer_is_invoiced_in_eur_and_written_back(org):
    multi_currency(org, EUR="1.17")
    run("products")
    kashflow_customer(org, org.accounts[0], "EURO01", "IE", vat_number="IE7654321W", currency="EUR")
    deal = won_deal(org, org.accounts[0], [STANDARD], currency="EUR")
    run("invoices")
    invoice = invoice_of(org, deal)
    assert invoice["Currency"]["Code"] == "EUR"
    assert invoice["NetAmount"] == Decimal("200")
    [written] = org.salesforce.query(
        f"SELECT CurrencyIsoCode, KashFlow_Amount_Due__c FROM Opportunity WHERE Id = '{deal}'"
    )
    assert written["CurrencyIsoCode"] == "EUR"  # the amount due is in the invoice's currency
    assert Decimal(str(written["KashFlow_Amount_Due__c"])) == invoice["GrossAmount"]


def test_payments_of_an_eur_invoice_are_written_to_salesforce_in_eur(org):
    multi_currency(org, EUR="1.17")
    run("products")
    kashflow_customer(org, org.accounts[0], "EURO01", "IE", vat_number="IE7654321W", currency="EUR")
    deal = won_deal(org, org.accounts[0], [STANDARD], currency="EUR")
    run("invoices")
    number = invoice_of(org, deal)["Number"]
    payment = {"Amount": Decimal("50.00"), "Date": date.today(), "Method": 1, "AccountId": 101}
    org.kashflow.update_invoice(number, {"PaymentLines": [payment]})
    assert run("payments").written_count == 1
    [record] = org.salesforce.query(
        f"SELECT CurrencyIsoCode, Amount__c FROM KashFlow_Payment__c WHERE Opportunity__c = '{deal}'"
    )
    assert record["CurrencyIsoCode"] == "EUR"


def test_an_account_first_invoiced_becomes_a_customer_in_the_deal_s_currency(org):
    multi_currency(org, EUR="1.17")
    run("products")
    deal = won_deal(org, org.accounts[1], [STANDARD], currency="EUR")
    run("invoices")
    invoice = invoice_of(org, deal)
    assert invoice["Currency"]["Code"] == "EUR"
    assert org.kashflow.get_customer(invoice["CustomerCode"])["Currency"]["Code"] == "EUR"


# Products not linked yet (#19) ------------------------------------------------------------------


def test_an_invoice_whose_products_are_not_linked_yet_waits_for_them(org):
    deal = won_deal(org, org.accounts[0], [STANDARD, ZERO_RATED])  # no products run yet
    run("invoices")
    event = event_of(deal)
    assert (event.status, event.error_code) == (
        SyncEvent.Status.FAILED_TRANSIENT,
        "PRODUCTS_NOT_LINKED",
    )
    assert "waits for its products to be linked to KashFlow products" in event.message
    assert org.kashflow.find_invoices_by_reference(deal) == []
    run("products")
    SyncEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())
    run("invoices")
    event.refresh_from_db()
    assert (event.status, event.warning) == (SyncEvent.Status.SUCCEEDED, False)
    lines = invoice_of(org, deal)["LineItems"]
    assert [(line["NominalCode"], line["ProductCode"]) for line in lines] == [
        (4000, STANDARD),
        (4050, ZERO_RATED),
    ]


def test_a_deliberate_default_nominal_invoices_unlinked_products_with_a_warning(
    org, settings, ops_client
):
    settings.KASHFORCE = {**settings.KASHFORCE, "DEFAULT_NOMINAL_FOR_UNLINKED_PRODUCTS": True}
    deal = won_deal(org, org.accounts[0], [ZERO_RATED])
    run("invoices")
    event = event_of(deal)
    assert (event.status, event.warning) == (SyncEvent.Status.SUCCEEDED, True)
    assert event.status_label == "Synced with a warning"
    assert "invoiced on the default nominal code" in event.message
    [line] = invoice_of(org, deal)["LineItems"]
    assert (line["NominalCode"], line["ProductCode"]) == (4000, "")
    # Shown as such on the overview, the queue and the record's timeline.
    overview = ops_client.get(reverse("dashboard:overview")).content.decode()
    assert "<strong>1</strong> record synced with a warning this week" in overview
    queue = ops_client.get(reverse("dashboard:errors") + "?show=warnings").content.decode()
    assert deal in queue and "invoiced on the default nominal code" in queue
    assert "Needs attention" in ops_client.get(reverse("dashboard:errors")).content.decode()
    assert deal not in ops_client.get(reverse("dashboard:errors")).content.decode()
    timeline = ops_client.get(reverse("dashboard:timeline") + f"?q={deal}").content.decode()
    assert '<span class="badge warning">Synced with a warning</span>' in timeline


def test_nothing_is_written_to_kashflow_for_a_deal_waiting_for_its_products(org):
    deal = won_deal(org, org.accounts[1], [STANDARD])  # an Account with no KashFlow customer
    control(org.sandbox.info["control"]["kashflow"], "stats/reset", {})
    run("invoices")
    assert event_of(deal).error_code == "PRODUCTS_NOT_LINKED"
    assert control(org.sandbox.info["control"]["kashflow"], "stats")["total"] == 0
    assert not CrossRef.objects.filter(object_type="customer").exists()
