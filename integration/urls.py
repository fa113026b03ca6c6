from django.urls import path

from integration import views, webhooks

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("health/", views.health, name="health"),
    path(
        "hooks/salesforce/outbound/<str:secret>/",
        webhooks.salesforce_outbound,
        name="salesforce_outbound",
    ),
]
