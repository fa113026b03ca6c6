"""sandbox/fake.py: deterministic, believable seed data shared by both simulators."""

import re
from decimal import Decimal

from sandbox import fake

UK_POSTCODE = re.compile(r"^[A-Z]{1,2}[0-9][0-9A-Z]? [0-9][ABD-HJLNP-UW-Z]{2}$")


def test_companies_are_the_same_for_the_same_seed_and_differ_for_another():
    assert fake.companies(30, "demo") == fake.companies(30, "demo")
    assert fake.companies(30, "demo") != fake.companies(30, "other")


def test_a_shorter_list_is_a_prefix_of_a_longer_one_so_both_simulators_share_names():
    assert fake.companies(50, "demo") == fake.companies(200, "demo")[:50]


def test_ten_thousand_companies_have_unique_codes_and_names():
    companies = fake.companies(10_000, "big")
    assert len({c["code"] for c in companies}) == 10_000
    assert len({c["name"] for c in companies}) == 10_000


def test_company_fields_look_like_uk_business_records():
    companies = fake.companies(300, "demo")
    for company in companies:
        assert re.fullmatch(r"[A-Z]{1,5}\d{3,}", company["code"])
        assert 1 <= len(company["street"]) <= 3
        assert "@" in company["email"]
        if company["country_code"] == "GB":
            assert UK_POSTCODE.match(company["postcode"]), company["postcode"]
            assert company["phone"].startswith("0")
    countries = {c["country_code"] for c in companies}
    assert "GB" in countries
    assert countries - {"GB"}, "some customers abroad for VAT-by-country cases"


def test_products_have_two_decimal_prices_uk_vat_rates_and_several_sales_nominals():
    products = fake.products(200, "demo")
    assert len({p["code"] for p in products}) == 200
    assert {p["vat_rate"] for p in products} == {Decimal(20), Decimal(5), Decimal(0)}
    assert len({p["nominal_code"] for p in products}) >= 4
    for product in products:
        assert isinstance(product["price"], Decimal)
        assert product["price"].as_tuple().exponent == -2
        assert product["price"] > 0
    assert fake.products(20, "demo") == fake.products(20, "demo")
