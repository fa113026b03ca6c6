from django.urls import path

from integration import finance_views, views, webhooks

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("health/", views.health, name="health"),
    path("runs/", views.runs, name="runs"),
    path("runs.csv", views.runs_csv, name="runs_csv"),
    path("runs/start/", views.sync_now, name="sync_now"),
    path("runs/<int:pk>/", views.run_detail, name="run"),
    path("runs/<int:pk>/progress/", views.run_progress, name="run_progress"),
    path("errors/", views.errors, name="errors"),
    path("errors.csv", views.errors_csv, name="errors_csv"),
    path("errors/retry/", views.retry_selected, name="retry_selected"),
    path("errors/retry-group/", views.retry_group, name="retry_group"),
    path("errors/<int:pk>/retry/", views.retry_event, name="retry_event"),
    path("errors/<int:pk>/ignore/", views.ignore_event, name="ignore_event"),
    path("records/", views.timeline, name="timeline"),
    path("connections/", views.connections, name="connections"),
    path("connections/new/", views.connection_edit, name="connection_new"),
    path("connections/<int:pk>/", views.connection_edit, name="connection_edit"),
    path("connections/<int:pk>/test/", views.connection_test, name="connection_test"),
    path("mappings/", views.mappings, name="mappings"),
    path("mappings/<int:pk>/", views.mapping_edit, name="mapping"),
    path("mappings/<int:pk>/preview/", views.mapping_preview, name="mapping_preview"),
    path("mappings/<int:pk>/history/", views.mapping_history, name="mapping_history"),
    path("mappings/<int:pk>/rollback/", views.mapping_rollback, name="mapping_rollback"),
    path("audit/", views.audit, name="audit"),
    path("amendments/", finance_views.amendments, name="amendments"),
    path("reconciliation/", finance_views.reconciliation, name="reconciliation"),
    path("holds/", finance_views.holds, name="holds"),
    path("holds/<int:pk>/approve/", finance_views.approve_hold, name="approve_hold"),
    path("holds/settings/", finance_views.finance_settings, name="finance_settings"),
    path("reconciliation.csv", finance_views.reconciliation_csv, name="reconciliation_csv"),
    path("reconciliation/run/", finance_views.reconcile_now, name="reconcile_now"),
    path("amendments/<int:pk>/decide/", finance_views.decide_amendment, name="decide_amendment"),
    path(
        "hooks/salesforce/outbound/<str:secret>/",
        webhooks.salesforce_outbound,
        name="salesforce_outbound",
    ),
]
