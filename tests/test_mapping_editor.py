import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from integration.mapping_defaults import TEMPLATES
from integration.models import MappingSet, SyncEvent
from tests import factories
from tests.sandbox_connections import connect_both

pytestmark = pytest.mark.django_db


def versions_of(mapping_set):
    """Every version of the factory's pair (the default mappings of migration 0004 are others)."""
    return MappingSet.objects.history(
        mapping_set.flow, mapping_set.source_object, mapping_set.target_object
    )


@pytest.fixture
def customers_v1():
    mapping_set = factories.MappingSetFactory()
    factories.FieldMappingFactory(mapping_set=mapping_set, source_path="Name", target_path="Name")
    factories.FieldMappingFactory(
        mapping_set=mapping_set,
        source_path="Email",
        target_path="Email__c",
        transform="lower",
    )
    return mapping_set


def form_data(rows, note="", **extra):
    data = {
        "rows-TOTAL_FORMS": str(len(rows)),
        "rows-INITIAL_FORMS": "0",
        "rows-MIN_NUM_FORMS": "0",
        "rows-MAX_NUM_FORMS": "1000",
        "note": note,
        **extra,
    }
    for n, row in enumerate(rows):
        for key, value in row.items():
            if key == "required":
                if value:
                    data[f"rows-{n}-required"] = "on"
            else:
                data[f"rows-{n}-{key}"] = value
    return data


ROW = {"source_path": "", "target_path": "", "transform": "copy", "params": "", "default": ""}


@pytest.mark.parametrize(
    "name", ["dashboard:mappings", "dashboard:mapping", "dashboard:mapping_history"]
)
def test_operations_cannot_reach_the_mapping_editor(ops_client, customers_v1, name):
    args = [] if name == "dashboard:mappings" else [customers_v1.pk]
    assert ops_client.get(reverse(name, args=args)).status_code == 403


@pytest.mark.parametrize("name", ["dashboard:mapping", "dashboard:mapping_rollback"])
def test_operations_cannot_change_a_mapping(ops_client, customers_v1, name):
    data = form_data([ROW | {"source_path": "Name", "target_path": "Name"}])
    assert ops_client.post(reverse(name, args=[customers_v1.pk]), data).status_code == 403
    assert versions_of(customers_v1).count() == 1


def test_the_editor_shows_the_rows_with_labelled_fields(admin_client_, customers_v1):
    page = admin_client_.get(reverse("dashboard:mapping", args=[customers_v1.pk])).content.decode()
    assert 'value="Email__c"' in page and "Row 2 target field" in page
    assert '<label class="visually-hidden" for="id_rows-0-source_path">' in page


def test_saving_makes_a_new_version_and_keeps_the_old(admin_client_, admin_user, customers_v1):
    rows = [
        ROW | {"source_path": "Name", "target_path": "Name"},
        ROW | {"source_path": "Email", "target_path": "Email__c", "transform": "lower"},
        ROW
        | {
            "source_path": "Phone",
            "target_path": "Phone",
            "params": '{"length": 40}',
            "transform": "truncate",
        },
        ROW,  # the blank row at the end is ignored
    ]
    response = admin_client_.post(
        reverse("dashboard:mapping", args=[customers_v1.pk]), form_data(rows, note="Add phone")
    )

    assert response.status_code == 302, response.context["formset"].errors
    new = versions_of(customers_v1).get(is_active=True)
    assert new.version == 2 and new.created_by == admin_user and new.note == "Add phone"
    assert [r["target_path"] for r in new.as_rows()] == ["Name", "Email__c", "Phone"]
    assert new.as_rows()[2]["params"] == {"length": 40}
    customers_v1.refresh_from_db()
    assert not customers_v1.is_active and customers_v1.fields.count() == 2


def test_bad_rows_are_shown_inline_and_nothing_is_saved(admin_client_, customers_v1):
    rows = [
        ROW | {"source_path": "Name", "target_path": "Name", "params": "{not json"},
        ROW | {"source_path": "Other", "target_path": "Name"},
    ]
    response = admin_client_.post(
        reverse("dashboard:mapping", args=[customers_v1.pk]), form_data(rows)
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "Write the parameters as JSON" in page
    assert versions_of(customers_v1).count() == 1


def test_removing_a_row(admin_client_, customers_v1):
    rows = [
        ROW | {"source_path": "Name", "target_path": "Name"},
        ROW | {"source_path": "Email", "target_path": "Email__c", "DELETE": "on"},
    ]
    admin_client_.post(reverse("dashboard:mapping", args=[customers_v1.pk]), form_data(rows))
    assert [r["target_path"] for r in versions_of(customers_v1).get(is_active=True).as_rows()] == [
        "Name"
    ]


def test_history_shows_what_changed_and_rollback_restores_old_rows(admin_client_, customers_v1):
    v2 = customers_v1.save_new_version(
        [{"source_path": "Name", "target_path": "Name", "transform": "upper"}], note="Shout"
    )

    page = admin_client_.get(reverse("dashboard:mapping_history", args=[v2.pk]))
    entries = page.context["entries"]
    assert [e["version"].version for e in entries] == [2, 1]
    kinds = {(c.kind, c.target) for c in entries[0]["changes"]}
    assert kinds == {("changed", "Name"), ("removed", "Email__c")}
    assert "Roll back to version 1" in page.content.decode()

    response = admin_client_.post(reverse("dashboard:mapping_rollback", args=[customers_v1.pk]))

    v3 = versions_of(customers_v1).get(is_active=True)
    assert response["Location"] == reverse("dashboard:mapping_history", args=[v3.pk])
    assert v3.version == 3 and v3.as_rows() == customers_v1.as_rows()
    assert v3.note == "Rolled back to v1"


def test_history_query_count_is_fixed(admin_client_, customers_v1, django_assert_num_queries):
    for n in range(5):
        customers_v1.save_new_version([{"source_path": "Name", "target_path": f"F{n}"}])
    # session, user, permissions (2), the mapping, its versions, their rows
    with django_assert_num_queries(7):
        admin_client_.get(reverse("dashboard:mapping_history", args=[customers_v1.pk]))


@pytest.mark.skipif(connection.vendor != "sqlite", reason="reads SQLite's query plan")
def test_recent_records_come_newest_first_from_an_index(admin_client_, customers_v1):
    now = timezone.now()
    for code, minutes_ago in [("OLD01", 30), ("NEW01", 20), ("MID01", 10), ("NEW01", 5)]:
        factories.SyncEventFactory(
            source_object=customers_v1.source_object,
            source_id=code,
            created_at=now - timedelta(minutes=minutes_ago),
        )
    factories.SyncEventFactory(source_object="kashflow.Customer", source_id="OTHER")

    with CaptureQueriesContext(connection) as queries:
        response = admin_client_.get(reverse("dashboard:mapping", args=[customers_v1.pk]))

    assert response.context["recent_records"] == ["NEW01", "MID01", "OLD01"]
    [recent] = [q["sql"] for q in queries if "LIMIT 200" in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {recent}")
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    # The newest 200 events of the object straight from the index, not a scan and sort of
    # the whole ledger.
    assert "USING INDEX event_object_recent" in plan and "TEMP B-TREE" not in plan


def test_preview_maps_a_real_record_without_saving(admin_client_, customers_v1):
    pytest.importorskip("integration.mapping")
    factories.SyncEventFactory(
        source_object=customers_v1.source_object,
        source_id="ACME01",
        payload={"Name": "Acme Ltd", "Email": "Accounts@Acme.co.uk"},
    )
    rows = [
        ROW | {"source_path": "Name", "target_path": "Name"},
        ROW | {"source_path": "Email", "target_path": "Email__c", "transform": "lower"},
    ]
    response = admin_client_.post(
        reverse("dashboard:mapping_preview", args=[customers_v1.pk]),
        form_data(rows, record_id="ACME01"),
    )
    page = response.content.decode()
    assert "accounts@acme.co.uk" in page and "Acme Ltd" in page
    assert versions_of(customers_v1).count() == 1 and SyncEvent.objects.count() == 1


def test_preview_says_when_the_record_is_unknown(admin_client_, customers_v1):
    response = admin_client_.post(
        reverse("dashboard:mapping_preview", args=[customers_v1.pk]),
        form_data([ROW | {"source_path": "Name", "target_path": "Name"}], record_id="NOPE"),
    )
    page = response.content.decode()
    assert "NOPE" in page and ("has reached kashforce yet" in page or "mapping engine" in page)


def editable_rows(mapping_set):
    """The rows as the editor's form holds them, posted back unchanged."""
    return [
        {
            **ROW,
            **{key: row[key] for key in ("source_path", "target_path", "transform", "default")},
            "params": json.dumps(row["params"]) if row.get("params") else "",
            "required": row.get("required", False),
        }
        for row in mapping_set.as_rows()
    ]


@pytest.mark.parametrize(
    "template", TEMPLATES, ids=lambda t: f"{t.source_object}>{t.target_object}"
)
def test_every_default_mapping_saves_unchanged_through_the_editor(sandbox, admin_client_, template):
    """The two customer mappings' conditional pairs were refused as 'Another row already writes
    this field' although the engine accepts them."""
    connect_both(sandbox)  # the targets' and sources' real fields, from describe
    pair = (template.flow, template.source_object, template.target_object)
    active = MappingSet.objects.history(*pair).get(is_active=True)
    page = admin_client_.get(reverse("dashboard:mapping", args=[active.pk]))
    initial = [form.initial for form in page.context["formset"].initial_forms]

    response = admin_client_.post(
        reverse("dashboard:mapping", args=[active.pk]), form_data(editable_rows(active))
    )

    assert response.status_code == 302, (
        response.context["formset"].errors,
        response.context["version_form"].errors,
    )
    saved = MappingSet.objects.history(*pair).get(is_active=True)
    assert saved.version == 2 and saved.as_rows() == template.rows
    assert len(initial) == len(template.rows)


def test_a_source_field_that_does_not_exist_is_refused(sandbox, admin_client_):
    """A row reading Account.Phonee made every new-account invoice fail with INVALID_FIELD."""
    connect_both(sandbox)
    active = MappingSet.objects.active().get(
        flow="customers", source_object="salesforce.Account", target_object="kashflow.Customer"
    )
    rows = editable_rows(active)
    rows[1]["source_path"] = "Phonee"

    response = admin_client_.post(reverse("dashboard:mapping", args=[active.pk]), form_data(rows))

    assert response.status_code == 200
    assert "the source has no field &#x27;Phonee&#x27;. Did you mean &#x27;Phone&#x27;?" in (
        response.content.decode()
    )
    assert versions_of(active).count() == 1


def test_the_invoice_marker_is_shown_fixed_and_cannot_be_mapped(admin_client_):
    active = MappingSet.objects.active().get(
        flow="invoices", source_object="salesforce.Opportunity", target_object="kashflow.Invoice"
    )
    page = admin_client_.get(reverse("dashboard:mapping", args=[active.pk])).content.decode()
    assert (
        "Set by kashforce itself (not editable)" in page
        and "<code>CustomerReference</code>" in page
    )
    rows = [
        *editable_rows(active),
        ROW | {"source_path": "Name", "target_path": "CustomerReference"},
    ]

    response = admin_client_.post(reverse("dashboard:mapping", args=[active.pk]), form_data(rows))

    assert response.status_code == 200
    assert "kashforce sets CustomerReference itself" in response.content.decode()
    assert versions_of(active).count() == 1


FULL_RECORD_NOTE = "Not in KashFlow's customer list: read from the full customer record"


def test_the_editor_says_which_customer_fields_need_the_full_record(admin_client_):
    """TelephoneNumber and Email are not in KashFlow's customer list summaries (issue #21)."""
    mapping_set = MappingSet.objects.active().get(
        flow="customers", source_object="kashflow.Customer", target_object="salesforce.Account"
    )
    page = admin_client_.get(reverse("dashboard:mapping", args=[mapping_set.pk])).content.decode()
    rows = page.split('<tr class="mapping-row')[1:]
    noted = [row for row in rows if FULL_RECORD_NOTE in row]
    # The Phone row, and the Shipping* rows (delivery addresses are not in the summary either).
    assert sum('value="TelephoneNumber"' in row for row in noted) == 1
    assert len(noted) == 11
    assert all("TelephoneNumber" in row or "DeliveryAddresses" in row for row in noted)
    for target in ("Name", "BillingPostalCode", "BillingCity", "ExternalID__c"):
        assert all(FULL_RECORD_NOTE not in r for r in rows if f'value="{target}"' in r), target


def test_the_full_record_note_is_for_kashflow_customers_only(admin_client_, customers_v1):
    # The factory's pair reads kashflow.Supplier's Email: no customer summary applies to it.
    page = admin_client_.get(reverse("dashboard:mapping", args=[customers_v1.pk])).content.decode()
    assert 'value="Email"' in page and FULL_RECORD_NOTE not in page
