"""Issue #19 case 7: the mapping editor's preview names the rows it marks, clears the marks of
rows since fixed, compares with the current record for Salesforce targets too, and lists each
transform's parameters."""

import pytest
from django.urls import reverse

from integration.clients.salesforce import SalesforceClient
from integration.models import Connection, CrossRef, MappingSet
from tests import factories
from tests.sandbox_connections import connect_both
from tests.test_mapping_editor import ROW, editable_rows, form_data

pytestmark = pytest.mark.django_db


@pytest.fixture
def customers_v1():
    mapping_set = factories.MappingSetFactory()
    factories.FieldMappingFactory(mapping_set=mapping_set, source_path="Name", target_path="Name")
    return mapping_set


def preview(client, mapping_set, rows, record_id="ACME01"):
    response = client.post(
        reverse("dashboard:mapping_preview", args=[mapping_set.pk]),
        form_data(rows, record_id=record_id),
    )
    assert response.status_code == 200
    return response.content.decode()


def marked_rows(page: str) -> int:
    rows = page.split('<tbody id="mapping-rows" hx-swap-oob="true">')[1]
    return rows.count('class="mapping-row has-error"')


def test_a_preview_names_the_rows_it_marks_in_red(admin_client_, customers_v1):
    rows = [
        ROW
        | {
            "source_path": "Name",
            "target_path": "Name",
            "transform": "truncate",
            "params": '{"lenght": 3}',
        },
        ROW | {"source_path": "Email", "target_path": "Email__c", "params": "{not json"},
    ]
    page = preview(admin_client_, customers_v1, rows)
    assert "Fix the rows marked in red first:" in page
    assert "Row 2 (Email__c): Parameters: Write the parameters as JSON" in page
    assert marked_rows(page) == 1  # the JSON is refused before the rows' own checks run
    rows[1]["params"] = ""
    page = preview(admin_client_, customers_v1, rows)
    assert "Row 1 (Name): truncate has no setting called &#x27;lenght&#x27;." in page
    assert marked_rows(page) == 1


def test_a_preview_after_the_rows_are_fixed_clears_their_red_marks(admin_client_, customers_v1):
    factories.SyncEventFactory(
        source_object=customers_v1.source_object, source_id="ACME01", payload={"Name": "Acme Ltd"}
    )
    rows = [
        ROW
        | {
            "source_path": "Name",
            "target_path": "Name",
            "transform": "truncate",
            "params": '{"length": 3}',
        }
    ]
    page = preview(admin_client_, customers_v1, rows)
    assert "Fix the rows" not in page and "Acm" in page
    assert marked_rows(page) == 0
    assert page.count('class="mapping-row"') == 1


def test_the_editor_lists_each_transform_s_parameters_in_a_full_width_box(
    admin_client_, customers_v1
):
    page = admin_client_.get(reverse("dashboard:mapping", args=[customers_v1.pk])).content.decode()
    assert "<textarea" in page and 'class="params"' in page
    assert "truncate</code></dt><dd>length: a positive number" in page
    assert "split_street" in page and "line (required): a line number from 1 to 4" in page


def test_the_preview_compares_with_the_current_salesforce_record(sandbox, admin_client_):
    """Every Salesforce target said 'not found': only KashFlow records were ever read."""
    connect_both(sandbox)
    salesforce = SalesforceClient(Connection.active(Connection.Kind.SALESFORCE))
    [result] = salesforce.create(
        "Account", [{"Name": "Harbour Supplies Ltd", "Phone": "01632 960001"}]
    )
    CrossRef.objects.create(object_type="customer", kashflow_key="HARB01", salesforce_id=result.id)
    active = MappingSet.objects.active().get(
        flow="customers", source_object="kashflow.Customer", target_object="salesforce.Account"
    )
    factories.SyncEventFactory(
        flow="customers",
        source_object="kashflow.Customer",
        source_id="HARB01",
        payload={"Code": "HARB01", "Name": "Harbour Supplies Ltd", "Telephone": "01632 960002"},
    )
    page = preview(admin_client_, active, editable_rows(active), record_id="HARB01")
    assert "Changes to the record as it is now" in page, page
    assert "01632 960001" in page  # the Phone now, beside what the mapping would write
