"""The small parts the dashboard's pages are made of."""

import pytest

from integration.changes import flatten, mapping_changes, payload_changes
from integration.export import CHUNK_ROWS, csv_response, safe_cell
from integration.links import RecordLinks
from integration.models import SyncEvent
from integration.paging import decode
from tests import factories


@pytest.mark.parametrize(
    ("code", "message", "label"),
    [
        ("INVALID_EMAIL_ADDRESS", "", "Invalid email address"),
        ("kf-400", "whatever", "kf-400"),
        ("", "Gave up after 5 attempts. Read timed out.", "Read timed out"),
        (
            "",
            "One two three four five six seven eight nine ten",
            "One two three four five six seven eight…",
        ),
        ("", "", "No message"),
    ],
)
def test_cause_label(code, message, label):
    assert SyncEvent.cause_label(code, message) == label


def test_payload_changes_by_dotted_path():
    before = {"Name": "Acme", "Contacts": [{"Email": "a@acme"}], "Gone": 1}
    after = {"Name": "Acme", "Contacts": [{"Email": "b@acme"}], "New": 2}
    assert [tuple(c) for c in payload_changes(before, after)] == [
        ("Contacts.0.Email", "a@acme", "b@acme"),
        ("Gone", 1, "—"),
        ("New", "—", 2),
    ]
    assert flatten({"a": {"b": [1, 2]}}) == {"a.b.0": 1, "a.b.1": 2}


def test_mapping_changes_match_rows_by_target():
    old = [{"target_path": "Name", "source_path": "Name", "transform": "copy"}]
    new = [
        {"target_path": "Name", "source_path": "CompanyName", "transform": "copy"},
        {"target_path": "Phone", "source_path": "Tel", "transform": "copy"},
    ]
    changes = mapping_changes(old, new)
    assert [(c.kind, c.target) for c in changes] == [("changed", "Name"), ("added", "Phone")]
    assert [tuple(d) for d in changes[0].details] == [("source_path", "Name", "CompanyName")]


@pytest.mark.parametrize("cursor", ["", "x", "1.2.3", "abc.def", None])
def test_a_bad_cursor_is_the_first_page(cursor):
    assert decode(cursor) is None


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=SUM(A1)", "'=SUM(A1)"),
        ("+44 20", "'+44 20"),
        ("-5", "'-5"),
        ("@x", "'@x"),
        ("Acme", "Acme"),
        (12, 12),
        (None, ""),
    ],
)
def test_safe_cell(value, cell):
    assert safe_cell(value) == cell


@pytest.mark.parametrize(
    "count", [0, 1, CHUNK_ROWS - 1, CHUNK_ROWS, CHUNK_ROWS + 1, 3 * CHUNK_ROWS]
)
def test_a_csv_download_holds_every_row_once_across_its_chunks(count, settings):
    import csv
    from datetime import UTC, datetime

    settings.TIME_ZONE = "Europe/London"
    summer = datetime(2026, 7, 1, 11, 30, 5, 900, tzinfo=UTC)
    rows = ([n, f"=name {n}", summer, None] for n in range(count))

    response = csv_response("x.csv", ["N", "Name", "When", "Empty"], rows)

    chunks = list(response.streaming_content)
    text = b"".join(chunks).decode("utf-8")
    assert text.startswith("\ufeffN,Name,When,Empty\r\n")
    parsed = list(csv.reader(text.removeprefix("\ufeff").splitlines()))
    assert parsed[1:] == [
        [str(n), f"'=name {n}", "2026-07-01 12:30:05 BST", ""] for n in range(count)
    ]
    assert len(chunks) <= count // CHUNK_ROWS + 1  # a chunk per CHUNK_ROWS rows, not per row


def test_links_for_both_directions():
    links = RecordLinks("https://acme.my.salesforce.com/")
    to_sf = factories.SyncEventFactory.build(
        source_object="kashflow.Customer", source_id="ACME 01", target_id="001000000000001AAA"
    )
    assert links.for_event(to_sf) == {
        "salesforce": "https://acme.my.salesforce.com/001000000000001AAA",
        "kashflow": "https://app.kashflow.com/customers/ACME%2001",
    }
    to_kf = factories.SyncEventFactory.build(
        source_object="salesforce.Product2",
        source_id="01t000000000001AAA",
        target_object="kashflow.Product",
        target_id="4000-BOOK",
    )
    assert links.for_event(to_kf) == {
        "salesforce": "https://acme.my.salesforce.com/01t000000000001AAA",
        "kashflow": None,  # no known KashFlow page for products
    }
    assert RecordLinks("").salesforce("001000000000001AAA") is None
    assert links.salesforce("not an id") is None
