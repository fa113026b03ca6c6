from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from django.views.decorators.http import require_GET

from integration.access import SignInView, ThrottledAdminAuthenticationForm

admin.site.site_header = "kashforce console"
admin.site.site_title = "kashforce"
admin.site.login_form = ThrottledAdminAuthenticationForm

urlpatterns = [
    path("login/", SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico whatever the page's <link rel="icon"> says.
    path(
        "favicon.ico",
        login_not_required(require_GET(lambda request: redirect(static("favicon.svg")))),
        name="favicon",
    ),
    path("", include("integration.urls")),
]

handler403 = "integration.access.permission_denied"
