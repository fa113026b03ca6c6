"""The Django admin: the console for raw data. Bulk actions call the same model methods as the
dashboard, so there is one way to retry or ignore an error."""

from django.contrib import admin, messages

from integration.clients.check import check_connection
from integration.forms import SECRET_LABELS, ConnectionForm
from integration.models import (
    Amendment,
    AuditEntry,
    Connection,
    CrossRef,
    Cursor,
    FieldMapping,
    FinanceHold,
    MappingSet,
    Reconciliation,
    SyncEvent,
    SyncRun,
    WriteRecord,
)


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


@admin.register(MappingSet)
class MappingSetAdmin(admin.ModelAdmin):
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

    def save_related(self, request, form, formsets, change):
        # The console edits a version in place (the dashboard's editor makes a new one), so
        # the trail says who did it and which forms changed.
        before = form.instance.as_rows() if change else []
        super().save_related(request, form, formsets, change)
        from integration.changes import describe_mapping_changes, mapping_changes

        after = form.instance.as_rows()
        fields = ", ".join(form.changed_data)
        summary = describe_mapping_changes(mapping_changes(before, after))
        AuditEntry.record(
            request.user,
            AuditEntry.Action.MAPPING_EDITED_IN_CONSOLE,
            AuditEntry.ObjectType.MAPPING,
            form.instance.pk,
            str(form.instance),
            f"{'Changed ' + fields + '. ' if fields else ''}Rows: {summary}.",
        )


@admin.register(CrossRef)
class CrossRefAdmin(admin.ModelAdmin):
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
class SyncRunAdmin(admin.ModelAdmin):
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


@admin.register(SyncEvent)
class SyncEventAdmin(admin.ModelAdmin):
    list_display = [
        "pk",
        "flow",
        "source_object",
        "source_id",
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
    actions = ["retry_selected"]

    @admin.action(description="Retry the selected failed events", permissions=["change"])
    def retry_selected(self, request, queryset):
        # The dashboard's Retry: SyncEvent.retry on each, then the queue is rung for their flows.
        from integration.sync.engine import retry_events

        retried = retry_events(list(queryset.values_list("pk", flat=True)), request.user)
        self.message_user(request, f"{retried} event(s) put back in line.", messages.SUCCESS)


@admin.register(Cursor)
class CursorAdmin(admin.ModelAdmin):
    list_display = ["flow", "connection", "name", "value", "updated_at"]
    list_filter = ["flow"]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit trail, read-only: nobody edits or deletes history, superusers included."""

    list_display = ["created_at", "username", "action", "object_type", "object_label", "summary"]
    list_filter = ["action", "object_type", "username"]
    search_fields = ["=object_id", "object_label", "username", "summary"]
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
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
