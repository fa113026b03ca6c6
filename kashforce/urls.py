from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from integration.access import SignInView, ThrottledAdminAuthenticationForm

admin.site.site_header = "kashforce console"
admin.site.site_title = "kashforce"
admin.site.login_form = ThrottledAdminAuthenticationForm

urlpatterns = [
    path("login/", SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("integration.urls")),
]
