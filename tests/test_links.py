"""Cross-references for a batch: linking many at once with a fixed number of queries."""

import pytest

from integration.models import CrossRef
from integration.sync.links import Links
from tests.factories import CrossRefFactory

pytestmark = pytest.mark.django_db


def pairs(count: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"001000000000{n:03d}AAA", f"CUST{n:04d}") for n in range(start, start + count)]


def test_link_many_links_a_batch_in_a_few_queries_not_a_few_per_link(
    django_assert_max_num_queries,
):
    # Two reads (one per side), then the insert inside its savepoint; SQLite splits an insert at
    # 999 parameters, so 200 rows take two statements there.
    with django_assert_max_num_queries(6):
        refs = Links().link_many("customer", pairs(10))
    with django_assert_max_num_queries(6):
        Links().link_many("customer", pairs(200, start=100))
    assert [(r.salesforce_id, r.kashflow_key) for r in refs] == pairs(10)
    assert all(r.pk for r in refs)
    assert CrossRef.objects.filter(object_type="customer").count() == 210


def test_link_many_fills_in_the_missing_side_of_known_references():
    known = CrossRefFactory(salesforce_id=None, kashflow_key="CUST0001")
    refs = Links().link_many("customer", [("001000000000001AAA", "CUST0001")])
    known.refresh_from_db()
    assert refs[0].pk == known.pk and known.salesforce_id == "001000000000001AAA"
    assert CrossRef.objects.count() == 1


def test_link_many_goes_one_at_a_time_when_the_batch_insert_conflicts():
    # Two Salesforce ids for one KashFlow key: the single insert breaks the unique constraint,
    # and the one-at-a-time path does what `link` always did (the later id wins).
    refs = Links().link_many(
        "customer", [("001000000000001AAA", "CUST0001"), ("001000000000002AAA", "CUST0001")]
    )
    assert refs[0].pk == refs[1].pk
    assert list(CrossRef.objects.values_list("salesforce_id", "kashflow_key")) == [
        ("001000000000002AAA", "CUST0001")
    ]


def test_written_many_stores_each_hash_in_one_statement(django_assert_num_queries):
    refs = Links().link_many("customer", pairs(3))
    with django_assert_num_queries(1):
        Links().written_many("salesforce", [(ref, f"hash{i}") for i, ref in enumerate(refs)])
    stored = dict(CrossRef.objects.values_list("kashflow_key", "salesforce_hash"))
    assert stored == {"CUST0000": "hash0", "CUST0001": "hash1", "CUST0002": "hash2"}


def test_written_many_stores_a_batch_of_hashes_in_one_statement_and_touches_nothing_else(
    django_assert_num_queries,
):
    # bulk_update split 400 rows in two statements on SQLite (at 249), and built a compiled
    # lookup per row and field, which was most of the time a batch's hashes took.
    refs = Links().link_many("customer", pairs(400))
    CrossRef.objects.update(kashflow_hash="kf")
    before = dict(CrossRef.objects.values_list("pk", "updated_at"))
    with django_assert_num_queries(1):
        Links().written_many("salesforce", [(ref, f"hash{i}") for i, ref in enumerate(refs)])
    rows = {row.pk: row for row in CrossRef.objects.all()}
    for i, ref in enumerate(refs):
        row = rows[ref.pk]
        assert (row.salesforce_hash, row.kashflow_hash) == (f"hash{i}", "kf")
        assert row.salesforce_synced_at == ref.salesforce_synced_at is not None
        assert row.updated_at == before[ref.pk]
        assert row.kashflow_synced_at is None


def test_written_many_stores_the_last_hash_of_a_reference_given_twice():
    # A batch can hold two events of one customer: Salesforce keeps the later upsert, and so
    # must the database and the reference in memory (one CASE arm per row, the last value).
    (ref,) = Links().link_many("customer", pairs(1))
    Links().written_many("salesforce", [(ref, "earlier"), (ref, "later")])
    assert ref.salesforce_hash == "later"
    assert CrossRef.objects.get().salesforce_hash == "later"
