"""A small, realistic picture of a working install, for the browser tests."""

from datetime import timedelta

from django.utils import timezone

from integration.models import CrossRef, Flow, SyncEvent, SyncRun, Trigger
from tests import factories


def seed_dashboard() -> dict:
    now = timezone.now()
    factories.SalesforceConnectionFactory(
        name="Salesforce live",
        instance_url="https://acme.my.salesforce.com",
        api_usage_used=18_250,
        api_usage_limit=100_000,
        api_usage_at=now,
        status="ok",
    )
    factories.KashFlowConnectionFactory(name="KashFlow", status="ok")
    runs = {}
    for flow in Flow:
        for days_ago in range(10, -1, -1):
            run = SyncRun.objects.create(
                flow=flow,
                trigger=Trigger.SCHEDULE,
                status=SyncRun.Status.SUCCEEDED,
                created_at=now - timedelta(days=days_ago, minutes=3),
                started_at=now - timedelta(days=days_ago, minutes=3),
                finished_at=now - timedelta(days=days_ago, minutes=2),
                read_count=20,
                written_count=12 + days_ago % 5,
            )
            runs[flow] = run
            for n in range(3 + (days_ago * 7 + len(flow)) % 9):
                factories.SyncEventFactory(
                    run=run,
                    flow=flow,
                    source_id=f"{flow[:3].upper()}{days_ago:02d}{n:02d}",
                    dedupe_key=f"{flow}:{days_ago}:{n}",
                    status=SyncEvent.Status.SUCCEEDED,
                    finished_at=run.finished_at,
                    created_at=run.created_at,
                )
    failed = []
    for n in range(6):
        failed.append(
            factories.SyncEventFactory(
                run=runs[Flow.CUSTOMERS],
                source_id=f"ACME{n:02d}",
                dedupe_key=f"customers:ACME{n:02d}:bad-email",
                status=SyncEvent.Status.FAILED_PERMANENT,
                error_class=SyncEvent.ErrorClass.PERMANENT,
                error_code="INVALID_EMAIL_ADDRESS",
                message=f"Email: invalid email address: accounts@acme{n}",
                attempts=1,
            )
        )
    factories.SyncEventFactory(
        run=runs[Flow.INVOICES],
        flow=Flow.INVOICES,
        direction="sf_to_kf",
        source_object="salesforce.Opportunity",
        source_id="0065g00000AbCdEAAV",
        target_object="kashflow.Invoice",
        target_id="1043",
        dedupe_key="invoices:0065g00000AbCdEAAV:v1",
        payload={"Name": "Acme renewal", "Amount": "1000.00", "CloseDate": "2026-11-18"},
        status=SyncEvent.Status.SUCCEEDED,
        created_at=now - timedelta(days=2),
        finished_at=now - timedelta(days=2),
    )
    invoice = factories.SyncEventFactory(
        run=runs[Flow.INVOICES],
        flow=Flow.INVOICES,
        direction="sf_to_kf",
        source_object="salesforce.Opportunity",
        source_id="0065g00000AbCdEAAV",
        target_object="kashflow.Invoice",
        target_id="1043",
        dedupe_key="invoices:0065g00000AbCdEAAV:v2",
        payload={"Name": "Acme renewal", "Amount": "1200.00", "CloseDate": "2026-11-20"},
        status=SyncEvent.Status.FAILED_PERMANENT,
        error_class=SyncEvent.ErrorClass.PERMANENT,
        message="KashFlow refused the invoice: nominal code 4001 does not exist.",
        attempts=2,
    )
    CrossRef.objects.create(
        object_type=CrossRef.ObjectType.INVOICE,
        salesforce_id="0065g00000AbCdEAAV",
        kashflow_key="1043",
        kashflow_synced_at=now - timedelta(days=2),
    )
    return {"failed": failed, "invoice": invoice}
