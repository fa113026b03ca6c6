from django.urls import path

from integration import alert_views, views, webhooks

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("health/", views.health, name="health"),
    path("demo/close-a-deal/", views.demo_close_deal, name="demo_close_deal"),
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
    path("vat-rules/", views.vat_rules, name="vat_rules"),
    path("audit/", views.audit, name="audit"),
    path("alerts/", alert_views.alerts, name="alerts"),
    path("alerts/mail/", alert_views.alert_outbox, name="alert_outbox"),
    path("alerts/webhooks/new/", alert_views.alert_webhook_edit, name="alert_webhook_new"),
    path("alerts/webhooks/<int:pk>/", alert_views.alert_webhook_edit, name="alert_webhook_edit"),
    path(
        "alerts/webhooks/<int:pk>/test/",
        alert_views.alert_webhook_test,
        name="alert_webhook_test",
    ),
    path("profile/", alert_views.alert_profile, name="alert_profile"),
    path("profile/test/", alert_views.alert_profile_test, name="alert_profile_test"),
    path("account/two-step/", views.two_factor, name="two_factor"),
    path(
        "hooks/salesforce/outbound/<str:secret>/",
        webhooks.salesforce_outbound,
        name="salesforce_outbound",
    ),
]
