"""Who may do what. Roles are Django groups created by a data migration; views check the two
permissions below through these decorators, in one place."""

import ipaddress
import logging
import math
from functools import wraps

from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db.models import Max
from django.dispatch import receiver
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django_otp import devices_for_user

log = logging.getLogger(__name__)

OPERATIONS_GROUP = "Operations"
INTEGRATION_ADMIN_GROUP = "Integration admin"

# Start syncs, retry or ignore errors.
OPERATE = "integration.operate_sync"
# Edit connections and mappings.
ADMINISTER = "integration.administer_integration"

# See the dashboard's pages (both roles have it; a signed-in user with no role does not).
VIEW = "integration.view_syncevent"

# What a refused person reads on the 403 page: what needs the permission, and which role has it.
REFUSALS = {
    OPERATE: (
        "start syncs, retry or ignore errors",
        [OPERATIONS_GROUP, INTEGRATION_ADMIN_GROUP],
    ),
    ADMINISTER: (
        "change connections, mappings or VAT rules, or read the audit trail",
        [INTEGRATION_ADMIN_GROUP],
    ),
    VIEW: ("see the dashboard", [OPERATIONS_GROUP, INTEGRATION_ADMIN_GROUP]),
}


def _requires(permission: str):
    """permission_required(raise_exception=True), with the permission in the PermissionDenied,
    so the 403 page can say what is refused and who may do it."""

    def decorator(view):
        @wraps(view)
        def checked(request, *args, **kwargs):
            if not request.user.has_perm(permission):
                raise PermissionDenied(permission)
            return view(request, *args, **kwargs)

        return checked

    return decorator


operator_required = _requires(OPERATE)
admin_required = _requires(ADMINISTER)
viewer_required = _requires(VIEW)


def permission_denied(request, exception=None):
    """handler403: a styled page that says what needs another role, which role, and who has it."""
    from django.contrib.auth.models import User

    what, roles = REFUSALS.get(str(exception or ""), ("open this page", [INTEGRATION_ADMIN_GROUP]))
    people = list(
        User.objects.filter(groups__name__in=roles, is_active=True)
        .order_by("username")
        .values_list("username", flat=True)
        .distinct()[:5]
    )
    mine = (
        list(request.user.groups.values_list("name", flat=True))
        if request.user.is_authenticated
        else []
    )
    context = {"what": what, "roles": roles, "people": people, "my_roles": mine}
    return render(request, "403.html", context, status=403)


# --------------------------------------------------------------------------------------------
# Signing in. django-axes counts failed sign-ins per user name AND address (settings.py's
# AXES_* settings): five wrong passwords lock that name for that address only, so a stranger
# cannot lock the real admin out (issue #15). The counts are rows (axes' AccessAttempt) in the
# database every web process shares, updated under select_for_update. Behind a proxy the
# address comes from X-Forwarded-For only when the proxy is named in KASHFORCE_TRUSTED_PROXIES.


def _networks(entries) -> list:
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]


def _is_trusted(address: str, networks: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request) -> str:
    """The client's address: REMOTE_ADDR, unless that is a trusted proxy; then the nearest
    address in X-Forwarded-For that is not one (a client can put anything at the left of the
    header, but each trusted proxy appends the address it saw at the right)."""
    remote = request.META.get("REMOTE_ADDR", "")
    trusted = _networks(settings.KASHFORCE["TRUSTED_PROXIES"])
    if not trusted or not _is_trusted(remote, trusted):
        return remote
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop[:45]  # the longest textual IPv6 address
    return hops[0][:45] if hops else remote


def sign_in_name(request, credentials: dict | None) -> str:
    """AXES_USERNAME_CALLABLE: the name as typed, without case or spaces, so that OLIVIA and
    olivia count together."""
    name = (credentials or {}).get("username") or request.POST.get("username", "")
    return name.strip().lower()[:150]


def _lock_ends_in(request, username: str) -> float:
    """Seconds until the lock on this name at this address ends (the cool-off counts from the
    last counted failure; failures while locked are not counted, so it does not grow)."""
    last = AccessAttempt.objects.filter(
        username=username, ip_address=client_address(request)
    ).aggregate(last=Max("attempt_time"))["last"]
    cool_off = settings.AXES_COOLOFF_TIME.total_seconds()
    if last is None:
        return cool_off
    return max(0.0, cool_off - (timezone.now() - last).total_seconds())


@receiver(user_locked_out)
def _log_lockout(sender, request=None, username=None, ip_address=None, **kwargs):
    if request is not None and getattr(request, "axes_failures_since_start", None):
        log.warning(
            "sign-in locked for %d minutes after %d failures: username=%r address=%s",
            settings.AXES_COOLOFF_TIME.total_seconds() // 60,
            request.axes_failures_since_start,
            username,
            ip_address,
        )


def lockout_response(request, original_response=None, credentials=None):
    """AXES_LOCKOUT_CALLABLE: the sign-in page the form already rendered with its 'Too many
    attempts' message, answered 429; a plain 429 when there is no page."""
    if original_response is not None and original_response.status_code in (200, 429):
        original_response.status_code = 429
        return original_response
    return HttpResponse("Too many sign-in attempts; wait and try again.", status=429)


# Two-step sign-in (TOTP, django-otp): a user with a confirmed authenticator gives its code
# with the password; KASHFORCE_REQUIRE_TWO_FACTOR_FOR_ADMINS makes Integration admins enrol.


def needs_two_factor(user) -> bool:
    """Is this user made to use two-step sign-in (an Integration admin or a superuser, when
    the setting requires it)?"""
    if not settings.KASHFORCE["REQUIRE_TWO_FACTOR_FOR_ADMINS"]:
        return False
    return user.is_superuser or user.has_perm(ADMINISTER)


class ThrottledAuthenticationForm(AuthenticationForm):
    otp_token = forms.CharField(
        label="Code from your authenticator app",
        required=False,
        max_length=8,
        help_text="Only if you have turned on two-step sign-in.",
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "size": 8}
        ),
    )

    error_messages = {
        **AuthenticationForm.error_messages,
        "throttled": "Too many attempts; wait %(minutes)s minutes before trying again.",
        "otp_required": "Enter the 6-digit code from your authenticator app as well.",
        "otp_invalid": "That code is not right (or was already used); wait for the next one.",
        "otp_throttled": "Too many wrong codes; wait a minute, then try the app's newest code.",
    }

    def clean(self):
        try:
            cleaned = super().clean()
        except ValidationError:
            if getattr(self.request, "axes_locked_out", False):
                username = sign_in_name(self.request, {"username": self.data.get("username")})
                raise self._throttled(_lock_ends_in(self.request, username)) from None
            raise
        if self.user_cache is not None:
            self._check_code(self.user_cache)
        return cleaned

    def _check_code(self, user) -> None:
        """A user with a confirmed authenticator signs in with its current code too. A wrong
        code is throttled by django-otp per device (OTP_TOTP_THROTTLE_FACTOR)."""
        device = next(iter(devices_for_user(user, confirmed=True)), None)
        if device is None:
            return
        code = (self.cleaned_data.get("otp_token") or "").replace(" ", "")
        if not code:
            raise ValidationError(self.error_messages["otp_required"], code="otp_required")
        if not device.verify_is_allowed()[0]:
            raise ValidationError(self.error_messages["otp_throttled"], code="otp_throttled")
        if not device.verify_token(code):
            raise ValidationError(self.error_messages["otp_invalid"], code="otp_invalid")
        user.otp_device = device  # django-otp marks the session verified on login()

    def _throttled(self, seconds: float) -> ValidationError:
        return ValidationError(
            self.error_messages["throttled"],
            code="throttled",
            params={"minutes": max(1, math.ceil(seconds / 60))},
        )


class ThrottledAdminAuthenticationForm(ThrottledAuthenticationForm, AdminAuthenticationForm):
    """The console's own sign-in page counts with the same counter. Its page has no field for
    the code, so a user with two-step sign-in is sent to the main sign-in page."""

    error_messages = {
        **ThrottledAuthenticationForm.error_messages,
        **AdminAuthenticationForm.error_messages,
        "otp_required": "You use two-step sign-in: sign in on the main sign-in page (/login/) "
        "with your code, then open the console.",
    }


@method_decorator(login_not_required, name="dispatch")
class SignInView(LoginView):
    """Django's sign-in with the counter above; a refused attempt answers 429."""

    form_class = ThrottledAuthenticationForm
    redirect_authenticated_user = True

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.has_error(NON_FIELD_ERRORS, "throttled"):
            response.status_code = 429
        return response


class TwoFactorRequiredMiddleware:
    """When admins must use two-step sign-in: an admin signed in without a code is sent to
    enrol (or to sign in again with the code) before reaching anything else."""

    ALLOWED = ("dashboard:two_factor", "dashboard:health", "logout")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        if (
            user.is_authenticated
            and needs_two_factor(user)
            and not user.is_verified()
            and request.path not in {reverse(name) for name in self.ALLOWED}
        ):
            return redirect("dashboard:two_factor")
        return self.get_response(request)
