"""kashforce's data: connections, field mappings, cross-references and the sync ledger.

The ledger (SyncRun, SyncEvent) is the source of truth for work. The job queue only rings the
doorbell: work is claimed here with conditional UPDATEs, so a duplicate queue message, a double
click or two workers cannot do the same work twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models, transaction
from django.db.models import (
    Case,
    Count,
    Exists,
    Expression,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from integration import changes, secrets

# One copy of the hash, in the mapping engine; re-exported here for the flows and the ledger.
from integration.mapping import content_hash as content_hash


class Flow(models.TextChoices):
    CUSTOMERS = "customers", "Customers"
    INVOICES = "invoices", "Closed Won → invoices"
    PAYMENTS = "payments", "Payments"
    PRODUCTS = "products", "Products"


class Direction(models.TextChoices):
    KASHFLOW_TO_SALESFORCE = "kf_to_sf", "KashFlow → Salesforce"
    SALESFORCE_TO_KASHFLOW = "sf_to_kf", "Salesforce → KashFlow"


# --------------------------------------------------------------------------------------------
# Connections


class Connection(models.Model):
    """Credentials and endpoints for one Salesforce org or one KashFlow account.

    Secrets live encrypted in `encrypted_secrets` (one Fernet token holding a small JSON object)
    and are decrypted only when a client asks for them, so listing connections never needs a key.
    """

    class Kind(models.TextChoices):
        SALESFORCE = "salesforce", "Salesforce"
        KASHFLOW = "kashflow", "KashFlow"

    class Environment(models.TextChoices):
        PRODUCTION = "production", "Production"
        SANDBOX = "sandbox", "Sandbox / test"

    class AuthMethod(models.TextChoices):
        SF_JWT = "sf_jwt", "Salesforce: JWT bearer (connected app + certificate)"
        SF_CLIENT_CREDENTIALS = "sf_client_credentials", "Salesforce: client credentials"
        SF_PASSWORD = "sf_password", "Salesforce: username, password and security token"
        KF_PASSWORD = "kf_password", "KashFlow: username, password and memorable word"

    class InvoiceFrom(models.TextChoices):
        OPPORTUNITIES = "opportunities", "Closed Won Opportunities"
        ORDERS = "orders", "Activated Orders"
        BOTH = "both", "Both (an Order of an invoiced Opportunity is not invoiced again)"

    class Status(models.TextChoices):
        UNCHECKED = "unchecked", "Not checked yet"
        OK = "ok", "Working"
        FAILING = "failing", "Failing"

    class Realtime(models.TextChoices):
        OUTBOUND = "outbound", "Outbound Messages (Salesforce calls kashforce's public address)"
        PUBSUB = "pubsub", "Pub/Sub API (kashforce listens to Salesforce; no public address)"
        POLL = "poll", "Poll only (every few minutes)"

    # Which secret names each auth method uses; forms and the client factory read this.
    SECRET_FIELDS = {
        AuthMethod.SF_JWT: ("private_key",),
        AuthMethod.SF_CLIENT_CREDENTIALS: ("consumer_secret",),
        AuthMethod.SF_PASSWORD: ("password", "security_token"),
        AuthMethod.KF_PASSWORD: ("password", "memorable_word"),
    }
    ALL_SECRET_NAMES = (
        "password",
        "security_token",
        "consumer_secret",
        "private_key",
        "memorable_word",
        "outbound_secret",
    )

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    environment = models.CharField(
        max_length=20, choices=Environment.choices, default=Environment.PRODUCTION
    )
    auth_method = models.CharField(max_length=30, choices=AuthMethod.choices)
    # Salesforce endpoints. login_url is where logins go (https://login.salesforce.com,
    # https://test.salesforce.com, a My Domain, or the sandbox simulator).
    login_url = models.URLField(blank=True)
    instance_url = models.URLField(blank=True)
    api_version = models.CharField(max_length=10, blank=True, default="59.0")
    organization_id = models.CharField(
        max_length=18, blank=True, help_text="Salesforce org id, checked on Outbound Messages."
    )
    # How won deals reach kashforce in seconds; the schedule's poll runs in every mode.
    realtime = models.CharField(
        "real-time changes",
        max_length=10,
        choices=Realtime.choices,
        default=Realtime.OUTBOUND,
        blank=True,  # a form that leaves it out keeps the default (KashFlow has no such choice)
    )
    pubsub_endpoint = models.CharField(
        "Pub/Sub API address",
        max_length=255,
        blank=True,
        help_text="host:port; empty for api.pubsub.salesforce.com:7443.",
    )
    # KashFlow endpoint.
    base_url = models.URLField(blank=True, help_text="KashFlow: https://api.kashflow.com/v2")
    # A CA bundle to trust instead of the system's (the sandbox's own CA, a corporate proxy).
    ca_file = models.CharField(max_length=500, blank=True)
    username = models.CharField(max_length=255, blank=True)
    consumer_key = models.CharField(
        max_length=255, blank=True, help_text="Salesforce connected app's consumer key."
    )
    encrypted_secrets = models.TextField(blank=True, editable=False)
    # A KashFlow session token or Salesforce access token, reused across tasks. Encrypted too.
    encrypted_session = models.TextField(blank=True, editable=False)
    session_obtained_at = models.DateTimeField(null=True, blank=True, editable=False)

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.UNCHECKED)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_check_message = models.TextField(blank=True)
    # Salesforce API usage from the latest Sforce-Limit-Info header.
    api_usage_used = models.PositiveIntegerField(null=True, blank=True)
    api_usage_limit = models.PositiveIntegerField(null=True, blank=True)
    api_usage_at = models.DateTimeField(null=True, blank=True)
    # Salesforce: what becomes a KashFlow invoice; empty means KASHFORCE_INVOICE_FROM.
    invoice_from = models.CharField(
        max_length=20,
        blank=True,
        choices=InvoiceFrom.choices,
        help_text="Salesforce: invoice Closed Won Opportunities, activated Orders or both. "
        "Empty: as KASHFORCE_INVOICE_FROM says.",
    )
    is_active = models.BooleanField(default=True)
    # A refused sign-in (wrong password, memorable word, locked account): nothing signs in with
    # these credentials again until an admin changes them or presses Test, because every
    # attempt brings the account closer to the service's lock-out.
    sign_in_refused_at = models.DateTimeField(null=True, blank=True, editable=False)
    sign_in_refused_message = models.TextField(blank=True, editable=False)
    # KashFlow answered "too busy" (SQL timeouts): scheduled runs wait until busy_until, and each
    # busy answer in a row doubles the wait (busy_count).
    busy_until = models.DateTimeField(null=True, blank=True, editable=False)
    busy_count = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["kind", "name"]
        constraints = [
            # The flows use the one active connection of each kind.
            models.UniqueConstraint(
                fields=["kind"], condition=Q(is_active=True), name="one_active_connection_per_kind"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    def __repr__(self) -> str:
        # Never the secrets: only what identifies the row.
        return f"<Connection {self.pk} {self.kind} {self.name!r}>"

    @classmethod
    def active(cls, kind: str) -> Connection:
        """The active connection of a kind; raises Connection.DoesNotExist with a clear message."""
        try:
            return cls.objects.get(kind=kind, is_active=True)
        except cls.DoesNotExist:
            raise cls.DoesNotExist(
                f"No active {cls.Kind(kind).label} connection is set up. "
                "An Integration admin can add one under Connections."
            ) from None

    # Secrets ----------------------------------------------------------------------------------

    def get_secrets(self) -> dict[str, str]:
        """Decrypted secrets; raises secrets.SecretDecryptionError on a wrong or missing key."""
        return secrets.decrypt_json(self.encrypted_secrets)

    def get_secret(self, name: str) -> str:
        return self.get_secrets().get(name, "")

    def set_secrets(self, **values: str | None) -> None:
        """Merge secrets in; a None or '' value leaves the stored one as it is (write-only forms)."""
        unknown = set(values) - set(self.ALL_SECRET_NAMES)
        if unknown:
            raise ValueError(f"Unknown secret names: {sorted(unknown)}")
        current = self.get_secrets()
        current.update({k: v for k, v in values.items() if v})
        self.encrypted_secrets = secrets.encrypt_json(current)

    def clear_secret(self, name: str) -> None:
        current = self.get_secrets()
        current.pop(name, None)
        self.encrypted_secrets = secrets.encrypt_json(current)

    def has_secret(self, name: str) -> bool:
        return bool(self.get_secrets().get(name))

    def invoices_from(self) -> str:
        """What this Salesforce org invoices from: "opportunities", "orders" or "both"."""
        return self.invoice_from or settings.KASHFORCE["INVOICE_FROM"]

    def invoices_orders(self) -> bool:
        return self.invoices_from() in (self.InvoiceFrom.ORDERS, self.InvoiceFrom.BOTH)

    def invoices_opportunities(self) -> bool:
        return self.invoices_from() in (self.InvoiceFrom.OPPORTUNITIES, self.InvoiceFrom.BOTH)

    def missing_secrets(self) -> list[str]:
        needed = self.SECRET_FIELDS.get(self.auth_method, ())
        stored = self.get_secrets()
        return [name for name in needed if not stored.get(name)]

    def endpoint(self) -> str:
        """Where this connection's token goes; a stored session is bound to it."""
        return "|".join([self.kind, self.base_url, self.login_url, self.instance_url, self.ca_file])

    def get_session(self) -> dict:
        """The stored session, or {} when it was issued while the connection pointed elsewhere:
        a token is never sent to a host other than the one it came from (issue #15)."""
        stored = secrets.decrypt_json(self.encrypted_session)
        endpoint = stored.pop("_endpoint", None)
        return stored if endpoint == self.endpoint() else {}

    def save_session(self, session: dict) -> None:
        """Store a reusable session token without touching any other column (no lost updates)."""
        now = timezone.now()
        bound = {**session, "_endpoint": self.endpoint()} if session else {}
        self.encrypted_session = secrets.encrypt_json(bound)
        self.session_obtained_at = now if session else None
        Connection.objects.filter(pk=self.pk).update(
            encrypted_session=self.encrypted_session, session_obtained_at=self.session_obtained_at
        )

    def rotate_encryption(self) -> None:
        Connection.objects.filter(pk=self.pk).update(
            encrypted_secrets=secrets.rotate(self.encrypted_secrets),
            encrypted_session=secrets.rotate(self.encrypted_session),
        )

    # Status -----------------------------------------------------------------------------------

    def record_check(self, ok: bool, message: str) -> None:
        self.status = self.Status.OK if ok else self.Status.FAILING
        self.last_checked_at = timezone.now()
        self.last_check_message = secrets.redact(message).replace("\x00", "")
        Connection.objects.filter(pk=self.pk).update(
            status=self.status,
            last_checked_at=self.last_checked_at,
            last_check_message=self.last_check_message,
        )

    # Sign-in refusals and busy answers -------------------------------------------------------

    def refuse_sign_in(self, message: str) -> None:
        """The service refused these credentials: stop signing in with them (see the fields)."""
        self.sign_in_refused_at = timezone.now()
        self.sign_in_refused_message = secrets.redact(message).replace("\x00", "")
        Connection.objects.filter(pk=self.pk).update(
            sign_in_refused_at=self.sign_in_refused_at,
            sign_in_refused_message=self.sign_in_refused_message,
        )

    def clear_sign_in_refusal(self, save: bool = True) -> None:
        """New credentials, or an admin's Test: one sign-in may be tried again."""
        self.sign_in_refused_at, self.sign_in_refused_message = None, ""
        if save:
            Connection.objects.filter(pk=self.pk).update(
                sign_in_refused_at=None, sign_in_refused_message=""
            )

    def sign_in_refused(self) -> bool:
        """Whether a refusal is on record now (read fresh: another process may have set it)."""
        if self.pk is None:
            return self.sign_in_refused_at is not None
        fresh = Connection.objects.filter(pk=self.pk).values_list("sign_in_refused_at", flat=True)
        self.sign_in_refused_at = fresh.first()
        return self.sign_in_refused_at is not None

    @property
    def sign_in_pause_reason(self) -> str:
        """Plain words for the overview and the runs a refusal stops."""
        if self.sign_in_refused_at is None:
            return ""
        when = timezone.localtime(self.sign_in_refused_at)
        stamp = (
            when.strftime("%H:%M")
            if when.date() == timezone.localdate()
            else (when.strftime("%d %b %Y %H:%M"))
        )
        secret = "password or memorable word" if self.kind == self.Kind.KASHFLOW else "credentials"
        return (
            f"{self.get_kind_display()} refused the sign-in at {stamp}; scheduled syncs are "
            f"paused until an admin updates the {secret} or presses Test."
        )

    def note_busy(self, base_seconds: float, max_seconds: float) -> datetime:
        """KashFlow said it was too busy again: wait twice as long as last time before
        scheduled runs call it again; returns until when."""
        count = self.busy_count + 1
        wait = min(max_seconds, base_seconds * 2 ** (count - 1))
        self.busy_count, self.busy_until = count, timezone.now() + timedelta(seconds=wait)
        Connection.objects.filter(pk=self.pk).update(
            busy_count=self.busy_count, busy_until=self.busy_until
        )
        return self.busy_until

    def clear_busy(self) -> None:
        if self.busy_count or self.busy_until:
            self.busy_count, self.busy_until = 0, None
            Connection.objects.filter(pk=self.pk).update(busy_count=0, busy_until=None)

    def busy_now(self) -> bool:
        return self.busy_until is not None and self.busy_until > timezone.now()

    def record_api_usage(self, used: int, limit: int) -> None:
        self.api_usage_used, self.api_usage_limit = used, limit
        self.api_usage_at = timezone.now()
        Connection.objects.filter(pk=self.pk).update(
            api_usage_used=used, api_usage_limit=limit, api_usage_at=self.api_usage_at
        )

    @property
    def api_usage_share(self) -> float | None:
        if not self.api_usage_limit or self.api_usage_used is None:
            return None
        return self.api_usage_used / self.api_usage_limit

    def over_api_budget(self) -> bool:
        """True when scheduled, non-urgent runs should wait (the share is in settings)."""
        share = self.api_usage_share
        return share is not None and share >= settings.KASHFORCE["API_BUDGET_SHARE"]


# --------------------------------------------------------------------------------------------
# Mappings


class Transform(models.TextChoices):
    COPY = "copy", "Copy as it is"
    CONSTANT = "constant", "Fixed value"
    DATE = "date", "Date (calendar day)"
    DATETIME = "datetime", "Date and time (UTC)"
    CONCAT = "concat", "Join several fields"
    SPLIT_NAME = "split_name", "Split a person's name"
    SPLIT_STREET = "split_street", "Split a street into address lines"
    JOIN_STREET = "join_street", "Join address lines into a street"
    LOOKUP = "lookup", "Look up the other system's id"
    DECIMAL = "decimal", "Money / decimal number"
    VAT_RATE = "vat_rate", "VAT rate by country or product"
    TRUNCATE = "truncate", "Cut to a maximum length"
    LOWER = "lower", "Lower case"
    UPPER = "upper", "Upper case"


class MappingSetQuerySet(models.QuerySet):
    def active(self) -> MappingSetQuerySet:
        return self.filter(is_active=True)

    def history(self, flow: str, source_object: str, target_object: str) -> MappingSetQuerySet:
        return self.filter(
            flow=flow, source_object=source_object, target_object=target_object
        ).order_by("-version")


class MappingSet(models.Model):
    """One version of the field mapping for a flow and an object pair.

    Saving an edit makes a new version; old versions are kept for the history and rollback, and
    exactly one version per (flow, source, target) is active.
    """

    name = models.CharField(max_length=100)
    flow = models.CharField(max_length=20, choices=Flow.choices)
    source_object = models.CharField(max_length=80, help_text="e.g. kashflow.Customer")
    target_object = models.CharField(max_length=80, help_text="e.g. salesforce.Account")
    version = models.PositiveIntegerField(default=1)
    is_active = models.BooleanField(default=False)
    note = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = MappingSetQuerySet.as_manager()

    class Meta:
        ordering = ["flow", "source_object", "target_object", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["flow", "source_object", "target_object", "version"],
                name="mapping_version_unique",
            ),
            models.UniqueConstraint(
                fields=["flow", "source_object", "target_object"],
                condition=Q(is_active=True),
                name="one_active_mapping_version",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    def as_rows(self) -> list[dict]:
        """The field rows as plain dicts, the form the pure mapping engine takes."""
        return [row.as_dict() for row in self.fields.all()]

    @transaction.atomic
    def save_new_version(
        self, rows: list[dict], user=None, note: str = "", *, rolled_back: bool = False
    ) -> MappingSet:
        """Make and activate the next version holding `rows`; this one stays in the history.
        The audit trail says who did it and which fields changed against the active version."""
        siblings = MappingSet.objects.select_for_update().filter(
            flow=self.flow, source_object=self.source_object, target_object=self.target_object
        )
        next_version = (siblings.aggregate(v=models.Max("version"))["v"] or 0) + 1
        previous = siblings.filter(is_active=True).first()
        previous_rows = previous.as_rows() if previous else []
        siblings.filter(is_active=True).update(is_active=False)
        new = MappingSet.objects.create(
            name=self.name,
            flow=self.flow,
            source_object=self.source_object,
            target_object=self.target_object,
            version=next_version,
            is_active=True,
            note=note,
            created_by=user,
        )
        FieldMapping.objects.bulk_create(
            FieldMapping.from_dict(new, order, row) for order, row in enumerate(rows, start=1)
        )
        what = changes.describe_mapping_changes(
            changes.mapping_changes(previous_rows, new.as_rows())
        )
        AuditEntry.record(
            user,
            AuditEntry.Action.MAPPING_ROLLED_BACK
            if rolled_back
            else AuditEntry.Action.MAPPING_SAVED,
            AuditEntry.ObjectType.MAPPING,
            new.pk,
            str(new),
            f"{note}. Against v{previous.version if previous else 0}: {what}."
            if note
            else f"Against v{previous.version if previous else 0}: {what}.",
        )
        return new

    def rollback_to(self, user=None) -> MappingSet:
        """Rollback is a new version with this version's rows, so history only ever grows."""
        return self.save_new_version(
            self.as_rows(), user=user, note=f"Rolled back to v{self.version}", rolled_back=True
        )


class FieldMapping(models.Model):
    mapping_set = models.ForeignKey(MappingSet, on_delete=models.CASCADE, related_name="fields")
    order = models.PositiveIntegerField(default=0)
    source_path = models.CharField(
        max_length=255,
        blank=True,
        help_text="Dotted path in the source record, e.g. Contacts.0.Email",
    )
    target_path = models.CharField(max_length=255)
    transform = models.CharField(max_length=20, choices=Transform.choices, default=Transform.COPY)
    params = models.JSONField(default=dict, blank=True)
    default = models.CharField(max_length=255, blank=True)
    required = models.BooleanField(default=False)

    class Meta:
        ordering = ["mapping_set", "order", "pk"]

    def __str__(self) -> str:
        return f"{self.source_path or '—'} → {self.target_path}"

    def as_dict(self) -> dict:
        return {
            "source_path": self.source_path,
            "target_path": self.target_path,
            "transform": self.transform,
            "params": self.params,
            "default": self.default,
            "required": self.required,
        }

    @classmethod
    def from_dict(cls, mapping_set: MappingSet, order: int, row: dict) -> FieldMapping:
        return cls(
            mapping_set=mapping_set,
            order=order,
            source_path=row.get("source_path", ""),
            target_path=row["target_path"],
            transform=row.get("transform", Transform.COPY),
            params=row.get("params") or {},
            default=row.get("default", ""),
            required=bool(row.get("required", False)),
        )


# --------------------------------------------------------------------------------------------
# Cross-references


class CrossRef(models.Model):
    """Which Salesforce record and which KashFlow record are the same thing.

    The hashes are of the payload last written to each side: a record whose newly mapped payload
    hashes the same is not sent again.
    """

    class ObjectType(models.TextChoices):
        CUSTOMER = "customer", "Customer / Account"
        CONTACT = "contact", "Contact"
        INVOICE = "invoice", "Invoice / Opportunity"
        PAYMENT = "payment", "Payment"
        PRODUCT = "product", "Product"

    object_type = models.CharField(max_length=20, choices=ObjectType.choices)
    # NULL, not '', for "no record on this side": the unique constraints below ignore NULLs.
    salesforce_id = models.CharField(max_length=18, null=True, blank=True)  # noqa: DJ001
    kashflow_key = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001
    salesforce_hash = models.CharField(max_length=64, blank=True)
    kashflow_hash = models.CharField(max_length=64, blank=True)
    salesforce_synced_at = models.DateTimeField(null=True, blank=True)
    kashflow_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["object_type", "salesforce_id"],
                condition=Q(salesforce_id__isnull=False),
                name="crossref_unique_salesforce_id",
            ),
            models.UniqueConstraint(
                fields=["object_type", "kashflow_key"],
                condition=Q(kashflow_key__isnull=False),
                name="crossref_unique_kashflow_key",
            ),
            models.CheckConstraint(
                condition=Q(salesforce_id__isnull=False) | Q(kashflow_key__isnull=False),
                name="crossref_has_a_side",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.object_type}: {self.salesforce_id or '—'} ↔ {self.kashflow_key or '—'}"


# --------------------------------------------------------------------------------------------
# The ledger


class Trigger(models.TextChoices):
    SCHEDULE = "schedule", "Schedule"
    POLL = "poll", "Poll"
    PUSH = "push", "Push from Salesforce"
    MANUAL = "manual", "A person"
    RETRY = "retry", "Retry"


class SyncRunQuerySet(models.QuerySet):
    def for_flow(self, flow: str) -> SyncRunQuerySet:
        return self.filter(flow=flow)

    def unfinished(self) -> SyncRunQuerySet:
        return self.filter(status__in=[SyncRun.Status.QUEUED, SyncRun.Status.RUNNING])

    def empty_and_finished_before(self, moment: datetime) -> SyncRunQuerySet:
        """Runs made before `moment` that are over and hold no ledger rows any more (cleanup
        removed them): nothing on their page but the counts."""
        return (
            self.filter(created_at__lt=moment)
            .exclude(
                status__in=[SyncRun.Status.QUEUED, SyncRun.Status.RUNNING, SyncRun.Status.WAITING]
            )
            .exclude(Exists(SyncEvent.objects.filter(run=OuterRef("pk"))))
        )

    def stale(self, older_than: timedelta) -> SyncRunQuerySet:
        """Running runs whose worker has not reported for a while: it probably died."""
        return self.filter(
            status=SyncRun.Status.RUNNING, heartbeat_at__lt=timezone.now() - older_than
        )


class SyncRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        PARTIAL = "partial", "Finished with errors"
        FAILED = "failed", "Failed"
        WAITING = "waiting", "Waiting (API budget or a paused connection)"

    flow = models.CharField(max_length=20, choices=Flow.choices)
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    dry_run = models.BooleanField(default=False)
    full = models.BooleanField(default=False, help_text="Compare everything, not just changes.")
    # What the run does instead of reading changes, e.g. {"requeue": {filters}} for a group retry.
    params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The run reads changes once (collect), then any number of workers process its events.
    collect_started_at = models.DateTimeField(null=True, blank=True)
    collected_at = models.DateTimeField(null=True, blank=True)
    read_count = models.PositiveIntegerField(default=0)
    written_count = models.PositiveIntegerField(default=0)
    skipped_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(null=True, blank=True)
    summary = models.TextField(blank=True)
    # A scheduled run that finished having read nothing: a one-minute schedule makes thousands
    # a day, so the runs list hides them unless asked (issue #19).
    idle = models.BooleanField(default=False)

    objects = SyncRunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["flow", "-created_at"], name="run_flow_recent"),
            # The runs list, newest first, paged by keyset: one page of this index at any
            # depth. A minute schedule adds thousands a day, kept for the ledger retention.
            # Ascending: read backwards it gives (created_at DESC, pk DESC) on SQLite, whose
            # index entries end with the rowid, so no sort at all.
            models.Index(fields=["created_at"], name="run_recent"),
            # The runs list without its idle runs (`WHERE NOT idle`, which a partial index
            # serves and an index on idle does not): one page at any depth, past any number
            # of idle runs; and the count of the idle runs hidden among a page.
            models.Index(fields=["created_at"], condition=Q(idle=False), name="run_busy_recent"),
            models.Index(fields=["created_at"], condition=Q(idle=True), name="run_idle_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.get_flow_display()} run {self.pk} ({self.get_status_display()})"

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def progress_percent(self) -> int | None:
        if not self.progress_total:
            return None
        return min(100, round(100 * self.progress_done / self.progress_total))

    def claim(self) -> bool:
        """Move a queued run to running; False if another worker got it first."""
        now = timezone.now()
        claimed = SyncRun.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.RUNNING, started_at=now, heartbeat_at=now
        )
        if claimed:
            self.status, self.started_at, self.heartbeat_at = self.Status.RUNNING, now, now
        return bool(claimed)

    def add_to_total(self, count: int) -> None:
        """More work for a run whose changes arrive by push (its total grows with each one)."""
        if count and self.collected_at is not None:
            SyncRun.objects.filter(pk=self.pk).update(
                progress_total=Coalesce("progress_total", 0) + count
            )

    def add_counts(self, read=0, written=0, skipped=0, failed=0, done=0, total=None) -> None:
        """Add to the counters with F() expressions, so concurrent workers don't lose updates."""
        changes = {
            "read_count": F("read_count") + read,
            "written_count": F("written_count") + written,
            "skipped_count": F("skipped_count") + skipped,
            "failed_count": F("failed_count") + failed,
            "progress_done": F("progress_done") + done,
            "heartbeat_at": timezone.now(),
        }
        if total is not None:
            changes["progress_total"] = total
        SyncRun.objects.filter(pk=self.pk).update(**changes)
        self.refresh_from_db()

    def finish(self, summary: str = "") -> None:
        if self.failed_count:
            status = (
                self.Status.PARTIAL
                if self.written_count or self.skipped_count
                else self.Status.FAILED
            )
        else:
            status = self.Status.SUCCEEDED
        self.status, self.summary, self.finished_at = status, summary, timezone.now()
        self.idle = (
            status == self.Status.SUCCEEDED
            and not self.dry_run
            and self.triggered_by_id is None
            and not (self.read_count or self.processed_count)
        )
        self.save(update_fields=["status", "summary", "finished_at", "idle"])

    @property
    def started_by_label(self) -> str:
        """Who or what started the run, in words: "Started by ops", "Schedule"."""
        user = self.triggered_by
        if self.trigger == Trigger.MANUAL:
            return f"Started by {user}" if user else "Started by hand"
        if self.trigger == Trigger.RETRY:
            return f"Retried by {user}" if user else "Automatic retry"
        return self.get_trigger_display()

    @property
    def processed_count(self) -> int:
        return self.written_count + self.skipped_count + self.failed_count

    @property
    def seen_before_count(self) -> int:
        """Records read that held nothing new (the ledger had them already): no outcome of
        their own. Counted with the unchanged, so Read = Synced + Unchanged + Failed."""
        if self.status in (self.Status.QUEUED, self.Status.RUNNING):
            return 0
        return max(0, self.read_count - self.processed_count)

    @property
    def unchanged_total(self) -> int:
        return self.skipped_count + self.seen_before_count

    @property
    def to_do_count(self) -> int:
        """Read but not processed yet, while the run goes on."""
        if self.status not in (self.Status.QUEUED, self.Status.RUNNING):
            return 0
        return max(0, self.read_count - self.processed_count)

    @property
    def from_earlier_count(self) -> int:
        """Records this run processed that an earlier run read (retries waiting their turn)."""
        return max(0, self.processed_count - self.read_count)

    @property
    def is_empty(self) -> bool:
        return not (self.read_count or self.processed_count)

    def fail(self, summary: str) -> None:
        self.status, self.summary = self.Status.FAILED, secrets.redact(summary)
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "summary", "finished_at"])

    def wait_for_budget(self, summary: str) -> None:
        self.status, self.summary, self.finished_at = self.Status.WAITING, summary, timezone.now()
        self.save(update_fields=["status", "summary", "finished_at"])


class ValuePerRow(Expression):
    """`CASE pk WHEN 1 THEN 'a' WHEN 2 THEN 'b' … ELSE column END`: one UPDATE that gives each
    row its own value of `column` (rows it does not name keep theirs).

    bulk_update writes the same CASE with a When(pk=…) per row, and Django builds, resolves and
    compiles a lookup for each of them: for a batch of 200 that Python, not the database, was
    most of the time recording a batch's outcome took.
    """

    def __init__(self, column: str, values: dict):
        super().__init__()
        self.column, self.values = column, values

    def resolve_expression(
        self, query=None, allow_joins=True, reuse=None, summarize=False, for_save=False
    ):
        resolved = self.copy()
        resolved.pk = F("pk").resolve_expression(query, allow_joins, reuse, summarize)
        resolved.default = F(self.column).resolve_expression(query, allow_joins, reuse, summarize)
        resolved.output_field = resolved.default.output_field
        return resolved

    def as_sql(self, compiler, connection):
        pk_sql, pk_params = compiler.compile(self.pk)
        default_sql, default_params = compiler.compile(self.default)
        # The pks are written into the statement, not passed as parameters: they are integers
        # (int() makes sure), and SQLite's 999 parameters then hold a batch of 200 rows' values
        # of up to three fields in one statement (see update_rows).
        whens = " ".join(f"WHEN {int(pk)} THEN %s" for pk in self.values)
        params = [self.output_field.get_db_prep_value(v, connection) for v in self.values.values()]
        return f"CASE {pk_sql} {whens} ELSE {default_sql} END", [
            *pk_params,
            *params,
            *default_params,
        ]


def update_rows(queryset: models.QuerySet, pks: list, per_row: dict[str, dict], **shared) -> int:
    """Set `shared` on the rows `pks` of `queryset`, and on each row its own values of
    `per_row` ({field: {pk: value}}; a row a field's values leave out keeps its own): one
    UPDATE, or on SQLite one per few hundred rows. Returns the rows updated.

    SQLite takes at most 999 parameters a statement, as Django assumes (the limit of the oldest
    SQLite it supports, which its own bulk operations keep to); a row costs one for its pk and
    one per field of `per_row`.
    """
    limit = connections[queryset.db].features.max_query_params
    size = max(1, (limit - 2 * len(shared)) // (1 + len(per_row))) if limit else len(pks)
    updated = 0
    for start in range(0, len(pks), size or 1):
        part = pks[start : start + size]
        each = {}
        for name, values in per_row.items():
            if own := {pk: values[pk] for pk in part if pk in values}:
                each[name] = ValuePerRow(name, own)
        updated += queryset.filter(pk__in=part).update(**shared, **each)
    return updated


@dataclass(frozen=True)
class Outcome:
    """What became of a claimed event, on its way to the ledger with the rest of its batch
    (`SyncEvent.objects.finish`); made by `SyncEvent.succeeded` and `SyncEvent.skipped`."""

    event: SyncEvent
    status: str
    target_id: str = ""
    content_hash: str = ""
    message: str = ""
    warning: bool = False  # synced, but with something a person should look at

    def apply(self, now: datetime) -> None:
        """Show the outcome on the event in memory, as the UPDATE wrote it."""
        event = self.event
        event.status, event.finished_at, event.claimed_at = self.status, now, None
        event.warning = self.warning
        event.next_attempt_at, event.error_class, event.error_code = None, "", ""
        event.message, event.updated_at = self.message, now
        if self.target_id:
            event.target_id = self.target_id
        if self.content_hash:
            event.content_hash = self.content_hash


# "…; kashforce will try again." / ", it will be tried again." at the end of a sentence.
RETRY_PROMISE = re.compile(
    r"[;,]?\s*(?:kashforce|it) will (?:try again|be tried again)(?: later)?(?=\.|$)"
)

# Transport failures named by an HTTP status (or a simulator's fault code for one), in words.
HTTP_CAUSES = {
    "429": "Too many requests at once",
    "500": "Server error at the other end",
    "502": "Temporarily unavailable",
    "503": "Temporarily unavailable",
    "504": "Temporarily unavailable",
}


def _clean(message: str) -> str:
    return secrets.redact(message).replace("\x00", "")


class SyncEventQuerySet(models.QuerySet):
    def failed(self) -> SyncEventQuerySet:
        return self.filter(
            status__in=[SyncEvent.Status.FAILED_TRANSIENT, SyncEvent.Status.FAILED_PERMANENT]
        )

    def unresolved(self) -> SyncEventQuerySet:
        """The error queue: failures that need a person (retries exhausted or permanent)."""
        return self.filter(status=SyncEvent.Status.FAILED_PERMANENT)

    def retrying(self) -> SyncEventQuerySet:
        return self.filter(status=SyncEvent.Status.FAILED_TRANSIENT)

    def with_warnings(self) -> SyncEventQuerySet:
        """Synced, but with something a person should look at."""
        return self.filter(status=SyncEvent.Status.SUCCEEDED, warning=True)

    def supersede(self, now=None) -> int:
        """Set aside events a newer change of their record replaced (never written)."""
        return self.update(
            status=SyncEvent.Status.SKIPPED,
            finished_at=now or timezone.now(),
            claimed_at=None,
            next_attempt_at=None,
            error_class="",
            error_code="",
            message="A newer change of this record replaced this one; that one is synced instead.",
        )

    def due(self, now=None) -> SyncEventQuerySet:
        """Work a worker may claim now: pending, or a transient failure whose backoff has passed."""
        now = now or timezone.now()
        # The statuses first, as an IN, so an index on (flow, status, …) can serve a claim.
        return self.filter(
            status__in=[SyncEvent.Status.PENDING, SyncEvent.Status.FAILED_TRANSIENT]
        ).filter(Q(status=SyncEvent.Status.PENDING) | Q(next_attempt_at__lte=now))

    def stale_running(self, older_than: timedelta) -> SyncEventQuerySet:
        """Claimed by a worker that has not finished in time: it probably died."""
        return self.filter(
            status=SyncEvent.Status.RUNNING, claimed_at__lt=timezone.now() - older_than
        )

    def finish(self, outcomes: Iterable[Outcome]) -> list[SyncEvent]:
        """Record what became of events this worker holds; returns the events recorded.

        An event is recorded only while this worker's claim is still its claim (running, with
        the `claimed_at` the claim gave it): the sweeper may have taken one from a worker that
        was only slow, and then the sweeper's outcome, a newer change the collect put in that
        event since, or the worker that holds it now, wins. A batch costs a read of its claims
        (locked until the transaction ends) and one UPDATE per status, whatever its size
        (`update_rows`); a single event, one conditional UPDATE.
        """
        now = timezone.now()
        outcomes = list(outcomes)
        recorded = [outcome for outcome in outcomes if outcome.event.pk is None]  # a dry run's
        saved = [outcome for outcome in outcomes if outcome.event.pk is not None]
        if len(saved) == 1:
            # The claim is the UPDATE's condition, and its row count says whether it held.
            claimed_at = saved[0].event.claimed_at
            with transaction.atomic(savepoint=False):
                if claimed_at is not None and self._record(saved, now, claimed_at=claimed_at):
                    SyncAttempt.objects.record([saved[0].event.pk])
                    recorded += saved
                    WriteRecord.keep(saved, now)
        elif saved:
            # The attempts' lines are one INSERT for the batch, in the outcome's transaction.
            with transaction.atomic(savepoint=False):
                held = self._held(saved)
                self._record(held, now)
                WriteRecord.keep(held, now)
                SyncAttempt.objects.record([outcome.event.pk for outcome in held])
            recorded += held
        for outcome in recorded:
            outcome.apply(now)
        return [outcome.event for outcome in recorded]

    def _held(self, outcomes: list[Outcome]) -> list[Outcome]:
        """The outcomes whose events still run under the claim their worker made, locked."""
        claims = dict(
            self.select_for_update()
            .filter(pk__in=[outcome.event.pk for outcome in outcomes])
            .filter(status=SyncEvent.Status.RUNNING)
            .order_by("pk")
            .values_list("pk", "claimed_at")
        )
        return [
            outcome
            for outcome in outcomes
            if outcome.event.claimed_at is not None
            and claims.get(outcome.event.pk) == outcome.event.claimed_at
        ]

    def _record(self, outcomes: list[Outcome], now: datetime, **condition) -> int:
        """One UPDATE per status: what the group's events share as plain values, the rest a
        value per row."""
        updated = 0
        for status in sorted({outcome.status for outcome in outcomes}):
            group = [outcome for outcome in outcomes if outcome.status == status]
            shared, per_row = _split_values(group)
            updated += update_rows(
                self.filter(status=SyncEvent.Status.RUNNING, **condition),
                [outcome.event.pk for outcome in group],
                per_row,
                status=status,
                finished_at=now,
                claimed_at=None,
                next_attempt_at=None,
                error_class="",
                error_code="",
                updated_at=now,
                **shared,
            )
        return updated

    def latest_by_source(self, flow: str, source_object: str, source_ids) -> dict[str, SyncEvent]:
        """The newest event of each record, by source id (two queries, whatever the count).

        For sources with no change stamp (KashFlow products, an invoice's payments), a flow
        compares a record with what it last saw here, so A → B → A is still three changes.
        """
        newest = (
            self.filter(flow=flow, source_object=source_object, source_id__in=list(source_ids))
            .values("source_id")
            .annotate(newest=Max("pk"))
            .values_list("newest", flat=True)
        )
        return {event.source_id: event for event in self.filter(pk__in=list(newest))}

    def for_record(self, record_id: str) -> SyncEventQuerySet:
        return self.filter(Q(source_id=record_id) | Q(target_id=record_id))

    def named(self, text: str) -> SyncEventQuerySet:
        """Events whose record's names, codes or ids hold `text` (any case): a deal or account
        name, a customer code, an invoice number, part of an id."""
        text = text.strip().lower()
        if not text:
            return self.none()
        return self.filter(Q(search_text__contains=text) | Q(target_id__icontains=text))

    def for_records(self, record_ids: list[str]) -> SyncEventQuerySet:
        return self.filter(Q(source_id__in=record_ids) | Q(target_id__in=record_ids))

    def matching(self, filters: dict) -> SyncEventQuerySet:
        """The error queue's filters, shared by its page, its CSV export and the group retry
        (engine.start_bulk_retry), so all three always mean the same events.

        Keys, all optional: flow, source_object, error_class, error_code (None = any code,
        "" = events with no code), q (a record id, or text in the message), date_from and
        date_to (dates or ISO strings, inclusive, in the site's time zone).
        """
        queryset = self
        for key in ("flow", "source_object", "error_class"):
            if filters.get(key):
                queryset = queryset.filter(**{key: filters[key]})
        if filters.get("error_code") is not None:
            queryset = queryset.filter(error_code=filters["error_code"])
        if text := (filters.get("q") or "").strip():
            queryset = queryset.filter(
                Q(source_id=text)
                | Q(target_id=text)
                | Q(message__icontains=text)
                | Q(search_text__contains=text.lower())
            )
        if day := _as_date(filters.get("date_from")):
            queryset = queryset.filter(created_at__gte=_start_of(day))
        if day := _as_date(filters.get("date_to")):
            queryset = queryset.filter(created_at__lt=_start_of(day + timedelta(days=1)))
        return queryset

    def error_groups(self) -> SyncEventQuerySet:
        """Errors grouped by cause (flow, code, class), the biggest group first: one query.
        `sample` is one of the group's messages, to name a cause that has no code."""
        return (
            self.values("flow", "error_code", "error_class")
            .annotate(count=Count("pk"), latest=Max("created_at"), sample=Min("message"))
            .order_by("-count", "flow", "error_code")
        )

    def synced_per_day(self, days: list[date]) -> dict[tuple[date, str], int]:
        """Records synced on each of `days` (consecutive, oldest first, in the site's time
        zone) per flow, as {(day, flow): count}: one grouped query.

        A row's day is found by comparing `finished_at` with the local midnights that start
        the days (a CASE the database evaluates), not by converting each row to a local date:
        on SQLite that conversion is a Python function called once per row, about 0.4 s for
        the synced events of two weeks at 100,000 events. The window is bounded on both
        sides, so the (status, finished_at) index reads the rows of those days and no others.
        """
        starts = [_start_of(day) for day in [*days, days[-1] + timedelta(days=1)]]
        day_number = Case(
            *(When(finished_at__lt=start, then=Value(n)) for n, start in enumerate(starts[1:])),
            output_field=models.IntegerField(),
        )
        rows = (
            self.filter(
                status=SyncEvent.Status.SUCCEEDED,
                finished_at__gte=starts[0],
                finished_at__lt=starts[-1],
            )
            .annotate(day_number=day_number)
            .values("day_number", "flow")
            .annotate(count=Count("pk"))
            .order_by()
        )
        return {(days[row["day_number"]], row["flow"]): row["count"] for row in rows}


def _split_values(group: list[Outcome]) -> tuple[dict, dict[str, dict]]:
    """A group's message, target id and content hash: those shared by every event as plain
    values, the others by event pk. An empty target id or hash leaves the event's own."""
    shared, per_row = {}, {}
    for name in ("message", "target_id", "content_hash", "warning"):
        values = {
            o.event.pk: getattr(o, name)
            for o in group
            if getattr(o, name) or name in ("message", "warning")
        }
        if len(values) == len(group) and len(set(values.values())) == 1:
            shared[name] = next(iter(values.values()))
        elif values:
            per_row[name] = values
    return shared, per_row


def _as_date(value) -> date | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


class SyncEvent(models.Model):
    """One source record arriving for one flow, and what became of it.

    The error queue is the set of events in FAILED_PERMANENT. `dedupe_key` makes the same change
    arriving twice (poll and push both saw it) one row.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting"
        RUNNING = "running", "In progress"
        SUCCEEDED = "succeeded", "Synced"
        SKIPPED = "skipped", "Unchanged"
        FAILED_TRANSIENT = "failed_transient", "Failed, will retry"
        FAILED_PERMANENT = "failed_permanent", "Needs attention"
        IGNORED = "ignored", "Ignored"

    class ErrorClass(models.TextChoices):
        NONE = "", "—"
        TRANSIENT = "transient", "Temporary (network, rate limit, outage)"
        PERMANENT = "permanent", "Needs a fix"

    run = models.ForeignKey(
        SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    flow = models.CharField(max_length=20, choices=Flow.choices)
    direction = models.CharField(max_length=10, choices=Direction.choices)
    source_object = models.CharField(max_length=80)
    source_id = models.CharField(max_length=100)
    target_object = models.CharField(max_length=80, blank=True)
    target_id = models.CharField(max_length=100, blank=True)
    # Money arrives as Decimal and is stored as its exact text (DjangoJSONEncoder), never a float.
    payload = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    content_hash = models.CharField(max_length=64, blank=True)
    dedupe_key = models.CharField(max_length=255, unique=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    error_class = models.CharField(max_length=20, choices=ErrorClass.choices, blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    message = models.TextField(blank=True)
    ignored_reason = models.CharField(max_length=255, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Synced, but with something a person should look at (the message says what): an invoice
    # on the default nominal code, say. Shown as "Synced with a warning".
    warning = models.BooleanField(default=False)
    # The names people use for the record (deal and account, customer code and name, invoice
    # number, amount), set when the change is recorded: lists lead with `label`, and the
    # record search reads `search_text` (lower case: the label, the ids and the codes).
    label = models.CharField(max_length=200, blank=True)
    search_text = models.CharField(max_length=400, blank=True)

    objects = SyncEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            # The error queue: unresolved errors, newest first.
            models.Index(
                fields=["status", "-created_at"],
                name="event_status_recent",
            ),
            # The record timeline: every event of one record.
            models.Index(fields=["source_id", "-created_at"], name="event_source_recent"),
            models.Index(fields=["target_id", "-created_at"], name="event_target_recent"),
            models.Index(fields=["run", "status"], name="event_run_status"),
            # The overview's records synced per day: a range of finished_at among the
            # synced, with the flow in the index so the rows themselves are not read.
            models.Index(fields=["status", "finished_at", "flow"], name="event_status_finished"),
            # Claims: a flow's due events, oldest first, without reading its finished ones.
            models.Index(fields=["flow", "status", "created_at"], name="event_flow_due"),
            # The mapping editor's recent records of an object (and a record's newest event).
            models.Index(
                fields=["flow", "source_object", "-created_at"], name="event_object_recent"
            ),
            # Synced with a warning: few rows among the many synced ones.
            models.Index(
                fields=["-created_at"], condition=Q(warning=True), name="event_warning_recent"
            ),
        ]
        permissions = [
            ("operate_sync", "Can start syncs and retry or ignore errors"),
            ("administer_integration", "Can edit connections and mappings"),
        ]

    def __str__(self) -> str:
        return f"{self.get_flow_display()}: {self.source_object} {self.source_id}"

    def __repr__(self) -> str:
        return f"<SyncEvent {self.pk} {self.flow} {self.source_id} {self.status}>"

    @staticmethod
    def cause_label(error_code: str, message: str = "") -> str:
        """A cause in words: the code spelt out, or the first words of a message when the
        failure came without a code."""
        if error_code:
            if status := re.fullmatch(r"(?:SANDBOX_FAULT_|HTTP_)?(\d{3})", error_code):
                words = HTTP_CAUSES.get(status[1], "The other system answered with an error")
                return f"{words} (HTTP {status[1]})"
            if re.fullmatch(r"[A-Z0-9_]+", error_code):
                return error_code.replace("_", " ").capitalize()
            return error_code
        # A transient failure that ran out of attempts starts with the same words every time.
        words = re.sub(r"^Gave up after \d+ attempts\.\s*", "", message).split()
        if not words:
            return "No message"
        label = " ".join(words[:8]).rstrip(".,:;")
        return label + ("…" if len(words) > 8 else "")

    @property
    def is_error(self) -> bool:
        return self.status in (self.Status.FAILED_TRANSIENT, self.Status.FAILED_PERMANENT)

    @property
    def status_label(self) -> str:
        if self.warning and self.status == self.Status.SUCCEEDED:
            return "Synced with a warning"
        return self.get_status_display()

    def claim(self) -> bool:
        """Take this event for work; False if it is not due or another worker took it."""
        now = timezone.now()
        claimed = (
            SyncEvent.objects.due(now)
            .filter(pk=self.pk)
            .update(status=self.Status.RUNNING, claimed_at=now, attempts=F("attempts") + 1)
        )
        if claimed:
            self.refresh_from_db()
        return bool(claimed)

    def hold(self) -> bool:
        """Renew this worker's claim just before a write that must not happen twice (a KashFlow
        invoice). False when the claim is lost: the sweeper took this event for a dead worker's
        (this one was only slow) and another worker may be on it now, so leave it alone.

        `claimed_at` is the claim's token: the sweeper and every new claim change it.
        """
        if self.pk is None:
            return True  # a dry run's event
        now = timezone.now()
        held = SyncEvent.objects.filter(
            pk=self.pk, status=self.Status.RUNNING, claimed_at=self.claimed_at
        ).update(claimed_at=now)
        if held:
            self.claimed_at = now
        return bool(held)

    def succeeded(
        self, target_id: str = "", content_hash: str = "", message: str = "", warning: bool = False
    ) -> Outcome:
        """This event synced, as an outcome to record with its batch's (`finish`); `warning`
        marks a sync a person should look at (shown as "Synced with a warning")."""
        return Outcome(
            self, self.Status.SUCCEEDED, target_id, content_hash, _clean(message), warning
        )

    def skipped(
        self, message: str = "Unchanged since the last sync.", target_id: str = ""
    ) -> Outcome:
        """This event needed no write, as an outcome to record with its batch's."""
        return Outcome(self, self.Status.SKIPPED, target_id, "", _clean(message))

    def mark_succeeded(
        self, target_id: str = "", content_hash: str = "", message: str = "", warning=False
    ) -> bool:
        """Record that this event synced; False when this worker no longer holds it (`finish`)."""
        outcome = self.succeeded(target_id, content_hash, message, warning)
        return bool(SyncEvent.objects.finish([outcome]))

    def mark_skipped(
        self, message: str = "Unchanged since the last sync.", target_id: str = ""
    ) -> bool:
        """Record that this event needed no write; False when this worker no longer holds it."""
        return bool(SyncEvent.objects.finish([self.skipped(message, target_id)]))

    def mark_failed(self, message: str, permanent: bool, code: str = "") -> None:
        """Record a failure. A transient one is retried with exponential backoff until the
        attempts run out; then, like a permanent one, it joins the error queue for a person."""
        message = secrets.redact(message).replace("\x00", "")
        max_attempts = settings.KASHFORCE["MAX_ATTEMPTS"]
        if not permanent and self.attempts < max_attempts:
            first = settings.KASHFORCE["RETRY_BACKOFF_SECONDS"]
            delay = timedelta(seconds=min(3600, first * 2 ** max(0, self.attempts - 1)))
            self.status, self.next_attempt_at = self.Status.FAILED_TRANSIENT, timezone.now() + delay
        else:
            if not permanent:
                # The failure's own words promised another try; giving up, they must not.
                message = (
                    f"Gave up after {self.attempts} attempts. {RETRY_PROMISE.sub('', message)} "
                    "kashforce will not try again by itself: press Retry once the cause is fixed."
                )
            self.status, self.next_attempt_at = self.Status.FAILED_PERMANENT, None
        self.error_class = self.ErrorClass.PERMANENT if permanent else self.ErrorClass.TRANSIENT
        self.error_code, self.message, self.claimed_at = code[:100], message, None
        if self.pk is None:
            return  # a dry run's event: never recorded, so it only changes in memory
        with transaction.atomic(savepoint=False):
            self.save(
                update_fields=[
                    "status",
                    "next_attempt_at",
                    "error_class",
                    "error_code",
                    "message",
                    "claimed_at",
                    "updated_at",
                ]
            )
            SyncAttempt.objects.record([self.pk])

    def retry(self, user=None) -> bool:
        """Put a failed or ignored event back in line at once. False if it was not failed."""
        updated = SyncEvent.objects.filter(
            pk=self.pk,
            status__in=[
                self.Status.FAILED_PERMANENT,
                self.Status.FAILED_TRANSIENT,
                self.Status.IGNORED,
            ],
        ).update(
            status=self.Status.PENDING, next_attempt_at=None, resolved_by=user, ignored_reason=""
        )
        if updated:
            was = self.get_status_display()
            self.refresh_from_db()
            self._audit(user, AuditEntry.Action.ERROR_RETRIED, f"Was: {was}. {self.message}")
        return bool(updated)

    def ignore(self, user, reason: str) -> bool:
        """Take a failed event out of the error queue on purpose, saying why."""
        if not reason.strip():
            raise ValueError("Say why this error is being ignored.")
        updated = SyncEvent.objects.filter(
            pk=self.pk,
            status__in=[self.Status.FAILED_PERMANENT, self.Status.FAILED_TRANSIENT],
        ).update(
            status=self.Status.IGNORED,
            ignored_reason=reason.strip()[:255],
            resolved_by=user,
            next_attempt_at=None,
            finished_at=timezone.now(),
        )
        if updated:
            self.refresh_from_db()
            self._audit(user, AuditEntry.Action.ERROR_IGNORED, f"Reason: {self.ignored_reason}")
        return bool(updated)

    def _audit(self, user, action: str, summary: str) -> None:
        AuditEntry.record(
            user, action, AuditEntry.ObjectType.EVENT, self.pk, str(self), summary[:1000]
        )


class SyncAttemptQuerySet(models.QuerySet):
    def record(self, event_pks: list[int]) -> None:
        """A line for each of these events' outcome, just recorded on them (in the same
        transaction; its time is the event's `updated_at`): one INSERT … SELECT, so no row passes through Python. bulk_create made
        recording a batch's outcomes cost 2.3 times as much (SQLite, 200 events)."""
        db = connections[self.db]
        name = db.ops.quote_name
        columns = ", ".join(
            name(c)
            for c in ("event_id", "number", "finished_at", "status", "warning", "error_code")
        )
        size = db.features.max_query_params or len(event_pks) or 1
        with db.cursor() as cursor:
            for start in range(0, len(event_pks), size):
                part = [int(pk) for pk in event_pks[start : start + size]]
                cursor.execute(
                    f"INSERT INTO {name(self.model._meta.db_table)} ({columns}, "
                    f"{name('message')}) SELECT {name('id')}, {name('attempts')}, "
                    f"{name('updated_at')}, {name('status')}, {name('warning')}, "
                    f"{name('error_code')}, {name('message')} "
                    f"FROM {name(SyncEvent._meta.db_table)} "
                    f"WHERE {name('id')} IN ({', '.join(['%s'] * len(part))})",
                    part,
                )


class SyncAttempt(models.Model):
    """One attempt at an event: claimed by a worker, then synced, unchanged or failed, with its
    time and message. An event keeps only its latest outcome; these keep every one, so a
    retried record's timeline shows each failure before the success (issue #19)."""

    event = models.ForeignKey(SyncEvent, on_delete=models.CASCADE, related_name="attempt_lines")
    number = models.PositiveIntegerField(default=0)  # the event's attempt count at the time
    finished_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=20, choices=SyncEvent.Status.choices)
    warning = models.BooleanField(default=False)
    error_code = models.CharField(max_length=100, blank=True)
    message = models.TextField(blank=True)

    objects = SyncAttemptQuerySet.as_manager()

    class Meta:
        ordering = ["finished_at", "pk"]
        # A record's timeline reads its events' attempts by event (the FK's own index).

    def __str__(self) -> str:
        return f"Attempt {self.number} of event {self.event_id}: {self.status}"

    @property
    def status_label(self) -> str:
        if self.warning and self.status == SyncEvent.Status.SUCCEEDED:
            return "Synced with a warning"
        return self.get_status_display()


class Cursor(models.Model):
    """Where a flow's incremental read got to on one connection (a watermark)."""

    flow = models.CharField(max_length=20, choices=Flow.choices)
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="cursors")
    name = models.CharField(max_length=50, default="default", help_text="A flow may keep several.")
    value = models.CharField(max_length=100, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["flow", "connection", "name"], name="cursor_unique")
        ]

    def __str__(self) -> str:
        return f"{self.flow}/{self.connection_id}/{self.name} = {self.value}"

    @classmethod
    def get_value(cls, flow: str, connection: Connection, name: str = "default") -> str:
        cursor = cls.objects.filter(flow=flow, connection=connection, name=name).first()
        return cursor.value if cursor else ""

    @classmethod
    def advance(cls, flow: str, connection: Connection, value: str, name: str = "default") -> None:
        cls.objects.update_or_create(
            flow=flow, connection=connection, name=name, defaults={"value": value}
        )


class CustomerFeedEntry(models.Model):
    """What the customers flow last read of one KashFlow customer: the memory of its change feed.

    KashFlow's customer list has no dates and no modified-since filter, so each run walks the
    summaries and compares each one's hash with `summary_hash`; only a new or changed customer
    costs a read of its full record. `refresh_due_at` schedules the rolling re-read of fields
    only the full record carries (TelephoneNumber, Email, Note, PaymentTerms...).
    """

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    code = models.CharField(max_length=100)
    summary_hash = models.CharField(max_length=64, blank=True)
    # Hash of the full record as last read ("" when the flow maps the summary alone).
    full_hash = models.CharField(max_length=64, blank=True)
    full_read_at = models.DateTimeField(null=True, blank=True)
    refresh_due_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "code"], name="customer_feed_unique")
        ]

    def __str__(self) -> str:
        return f"{self.connection_id}/{self.code}"


class ChangeStream(models.Model):
    """One Pub/Sub topic kashforce subscribes to on a connection: how far it has read and which
    subscriber process holds it.

    `replay_id` (the hex of Salesforce's opaque bytes) is stored only once the changes it brought
    are in the ledger, in the same transaction, so a crash replays instead of losing. The lease
    (`holder` until `lease_expires_at`) is taken with a conditional UPDATE, so two subscribers
    started together hold one stream between them.
    """

    class State(models.TextChoices):
        CONNECTING = "connecting", "Connecting"
        LIVE = "live", "Live"
        SILENT = "silent", "Silent: the poll is covering"
        DOWN = "down", "Down: the poll is covering"
        STOPPED = "stopped", "Stopped"

    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="change_streams"
    )
    topic = models.CharField(max_length=255)
    replay_id = models.CharField(max_length=64, blank=True)
    replay_saved_at = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    last_heard_at = models.DateTimeField(null=True, blank=True)  # any answer, keepalives too
    events_received = models.PositiveBigIntegerField(default=0)
    state = models.CharField(max_length=20, choices=State.choices, default=State.STOPPED)
    message = models.TextField(blank=True)
    holder = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "topic"], name="change_stream_unique")
        ]

    def __str__(self) -> str:
        return f"{self.topic} on {self.connection_id}"

    def take_lease(self, holder: str, seconds: float) -> bool:
        """Hold (or keep holding) the stream for `seconds`; False while another holder's lease
        runs. One conditional UPDATE: of two subscribers asking at once, one wins."""
        now = timezone.now()
        taken = (
            ChangeStream.objects.filter(pk=self.pk)
            .filter(Q(holder="") | Q(holder=holder) | Q(lease_expires_at__lt=now))
            .update(holder=holder, lease_expires_at=now + timedelta(seconds=seconds))
        )
        return bool(taken)

    def take_over(self, dead_holder: str, holder: str, seconds: float) -> bool:
        """Take the lease from a holder known to be dead (a process of this host that no longer
        exists), without waiting for its lease to run out; False if someone else moved first."""
        taken = ChangeStream.objects.filter(pk=self.pk, holder=dead_holder).update(
            holder=holder, lease_expires_at=timezone.now() + timedelta(seconds=seconds)
        )
        return bool(taken)

    def release(self, holder: str) -> None:
        ChangeStream.objects.filter(pk=self.pk, holder=holder).update(
            holder="", lease_expires_at=None, state=self.State.STOPPED
        )

    def note(self, state: str, message: str = "") -> None:
        self.state, self.message = state, secrets.redact(message)[:2000]
        ChangeStream.objects.filter(pk=self.pk).update(state=self.state, message=self.message)


# --------------------------------------------------------------------------------------------
# The audit trail


class AuditEntryQuerySet(models.QuerySet):
    def for_object(self, object_type: str, object_id) -> AuditEntryQuerySet:
        return self.filter(object_type=object_type, object_id=str(object_id))


class AuditEntry(models.Model):
    """Who changed a connection or a mapping, or retried or ignored an error, and when.

    Append-only: written where the change happens (model methods and the flow functions the
    dashboard and the admin both call), never edited. A summary names what changed and never
    holds a secret's value: for a connection it says which secrets were replaced or cleared.
    """

    class Action(models.TextChoices):
        CONNECTION_ADDED = "connection_added", "Connection added"
        CONNECTION_CHANGED = "connection_changed", "Connection changed"
        CONNECTION_DELETED = "connection_deleted", "Connection deleted"
        CONNECTION_TESTED = "connection_tested", "Connection tested"
        MAPPING_SAVED = "mapping_saved", "Mapping saved"
        MAPPING_ROLLED_BACK = "mapping_rolled_back", "Mapping rolled back"
        MAPPING_EDITED_IN_CONSOLE = "mapping_console", "Mapping edited in the console"
        ERROR_RETRIED = "error_retried", "Error retried"
        ERROR_IGNORED = "error_ignored", "Error ignored"
        GROUP_RETRIED = "group_retried", "Group of errors retried"
        VAT_RULES_SAVED = "vat_rules_saved", "VAT rules saved"
        AMENDMENT_DECIDED = "amendment_decided", "Change after invoicing decided"
        HOLD_APPROVED = "hold_approved", "Held invoice approved"
        FINANCE_SETTINGS_CHANGED = "finance_settings", "Finance settings changed"

    class ObjectType(models.TextChoices):
        CONNECTION = "connection", "Connection"
        MAPPING = "mapping", "Mapping"
        EVENT = "event", "Sync event"
        RUN = "run", "Run"
        VAT_RULES = "vat_rules", "VAT rules"
        AMENDMENT = "amendment", "Change after invoicing"
        HOLD = "hold", "Finance hold"
        FINANCE_SETTINGS = "finance_settings", "Finance settings"

    created_at = models.DateTimeField(default=timezone.now)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept as text too, so the trail still names a person after their account is deleted.
    username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=30, choices=Action.choices)
    object_type = models.CharField(max_length=20, choices=ObjectType.choices)
    object_id = models.CharField(max_length=100, blank=True)
    object_label = models.CharField(max_length=255, blank=True)
    summary = models.TextField(blank=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["-created_at"], name="audit_recent"),
            models.Index(fields=["object_type", "object_id"], name="audit_object"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.username or 'kashforce'}: {self.get_action_display()} {self.object_label}"

    @classmethod
    def record(
        cls, user, action: str, object_type: str, object_id="", label: str = "", summary: str = ""
    ) -> AuditEntry:
        """Append one entry. `user` None (or anonymous) is kashforce itself: a command, a task."""
        person = user if getattr(user, "pk", None) else None
        return cls.objects.create(
            user=person,
            username=person.get_username() if person else "",
            action=action,
            object_type=object_type,
            object_id=str(object_id or ""),
            object_label=str(label)[:255],
            summary=secrets.redact(summary).replace("\x00", ""),
        )


# --------------------------------------------------------------------------------------------
# Alerts (found and sent by integration/alerts.py)


class AlertKind(models.TextChoices):
    NEW_ERROR = "new_error", "A new kind of error"
    ERROR_DIGEST = "error_digest", "More errors of kinds already reported (a digest)"
    OLD_ERRORS = "old_errors", "Errors left unresolved too long"
    SILENCE = "silence", "A sync that has gone quiet"
    SIGN_IN_REFUSED = "sign_in_refused", "A connection whose sign-in is refused"
    API_BUDGET = "api_budget", "Salesforce API use over its share"
    RECONCILIATION = "reconciliation", "Differences found by a reconciliation"


class AlertQuerySet(models.QuerySet):
    def still_open(self) -> AlertQuerySet:
        """Alerts whose condition has not been seen to end (a refused sign-in not yet fixed)."""
        return self.filter(closed_at__isnull=True)


class Alert(models.Model):
    """One occurrence of something a person should hear about.

    `key` names the occurrence, so the same one found twice (two workers, two passes) is one
    row and is sent once. `subject` is what it is about (a cause, a flow, a connection): an
    alert stays open while its condition lasts, and only a new occurrence after it closed is
    sent again. Title and message are plain words, never a secret or a record's payload.
    """

    kind = models.CharField(max_length=20, choices=AlertKind.choices)
    key = models.CharField(max_length=255, unique=True)
    subject = models.CharField(max_length=255, blank=True)
    title = models.CharField(max_length=200)
    message = models.TextField()
    # The page on this site that explains it (a path; messages carry it as an absolute URL).
    link = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    # Old errors and digests: the moment this alert counted up to (the next one starts there).
    covers_until = models.DateTimeField(null=True, blank=True)

    objects = AlertQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["created_at"], name="alert_recent"),
            models.Index(fields=["kind", "subject", "closed_at"], name="alert_open_subject"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.title}"

    @property
    def url(self) -> str:
        return settings.KASHFORCE["BASE_URL"] + self.link


class AlertPreference(models.Model):
    """Which kinds of alert a person receives by e-mail (their profile page). A person with no
    preference receives none, unless their address is in KASHFORCE_ALERTS_TO."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alert_preference"
    )
    kinds = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Alerts for {self.user}"


class AlertWebhook(models.Model):
    """A chat or incident channel alerts are POSTed to (Slack-compatible JSON), set by an
    Integration admin. Its URL usually carries a token, so it is stored encrypted like the
    connections' secrets and shown back only as its host."""

    name = models.CharField(max_length=100, unique=True)
    encrypted_url = models.TextField(editable=False)
    kinds = models.JSONField(default=list, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<AlertWebhook {self.pk} {self.name!r}>"  # never the URL

    def get_url(self) -> str:
        return secrets.decrypt_json(self.encrypted_url).get("url", "")

    def set_url(self, url: str) -> None:
        self.encrypted_url = secrets.encrypt_json({"url": url})

    @property
    def host(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.get_url()).hostname or "—"

    def rotate_encryption(self) -> None:
        AlertWebhook.objects.filter(pk=self.pk).update(
            encrypted_url=secrets.rotate(self.encrypted_url)
        )


class AlertDeliveryQuerySet(models.QuerySet):
    def due(self, now: datetime) -> AlertDeliveryQuerySet:
        """Waiting, or failing for a moment and past its backoff."""
        return self.filter(
            Q(status=AlertDelivery.Status.PENDING)
            | Q(status=AlertDelivery.Status.RETRYING, next_attempt_at__lte=now)
        )


class AlertDelivery(models.Model):
    """One alert to one recipient (an e-mail address, or a webhook by its name, never its URL),
    and whether it arrived. Claimed with a conditional UPDATE, so two workers send it once."""

    class Channel(models.TextChoices):
        EMAIL = "email", "E-mail"
        WEBHOOK = "webhook", "Webhook"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to be sent"
        SENDING = "sending", "Sending"
        RETRYING = "retrying", "Failed for now, will retry"
        SENT = "sent", "Delivered"
        FAILED = "failed", "Not delivered"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    recipient = models.CharField(max_length=255)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    webhook = models.ForeignKey(AlertWebhook, null=True, blank=True, on_delete=models.SET_NULL)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = AlertDeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "channel", "recipient"], name="alert_delivery_once"
            )
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="alert_delivery_due")]

    def __str__(self) -> str:
        return f"{self.alert} → {self.recipient}"

    def claim(self, now: datetime) -> bool:
        """Take this delivery to send it; False if it is not due or another worker took it."""
        claimed = (
            AlertDelivery.objects.due(now)
            .filter(pk=self.pk)
            .update(status=self.Status.SENDING, claimed_at=now, attempts=F("attempts") + 1)
        )
        if claimed:
            # Only these: a full refresh would drop the alert and webhook loaded with it.
            self.refresh_from_db(fields=["status", "claimed_at", "attempts"])
        return bool(claimed)

    def mark_sent(self) -> None:
        self._finish(self.Status.SENT, sent_at=timezone.now(), error="", next_attempt_at=None)

    def mark_failed(self, message: str, permanent: bool) -> None:
        """A temporary failure waits and is tried again (the wait doubles) until the attempts
        run out; a permanent one, or the last attempt, is recorded as not delivered."""
        message = _clean(message)[:1000]
        if not permanent and self.attempts < settings.KASHFORCE["ALERT_ATTEMPTS"]:
            first = settings.KASHFORCE["ALERT_BACKOFF_SECONDS"]
            wait = timedelta(seconds=min(3600, first * 2 ** max(0, self.attempts - 1)))
            self._finish(self.Status.RETRYING, error=message, next_attempt_at=timezone.now() + wait)
        else:
            if not permanent:
                message = f"Gave up after {self.attempts} attempts. {message}"
            self._finish(self.Status.FAILED, error=message, next_attempt_at=None)

    def _finish(self, status: str, **values) -> None:
        # Only this worker's claim is finished: claimed_at is the claim's token.
        AlertDelivery.objects.filter(
            pk=self.pk, status=self.Status.SENDING, claimed_at=self.claimed_at
        ).update(status=status, claimed_at=None, **values)
        self.status = status
        for name, value in values.items():
            setattr(self, name, value)


# --------------------------------------------------------------------------------------------
# VAT rules


class VatRuleSetQuerySet(models.QuerySet):
    def active(self) -> VatRuleSetQuerySet:
        return self.filter(is_active=True)


class VatRuleSet(models.Model):
    """One version of the VAT rules an admin keeps on the VAT rules page.

    The KashFlow product's own VATRate comes first; these rules fill in where it cannot (see
    `mapping.vat_decision`): `{"countries": {"NO": "25"}, "products": {"BOO-0001": "0"}}`, rates
    as text percentages, product codes KashFlow's. Saving makes a new version, like mappings:
    old versions stay for the history, exactly one is active, and the audit trail says who
    changed what.
    """

    version = models.PositiveIntegerField(unique=True)
    is_active = models.BooleanField(default=False)
    rules = models.JSONField(default=dict, blank=True)
    note = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = VatRuleSetQuerySet.as_manager()

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="one_active_vat_rules"
            )
        ]

    def __str__(self) -> str:
        return f"VAT rules v{self.version}"

    @classmethod
    def current_rules(cls) -> dict:
        """The active version's rules ({} before anyone saved any)."""
        active = cls.objects.active().first()
        return dict(active.rules) if active else {}

    @classmethod
    @transaction.atomic
    def save_new_version(cls, rules: dict, user=None, note: str = "") -> VatRuleSet:
        """Make and activate the next version; the audit trail names each rule changed."""
        versions = cls.objects.select_for_update().all()
        previous = versions.filter(is_active=True).first()
        next_version = (versions.aggregate(v=models.Max("version"))["v"] or 0) + 1
        versions.filter(is_active=True).update(is_active=False)
        new = cls.objects.create(
            version=next_version, is_active=True, rules=rules, note=note, created_by=user
        )
        what = describe_vat_rule_changes(previous.rules if previous else {}, rules)
        against = f"Against v{previous.version if previous else 0}: {what}."
        AuditEntry.record(
            user,
            AuditEntry.Action.VAT_RULES_SAVED,
            AuditEntry.ObjectType.VAT_RULES,
            new.pk,
            str(new),
            f"{note}. {against}" if note else against,
        )
        return new


def describe_vat_rule_changes(before: dict, after: dict) -> str:
    """ "customers in NO: 25% added; BOO-0001: 0% → 5%" — the rules that differ, in words."""
    parts = []
    for kind, label in (("countries", "customers in {}"), ("products", "product {}")):
        old, new = before.get(kind, {}), after.get(kind, {})
        for key in sorted(set(old) | set(new)):
            name = label.format(key)
            if key not in old:
                parts.append(f"{name}: {new[key]}% added")
            elif key not in new:
                parts.append(f"{name}: {old[key]}% removed")
            elif str(old[key]) != str(new[key]):
                parts.append(f"{name}: {old[key]}% → {new[key]}%")
    return "; ".join(parts) or "no rule changed"


# --------------------------------------------------------------------------------------------
# Finance: changes after invoicing, holds, the kept history of writes, reconciliations


class AmendmentQuerySet(models.QuerySet):
    def open(self) -> AmendmentQuerySet:
        return self.filter(status=Amendment.Status.OPEN)


class Amendment(models.Model):
    """An invoiced deal that changed after its invoice was made: a finance user decides what
    becomes of the invoice (a credit note, a replacement, or accepting the change), since a
    sent invoice is never changed silently. One open amendment per Opportunity: later changes
    update it. The flow is integration/sync/amendments.py."""

    class Change(models.TextChoices):
        AMOUNT = "amount", "Amount changed"
        LINES = "lines", "Products changed"
        CLOSE_DATE = "close_date", "Close date changed"
        LOST = "lost", "Moved to Closed Lost"
        DELETED = "deleted", "Deleted in Salesforce"

    class Status(models.TextChoices):
        OPEN = "open", "Waiting for a decision"
        CREDITED = "credited", "Credit note raised"
        REPLACED = "replaced", "Replacement invoice raised"
        ACCEPTED = "accepted", "Accepted as it is"
        WITHDRAWN = "withdrawn", "Deal changed back"

    class Action(models.TextChoices):
        CREDIT_DIFFERENCE = "credit_difference", "Credit note for the difference"
        CREDIT_WHOLE = "credit_whole", "Credit note for the whole invoice"
        REPLACE = "replace", "Credit the invoice and raise a replacement"

    opportunity_id = models.CharField(max_length=18)
    opportunity_name = models.CharField(max_length=255, blank=True)
    invoice_number = models.CharField(max_length=20)
    changes = models.JSONField(default=list, blank=True)
    # The deal as invoiced and as it is now: {"Amount", "CloseDate", "StageName", "Lines": [...]}.
    invoiced = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    current = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    # A decision under way: recorded before KashFlow is called, so a retry finds what was made
    # (by its marker in CustomerReference) instead of making it twice.
    action = models.CharField(max_length=20, choices=Action.choices, blank=True)
    working_since = models.DateTimeField(null=True, blank=True)
    credit_note_number = models.CharField(max_length=20, blank=True)
    credit_amount = models.DecimalField(max_digits=18, decimal_places=4, null=True, blank=True)
    replacement_number = models.CharField(max_length=20, blank=True)
    reason = models.TextField(blank=True)
    message = models.TextField(blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = AmendmentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["opportunity_id"],
                condition=Q(status="open"),
                name="one_open_amendment_per_deal",
            )
        ]
        indexes = [models.Index(fields=["status", "-created_at"], name="amendment_status_recent")]
        permissions = [
            (
                "decide_amendments",
                "Can raise credit notes and replacement invoices for changed deals",
            ),
            ("approve_finance_holds", "Can approve invoices held for Finance"),
        ]

    def __str__(self) -> str:
        return f"Invoice {self.invoice_number}: {self.headline}"

    @property
    def headline(self) -> str:
        """The change in a finance user's words: "Invoice 1042 is £100.00, the deal is now
        £200.00"."""
        invoiced, now = self.invoiced.get("Amount"), self.current.get("Amount")
        if Amendment.Change.DELETED in self.changes:
            return f"Invoice {self.invoice_number} stands, but its deal was deleted in Salesforce"
        if Amendment.Change.LOST in self.changes:
            return f"Invoice {self.invoice_number} stands, but its deal is now Closed Lost"
        if Amendment.Change.AMOUNT in self.changes:
            return (
                f"Invoice {self.invoice_number} is {_money(invoiced)}, "
                f"the deal is now {_money(now)}"
            )
        if Amendment.Change.CLOSE_DATE in self.changes:
            return (
                f"Invoice {self.invoice_number} is dated {self.invoiced.get('CloseDate')}, "
                f"the deal now closes on {self.current.get('CloseDate')}"
            )
        return f"Invoice {self.invoice_number}'s products changed on the deal (same total)"

    @property
    def difference(self):
        """What the invoice is over the deal now (positive: the customer was overcharged)."""
        from decimal import Decimal

        invoiced = Decimal(str(self.invoiced.get("Amount") or 0))
        if {Amendment.Change.DELETED, Amendment.Change.LOST} & set(self.changes):
            return invoiced
        return invoiced - Decimal(str(self.current.get("Amount") or 0))


def _money(value) -> str:
    from decimal import Decimal

    if value in (None, ""):
        return "no amount"
    return f"£{Decimal(str(value)):,.2f}"


class WriteRecord(models.Model):
    """The kept history of every write to KashFlow or Salesforce: what, when, which records,
    the amounts, who or what triggered it. Compact (no payloads) and never removed by the
    nightly cleanup: UK VAT records are kept six years (VAT Notice 700/21). Written in the
    same transaction as the outcome it records."""

    class Action(models.TextChoices):
        INVOICE_CREATED = "invoice_created", "Invoice made"
        CREDIT_NOTE_CREATED = "credit_note_created", "Credit note made"
        REPLACEMENT_CREATED = "replacement_created", "Replacement invoice made"
        CHANGE_ACCEPTED = "change_accepted", "Change after invoicing accepted"
        RECORD_WRITTEN = "record_written", "Record written"

    created_at = models.DateTimeField(default=timezone.now)
    flow = models.CharField(max_length=20, choices=Flow.choices)
    action = models.CharField(max_length=30, choices=Action.choices)
    source_object = models.CharField(max_length=80, blank=True)
    source_id = models.CharField(max_length=100, blank=True)
    target_object = models.CharField(max_length=80, blank=True)
    target_id = models.CharField(max_length=100, blank=True)
    amount = models.DecimalField(max_digits=18, decimal_places=4, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    # Plain values only (ids, dates, amounts): what a VAT inspector asks for, not a payload.
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    # Kept as values, not foreign keys: runs and users may go, the history stays.
    run_id = models.PositiveIntegerField(null=True, blank=True)
    trigger = models.CharField(max_length=20, blank=True)
    username = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["source_id", "-created_at"], name="write_source_recent"),
            models.Index(fields=["target_id", "-created_at"], name="write_target_recent"),
            models.Index(fields=["-created_at"], name="write_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d} {self.get_action_display()} {self.target_id}"

    @classmethod
    def keep(cls, outcomes: list[Outcome], now: datetime) -> None:
        """The kept history of the writes among a batch's recorded outcomes (those synced to
        Salesforce or KashFlow), in the outcome's transaction: one read of the runs (who
        triggered them), one INSERT; nothing at all for a batch with no write."""
        written = [
            o
            for o in outcomes
            if o.status == SyncEvent.Status.SUCCEEDED
            and not (o.event.target_object or "").startswith("kashforce.")
        ]
        if not written:
            return
        runs = {
            run["pk"]: run
            for run in SyncRun.objects.filter(
                pk__in={o.event.run_id for o in written if o.event.run_id}
            ).values("pk", "trigger", "triggered_by__username")
        }
        cls.objects.bulk_create(
            cls(
                created_at=now,
                flow=o.event.flow,
                action=cls.Action.RECORD_WRITTEN,
                source_object=o.event.source_object,
                source_id=o.event.source_id,
                target_object=o.event.target_object,
                target_id=o.target_id or o.event.target_id,
                amount=_payload_amount(o.event.payload),
                details={"message": o.message[:500]} if o.message else {},
                run_id=o.event.run_id,
                trigger=runs.get(o.event.run_id, {}).get("trigger", ""),
                username=runs.get(o.event.run_id, {}).get("triggered_by__username") or "",
            )
            for o in written
        )


def _payload_amount(payload) -> Decimal | None:
    """The money a source record carries (a payment's Amount, an invoice's totals), if any."""
    for name in ("Amount", "NetAmount", "GrossAmount", "TotalPrice"):
        value = (payload or {}).get(name) if isinstance(payload, dict) else None
        if value not in (None, ""):
            try:
                return Decimal(str(value)).quantize(Decimal("0.0001"))
            except ArithmeticError:
                return None
    return None


class FinanceSettings(models.Model):
    """What Finance must approve before it is invoiced: one row, edited by an admin.

    KashFlow's REST API publishes no closed-VAT-period date an integration could trust (its
    `LockTransactionAfterVat` setting is a flag without a date, and `/vatreturns` is not in the
    documented set we follow), so the lock date is entered here by an admin after each return.
    """

    hold_above = models.DecimalField(
        max_digits=18,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Invoices with a net amount above this wait for Finance. Empty: no limit.",
    )
    vat_closed_until = models.DateField(
        null=True,
        blank=True,
        help_text="The last day of the latest VAT period submitted. Invoices dated on or before "
        "it wait for Finance.",
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "finance settings"

    def __str__(self) -> str:
        return "Finance settings"

    @classmethod
    def current(cls) -> FinanceSettings:
        return cls.objects.order_by("pk").first() or cls()


class FinanceHold(models.Model):
    """An invoice waiting for a Finance approval before it is raised in KashFlow."""

    class Reason(models.TextChoices):
        OVER_LIMIT = "over_limit", "Above the amount Finance approves"
        CLOSED_PERIOD = "closed_period", "Dated into a closed VAT period"

    opportunity_id = models.CharField(max_length=18, unique=True)
    opportunity_name = models.CharField(max_length=255, blank=True)
    reasons = models.JSONField(default=list, blank=True)
    amount = models.DecimalField(max_digits=18, decimal_places=2, null=True, blank=True)
    issued = models.DateField(null=True, blank=True)
    # The invoices flow's event, set aside while it waits, put back in line when approved.
    event = models.ForeignKey(
        "SyncEvent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"Hold on {self.opportunity_name or self.opportunity_id}"

    @property
    def approved(self) -> bool:
        return self.approved_at is not None


class Reconciliation(models.Model):
    """One comparison of Salesforce and KashFlow for the invoicing flow (integration/reconcile.py):
    counts and totals per kind of difference and month; the lines themselves are in its CSV."""

    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    since = models.DateField(null=True, blank=True)
    trigger = models.CharField(max_length=20, choices=Trigger.choices, default=Trigger.MANUAL)
    differences = models.PositiveIntegerField(default=0)
    compared = models.PositiveIntegerField(default=0)
    api_calls = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    lines = models.JSONField(default=list, blank=True, encoder=DjangoJSONEncoder)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"Reconciliation {self.created_at:%Y-%m-%d %H:%M}: {self.differences} difference(s)"
