"""Products flow end to end, both ways: KashFlow products ↔ Product2 with a standard
PricebookEntry, each field owned by one side, over real sockets against the sandbox."""

from decimal import Decimal
from types import SimpleNamespace

import pytest

from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import SalesforceClient
from integration.models import CrossRef, SyncEvent, SyncRun, Trigger
from integration.sync import engine
from tests.fixtures_sandbox import control
from tests.sandbox_connections import calls, connect_both

pytestmark = pytest.mark.django_db

PRODUCT_FIELDS = "Id, ExternalID__c, Name, ProductCode, Description, IsActive"
STANDARD_ENTRY = "(SELECT Id, UnitPrice, IsActive FROM PricebookEntries)"


@pytest.fixture
def org(sandbox):
    salesforce, kashflow = connect_both(sandbox)
    return SimpleNamespace(
        sandbox=sandbox, salesforce=SalesforceClient(salesforce), kashflow=KashFlowClient(kashflow)
    )


@pytest.fixture
def catalogue(org):
    """Three KashFlow products, prices chosen to catch any float on the way."""
    for code, name, price in [
        ("CHAIR", "Oak chair", "499.50"),
        ("NAIL", "Nail", "0.07"),
        ("DESK", "Partners' desk", "12345.67"),
    ]:
        org.kashflow.create_product(
            {
                "NominalCode": 4000,
                "Code": code,
                "Name": name,
                "Description": f"{name}, from KashFlow",
                "Price": Decimal(price),
            }
        )
    return org


def run_products(**kwargs) -> SyncRun:
    run = engine.start_run("products", Trigger.MANUAL, **kwargs)
    engine.execute_run(run.pk)
    run.refresh_from_db()
    return run


def reset_stats(sandbox):
    for system in ("salesforce", "kashflow"):
        control(sandbox.info["control"][system], "stats/reset", {})


def writes(sandbox):
    """Calls that change something: Salesforce collections and KashFlow POST/PUT."""
    stats = {
        system: control(sandbox.info["control"][system], "stats")["calls"]
        for system in ("salesforce", "kashflow")
    }
    salesforce = sum(n for route, n in stats["salesforce"].items() if "composite" in route)
    kashflow = sum(
        n
        for route, n in stats["kashflow"].items()
        if route.split()[0] in ("POST", "PUT") and "sessiontoken" not in route
    )
    return salesforce + kashflow


def product2(org, key):
    soql = f"SELECT {PRODUCT_FIELDS}, {STANDARD_ENTRY} FROM Product2 WHERE ExternalID__c = '{key}'"
    [record] = list(org.salesforce.query(soql))
    return record


def price_of(record):
    [entry] = record["PricebookEntries"]["records"]
    return entry["UnitPrice"]


def kashflow_product(org, key):
    return next(p for p in org.kashflow.products() if f"{p['NominalCode']}-{p['Code']}" == key)


def test_initial_load_makes_product2_with_their_standard_price_to_the_penny(catalogue):
    org = catalogue
    reset_stats(org.sandbox)

    run = run_products()

    assert run.status == SyncRun.Status.SUCCEEDED, run.summary
    assert run.written_count == 3
    chair = product2(org, "4000-CHAIR")
    assert (chair["Name"], chair["ProductCode"], chair["IsActive"]) == ("Oak chair", "CHAIR", True)
    assert chair["Description"] == "Oak chair, from KashFlow"  # a create sends every field
    assert price_of(chair) == Decimal("499.50")
    assert price_of(product2(org, "4000-NAIL")) == Decimal("0.07")
    assert price_of(product2(org, "4000-DESK")) == Decimal("12345.67")
    [standard] = list(org.salesforce.query("SELECT Id FROM Pricebook2 WHERE IsStandard = true"))
    entries = list(org.salesforce.query("SELECT Pricebook2Id, IsActive FROM PricebookEntry"))
    assert {(e["Pricebook2Id"], e["IsActive"]) for e in entries} == {(standard["Id"], True)}
    ref = CrossRef.objects.get(object_type="product", kashflow_key="4000-CHAIR")
    assert ref.salesforce_id == chair["Id"]
    # One upsert of the Product2s and one create of their entries.
    assert calls(org.sandbox, "salesforce", "composite/sobjects") == 2


def test_a_second_run_writes_nothing(catalogue):
    org = catalogue
    run_products()
    events = SyncEvent.objects.count()
    reset_stats(org.sandbox)

    again = run_products()

    assert again.status == SyncRun.Status.SUCCEEDED
    assert again.written_count == 0
    assert writes(org.sandbox) == 0
    assert SyncEvent.objects.count() == events  # our own writes were seen and were no change
    assert calls(org.sandbox, "kashflow", "GET /v2/products") == 1
    assert calls(org.sandbox, "salesforce", "/query") == 1


def test_a_kashflow_price_change_updates_the_entry_alone(catalogue):
    org = catalogue
    run_products()
    org.kashflow.update_product(4000, "CHAIR", {"Price": Decimal("525.25")})
    reset_stats(org.sandbox)

    run = run_products()

    assert run.written_count == 1, run.summary
    assert price_of(product2(org, "4000-CHAIR")) == Decimal("525.25")
    assert (
        calls(org.sandbox, "salesforce", "PATCH /services/data/v{version}/composite/sobjects") == 1
    )
    assert calls(org.sandbox, "salesforce", "composite/sobjects/{type_name}/{field}") == 0


def test_a_description_changed_in_salesforce_reaches_kashflow_and_stops_there(catalogue):
    org = catalogue
    run_products()
    chair = product2(org, "4000-CHAIR")
    org.salesforce.update("Product2", [{"Id": chair["Id"], "Description": "Solid oak, oiled"}])
    reset_stats(org.sandbox)

    run = run_products()

    assert run.written_count == 1, run.summary
    assert kashflow_product(org, "4000-CHAIR")["Description"] == "Solid oak, oiled"
    assert calls(org.sandbox, "kashflow", "PUT /v2/products") == 1
    assert calls(org.sandbox, "salesforce", "composite") == 0
    reset_stats(org.sandbox)
    quiet = run_products()
    assert quiet.written_count == 0, quiet.summary
    assert writes(org.sandbox) == 0


def test_a_salesforce_description_edit_leaves_kashflow_name_price_and_vat_intact(org):
    # KashFlow's PUT replaces the whole product: a PUT of the description alone would blank
    # the name, the price and the VAT rate (or be refused).
    org.kashflow.create_product(
        {"NominalCode": 4050, "Code": "BOOK", "Name": "Atlas", "Description": "Maps",
         "Price": Decimal("24.99"), "VATRate": Decimal("5"), "WholeSalePrice": Decimal("12.5"),
         "InUse": True}
    )  # fmt: skip
    run_products()
    atlas = product2(org, "4050-BOOK")
    org.salesforce.update("Product2", [{"Id": atlas["Id"], "Description": "World maps, 2027"}])
    reset_stats(org.sandbox)

    run = run_products()

    assert run.status == SyncRun.Status.SUCCEEDED, run.summary
    # Read as KashFlow holds it now, then written whole: one GET and one PUT.
    assert calls(org.sandbox, "kashflow", "GET /v2/products/{nominalCode}/{code}") == 1
    assert calls(org.sandbox, "kashflow", "PUT /v2/products") == 1
    stored = org.kashflow.get_product(4050, "BOOK")
    assert stored["Description"] == "World maps, 2027"
    assert (stored["Name"], stored["Price"], stored["VATRate"]) == (
        "Atlas",
        Decimal("24.99"),
        Decimal("5"),
    )
    assert (stored["WholeSalePrice"], stored["InUse"]) == (Decimal("12.5"), True)


def test_a_kashflow_owned_field_changed_in_salesforce_is_put_right_not_copied(catalogue):
    org = catalogue
    run_products()
    chair = product2(org, "4000-CHAIR")
    org.salesforce.update("Product2", [{"Id": chair["Id"], "Name": "Plastic chair"}])

    run = run_products()

    assert run.failed_count == 0, run.summary
    assert kashflow_product(org, "4000-CHAIR")["Name"] == "Oak chair"
    assert product2(org, "4000-CHAIR")["Name"] == "Oak chair"
    reset_stats(org.sandbox)
    assert run_products().written_count == 0
    assert writes(org.sandbox) == 0


def test_a_new_product2_becomes_a_kashflow_product_with_its_price(org):
    [standard] = list(org.salesforce.query("SELECT Id FROM Pricebook2 WHERE IsStandard = true"))
    [created] = org.salesforce.create(
        "Product2", [{"Name": "Standing desk", "ProductCode": "STAND-1", "Description": "Tall"}]
    )
    org.salesforce.create(
        "PricebookEntry",
        [
            {
                "Pricebook2Id": standard["Id"],
                "Product2Id": created.id,
                "UnitPrice": Decimal("899.99"),
                "IsActive": True,
            }
        ],
    )

    run = run_products()

    assert run.status == SyncRun.Status.SUCCEEDED, run.summary
    made = kashflow_product(org, "4000-STAND-1")  # nominal code from the default
    assert (made["Name"], made["Description"], made["Price"]) == (
        "Standing desk",
        "Tall",
        Decimal("899.99"),
    )
    ref = CrossRef.objects.get(object_type="product", salesforce_id=created.id)
    assert ref.kashflow_key == "4000-STAND-1"
    assert product2(org, "4000-STAND-1")["Id"] == created.id  # its key, not a second Product2
    reset_stats(org.sandbox)
    again = run_products()
    assert again.written_count == 0, again.summary
    assert writes(org.sandbox) == 0
    assert len(list(org.salesforce.query("SELECT Id FROM Product2"))) == 1


def test_a_product2_without_a_code_is_a_clear_error(org):
    org.salesforce.create("Product2", [{"Name": "Mystery box"}])

    run = run_products()

    error = SyncEvent.objects.unresolved().get()
    assert run.failed_count == 1
    assert "Product Code" in error.message
    assert list(org.kashflow.products()) == []


def test_products_on_both_sides_already_are_linked_not_duplicated(catalogue):
    """Before kashforce both systems had the chair: each side keeps the fields it owns."""
    org = catalogue
    [standard] = list(org.salesforce.query("SELECT Id FROM Pricebook2 WHERE IsStandard = true"))
    [by_key, by_code] = org.salesforce.create(
        "Product2",
        [
            {"Name": "Chair (SF)", "ProductCode": "CHAIR", "ExternalID__c": "4000-CHAIR",
             "Description": "Described in Salesforce"},
            {"Name": "Nail", "ProductCode": "NAIL"},
        ],
    )  # fmt: skip
    org.salesforce.create(
        "PricebookEntry",
        [{"Pricebook2Id": standard["Id"], "Product2Id": by_key.id, "UnitPrice": Decimal("1")}],
    )

    run = run_products()

    assert run.failed_count == 0, run.summary
    assert len(list(org.salesforce.query("SELECT Id FROM Product2"))) == 3
    assert len(list(org.kashflow.products())) == 3
    chair = product2(org, "4000-CHAIR")
    assert chair["Id"] == by_key.id
    assert (chair["Name"], price_of(chair)) == ("Oak chair", Decimal("499.50"))  # KashFlow's
    assert chair["Description"] == "Described in Salesforce"  # Salesforce's
    assert kashflow_product(org, "4000-CHAIR")["Description"] == "Described in Salesforce"
    assert product2(org, "4000-NAIL")["Id"] == by_code.id  # matched on nominal code + code
    reset_stats(org.sandbox)
    assert run_products().written_count == 0
    assert writes(org.sandbox) == 0


def test_dry_run_shows_the_writes_and_makes_none(catalogue):
    org = catalogue
    org.salesforce.create("Product2", [{"Name": "Stool", "ProductCode": "STOOL"}])
    reset_stats(org.sandbox)

    plans = engine.dry_run("products")

    planned = sorted((p.target_object, p.action) for p in plans)
    assert planned == sorted(
        [("salesforce.Product2", "upsert")] * 3
        + [("salesforce.PricebookEntry", "create")] * 3
        + [("kashflow.Product", "create"), ("salesforce.Product2", "update")]
    )
    assert writes(org.sandbox) == 0
    assert SyncEvent.objects.count() == 0
    assert CrossRef.objects.count() == 0
    assert len(list(org.salesforce.query("SELECT Id FROM Product2"))) == 1


# Lost answers: a write that was made but whose answer never came is not made twice -------------


def set_faults(org, system, *rules):
    control(
        org.sandbox.info["control"][system],
        "faults",
        {"rules": [{"match": m, "kind": k, "rate": 1.0} for m, k in rules]},
    )


def retry_what_failed():
    """The Retry button on every failed event, then a run."""
    assert SyncEvent.objects.retrying().exists()
    SyncEvent.objects.exclude(status=SyncEvent.Status.SUCCEEDED).update(
        status=SyncEvent.Status.PENDING, next_attempt_at=None
    )
    return run_products()


@pytest.mark.parametrize(
    "lost",
    [
        pytest.param(["PATCH /services/data"], id="product2-upserts"),
        pytest.param(["POST /services/data"], id="price-book-entry-creates"),
        pytest.param(["PATCH /services/data", "POST /services/data"], id="every-write"),
    ],
)
def test_lost_answers_from_salesforce_make_no_second_product2_or_price(catalogue, lost):
    # The writes are made in Salesforce, and their answers lost.
    set_faults(catalogue, "salesforce", *[(match, "ambiguous") for match in lost])
    first = run_products()
    assert first.written_count == 0, first.summary
    set_faults(catalogue, "salesforce")

    retry = retry_what_failed()

    assert retry.status == SyncRun.Status.SUCCEEDED, retry.summary
    records = list(
        catalogue.salesforce.query(f"SELECT {PRODUCT_FIELDS}, {STANDARD_ENTRY} FROM Product2")
    )
    assert sorted(r["ExternalID__c"] for r in records) == [
        "4000-CHAIR",
        "4000-DESK",
        "4000-NAIL",
    ]
    assert {r["ExternalID__c"]: price_of(r) for r in records} == {
        "4000-CHAIR": Decimal("499.50"),
        "4000-DESK": Decimal("12345.67"),
        "4000-NAIL": Decimal("0.07"),
    }
    reset_stats(catalogue.sandbox)
    assert run_products().written_count == 0
    assert writes(catalogue.sandbox) == 0


def test_a_lost_answer_from_kashflow_makes_no_second_product(org):
    [standard] = list(org.salesforce.query("SELECT Id FROM Pricebook2 WHERE IsStandard = true"))
    [created] = org.salesforce.create("Product2", [{"Name": "Standing desk", "ProductCode": "S-1"}])
    org.salesforce.create(
        "PricebookEntry",
        [
            {
                "Pricebook2Id": standard["Id"],
                "Product2Id": created.id,
                "UnitPrice": Decimal("899.99"),
            }
        ],
    )
    set_faults(org, "kashflow", ("POST /v2/products", "ambiguous"))
    first = run_products()
    assert first.written_count == 0, first.summary
    assert [p["Code"] for p in org.kashflow.products()] == ["S-1"]  # made; the answer was lost
    set_faults(org, "kashflow")

    retry = retry_what_failed()

    assert retry.status == SyncRun.Status.SUCCEEDED, retry.summary
    assert [(p["Code"], p["Price"]) for p in org.kashflow.products()] == [
        ("S-1", Decimal("899.99"))
    ]
    ref = CrossRef.objects.get(object_type="product", salesforce_id=created.id)
    assert ref.kashflow_key == "4000-S-1"
    assert product2(org, "4000-S-1")["Id"] == created.id


def test_a_200_product_batch_fits_salesforces_uri_limit(org):
    # Issue #12: a batch's lookup (keys, linked Ids and codes in IN lists) passed 16,384 bytes
    # of URI on a full run of 200 linked products: a 414 that failed all 200.
    for n in range(200):
        org.kashflow.create_product(
            {
                "NominalCode": 4000,
                "Code": f"OAK-CHAIR-XL-{n:03d}",
                "Name": f"Oak chair {n}",
                "Price": Decimal("499.50"),
            }
        )
    first = run_products()
    assert (first.written_count, first.failed_count) == (200, 0), first.summary

    full = run_products(full=True)

    assert full.status == SyncRun.Status.SUCCEEDED, full.summary
    assert full.failed_count == 0 and full.read_count >= 200, full.summary
    assert len(list(org.salesforce.query("SELECT Id FROM Product2"))) == 200
