"""Properties of money, dates, names and streets that must hold for every input, not just examples."""

import os
import time
import zoneinfo
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.test import override_settings
from django.utils import timezone
from hypothesis import assume, given
from hypothesis import strategies as st

from integration.mapping import (
    COUNTRY_NAMES,
    EU_COUNTRIES,
    KASHFLOW_NO_DATE,
    KASHFLOW_ZONE,
    MappingContext,
    apply_mapping,
    line_vat_amount,
    round_decimal,
    to_decimal,
    vat_decision,
)
from integration.mapping_defaults import ACCOUNT_TO_CUSTOMER, CUSTOMER_TO_ACCOUNT, row
from integration.sync.invoices import currency_problem

CONTEXT = MappingContext()


def mapped(single_row, source):
    result = apply_mapping([single_row], source, CONTEXT)
    assert result.errors == []
    return result.payload[single_row["target_path"]]


# Money -------------------------------------------------------------------------------------

# Amounts up to a trillion pounds with up to 6 decimals: more than any invoice carries.
amounts = st.decimals(
    min_value=Decimal("-1e12"), max_value=Decimal("1e12"), places=6, allow_nan=False
)
pennies = st.decimals(min_value=Decimal("-1e11"), max_value=Decimal("1e11"), places=2)


@given(amounts, st.integers(min_value=0, max_value=6))
def test_decimal_in_gives_decimal_rounded_half_up(amount, places):
    rounded = mapped(row("Amount", "Amount", "decimal", places=places), {"Amount": amount})
    assert isinstance(rounded, Decimal)
    assert rounded == amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    assert rounded.as_tuple().exponent == -places
    assert abs(rounded - amount) <= Decimal("0.5").scaleb(-places)


@given(st.integers(min_value=0, max_value=10**12))
def test_an_exact_half_penny_rounds_away_from_zero(tenths_of_pennies):
    half = Decimal(tenths_of_pennies * 10 + 5).scaleb(-3)  # e.g. 12.345
    assert round_decimal(half) == half + Decimal("0.005")
    assert round_decimal(-half) == -half - Decimal("0.005")


@given(pennies)
def test_money_sent_as_a_json_float_comes_back_to_the_penny(amount):
    # Salesforce and KashFlow send amounts as JSON numbers; Python reads them as floats.
    assert mapped(row("Amount", "Amount", "decimal"), {"Amount": float(amount)}) == amount


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_converts_exactly_as_its_text(number):
    converted = to_decimal(number)
    assert converted == Decimal(str(number))
    assert float(converted) == number  # nothing lost, and no binary noise added


@given(st.floats(min_value=-1e12, max_value=1e12))
def test_decimal_of_a_float_and_of_its_text_agree(number):
    as_float = mapped(row("Amount", "Amount", "decimal"), {"Amount": number})
    as_text = mapped(row("Amount", "Amount", "decimal"), {"Amount": str(number)})
    assert as_float == as_text and str(as_float) == str(as_text)


@given(
    st.decimals(min_value=0, max_value=10_000, places=4),
    pennies.filter(lambda p: p >= 0),
    st.sampled_from(["20", "5", "0", "17.5"]),
)
def test_line_vat_is_within_half_a_penny_of_the_exact_amount(quantity, rate, vat_level):
    exact = quantity * rate * Decimal(vat_level) / 100
    vat = line_vat_amount(quantity, rate, vat_level)
    assert vat.as_tuple().exponent == -2
    assert abs(vat - exact) <= Decimal("0.005")


# Dates -------------------------------------------------------------------------------------

calendar_dates = st.dates(min_value=date(1700, 1, 1), max_value=date(4000, 12, 31)).filter(
    lambda day: day != KASHFLOW_NO_DATE  # KashFlow's "no date"
)
zone_names = st.sampled_from(sorted(zoneinfo.available_timezones()))


@contextmanager
def process_time_zone(name):
    """Run as if the server, Django and the request were all in the zone `name`."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        with override_settings(TIME_ZONE=name), timezone.override(zoneinfo.ZoneInfo(name)):
            yield
    finally:
        if saved is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = saved
        time.tzset()


TO_KASHFLOW = row("IssuedDate", "CloseDate", "date", to="kashflow")
TO_SALESFORCE = row("CloseDate", "IssuedDate", "date", to="salesforce")


@given(calendar_dates, zone_names)
def test_a_salesforce_date_survives_the_trip_through_kashflow_in_any_zone(day, zone):
    with process_time_zone(zone):
        kashflow = mapped(TO_KASHFLOW, {"CloseDate": day.isoformat()})
        back = mapped(TO_SALESFORCE, {"IssuedDate": kashflow})
    assert kashflow == f"{day.isoformat()} 12:00:00"
    assert back == day.isoformat()


offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timedelta(minutes=m))


def offset_text(offset: timedelta, with_colon: bool) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign, minutes = ("-" if minutes < 0 else "+"), abs(minutes)
    return f"{sign}{minutes // 60:02d}{':' if with_colon else ''}{minutes % 60:02d}"


@given(
    st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(4000, 12, 31)),
    st.none() | offsets,
    st.sampled_from([" ", "T"]),
    st.booleans(),
    zone_names,
)
def test_a_kashflow_datetime_gives_the_calendar_date_of_its_date_part(
    moment, offset, separator, with_colon, zone
):
    text = moment.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
    if offset is not None:
        text += " " + offset_text(offset, with_colon)
    with process_time_zone(zone):
        assert mapped(TO_SALESFORCE, {"IssuedDate": text}) == moment.date().isoformat()


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2100, 12, 31), timezones=st.just(UTC)
    )
)
def test_a_moment_survives_the_trip_through_kashflow_uk_time(moment):
    moment = moment.replace(microsecond=0)  # KashFlow keeps whole seconds
    local = moment.astimezone(KASHFLOW_ZONE).replace(tzinfo=None)
    # In the autumn hour that happens twice a UK wall-clock time names two moments; we read the
    # first, so only moments in the repeated hour may come back an hour early.
    assume(
        KASHFLOW_ZONE.utcoffset(local.replace(fold=0))
        == KASHFLOW_ZONE.utcoffset(local.replace(fold=1))
    )
    salesforce = moment.strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    kashflow = mapped(row("When", "When", "datetime", to="kashflow"), {"When": salesforce})
    back = mapped(row("When", "When", "datetime", to="salesforce"), {"When": kashflow})
    assert back == salesforce


# Names and streets -------------------------------------------------------------------------

words = st.text(st.characters(categories=["L"], include_characters="'-"), min_size=1, max_size=12)


@given(st.lists(words, min_size=1, max_size=4))
def test_a_split_name_joins_back_to_the_name(name_words):
    name = " ".join(name_words)
    first = mapped(row("FirstName", "Name", "split_name", part="first"), {"Name": name})
    last = mapped(row("LastName", "Name", "split_name", part="last"), {"Name": name})
    assert last == name_words[-1]
    assert " ".join(part for part in (first, last) if part) == name


address_text = (
    st.text(
        st.characters(categories=["L", "N"], include_characters=" ,.-'/&"), min_size=1, max_size=30
    )
    .map(str.strip)
    .filter(bool)
)


@given(
    st.lists(address_text, min_size=1, max_size=2),
    address_text,
    st.none() | address_text,
    address_text,
    st.sampled_from(sorted(COUNTRY_NAMES.values())),
)
def test_an_account_address_survives_the_trip_through_kashflow(
    street, city, state, postcode, country
):
    """The default templates both ways: Account -> KashFlow customer -> Account."""
    account = {
        "Name": "Acme Ltd",
        "BillingStreet": "\n".join(street),
        "BillingCity": city,
        "BillingState": state,
        "BillingPostalCode": postcode,
        "BillingCountry": country,
    }
    customer = apply_mapping(ACCOUNT_TO_CUSTOMER.rows, account, CONTEXT)
    stored = customer.payload  # KashFlow derives CountryName from the code it stores
    stored["Addresses"][0]["CountryName"] = COUNTRY_NAMES[stored["Addresses"][0]["CountryCode"]]
    back = apply_mapping(CUSTOMER_TO_ACCOUNT.rows, {**stored, "Code": "ACME01"}, CONTEXT)
    assert customer.errors == back.errors == []
    assert {key: back.payload[key] for key in account} == account


@given(st.lists(address_text, min_size=3, max_size=6), st.integers(min_value=1, max_value=4))
def test_a_long_street_keeps_every_line_in_order(street, lines):
    account = {"BillingStreet": "\n".join(street)}
    rows = [
        row(f"Line{n}", "BillingStreet", "split_street", line=n, lines=lines)
        for n in range(1, lines + 1)
    ]
    payload = apply_mapping(rows, account, CONTEXT).payload
    kept = [payload[f"Line{n}"] for n in range(1, lines + 1) if payload[f"Line{n}"]]
    assert ", ".join(kept) == ", ".join(street)
    assert len(kept) == min(lines, len(street))


# Hostile input: odd unicode, very long text, zero and negative money, wrong types ------------

from integration.mapping_defaults import TEMPLATES  # noqa: E402

# Text from either API: any unicode (control characters, right-to-left overrides, emoji,
# combining marks), and now and then far longer than any field.
any_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1000, max_size=5000),
)
# What a JSON API can send in place of any field: the wrong type included.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@given(any_text, st.integers(min_value=1, max_value=500))
def test_truncate_gives_at_most_the_length_and_a_prefix_of_the_text(text, length):
    result = apply_mapping(
        [row("Name", "Name", "truncate", length=length)], {"Name": text}, CONTEXT
    )
    assert result.errors == []
    cut = result.payload.get("Name")
    if cut is not None:
        assert len(cut) <= length
        assert cut.strip() in text
        # Either all of it (surrounding blanks aside) went, or a warning says it was cut.
        assert cut == text.strip() or any("was cut to" in w for w in result.warnings)


@given(st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("0"), places=4, allow_nan=False))
def test_zero_and_negative_amounts_keep_their_sign_and_value(amount):
    for given_as in (amount, str(amount), f"{amount:f}"):
        rounded = mapped(row("Amount", "Amount", "decimal", places=2), {"Amount": given_as})
        assert isinstance(rounded, Decimal)
        assert rounded <= 0
        assert abs(rounded - amount) <= Decimal("0.005")
        if amount == 0:
            assert rounded == 0


@given(json_values)
def test_money_and_dates_of_any_type_are_an_error_or_a_value_never_a_crash(value):
    rows = [
        row("Amount", "Amount", "decimal", places=2),
        row("CloseDate", "Date", "date", to="salesforce"),
        row("Stamp", "Date", "datetime", to="salesforce"),
    ]
    result = apply_mapping(rows, {"Amount": value, "Date": value}, CONTEXT)
    amount = result.payload.get("Amount")
    assert amount is None or isinstance(amount, Decimal)
    assert all(error.message for error in result.errors)


@given(st.sampled_from(TEMPLATES), st.dictionaries(st.text(max_size=20), json_values, max_size=8))
def test_every_default_mapping_takes_any_record_without_raising(template, record):
    """apply_mapping's contract: bad data is an error on a row, never an exception."""
    result = apply_mapping(template.rows, record, CONTEXT)
    assert isinstance(result.payload, dict)
    for error in result.errors:
        assert error.message and error.row >= 1


@given(
    st.sampled_from(TEMPLATES),
    st.sampled_from(["Name", "Code", "Contacts", "Addresses", "Amount", "CloseDate", "Id"]),
    json_values,
)
def test_every_default_mapping_takes_a_usual_field_of_the_wrong_type(template, field, value):
    result = apply_mapping(template.rows, {field: value}, CONTEXT)
    assert isinstance(result.payload, dict)


# VAT rules and currencies ----------------------------------------------------------------------

rates = st.decimals(min_value=0, max_value=100, places=2).map(str)
codes = st.sampled_from(sorted(COUNTRY_NAMES))
vat_rules = st.fixed_dictionaries(
    {
        "countries": st.dictionaries(codes, rates, max_size=5),
        "products": st.dictionaries(st.sampled_from(["BOO-1", "ENE-2", "CON-3"]), rates),
    }
)
vat_numbers = st.one_of(st.just(""), st.from_regex(r"[A-Z]{2}[0-9]{6,9}", fullmatch=True))
product_rates = st.one_of(st.none(), rates)
products = st.sampled_from(["BOO-1", "ENE-2", "CON-3", ""])


@given(st.one_of(codes, st.none()), products, vat_rules, vat_numbers, product_rates)
def test_every_line_gets_a_rate_from_0_to_100_and_a_rule_in_words(
    country, product, rules, vat_number, product_rate
):
    decision = vat_decision(
        country, product, rules, "20", vat_number=vat_number, product_rate=product_rate
    )
    assert isinstance(decision.rate, Decimal)
    assert Decimal(0) <= decision.rate <= Decimal(100)
    assert decision.rule and "None" not in decision.rule  # said in words, with no gaps


@given(st.sampled_from(sorted(EU_COUNTRIES)), products, vat_rules, vat_numbers, product_rates)
def test_an_eu_customer_is_zero_rated_exactly_when_they_have_a_vat_number(
    country, product, rules, vat_number, product_rate
):
    rules["countries"].pop(country, None)
    decision = vat_decision(
        country, product, rules, "20", vat_number=vat_number, product_rate=product_rate
    )
    as_uk = vat_decision("GB", product, rules, "20", product_rate=product_rate)
    if vat_number:
        assert decision.rate == 0 and "reverse charge" in decision.rule
    else:
        assert decision.rate == as_uk.rate  # charged UK VAT, like a UK customer


@given(products, vat_rules, rates)
def test_the_kashflow_product_s_rate_wins_over_the_rules_for_a_uk_customer(
    product, rules, product_rate
):
    decision = vat_decision("GB", product, rules, "20", product_rate=product_rate)
    assert decision.rate == Decimal(product_rate)


@given(codes.filter(lambda c: c != "GB" and c not in EU_COUNTRIES), products, vat_rules,
       vat_numbers, product_rates)  # fmt: skip
def test_a_customer_outside_the_uk_and_eu_pays_no_uk_vat_unless_a_rule_says(
    country, product, rules, vat_number, product_rate
):
    decision = vat_decision(
        country, product, rules, "20", vat_number=vat_number, product_rate=product_rate
    )
    assert decision.rate == Decimal(rules["countries"].get(country, "0"))


currency_codes = st.sampled_from(["GBP", "EUR", "USD", "gbp", "eur", " EUR"])


@given(currency_codes, st.one_of(st.none(), currency_codes))
def test_a_deal_is_invoiced_only_in_its_customer_s_currency(deal, customer):
    problem = currency_problem(deal, "ACME01", {"Currency": {"Code": customer}})
    if customer is None or deal.strip().upper() == customer.strip().upper():
        assert problem is None
    else:
        assert problem.startswith(f"This deal is in {deal} but the KashFlow customer ACME01 ")
        assert customer.strip().upper() in problem
