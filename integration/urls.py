from django.urls import path

from integration import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("health/", views.health, name="health"),
]
