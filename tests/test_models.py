from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.utils import timezone

from integration.models import (
    Connection,
    CrossRef,
    Cursor,
    MappingSet,
    SyncEvent,
    SyncRun,
    content_hash,
)
from tests.factories import (
    CrossRefFactory,
    FieldMappingFactory,
    KashFlowConnectionFactory,
    MappingSetFactory,
    SyncEventFactory,
    SyncRunFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def test_content_hash_ignores_key_order():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_only_one_active_connection_per_kind():
    KashFlowConnectionFactory(is_active=True)
    with pytest.raises(IntegrityError):
        KashFlowConnectionFactory(is_active=True)


def test_active_connection_missing_says_what_to_do():
    with pytest.raises(Connection.DoesNotExist, match="Integration admin can add one"):
        Connection.active(Connection.Kind.KASHFLOW)


def test_api_budget_threshold(settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "API_BUDGET_SHARE": 0.8}
    connection = KashFlowConnectionFactory()
    connection.record_api_usage(used=11999, limit=15000)
    assert not connection.over_api_budget()
    connection.record_api_usage(used=12000, limit=15000)
    assert Connection.objects.get(pk=connection.pk).over_api_budget()


def test_crossref_unique_both_ways():
    CrossRefFactory(salesforce_id="001000000000001AAA", kashflow_key="ACME01")
    with pytest.raises(IntegrityError):
        CrossRefFactory(salesforce_id="001000000000001AAA", kashflow_key="OTHER")


def test_crossref_same_key_allowed_for_another_object_type():
    CrossRefFactory(kashflow_key="ACME01")
    CrossRefFactory(kashflow_key="ACME01", object_type=CrossRef.ObjectType.CONTACT)


def test_crossref_needs_at_least_one_side():
    with pytest.raises(IntegrityError):
        CrossRef.objects.create(object_type="customer")


def test_saving_a_mapping_makes_a_new_active_version_and_keeps_the_old():
    user = UserFactory()
    v1 = MappingSetFactory()
    FieldMappingFactory(mapping_set=v1, source_path="Name", target_path="Name")
    v2 = v1.save_new_version(
        [
            {"source_path": "Name", "target_path": "Name"},
            {"source_path": "Code", "target_path": "ExternalID__c"},
        ],
        user=user,
    )
    v1.refresh_from_db()
    assert (v1.is_active, v2.is_active, v2.version) == (False, True, 2)
    assert [r["target_path"] for r in v2.as_rows()] == ["Name", "ExternalID__c"]
    assert v2.created_by == user


def test_rollback_is_a_new_version_with_the_old_rows():
    v1 = MappingSetFactory()
    FieldMappingFactory(mapping_set=v1, source_path="Name", target_path="Name")
    v2 = v1.save_new_version([{"source_path": "Code", "target_path": "AccountNumber"}])
    v3 = MappingSet.objects.get(pk=v1.pk).rollback_to()
    assert v3.version == 3 and v3.is_active
    assert v3.as_rows() == v1.as_rows()
    pair = (v1.flow, v1.source_object, v1.target_object)
    assert MappingSet.objects.history(*pair).active().get() == v3
    assert not MappingSet.objects.get(pk=v2.pk).is_active


def test_two_active_versions_are_refused():
    MappingSetFactory(version=1)
    with pytest.raises(IntegrityError):
        MappingSetFactory(version=2)


def test_event_claim_is_exclusive():
    event = SyncEventFactory()
    other_worker_copy = SyncEvent.objects.get(pk=event.pk)
    assert event.claim()
    assert not other_worker_copy.claim()
    event.refresh_from_db()
    assert event.status == SyncEvent.Status.RUNNING and event.attempts == 1


def test_transient_failure_backs_off_then_joins_the_error_queue(settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "MAX_ATTEMPTS": 2}
    event = SyncEventFactory()
    event.claim()
    event.mark_failed("KashFlow timed out", permanent=False)
    assert event.status == SyncEvent.Status.FAILED_TRANSIENT
    assert event.next_attempt_at > timezone.now()
    assert not SyncEvent.objects.due().filter(pk=event.pk).exists()
    assert (
        SyncEvent.objects.due(now=event.next_attempt_at + timedelta(seconds=1))
        .filter(pk=event.pk)
        .exists()
    )

    SyncEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())
    event.claim()
    event.mark_failed("KashFlow timed out", permanent=False)
    assert event.status == SyncEvent.Status.FAILED_PERMANENT
    assert event.message.startswith("Gave up after 2 attempts")
    assert list(SyncEvent.objects.unresolved()) == [event]


def test_permanent_failure_goes_straight_to_the_error_queue():
    event = SyncEventFactory()
    event.claim()
    event.mark_failed("Email 'x' is not valid", permanent=True, code="INVALID_EMAIL_ADDRESS")
    assert event.status == SyncEvent.Status.FAILED_PERMANENT
    assert event.error_class == SyncEvent.ErrorClass.PERMANENT
    assert SyncEvent.objects.unresolved().count() == 1


def test_retry_puts_a_failed_event_back_once():
    user = UserFactory()
    event = SyncEventFactory(status=SyncEvent.Status.FAILED_PERMANENT)
    double_click = SyncEvent.objects.get(pk=event.pk)
    assert event.retry(user)
    assert event.status == SyncEvent.Status.PENDING and event.resolved_by == user
    assert not double_click.retry(user)  # the second click finds nothing to retry
    assert SyncEvent.objects.unresolved().count() == 0


def test_retry_of_a_succeeded_event_does_nothing():
    event = SyncEventFactory(status=SyncEvent.Status.SUCCEEDED)
    assert not event.retry()
    assert SyncEvent.objects.get(pk=event.pk).status == SyncEvent.Status.SUCCEEDED


def test_ignore_needs_a_reason_and_leaves_the_queue():
    user = UserFactory()
    event = SyncEventFactory(status=SyncEvent.Status.FAILED_PERMANENT)
    with pytest.raises(ValueError, match="Say why"):
        event.ignore(user, "  ")
    assert event.ignore(user, "Test customer, deleted in KashFlow")
    event.refresh_from_db()
    assert event.status == SyncEvent.Status.IGNORED
    assert SyncEvent.objects.unresolved().count() == 0


def test_dedupe_key_is_unique():
    SyncEventFactory(dedupe_key="invoices:006xx:2024-01-01")
    with pytest.raises(IntegrityError):
        SyncEventFactory(dedupe_key="invoices:006xx:2024-01-01")


def test_run_claim_and_counts_and_finish():
    run = SyncRunFactory()
    assert run.claim()
    assert not SyncRun.objects.get(pk=run.pk).claim()
    run.add_counts(read=10, written=7, skipped=2, failed=1, done=10, total=10)
    assert run.progress_percent == 100
    run.finish("10 read, 7 written, 2 unchanged, 1 failed")
    assert run.status == SyncRun.Status.PARTIAL


def test_run_with_no_failures_succeeds():
    run = SyncRunFactory()
    run.claim()
    run.add_counts(read=3, written=3)
    run.finish()
    assert run.status == SyncRun.Status.SUCCEEDED


def test_stale_running_events_are_found_for_the_sweeper():
    event = SyncEventFactory()
    event.claim()
    SyncEvent.objects.filter(pk=event.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
    assert list(SyncEvent.objects.stale_running(timedelta(minutes=15))) == [event]


def test_record_timeline_finds_events_by_either_id():
    a = SyncEventFactory(source_id="CUST0042", target_id="001000000000042AAA")
    assert list(SyncEvent.objects.for_record("001000000000042AAA")) == [a]
    assert list(SyncEvent.objects.for_record("CUST0042")) == [a]


def test_latest_by_source_gives_each_records_newest_event(django_assert_num_queries):
    SyncEventFactory(flow="payments", source_object="kashflow.Invoice", source_id="1001")
    newest = SyncEventFactory(flow="payments", source_object="kashflow.Invoice", source_id="1001")
    other = SyncEventFactory(flow="payments", source_object="kashflow.Invoice", source_id="1002")
    SyncEventFactory(flow="products", source_object="kashflow.Invoice", source_id="1003")
    with django_assert_num_queries(2):
        latest = SyncEvent.objects.latest_by_source(
            "payments", "kashflow.Invoice", ["1001", "1002", "1003"]
        )
    assert latest == {"1001": newest, "1002": other}


def test_cursor_advances_per_flow_and_connection():
    connection = KashFlowConnectionFactory()
    assert Cursor.get_value("customers", connection) == ""
    Cursor.advance("customers", connection, "2024-05-01 10:00:00")
    Cursor.advance("customers", connection, "2024-05-02 10:00:00")
    assert Cursor.get_value("customers", connection) == "2024-05-02 10:00:00"
    assert Cursor.objects.count() == 1
