"""The mapping engine, transform by transform, with payloads shaped like KashFlow's and Salesforce's."""

from decimal import Decimal

import pytest

from integration import mapping
from integration.mapping import (
    KASHFLOW_FIELDS,
    FieldChange,
    FieldInfo,
    MappingContext,
    apply_mapping,
    line_vat_amount,
    payload_hash,
    preview,
    rows_owned_by,
    salesforce_fields_from_describe,
    validate_rows,
)
from integration.mapping_defaults import (
    CUSTOMER_TO_ACCOUNT,
    CUSTOMER_TO_CONTACT,
    LINE_ITEM_TO_INVOICE_LINE,
    PAYMENT_TO_SALESFORCE,
    row,
)
from integration.models import CrossRef, Transform, content_hash

# A KashFlow customer as GET /customers/{code} returns it (reference §4.1), trimmed.
KASHFLOW_CUSTOMER = {
    "Id": 1042,
    "Code": "PENNI001",
    "Name": "Pennine Joinery Ltd",
    "DisplayName": "Pennine Joinery Ltd",
    "Email": "accounts@pennine-joinery.co.uk",
    "TelephoneNumber": "",
    "Contacts": [
        {
            "Id": 7,
            "IsPrimary": False,
            "Name": "Accounts Team",
            "Firstname": "",
            "LastName": "",
            "Email": "accounts@pennine-joinery.co.uk",
            "Telephone": "0113 496 0000",
        },
        {
            "Id": 8,
            "IsPrimary": True,
            "Name": "Amelia Hargreaves",
            "Firstname": "Amelia",
            "LastName": "Hargreaves",
            "Email": "amelia.hargreaves@pennine-joinery.co.uk",
            "Telephone": "0113 496 0123",
        },
    ],
    "Addresses": [
        {
            "Line1": "Unit 4, Aire Valley Business Park",
            "Line2": "17 Canal Road",
            "Line3": "Leeds",
            "Line4": "West Yorkshire",
            "PostCode": "LS12 6QD",
            "CountryCode": "GB",
            "CountryName": "United Kingdom",
        }
    ],
    "DeliveryAddresses": [],
    "Currency": {"Code": "GBP", "Name": "British Pounds", "Symbol": "£", "ExchangeRate": 1.0},
    "CreatedDate": "2023-04-12 09:15:02",
    "LastUpdatedDate": "2024-10-09 12:00:00 +01:00",
    "FirstInvoiceDate": "1900-01-01 12:00:00",
}

# An OpportunityLineItem as a SOQL query with parent fields returns it (reference §B3, §B8).
LINE_ITEM = {
    "attributes": {"type": "OpportunityLineItem"},
    "Id": "00k000000000001AAA",
    "Product2Id": "01t000000000001AAA",
    "ProductCode": "BOO-0003",
    "Description": None,
    "Quantity": 3.0,
    "UnitPrice": 19.99,
    "PricebookEntry": {"Product2": {"Name": "Standard Handbook"}},
    "Opportunity": {"Account": {"BillingCountry": "GB"}},
}


def apply(rows, source, **context):
    return apply_mapping(rows, source, MappingContext(**context))


def value_of(single_row, source, **context):
    result = apply([single_row], source, **context)
    assert result.errors == []
    return result.payload.get(single_row["target_path"])


def errors_of(rows, source, **context):
    return [error.message for error in apply(rows, source, **context).errors]


def test_transform_names_match_the_model_choices():
    assert set(mapping.TRANSFORMS) == set(Transform.values)


def test_lookup_object_types_match_crossref():
    assert set(mapping.LOOKUP_OBJECT_TYPES) == set(CrossRef.ObjectType.values)


# Paths -------------------------------------------------------------------------------------


def test_copy_reads_nested_paths_and_the_primary_contact():
    assert value_of(row("City", "Addresses.0.Line3"), KASHFLOW_CUSTOMER) == "Leeds"
    assert value_of(row("Email", "Contacts[?IsPrimary].Email"), KASHFLOW_CUSTOMER) == (
        "amelia.hargreaves@pennine-joinery.co.uk"
    )
    assert value_of(row("Email", "Contacts.0.Email"), KASHFLOW_CUSTOMER) == (
        "accounts@pennine-joinery.co.uk"
    )


def test_primary_selector_takes_the_first_contact_when_none_is_marked():
    customer = {"Contacts": [{"Name": "Jo Bloggs"}, {"Name": "Sam Smith"}]}
    assert value_of(row("Name", "Contacts[?IsPrimary].Name"), customer) == "Jo Bloggs"


def test_missing_path_reads_as_empty_and_writes_null():
    result = apply([row("Phone", "Contacts.5.Telephone")], KASHFLOW_CUSTOMER)
    assert result.payload == {"Phone": None} and result.errors == []


def test_fallbacks_are_tried_while_the_value_is_blank():
    phone = row("Phone", "TelephoneNumber", fallbacks=["Contacts[?IsPrimary].Telephone"])
    assert value_of(phone, KASHFLOW_CUSTOMER) == "0113 496 0123"
    assert value_of(phone, {**KASHFLOW_CUSTOMER, "TelephoneNumber": "0113 496 0999"}) == (
        "0113 496 0999"
    )


def test_target_paths_build_nested_structure():
    rows = [
        row("Contacts.0.Email", "PrimaryContact.Email"),
        row("Contacts.0.IsPrimary", transform="constant", value=True),
        row("Addresses.0.Line1", "Street"),
        row("Currency.Code", transform="constant", value="GBP"),
    ]
    source = {"PrimaryContact": {"Email": "jo@acme.test"}, "Street": "1 High St"}
    assert apply(rows, source).payload == {
        "Contacts": [{"Email": "jo@acme.test", "IsPrimary": True}],
        "Addresses": [{"Line1": "1 High St"}],
        "Currency": {"Code": "GBP"},
    }


def test_a_later_list_position_pads_with_empty_objects_not_nulls():
    payload = apply([row("Contacts.1.Email", "Email")], {"Email": "jo@acme.test"}).payload
    assert payload == {"Contacts": [{}, {"Email": "jo@acme.test"}]}


def test_rows_that_clash_on_shape_give_an_error_not_an_exception():
    rows = [row("Currency", transform="constant", value="GBP"), row("Currency.Code", "Code")]
    assert errors_of(rows, {"Code": "EUR"}) == [
        "Row 2 (Currency.Code): Currency is already filled by another row in another shape."
    ]


# Simple transforms -------------------------------------------------------------------------


def test_constant_lower_upper():
    assert value_of(row("IsActive", transform="constant", value=True), {}) is True
    assert value_of(row("Email", "Email", "lower"), {"Email": " Jo@Acme.TEST "}) == "jo@acme.test"
    assert value_of(row("CountryCode", "BillingCountry", "upper"), {"BillingCountry": "gb"}) == "GB"


# Dates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kashflow", "salesforce"),
    [
        ("2024-10-09 12:00:00", "2024-10-09"),
        ("2012-10-09 12:00:00 +05:30", "2012-10-09"),
        ("2024-03-31 23:59:59", "2024-03-31"),  # late evening stays on its day
        ("2017-05-02", "2017-05-02"),
        ("2024-03-31T00:30:00.000+0000", "2024-03-31"),
    ],
)
def test_date_from_kashflow_is_the_calendar_day_written(kashflow, salesforce):
    assert value_of(row("CloseDate", "Date", "date", to="salesforce"), {"Date": kashflow}) == (
        salesforce
    )


def test_date_to_kashflow_is_that_day_at_noon():
    opportunity = {"CloseDate": "2024-03-31"}
    assert value_of(row("IssuedDate", "CloseDate", "date", to="kashflow"), opportunity) == (
        "2024-03-31 12:00:00"
    )


def test_kashflow_no_date_sentinel_is_empty():
    first = row("First_Invoice__c", "FirstInvoiceDate", "date", to="salesforce")
    assert value_of(first, KASHFLOW_CUSTOMER) is None


def test_an_impossible_date_is_a_row_error():
    rows = [row("Name", "Name"), row("IssuedDate", "CloseDate", "date", to="kashflow")]
    result = apply(rows, {"Name": "Deal", "CloseDate": "2024-02-30"})
    assert [e.message for e in result.errors] == ["Row 2 (IssuedDate): '2024-02-30' is not a date."]
    assert result.payload == {"Name": "Deal"}


@pytest.mark.parametrize(
    ("kashflow", "salesforce"),
    [
        ("2024-07-01 09:30:00", "2024-07-01T08:30:00.000+0000"),  # BST is UTC+1
        ("2024-01-15 09:30:00", "2024-01-15T09:30:00.000+0000"),  # GMT is UTC
        ("2012-10-09 12:00:00 +05:30", "2012-10-09T06:30:00.000+0000"),
        ("2024-01-15T09:30:00Z", "2024-01-15T09:30:00.000+0000"),
    ],
)
def test_datetime_to_salesforce_is_utc(kashflow, salesforce):
    created = row("Created__c", "CreatedDate", "datetime", to="salesforce")
    assert value_of(created, {"CreatedDate": kashflow}) == salesforce


def test_datetime_to_kashflow_is_uk_time_and_utc_is_iso():
    source = {"SystemModstamp": "2024-07-01T08:30:00.000+0000"}
    to_kashflow = row("Note", "SystemModstamp", "datetime", to="kashflow")
    to_utc = row("Seen", "SystemModstamp", "datetime", to="utc")
    assert value_of(to_kashflow, source) == "2024-07-01 09:30:00"
    assert value_of(to_utc, source) == "2024-07-01T08:30:00+00:00"


# Concatenate, names and streets ----------------------------------------------------------


def test_concat_joins_paths_and_fixed_text():
    product = {"NominalCode": 4000, "Code": "CON-0001"}
    external_id = row(
        "ExternalID__c", transform="concat", sources=["NominalCode", "Code"], separator="-"
    )
    payment_id = row(
        "ExternalID__c", transform="concat", sources=[{"value": "KF-PAY-"}, "Id"], separator=""
    )
    assert value_of(external_id, product) == "4000-CON-0001"
    assert value_of(payment_id, {"Id": 55102}) == "KF-PAY-55102"


def test_concat_with_nothing_from_the_record_gives_nothing():
    payment_id = row("ExternalID__c", transform="concat", required=True,
                     sources=[{"value": "KF-PAY-"}, "Id"], separator="")  # fmt: skip
    assert errors_of([payment_id], {"Amount": 10}) == [
        "Row 1 (ExternalID__c): this row gave no value, and this field is required."
    ]


def test_concat_can_use_a_context_default():
    reference = row(
        "Ref", transform="concat", sources=[{"default": "invoice_prefix"}, "Number"], separator=""
    )
    assert value_of(reference, {"Number": 12}, defaults={"invoice_prefix": "INV-"}) == "INV-12"


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("Mary Anne Smith", "Mary Anne", "Smith"),
        ("  Amelia   Hargreaves ", "Amelia", "Hargreaves"),
        ("Cher", None, "Cher"),  # Salesforce requires LastName, not FirstName
        ("", None, None),
    ],
)
def test_split_name(name, first, last):
    source = {"Name": name}
    assert value_of(row("FirstName", "Name", "split_name", part="first"), source) == first
    assert value_of(row("LastName", "Name", "split_name", part="last"), source) == last


def test_split_street_gives_each_line_and_drops_blank_ones():
    account = {"BillingStreet": "Unit 4, Aire Valley Business Park\r\n\n17 Canal Road\n"}
    line1 = row("Addresses.0.Line1", "BillingStreet", "split_street", line=1)
    line2 = row("Addresses.0.Line2", "BillingStreet", "split_street", line=2)
    line3 = row("Addresses.0.Line3", "BillingStreet", "split_street", line=3)
    assert apply([line1, line2, line3], account).payload == {
        "Addresses": [
            {"Line1": "Unit 4, Aire Valley Business Park", "Line2": "17 Canal Road", "Line3": None}
        ]
    }


def test_split_street_folds_extra_lines_into_the_last_with_a_warning():
    account = {"BillingStreet": "Second Floor\nUnit 4, Aire Valley Business Park\n17 Canal Road"}
    rows = [
        row("Addresses.0.Line1", "BillingStreet", "split_street", line=1, lines=2),
        row("Addresses.0.Line2", "BillingStreet", "split_street", line=2, lines=2),
    ]
    result = apply(rows, account)
    assert result.payload["Addresses"] == [
        {"Line1": "Second Floor", "Line2": "Unit 4, Aire Valley Business Park, 17 Canal Road"}
    ]
    assert result.warnings == [
        "Row 2 (Addresses.0.Line2): the street has more than 2 lines; "
        "the last ones were put on this line."
    ]


def test_join_street_drops_empty_lines():
    address = {"Addresses": [{"Line1": "1 High St", "Line2": "", "Line3": "London"}]}
    street = row("BillingStreet", transform="join_street",
                 sources=["Addresses.0.Line1", "Addresses.0.Line2", "Addresses.0.Line3"])  # fmt: skip
    assert value_of(street, address) == "1 High St\nLondon"


# Lookups -----------------------------------------------------------------------------------


CROSSREFS = {
    ("customer", "salesforce", "001000000000001AAA"): "PENNI001",
    ("product", "salesforce", "01t000000000001AAA"): "4050-BOO-0003",
    ("invoice", "kashflow", "2041"): "006000000000001AAA",
}


def crossref_lookup(object_type, side, key):
    return CROSSREFS.get((object_type, side, key))


def test_lookup_gives_the_other_sides_id():
    code = row("CustomerCode", "AccountId", "lookup", object_type="customer", side="salesforce")
    opportunity = row(
        "Opportunity__c", "InvoiceNumber", "lookup", object_type="invoice", side="kashflow"
    )
    assert value_of(code, {"AccountId": "001000000000001AAA"}, lookup=crossref_lookup) == "PENNI001"
    # A number key (KashFlow invoice numbers are ints) is looked up as text.
    assert value_of(opportunity, {"InvoiceNumber": 2041}, lookup=crossref_lookup) == (
        "006000000000001AAA"
    )


def test_product_lookup_splits_the_key_at_the_first_dash():
    nominal = row(
        "NominalCode",
        "Product2Id",
        "lookup",
        object_type="product",
        side="salesforce",
        part="nominal_code",
    )
    code = row(
        "ProductCode", "Product2Id", "lookup", object_type="product", side="salesforce", part="code"
    )
    result = apply([nominal, code], LINE_ITEM, lookup=crossref_lookup)
    assert result.payload == {"NominalCode": "4050", "ProductCode": "BOO-0003"}


def test_a_required_lookup_that_finds_nothing_says_what_is_not_linked():
    code = row(
        "CustomerCode",
        "AccountId",
        "lookup",
        required=True,
        object_type="customer",
        side="salesforce",
    )
    assert errors_of([code], {"AccountId": "001000000000009AAA"}, lookup=crossref_lookup) == [
        "Row 1 (CustomerCode): no KashFlow customer is linked to Salesforce record "
        "001000000000009AAA yet, and this field is required."
    ]


def test_a_lookup_that_finds_nothing_falls_back_to_the_default_with_a_warning():
    nominal = row("NominalCode", "Product2Id", "lookup", default="4000", default_from="nominal_code",
                  object_type="product", side="salesforce", part="nominal_code")  # fmt: skip
    line = {**LINE_ITEM, "Product2Id": "01t000000000009AAA"}
    result = apply([nominal], line, lookup=crossref_lookup, defaults={"nominal_code": "4010"})
    assert result.payload == {"NominalCode": "4010"}
    assert result.warnings == [
        "Row 1 (NominalCode): no KashFlow product is linked to Salesforce record "
        "01t000000000009AAA yet; used the default 4010."
    ]
    # With no company default, the row's own default.
    assert apply([nominal], line, lookup=crossref_lookup).payload == {"NominalCode": "4000"}


def test_a_line_without_a_product_takes_the_default_quietly():
    nominal = row("NominalCode", "Product2Id", "lookup", default="4000",
                  object_type="product", side="salesforce", part="nominal_code")  # fmt: skip
    result = apply([nominal], {"Product2Id": None}, lookup=crossref_lookup)
    assert (result.payload, result.warnings) == ({"NominalCode": "4000"}, [])


# Money -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("117.5000", Decimal("117.50")),
        (120, Decimal("120.00")),
        (Decimal("0.005"), Decimal("0.01")),  # half up
        (Decimal("-0.005"), Decimal("-0.01")),  # halves go away from zero
        (19.99, Decimal("19.99")),  # a JSON float: no binary drift
        (2.675, Decimal("2.68")),  # Decimal(2.675) is 2.67499999..., which would round down
        ("1e3", Decimal("1000.00")),
    ],
)
def test_decimal_rounds_half_up_to_two_places(given, expected):
    amount = value_of(row("Amount__c", "Amount", "decimal"), {"Amount": given})
    assert amount == expected and str(amount) == str(expected)


def test_decimal_with_more_places_and_other_rounding():
    quantity = row("Quantity", "Quantity", "decimal", places=4)
    assert value_of(quantity, {"Quantity": 1.5}) == Decimal("1.5000")
    even = row("Rate", "Rate", "decimal", rounding="half_even")
    assert value_of(even, {"Rate": "0.125"}) == Decimal("0.12")


def test_decimal_warns_when_rounding_changes_the_amount():
    result = apply([row("Rate", "UnitPrice", "decimal")], {"UnitPrice": "19.995"})
    assert result.payload == {"Rate": Decimal("20.00")}
    assert result.warnings == ["Row 1 (Rate): 19.995 was rounded to 20.00."]
    assert apply([row("Rate", "UnitPrice", "decimal")], {"UnitPrice": "19.9900"}).warnings == []


@pytest.mark.parametrize(
    "bad", ["NaN", "Infinity", "-inf", float("nan"), float("inf"), "12,50", "£12", "1_000", True]
)
def test_decimal_refuses_what_is_not_a_finite_number(bad):
    errors = errors_of([row("Amount__c", "Amount", "decimal")], {"Amount": bad})
    assert len(errors) == 1 and errors[0].startswith("Row 1 (Amount__c): ")
    assert "is not a number" in errors[0]


def test_line_vat_is_rounded_per_line_half_up():
    assert line_vat_amount("3", "0.99", "20") == Decimal("0.59")  # 0.594
    assert line_vat_amount(1, "0.625", 20) == Decimal("0.13")  # 0.125, half up
    assert line_vat_amount(2.0, 19.99, 5) == Decimal("2.00")  # 1.999


# VAT ---------------------------------------------------------------------------------------


VAT_RULES = {"products": {"BOO-0003": "0", "ENE-0007": "5"}, "countries": {"NO": "25"}}


@pytest.mark.parametrize(
    ("country", "product", "vat_number", "product_rate", "expected"),
    [
        ("GB", "CON-0001", "", None, "20"),
        ("United Kingdom", "CON-0001", "", None, "20"),
        ("GB", "BOO-0003", "", None, "0"),  # zero-rated books, by rule
        ("GB", "ENE-0007", "", None, "5"),
        ("GB", "CON-0001", "", "5", "5"),  # the KashFlow product's own rate
        ("GB", "BOO-0003", "", "20", "20"),  # ... comes before a rule
        ("IE", "CON-0001", "IE1234567W", "20", "0"),  # EU business customer: reverse charge
        ("IE", "CON-0001", "", None, "20"),  # EU consumer (no VAT number): UK VAT
        ("FR", "ENE-0007", "", "5", "5"),
        ("US", "ENE-0007", "", "5", "0"),  # export: the product's UK rate does not apply
        ("NO", "CON-0001", "", None, "25"),  # a rule for the country wins
        (None, "BOO-0003", "", None, "0"),
        (None, "CON-0001", "", None, "17.5"),  # unknown country and product: the default
    ],
)
def test_vat_rate_by_customer_then_product_then_rules(
    country, product, vat_number, product_rate, expected
):
    vat = row("VATLevel", transform="vat_rate", country_path="Country", product_path="Product")
    source = {
        "Country": country,
        "Product": product,
        "Customer": {"VATNumber": vat_number},
        "KashFlowProduct": {"VATRate": product_rate},
    }
    rate = value_of(vat, source, vat_rules=VAT_RULES, defaults={"vat_rate": "17.5"})
    assert rate == Decimal(expected)


def test_the_vat_rule_applied_is_said_in_words():
    vat = row("VATLevel", transform="vat_rate", country_path="Country")
    source = {"Country": "IE", "Customer": {"VATNumber": "IE1234567W"}}
    result = apply([vat], source)
    assert result.notes == {
        "VATLevel": "EU business customer (IE, VAT number IE1234567W): reverse charge"
    }


def test_vat_rate_reads_country_names_and_warns_about_unknown_ones():
    vat = row("VATLevel", transform="vat_rate", country_path="Country", eu_rate="21")
    b2b = {"Customer": {"VATNumber": "IE1234567W"}}
    assert value_of(vat, {"Country": "Republic of Ireland", **b2b}) == Decimal("21")
    result = apply([vat], {"Country": "Narnia"}, defaults={"vat_rate": "20"})
    assert result.payload == {"VATLevel": Decimal("20")}
    assert result.warnings == [
        "Row 1 (VATLevel): 'Narnia' is not a country kashforce knows, so it counts as unknown."
    ]


def test_vat_rate_for_eu_business_customers_can_be_set():
    vat = row("VATLevel", transform="vat_rate", country_path="Country", eu_rate="21")
    assert value_of(vat, {"Country": "NL", "Customer": {"VATNumber": "NL1"}}) == Decimal("21")


# Countries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("billing_country", "code"),
    [("United Kingdom", "GB"), ("  united   kingdom ", "GB"), ("UK", "GB"), ("Ireland", "IE"),
     ("gb", "GB"), ("ZW", "ZW"), ("United States of America", "US"), ("", None)],
)  # fmt: skip
def test_as_country_code_turns_names_into_iso_codes(billing_country, code):
    country = row("Addresses.0.CountryCode", "BillingCountry", as_country_code=True)
    assert apply([country], {"BillingCountry": billing_country}).payload == {
        "Addresses": [{"CountryCode": code}]
    }


def test_an_unknown_country_name_is_a_row_error_not_a_bad_code():
    country = row("Addresses.0.CountryCode", "BillingCountry", as_country_code=True)
    assert errors_of([country], {"BillingCountry": "Narnia"}) == [
        "Row 1 (Addresses.0.CountryCode): 'Narnia' is not a country kashforce knows; "
        "use its two-letter ISO code (GB, IE, FR)."
    ]


# Truncation --------------------------------------------------------------------------------


def test_truncate_cuts_and_warns():
    long_name = "The Cotswold Architectural Salvage and Reclamation Company (Cirencester) Limited"
    result = apply([row("Name", "Name", "truncate", length=40)], {"Name": long_name})
    assert result.payload == {"Name": long_name[:40].rstrip()}
    assert result.warnings == ["Name was cut to 40 characters."]


def test_text_is_cut_to_the_target_fields_length_automatically():
    fields = {"AccountNumber": FieldInfo("string", 40)}
    code = "X" * 45
    result = apply([row("AccountNumber", "Code")], {"Code": code}, target_fields=fields)
    assert result.payload == {"AccountNumber": "X" * 40}
    assert result.warnings == ["AccountNumber was cut to 40 characters."]


def test_truncate_with_no_length_anywhere_is_a_row_error():
    assert errors_of([row("Note", "Note", "truncate")], {"Note": "a long note"}) == [
        "Row 1 (Note): there is no length to cut to: set one, or map to a field with one."
    ]


# Conditions, defaults, required rows -------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "applies"),
    [
        ({"path": "Addresses.0.CountryCode", "equals": "GB"}, True),
        ({"path": "Addresses.0.CountryCode", "not_equals": "GB"}, False),
        ({"path": "Addresses.0.CountryCode", "in": ["IE", "FR"]}, False),
        ({"path": "Addresses.0.CountryCode", "not_in": ["IE", "FR"]}, True),
        ({"path": "DeliveryAddresses.0.Line1", "empty": True}, True),
        ({"path": "DeliveryAddresses.0.Line1", "not_empty": True}, False),
        ({"path": "Contacts[?IsPrimary].IsPrimary", "equals": True}, True),
        ([{"path": "Code", "not_empty": True}, {"path": "Name", "equals": "Other"}], False),
    ],
)
def test_a_row_applies_only_when_its_condition_holds(when, applies):
    result = apply([row("Name", "Name", when=when)], KASHFLOW_CUSTOMER)
    assert result.payload == ({"Name": "Pennine Joinery Ltd"} if applies else {})


def test_a_skipped_required_row_is_not_an_error():
    rows = [
        row("LastName", "LastName", required=True, when={"path": "LastName", "not_empty": True})
    ]
    assert apply(rows, {"LastName": ""}).errors == []


def test_defaults_apply_when_the_row_yields_nothing():
    method = row("Method", "Method", default_from="payment_method", default="1")
    assert value_of(method, {}, defaults={"payment_method": 409844}) == 409844
    assert value_of(method, {}) == "1"
    assert value_of(method, {"Method": 7}) == 7


def test_zero_and_false_are_values_not_blanks():
    assert value_of(row("Amount", "Amount", default="5"), {"Amount": 0}) == 0
    assert value_of(row("IsActive", "InUse", default="true"), {"InUse": False}) is False


def test_omit_empty_leaves_the_field_out():
    assert apply([row("ProductCode", "Code", omit_empty=True)], {"Code": ""}).payload == {}


def test_required_row_error_names_the_row_the_field_and_what_is_missing():
    rows = [
        row("Name", "Name", required=True),
        row("Phone", "TelephoneNumber"),
        row("Email", "Contacts[?IsPrimary].Email", required=True,
            missing="the customer has no email address"),
        row("Website", "Website", required=True),
    ]  # fmt: skip
    customer = {"Name": "Acme Ltd", "Contacts": [{"Email": ""}]}
    assert errors_of(rows, customer) == [
        "Row 3 (Email): the customer has no email address, and this field is required.",
        "Row 4 (Website): the record has no value at Website, and this field is required.",
    ]


def test_bad_rows_are_errors_and_the_other_rows_still_map():
    rows = [
        row("Name", "Name"),
        row("Phone", "Phone", "telephone"),
        row("Amount", "Amount", "decimal", places="two"),
        row("Date", "Date", "date"),
    ]
    result = apply(rows, {"Name": "Acme Ltd", "Phone": "1", "Amount": "1", "Date": "2024-01-01"})
    assert result.payload == {"Name": "Acme Ltd"}
    assert [e.message for e in result.errors] == [
        "Row 2 (Phone): there is no transform called 'telephone'.",
        "Row 3 (Amount): the setting 'places' should be a number of decimals from 0 to 10.",
        'Row 4 (Date): date needs the setting \'to\' ("kashflow" or "salesforce").',
    ]


def test_values_take_the_target_fields_type():
    fields = KASHFLOW_FIELDS["InvoiceLine"] | {"Note__c": FieldInfo("string", 255)}
    rows = [
        row("NominalCode", "Missing", default="4000"),
        row("VATExempt", "Missing", default="no"),
        row("Rate", "Missing", default="12.50"),
        row("Note__c", "Number"),
    ]
    payload = apply(rows, {"Number": 2041}, target_fields=fields).payload
    assert payload == {
        "NominalCode": 4000,
        "VATExempt": False,
        "Rate": Decimal("12.50"),
        "Note__c": "2041",
    }
    assert type(payload["NominalCode"]) is int


def test_rows_owned_by_keeps_fields_the_side_masters():
    rows = [
        row("Name", "Name", master="kashflow"),
        row("Description", "Description", master="salesforce"),
        row("Code", "Code"),
    ]
    assert [r["target_path"] for r in rows_owned_by(rows, "kashflow")] == ["Name", "Code"]


# Preview and hashes ------------------------------------------------------------------------


def test_preview_lists_only_the_fields_that_change():
    rows = [
        row("Name", "Name"),
        row("Phone", "TelephoneNumber", fallbacks=["Contacts[?IsPrimary].Telephone"]),
        row("Website", "Website"),
        row("KashFlow_Amount_Due__c", "OutstandingBalance", "decimal"),
    ]
    customer = {**KASHFLOW_CUSTOMER, "Website": None, "OutstandingBalance": 120.0}
    account = {"Name": "Pennine Joinery Ltd", "Phone": "0113 496 0000", "Website": "",
               "KashFlow_Amount_Due__c": 120.0}  # fmt: skip
    result = preview(rows, customer, MappingContext(), current_target=account)
    assert result.diff == [FieldChange("Phone", "0113 496 0000", "0113 496 0123")]
    first_time = preview(rows, customer, MappingContext())
    assert [change.field for change in first_time.diff] == [
        "Name",
        "Phone",
        "KashFlow_Amount_Due__c",
    ]


def test_preview_walks_nested_payloads():
    rows = [row("Addresses.0.PostCode", "BillingPostalCode")]
    current = {"Addresses": [{"PostCode": "LS1 1AA"}]}
    result = preview(rows, {"BillingPostalCode": "LS12 6QD"}, MappingContext(), current)
    assert result.diff == [FieldChange("Addresses.0.PostCode", "LS1 1AA", "LS12 6QD")]


def test_payload_hash_is_stable_and_is_the_ledgers_hash():
    first = {"Name": "Acme", "Amount": Decimal("1.50"), "Contacts": [{"Email": "a"}]}
    second = {"Contacts": [{"Email": "a"}], "Amount": Decimal("1.50"), "Name": "Acme"}
    assert payload_hash(first) == payload_hash(second) == content_hash(first)
    assert payload_hash(first) != payload_hash({**first, "Amount": Decimal("1.51")})


# Validation --------------------------------------------------------------------------------


ACCOUNT_DESCRIBE = {
    "name": "Account",
    "fields": [
        {"name": "Id", "type": "id", "length": 18, "nillable": False, "createable": False,
         "updateable": False, "defaultedOnCreate": True},
        {"name": "Name", "type": "string", "length": 255, "nillable": False, "createable": True,
         "updateable": True, "defaultedOnCreate": False},
        {"name": "OwnerId", "type": "reference", "length": 18, "nillable": False,
         "createable": True, "updateable": True, "defaultedOnCreate": True},
        {"name": "IsPartner", "type": "boolean", "length": 0, "nillable": False,
         "createable": True, "updateable": True, "defaultedOnCreate": False},
        {"name": "Phone", "type": "phone", "length": 40, "nillable": True, "createable": True,
         "updateable": True, "defaultedOnCreate": False},
        {"name": "AccountNumber", "type": "string", "length": 40, "nillable": True,
         "createable": True, "updateable": True, "defaultedOnCreate": False},
        {"name": "CreatedDate", "type": "datetime", "length": 0, "nillable": False,
         "createable": False, "updateable": False, "defaultedOnCreate": True},
    ],
}  # fmt: skip


def test_fields_from_describe_know_what_is_required_and_writable():
    fields = salesforce_fields_from_describe(ACCOUNT_DESCRIBE)
    assert [name for name, info in fields.items() if info.required] == ["Name"]
    assert fields["Phone"] == FieldInfo("phone", 40, False, True, True)
    assert not fields["CreatedDate"].createable and fields["CreatedDate"].length is None


def test_validation_names_the_row_and_the_problem():
    fields = salesforce_fields_from_describe(ACCOUNT_DESCRIBE)
    rows = [
        row("Phon", "TelephoneNumber"),
        row("AccountNumber", "Code"),
        row("AccountNumber", "Name"),
        row("CreatedDate", "CreatedDate", "datetime", to="salesforce"),
        row("Phone", "Telephone", "lookup", object_type="telephone", side="kashflow"),
        row("OwnerId", transform="concat", sources=["A"], separater=" "),
    ]
    assert [error.message for error in validate_rows(rows, fields)] == [
        "Row 1 (Phon): the target has no field 'Phon'. Did you mean 'Phone'?",
        "Row 4 (CreatedDate): this field is read-only in the target.",
        "Row 5 (Phone): the setting 'object_type' should be customer, contact, invoice, "
        "payment, product.",
        "Row 6 (OwnerId): concat has no setting called 'separater'. Did you mean 'separator'?",
        "Row 3 (AccountNumber): AccountNumber is already filled by row 2; remove one, "
        "or give each a condition.",
        "Name: the target requires this field, and no row fills it.",
    ]


def test_validation_allows_one_field_from_two_conditional_rows():
    fields = {"LastName": FieldInfo("string", 80, required=True)}
    rows = [
        row("LastName", "LastName", when={"path": "LastName", "not_empty": True}),
        row(
            "LastName", "Name", "split_name", part="last", when={"path": "LastName", "empty": True}
        ),
    ]
    assert validate_rows(rows, fields) == []


def test_validation_of_conditions_and_lookups():
    fields = {"A": FieldInfo(), "B": FieldInfo(), "C": FieldInfo()}
    rows = [
        row("A", "A", when={"path": "X", "equals": "1", "empty": True}),
        row("B", "B", "lookup", object_type="customer", side="salesforce", part="code"),
        row("C", transform="copy"),
    ]
    assert [error.message for error in validate_rows(rows, fields)] == [
        "Row 1 (A): each condition needs exactly one test: equals, not_equals, in, not_in, "
        "empty, not_empty.",
        'Row 2 (B): "part" only applies to product look-ups.',
        "Row 3 (C): it does not say which source field to read.",
    ]


def test_update_only_mappings_need_updateable_fields_and_no_required_ones():
    fields = {
        "Name": FieldInfo("string", 120, required=True),
        "OpportunityId": FieldInfo("reference", 18, required=True, updateable=False),
        "KashFlow_Invoice_Number__c": FieldInfo("string", 32),
    }
    rows = [row("KashFlow_Invoice_Number__c", "Number"), row("OpportunityId", "Id")]
    assert [error.message for error in validate_rows(rows, fields, update_only=True)] == [
        "Row 2 (OpportunityId): this field cannot be changed once the record exists."
    ]


def test_fields_the_flow_fills_need_no_row():
    fields = KASHFLOW_FIELDS["Customer"]
    assert [e.message for e in validate_rows([row("Name", "Name")], fields)] == [
        "Code: the target requires this field, and no row fills it."
    ]
    assert validate_rows([row("Name", "Name")], fields, filled_by_flow=["Code"]) == []


def test_kashflow_list_fields_are_matched_by_position_free_keys():
    fields = KASHFLOW_FIELDS["Customer"]
    rows = [row("Contacts.0.Firstname", "FirstName"), row("Contacts.0.FirstName", "FirstName")]
    assert [e.message for e in validate_rows(rows, fields, filled_by_flow=["Code", "Name"])] == [
        "Row 2 (Contacts.0.FirstName): the target has no field 'Contacts.0.FirstName'. "
        "Did you mean 'Contacts[].Firstname'?"
    ]


# The default customer templates on a real-shaped customer ---------------------------------


def test_default_customer_template_gives_the_expected_account():
    fields = {"AccountNumber": FieldInfo("string", 40), "BillingCity": FieldInfo("string", 40)}
    result = apply(CUSTOMER_TO_ACCOUNT.rows, KASHFLOW_CUSTOMER, target_fields=fields)
    assert (result.errors, result.warnings) == ([], [])
    billing = {
        "Street": "Unit 4, Aire Valley Business Park\n17 Canal Road",
        "City": "Leeds",
        "State": "West Yorkshire",
        "PostalCode": "LS12 6QD",
        "Country": "United Kingdom",  # KashFlow's CountryName: Salesforce holds names
    }
    assert result.payload == {
        "ExternalID__c": "PENNI001",
        "AccountNumber": "PENNI001",
        "Name": "Pennine Joinery Ltd",
        "Phone": "0113 496 0123",  # no company number: the primary contact's
        **{f"Billing{name}": value for name, value in billing.items()},
        **{f"Shipping{name}": value for name, value in billing.items()},  # no delivery address
    }


def test_default_customer_template_ships_to_the_delivery_address_when_there_is_one():
    delivery = {"Name": "Goods in", "Line1": "Yard 2", "Line2": "", "Line3": "Bradford",
                "Line4": "", "PostCode": "BD4 7TT", "CountryCode": "GB"}  # fmt: skip
    customer = {**KASHFLOW_CUSTOMER, "DeliveryAddresses": [delivery]}
    payload = apply(CUSTOMER_TO_ACCOUNT.rows, customer).payload
    assert {key: value for key, value in payload.items() if key.startswith("Shipping")} == {
        "ShippingStreet": "Yard 2",
        "ShippingCity": "Bradford",
        "ShippingState": None,
        "ShippingPostalCode": "BD4 7TT",
        "ShippingCountry": "GB",  # no CountryName on this address: the code
    }


def test_default_contact_template_uses_the_primary_contact():
    result = apply(CUSTOMER_TO_CONTACT.rows, KASHFLOW_CUSTOMER)
    assert result.errors == []
    assert result.payload == {
        "ExternalID__c": "PENNI001-primary",
        "FirstName": "Amelia",
        "LastName": "Hargreaves",
        "Email": "amelia.hargreaves@pennine-joinery.co.uk",
        "Phone": "0113 496 0123",
    }


def test_default_contact_template_splits_a_contact_with_only_a_full_name():
    customer = {**KASHFLOW_CUSTOMER, "Contacts": [{"Name": "Mary Anne Smith", "Email": "m@x.test"}]}
    payload = apply(CUSTOMER_TO_CONTACT.rows, customer).payload
    assert (payload["FirstName"], payload["LastName"]) == ("Mary Anne", "Smith")


def test_default_contact_template_without_any_contact_name_says_so():
    customer = {**KASHFLOW_CUSTOMER, "Contacts": [{"Email": "m@x.test"}]}
    assert errors_of(CUSTOMER_TO_CONTACT.rows, customer) == [
        "Row 5 (LastName): the customer's primary contact has no name, and this field is required."
    ]


def test_default_line_template_gives_a_typed_kashflow_line():
    result = apply(
        LINE_ITEM_TO_INVOICE_LINE.rows,
        LINE_ITEM,
        lookup=crossref_lookup,
        vat_rules={"products": {"BOO-0003": "0"}},
        target_fields=KASHFLOW_FIELDS["InvoiceLine"],
    )
    assert (result.errors, result.warnings) == ([], [])
    assert result.payload == {
        "Description": "Standard Handbook",  # the line has none: the product's name
        "Quantity": Decimal("3.0000"),
        "Rate": Decimal("19.99"),
        "NominalCode": 4050,
        "ProductCode": "BOO-0003",
        "VATLevel": Decimal("0"),  # a zero-rated book
    }


def test_default_line_template_without_a_product_uses_the_default_nominal_and_uk_vat():
    line = {**LINE_ITEM, "Product2Id": None, "ProductCode": None, "Description": "Day rate"}
    result = apply(
        LINE_ITEM_TO_INVOICE_LINE.rows,
        line,
        lookup=crossref_lookup,
        defaults={"nominal_code": "4010"},
        target_fields=KASHFLOW_FIELDS["InvoiceLine"],
    )
    assert result.errors == []
    assert result.payload == {
        "Description": "Day rate",
        "Quantity": Decimal("3.0000"),
        "Rate": Decimal("19.99"),
        "NominalCode": 4010,
        "VATLevel": Decimal("20"),
    }


def test_default_payment_template_links_the_payment_to_its_opportunity():
    payment = {"Id": 55102, "Date": "2024-11-02 12:00:00", "Amount": 120.0, "Method": 409844,
               "MethodName": "BACS", "AccountId": 3, "InvoiceNumber": 2041}  # fmt: skip
    result = apply(PAYMENT_TO_SALESFORCE.rows, payment, lookup=crossref_lookup)
    assert result.errors == []
    assert result.payload == {
        "ExternalID__c": "KF-PAY-55102",
        "Opportunity__c": "006000000000001AAA",
        "Amount__c": Decimal("120.00"),
        "Payment_Date__c": "2024-11-02",
        "Method__c": "BACS",
        "Invoice_Number__c": 2041,
    }
