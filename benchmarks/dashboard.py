"""B5's two steps, run in a kashforce child process (benchmarks.worker): fill a fresh database
with a realistic ledger of N events, then time every dashboard page with Django's test Client.

The ledger is made through the real models with bulk_create: runs of every flow over the last
90 days, events in every status with a share of errors of several causes (some retrying, some
ignored, some still waiting), cross-references, a few mapping versions and audit entries, and
Salesforce API usage on the connection, so that every page has real content to show.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import timedelta

DAYS = 90
EVENTS_PER_RUN = 50  # on average; a run of a minute schedule often has far fewer
ADMIN = "bench-admin"

# Per flow: (share of events, direction, source object, target object).
FLOWS = {
    "customers": (0.40, "kf_to_sf", "kashflow.Customer", "salesforce.Account"),
    "invoices": (0.20, "sf_to_kf", "salesforce.Opportunity", "kashflow.Invoice"),
    "payments": (0.25, "kf_to_sf", "kashflow.Invoice", "salesforce.Opportunity"),
    "products": (0.15, "kf_to_sf", "kashflow.Product", "salesforce.Product2"),
}
# Outcome shares of an event; the rest (SUCCEEDED) is filled in below.
OUTCOMES = {
    "skipped": 0.18,
    "failed_permanent": 0.05,
    "failed_transient": 0.012,
    "ignored": 0.015,
    "pending": 0.01,
}
# Permanent causes per flow: (code, message). A blank code is a transient failure that ran out
# of attempts, which the queue names by its message.
PERMANENT = {
    "customers": [
        ("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]"),
        ("INVALID_EMAIL_ADDRESS", "Email: invalid email address: accounts@@example"),
        ("DUPLICATE_VALUE", "duplicate value found: KashFlow_Code__c duplicates value on record"),
        ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Billing postcode must be a UK postcode"),
        ("", "Gave up after 5 attempts. Read timed out. (read timeout=30)"),
    ],
    "invoices": [
        ("NO_ACCOUNT", "The Opportunity has no Account, so there is no customer to invoice."),
        ("NO_LINE_ITEMS", "The Opportunity has no products: add line items in Salesforce."),
        ("MAPPING", "Line 1: nominal code 4000 is not a KashFlow sales code."),
    ],
    "payments": [
        ("NOT_LINKED", "Invoice 1043 is not linked to a Salesforce Opportunity yet."),
        ("OPPORTUNITY_MISSING", "The Opportunity of invoice 1043 was deleted in Salesforce."),
    ],
    "products": [
        ("NO_STANDARD_PRICEBOOK", "The org has no active standard price book."),
        ("DUPLICATE_VALUE", "duplicate value found: ProductCode duplicates value on record"),
    ],
}
TRANSIENT = [
    ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record"),
    ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    ("", "HTTP 503 from KashFlow: Service Unavailable"),
]
IGNORE_REASONS = ["Duplicate customer, merged by hand", "Test record", "Already fixed in KashFlow"]
TRIGGERS = ["schedule"] * 6 + ["poll"] * 2 + ["push", "manual", "retry"]


def salesforce_id(prefix: str, n: int) -> str:
    return f"{prefix}{n:012d}AAA"


class Ledger:
    """The records of one flow: ids on both sides and a payload that changes now and then."""

    def __init__(self, flow: str, count: int, rng: random.Random):
        self.flow, self.count, self.rng = flow, count, rng

    def record(self) -> tuple[str, str, dict]:
        """(source id, target id, payload) of a record: a busy twentieth of the records has
        30% of the changes (about 50 events each in 90 days), the rest a few each."""
        busy = self.rng.random() < 0.3
        n = self.rng.randrange(max(1, self.count // 20) if busy else self.count)
        version = self.rng.randrange(4)
        if self.flow == "customers":
            code = f"CUST{n:05d}"
            return code, salesforce_id("001", n), _customer(code, n, version)
        if self.flow == "invoices":
            opportunity = salesforce_id("006", n)
            return opportunity, str(1000 + n), _opportunity(opportunity, n, version)
        if self.flow == "payments":
            number = str(1000 + n)
            return number, salesforce_id("006", n), _invoice_payments(number, n, version)
        code = f"4000:P{n:04d}"
        return code, salesforce_id("01t", n), _product(code, n, version)


def _customer(code: str, n: int, version: int) -> dict:
    return {
        "Code": code,
        "Name": f"Customer {n} Ltd" + (" (trading)" if version == 3 else ""),
        "Email": f"accounts{n}@example.co.uk",
        "Telephone": f"0161 496 {n % 10000:04d}",
        "Addresses": [{"Line1": f"{n} High Street", "Town": "Leeds", "PostCode": "LS1 4AP"}],
        "Contacts": [{"FirstName": "Sam", "LastName": f"Taylor {version}", "Email": "sam@x.uk"}],
        "CreditLimit": f"{1000 * (1 + version)}.00",
    }


def _opportunity(opportunity: str, n: int, version: int) -> dict:
    return {
        "Id": opportunity,
        "Name": f"Order {n}",
        "AccountId": salesforce_id("001", n % 5000),
        "CloseDate": "2025-06-30",
        "Amount": f"{120 * (1 + n % 9) + version}.00",
        "OpportunityLineItems": [
            {"ProductCode": f"P{n % 200:04d}", "Quantity": 1 + version, "UnitPrice": "120.00"}
        ],
    }


def _invoice_payments(number: str, n: int, version: int) -> dict:
    return {
        "Number": int(number),
        "CustomerCode": f"CUST{n % 5000:05d}",
        "GrossAmount": f"{144 * (1 + n % 9)}.00",
        "PaymentLines": [
            {"Number": k, "Amount": "48.00", "Date": "2025-07-01"} for k in range(version + 1)
        ],
    }


def _product(code: str, n: int, version: int) -> dict:
    return {"Code": code, "Name": f"Widget {n}", "Price": f"{9 + version}.99", "VATRate": "20"}


# --------------------------------------------------------------------------------------------
# Filling the database


def fill(n: int, seed: str = "b5") -> dict:
    """Add a ledger of `n` events (and what goes with it) to an empty, migrated kashforce."""
    from django.db import transaction

    rng = random.Random(seed)
    started = time.perf_counter()
    with transaction.atomic():
        admin, operator = _users()
        runs = _runs(n, rng)
        events = _events(n, runs, rng, operator)
        _count(runs, events)
        _save(runs, events)
        crossrefs = _crossrefs(n)
        audit = _audit_and_mappings(admin, operator, events, rng)
        _api_usage()
    return {
        "seconds": time.perf_counter() - started,
        "events": len(events),
        "runs": len(runs),
        "crossrefs": crossrefs,
        "audit_entries": audit,
    }


def _users():
    from django.contrib.auth.models import Group, User

    from integration.access import INTEGRATION_ADMIN_GROUP, OPERATIONS_GROUP

    admin = User.objects.create_user(ADMIN, password="bench")
    admin.groups.add(Group.objects.get(name=INTEGRATION_ADMIN_GROUP))
    operator = User.objects.create_user("olivia", password="bench")
    operator.groups.add(Group.objects.get(name=OPERATIONS_GROUP))
    return admin, operator


def _runs(n: int, rng: random.Random) -> list:
    from django.utils import timezone

    from integration.models import SyncRun

    now = timezone.now()
    flows, weights = list(FLOWS), [share for share, *_ in FLOWS.values()]
    moments = sorted(
        now - timedelta(seconds=rng.uniform(60, DAYS * 86400))
        for _ in range(n // EVENTS_PER_RUN or 1)
    )
    runs = []
    for created in moments:
        runs.append(
            SyncRun(
                flow=rng.choices(flows, weights)[0],
                trigger=rng.choice(TRIGGERS),
                status=SyncRun.Status.SUCCEEDED,
                created_at=created,
                started_at=created + timedelta(seconds=1),
                collect_started_at=created + timedelta(seconds=1),
                collected_at=created + timedelta(seconds=3),
                heartbeat_at=created + timedelta(seconds=20),
                finished_at=created + timedelta(seconds=rng.uniform(5, 120)),
            )
        )
    # The newest run is still going (its page polls and its progress fragment is measured),
    # started a moment ago, as on a dashboard whose workers run every minute.
    latest = runs[-1]
    latest.status, latest.finished_at = SyncRun.Status.RUNNING, None
    latest.created_at = latest.started_at = now - timedelta(seconds=40)
    latest.heartbeat_at = now - timedelta(seconds=5)
    return runs


def _events(n: int, runs: list, rng: random.Random, operator) -> list:
    from django.utils import timezone

    from integration.models import SyncEvent

    now = timezone.now()
    ledgers = {flow: Ledger(flow, max(20, n // 20), rng) for flow in FLOWS}
    outcomes = [*OUTCOMES, "succeeded"]
    outcome_weights = [*OUTCOMES.values(), 1 - sum(OUTCOMES.values())]
    events = []
    for i in range(n):
        run = runs[min(int(i / n * len(runs)), len(runs) - 1)]
        _, direction, source_object, target_object = FLOWS[run.flow]
        source_id, target_id, payload = ledgers[run.flow].record()
        status = rng.choices(outcomes, outcome_weights)[0]
        if run.status == "running":
            status = rng.choice(["succeeded", "pending", "running"])
        created = run.created_at + timedelta(seconds=2 + rng.random())
        event = SyncEvent(
            run=run,
            flow=run.flow,
            direction=direction,
            source_object=source_object,
            source_id=source_id,
            target_object=target_object,
            target_id=target_id if status in ("succeeded", "skipped") else "",
            payload=payload,
            content_hash=f"{hash((source_id, str(payload))) & (2**64 - 1):016x}" * 4,
            dedupe_key=f"{run.flow}:{source_object}:{source_id}:{i}",
            status=status,
            attempts=0 if status == "pending" else 1,
            created_at=created,
            finished_at=None,
        )
        _outcome(event, rng, now, operator)
        events.append(event)
    return events


def _outcome(event, rng: random.Random, now, operator) -> None:
    done = event.created_at + timedelta(seconds=rng.uniform(3, 90))
    if event.status in ("succeeded", "skipped"):
        event.finished_at = done
        event.message = "" if event.status == "succeeded" else "Unchanged since the last sync."
    elif event.status in ("failed_permanent", "ignored"):
        event.error_code, event.message = rng.choice(PERMANENT[event.flow])
        event.error_class = "transient" if not event.error_code else "permanent"
        event.attempts = 5 if not event.error_code else 1
        if event.status == "ignored":
            event.ignored_reason, event.resolved_by = rng.choice(IGNORE_REASONS), operator
            event.finished_at = done
    elif event.status == "failed_transient":
        event.error_code, event.message = rng.choice(TRANSIENT)
        event.error_class, event.attempts = "transient", rng.randint(1, 4)
        event.next_attempt_at = now + timedelta(minutes=rng.randint(1, 60))
    elif event.status == "running":
        event.claimed_at = now


def _count(runs: list, events: list) -> None:
    """Each run's counters and status from its events, as the engine would have left them."""
    from integration.models import SyncRun

    for event in events:
        run = event.run
        run.read_count += 1
        run.progress_done += event.status not in ("pending", "running")
        if event.status == "succeeded":
            run.written_count += 1
        elif event.status == "skipped":
            run.skipped_count += 1
        elif event.status in ("failed_permanent", "ignored"):
            run.failed_count += 1
    for run in runs:
        run.progress_total = run.read_count
        if run.status != SyncRun.Status.RUNNING and run.failed_count:
            run.status = SyncRun.Status.PARTIAL
        run.summary = (
            f"{run.written_count} synced, {run.skipped_count} unchanged, {run.failed_count} failed."
        )


def _save(runs: list, events: list) -> None:
    from integration.models import SyncEvent, SyncRun

    SyncRun.objects.bulk_create(runs, batch_size=2000)
    # Each event's run_id is taken from its run, whose pk bulk_create has just filled in.
    SyncEvent.objects.bulk_create(events, batch_size=2000)


def _crossrefs(n: int) -> int:
    from integration.models import CrossRef

    count = max(20, n // 20)
    kinds = (
        (CrossRef.ObjectType.CUSTOMER, "001", lambda k: f"CUST{k:05d}"),
        (CrossRef.ObjectType.INVOICE, "006", lambda k: str(1000 + k)),
        (CrossRef.ObjectType.PRODUCT, "01t", lambda k: f"4000:P{k:04d}"),
    )
    rows = [
        CrossRef(
            object_type=object_type,
            salesforce_id=salesforce_id(prefix, k),
            kashflow_key=key(k),
            salesforce_hash="a" * 64,
        )
        for object_type, prefix, key in kinds
        for k in range(count)
    ]
    CrossRef.objects.bulk_create(rows, batch_size=2000)
    return len(rows)


def _audit_and_mappings(admin, operator, events: list, rng: random.Random) -> int:
    """Two new versions of the customers mapping (through the model, which audits them), and
    the retries and ignores the ignored events stand for."""
    from integration.models import AuditEntry, MappingSet

    mapping = MappingSet.objects.active().get(
        flow="customers", source_object="kashflow.Customer", target_object="salesforce.Account"
    )
    rows = mapping.as_rows()
    newer = mapping.save_new_version(rows[:-1], user=admin, note="Phone no longer synced")
    newer.save_new_version(rows, user=admin, note="Phone back")
    ignored = [event for event in events if event.status == "ignored"][:300]
    AuditEntry.objects.bulk_create(
        AuditEntry(
            created_at=event.finished_at,
            user=operator,
            username=operator.username,
            action=rng.choice([AuditEntry.Action.ERROR_IGNORED, AuditEntry.Action.ERROR_RETRIED]),
            object_type=AuditEntry.ObjectType.EVENT,
            object_id=str(event.pk),
            object_label=str(event),
            summary=f"Reason: {event.ignored_reason}",
        )
        for event in ignored
    )
    return AuditEntry.objects.count()


def _api_usage() -> None:
    from integration.models import Connection

    for connection in Connection.objects.filter(kind=Connection.Kind.SALESFORCE):
        connection.record_api_usage(23_456, 100_000)


# --------------------------------------------------------------------------------------------
# Measuring the pages


def pages() -> list[tuple[str, str]]:
    """(name, URL) of each dashboard page and download, for records that exist in this ledger."""
    from django.urls import reverse

    from integration.models import MappingSet, SyncEvent, SyncRun

    run = (
        SyncRun.objects.filter(status=SyncRun.Status.PARTIAL).order_by("-failed_count", "-pk")
    ).first() or SyncRun.objects.order_by("-pk").first()
    running = SyncRun.objects.filter(status=SyncRun.Status.RUNNING).order_by("-pk").first()
    record = (
        SyncEvent.objects.filter(flow="customers")
        .values_list("source_id", flat=True)
        .order_by("source_id")
        .first()
    )
    mapping = MappingSet.objects.active().filter(flow="customers").order_by("pk").first()
    errors = reverse("dashboard:errors")
    return [
        ("Overview", reverse("dashboard:overview")),
        ("Runs", reverse("dashboard:runs")),
        ("Runs, filtered", reverse("dashboard:runs") + "?flow=payments&status=partial"),
        ("Run detail", reverse("dashboard:run", args=[run.pk])),
        ("Run progress fragment", reverse("dashboard:run_progress", args=[running.pk])),
        ("Error queue", errors),
        ("Error queue, filtered", errors + "?flow=invoices&q=Opportunity"),
        (
            "Error queue, one cause",
            errors + "?flow=customers&code=REQUIRED_FIELD_MISSING&error_class=permanent",
        ),
        ("Error queue, retrying", errors + "?show=retrying"),
        ("Record timeline", reverse("dashboard:timeline") + f"?q={record}"),
        ("Audit trail", reverse("dashboard:audit")),
        ("Connections", reverse("dashboard:connections")),
        ("Mappings", reverse("dashboard:mappings")),
        ("Mapping editor", reverse("dashboard:mapping", args=[mapping.pk])),
        ("Errors CSV", reverse("dashboard:errors_csv")),
        ("Runs CSV", reverse("dashboard:runs_csv")),
    ]


def measure(requests: int = 50, warmup: int = 2) -> dict:
    """Time each page `requests` times after `warmup` requests, signed in as an Integration
    admin; then count its queries on one more request. Server time in this process: Django's
    test Client through the real URLconf and middleware, with no network and no web server."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    # As in production: no query log kept on every cursor (CaptureQueriesContext turns it on
    # for the counting request only), templates without debug information.
    settings.DEBUG = False
    client = Client(SERVER_NAME="localhost")  # an allowed host by default
    client.force_login(User.objects.get(username=ADMIN))
    started = time.perf_counter()
    results = []
    for name, url in pages():
        for _ in range(warmup):
            _get(client, url)
        times, size = [], 0
        for _ in range(requests):
            before = time.perf_counter()
            size = _get(client, url)
            times.append((time.perf_counter() - before) * 1000)
        with CaptureQueriesContext(connection) as queries:
            _get(client, url)
        results.append(
            {
                "page": name,
                "url": url,
                "bytes": size,
                "queries": len(queries),
                "p50_ms": statistics.median(times),
                "p95_ms": _percentile(times, 95),
                "max_ms": max(times),
                "times_ms": [round(t, 2) for t in times],
                "sql": [query["sql"][:300] for query in queries.captured_queries],
            }
        )
    return {"seconds": time.perf_counter() - started, "pages": results, "vendor": connection.vendor}


def _get(client, url: str) -> int:
    """Request a page and read all of it (a streamed download to its last row); its size."""
    # Over HTTPS, as in production (DEBUG off redirects plain HTTP there).
    response = client.get(url, secure=True)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}")
    if response.streaming:
        return sum(len(chunk) for chunk in response.streaming_content)
    return len(response.content)


def _percentile(values: list[float], percent: float) -> float:
    """Nearest-rank percentile: the value below which `percent`% of the requests fell."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[int(rank) - 1]
