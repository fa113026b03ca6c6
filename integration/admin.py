"""The Django admin: the console for raw data. Bulk actions call the same model methods as the
dashboard, so there is one way to retry or ignore an error.

The ledger (events, runs, cross-references, cursors, the audit trail) and the mapping versions
are read-only here for everyone, superusers included: a direct edit would bypass the engine
and leave no trace (issue #15). Events change only through the engine's actions below (retry,
ignore), which need the Operations permission and are audited; mappings change only through the
dashboard's editor, which makes a new version. Connections stay editable, through the same
form as the dashboard (secrets write-only, a new address needs the secrets again)."""

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django_otp.plugins.otp_totp.models import TOTPDevice

from integration.access import OPERATE
from integration.clients.check import check_connection
from integration.forms import SECRET_LABELS, ConnectionForm, IgnoreForm
from integration.models import (
    Alert,
    AlertDelivery,
    Amendment,
    AuditEntry,
    Connection,
    CrossRef,
    Cursor,
    FieldMapping,
    FinanceHold,
    MappingSet,
    Reconciliation,
    SyncAttempt,
    SyncEvent,
    SyncRun,
    WriteRecord,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shown, never added, changed or deleted in the console (see the module's docstring)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    form = ConnectionForm
    list_display = [
        "name",
        "kind",
        "environment",
        "auth_method",
        "status",
        "last_checked_at",
        "is_active",
    ]
    list_filter = ["kind", "environment", "status", "is_active"]
    search_fields = ["name", "username", "instance_url", "base_url", "organization_id"]
    readonly_fields = [
        "status",
        "last_checked_at",
        "last_check_message",
        "api_usage_used",
        "api_usage_limit",
        "api_usage_at",
        "created_at",
        "updated_at",
    ]

    actions = ["check_selected"]

    @admin.action(description="Check the selected connections", permissions=["change"])
    def check_selected(self, request, queryset):
        for connection in queryset:
            result = check_connection(connection, request.user)
            level = messages.SUCCESS if result.ok else messages.ERROR
            self.message_user(request, f"{connection.name}: {result.message}", level)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        form.audit(request.user, created=not change)

    def delete_model(self, request, obj):
        self._audit_deleted(request, [obj])
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        self._audit_deleted(request, list(queryset))
        super().delete_queryset(request, queryset)

    def _audit_deleted(self, request, connections):
        for connection in connections:
            AuditEntry.record(
                request.user,
                AuditEntry.Action.CONNECTION_DELETED,
                AuditEntry.ObjectType.CONNECTION,
                connection.pk,
                str(connection),
                "Deleted in the console.",
            )

    def get_fieldsets(self, request, obj=None):
        secret_fields = [f for name in SECRET_LABELS for f in (name, f"clear_{name}")]
        return [
            (None, {"fields": ConnectionForm.Meta.fields}),
            ("Secrets (write-only)", {"fields": secret_fields}),
            ("Status", {"fields": self.readonly_fields}),
        ]


class FieldMappingInline(admin.TabularInline):
    model = FieldMapping
    extra = 0

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(MappingSet)
class MappingSetAdmin(ReadOnlyAdmin):
    """Read-only: the dashboard's mapping editor checks the rows and saves a new version, so
    the history that past events were mapped with is never rewritten in place."""

    list_display = [
        "name",
        "flow",
        "source_object",
        "target_object",
        "version",
        "is_active",
        "created_at",
    ]
    list_filter = ["flow", "is_active"]
    search_fields = ["name", "source_object", "target_object"]
    inlines = [FieldMappingInline]


@admin.register(CrossRef)
class CrossRefAdmin(ReadOnlyAdmin):
    list_display = [
        "object_type",
        "salesforce_id",
        "kashflow_key",
        "salesforce_synced_at",
        "kashflow_synced_at",
    ]
    list_filter = ["object_type"]
    search_fields = ["=salesforce_id", "=kashflow_key"]


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    list_display = [
        "pk",
        "flow",
        "trigger",
        "status",
        "created_at",
        "read_count",
        "written_count",
        "failed_count",
    ]
    list_filter = ["flow", "trigger", "status", "dry_run"]
    date_hierarchy = "created_at"
    raw_id_fields = ["triggered_by"]


class SyncAttemptInline(admin.TabularInline):
    """Every attempt at the event, as the record's timeline lists them; read-only."""

    model = SyncAttempt
    fields = ["number", "finished_at", "status", "error_code", "message"]
    readonly_fields = fields
    extra = 0

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SyncEvent)
class SyncEventAdmin(ReadOnlyAdmin):
    inlines = [SyncAttemptInline]
    list_display = [
        "pk",
        "flow",
        "source_object",
        "source_id",
        "label",
        "target_id",
        "status",
        "attempts",
        "created_at",
    ]
    list_filter = ["flow", "status", "error_class", "direction", "source_object"]
    search_fields = ["=source_id", "=target_id", "dedupe_key", "error_code"]
    raw_id_fields = ["run", "resolved_by"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # the ledger grows large; COUNT(*) on every page costs
    actions = ["retry_selected", "ignore_selected"]

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm(OPERATE)

    @admin.action(description="Retry the selected failed events", permissions=["operate"])
    def retry_selected(self, request, queryset):
        # The dashboard's Retry: SyncEvent.retry on each, then the queue is rung for their flows.
        from integration.sync.engine import retry_events

        retried = retry_events(list(queryset.values_list("pk", flat=True)), request.user)
        self.message_user(request, f"{retried} event(s) put back in line.", messages.SUCCESS)

    @admin.action(description="Ignore the selected failed events", permissions=["operate"])
    def ignore_selected(self, request, queryset):
        """The dashboard's Ignore: asks why first (a page in between), then SyncEvent.ignore."""
        form = IgnoreForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "title": "Ignore the selected errors",
                "opts": self.model._meta,
                "form": form,
                "events": queryset,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/integration/syncevent/ignore.html", context)
        reason = form.cleaned_data["reason"]
        ignored = sum(event.ignore(request.user, reason) for event in queryset)
        self.message_user(request, f"{ignored} error(s) ignored: {reason}", messages.SUCCESS)


@admin.register(Cursor)
class CursorAdmin(ReadOnlyAdmin):
    list_display = ["flow", "connection", "name", "value", "updated_at"]
    list_filter = ["flow"]


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """The audit trail, read-only: nobody edits or deletes history, superusers included."""

    list_display = ["created_at", "username", "action", "object_type", "object_label", "summary"]
    list_filter = ["action", "object_type", "username"]
    search_fields = ["=object_id", "object_label", "username", "summary"]
    date_hierarchy = "created_at"
    show_full_result_count = False


# django-otp's own admin shows any user's TOTP secret as a QR code (its "config" page): a
# superuser could copy someone's second factor. Here an authenticator can only be seen (never
# its key) and removed, for a user who lost their phone; they then enrol again.
admin.site.unregister(TOTPDevice)


@admin.register(TOTPDevice)
class AuthenticatorAdmin(admin.ModelAdmin):
    list_display = ["user", "name", "confirmed", "created_at", "last_used_at"]
    list_filter = ["confirmed"]
    search_fields = ["user__username"]
    fields = ["user", "name", "confirmed", "created_at", "last_used_at"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class AlertDeliveryInline(admin.TabularInline):
    model = AlertDelivery
    fields = ["channel", "recipient", "status", "attempts", "sent_at", "error"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    """What was sent to whom, read-only: the record of alerts is history too."""

    list_display = ["created_at", "kind", "title", "closed_at"]
    list_filter = ["kind"]
    search_fields = ["title", "=subject", "key"]
    date_hierarchy = "created_at"
    inlines = [AlertDeliveryInline]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(admin.ModelAdmin):
    list_display = ["pk", "alert", "channel", "recipient", "status", "attempts", "sent_at"]
    list_filter = ["status", "channel"]
    search_fields = ["recipient"]
    raw_id_fields = ["alert", "user", "webhook"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WriteRecord)
class WriteRecordAdmin(AuditEntryAdmin):
    """The kept history of writes, read-only like the audit trail (UK records: six years)."""

    list_display = ["created_at", "flow", "action", "source_id", "target_id", "amount", "username"]
    list_filter = ["flow", "action", "trigger"]
    search_fields = ["=source_id", "=target_id", "username"]


@admin.register(Amendment)
class AmendmentAdmin(admin.ModelAdmin):
    """Changes after invoicing; decided on the dashboard's page (credit notes are KashFlow
    writes, made once), so the console only shows them."""

    list_display = ["created_at", "invoice_number", "opportunity_id", "status", "decided_by"]
    list_filter = ["status"]
    search_fields = ["=invoice_number", "=opportunity_id", "opportunity_name"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(FinanceHold)
class FinanceHoldAdmin(AmendmentAdmin):
    list_display = ["created_at", "opportunity_name", "amount", "issued", "approved_by"]
    list_filter = []
    search_fields = ["=opportunity_id", "opportunity_name"]


@admin.register(Reconciliation)
class ReconciliationAdmin(AmendmentAdmin):
    list_display = ["created_at", "trigger", "compared", "differences", "api_calls", "error"]
    list_filter = ["trigger"]
    search_fields = []
    exclude = ["lines"]
