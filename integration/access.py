"""Who may do what. Roles are Django groups created by a data migration; views check the two
permissions below through these decorators, in one place."""

import hashlib
import logging
import math
import time

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.decorators import login_not_required, permission_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.utils.decorators import method_decorator

log = logging.getLogger(__name__)

OPERATIONS_GROUP = "Operations"
INTEGRATION_ADMIN_GROUP = "Integration admin"

# Start syncs, retry or ignore errors.
OPERATE = "integration.operate_sync"
# Edit connections and mappings.
ADMINISTER = "integration.administer_integration"

operator_required = permission_required(OPERATE, raise_exception=True)
admin_required = permission_required(ADMINISTER, raise_exception=True)

# See the dashboard's pages (both roles have it; a signed-in user with no role does not).
VIEW = "integration.view_syncevent"
viewer_required = permission_required(VIEW, raise_exception=True)


# --------------------------------------------------------------------------------------------
# Signing in: failed attempts are counted per username and address, and after too many the
# sign-in is refused (even with the right password) until the lockout has passed. The counters
# live in Django's cache, which CACHE_URL (or REDIS_URL) makes shared by every web process; the
# count is an atomic increment on Redis, so parallel guesses are all counted.


def _attempts_keys(username: str, address: str) -> tuple[str, str]:
    """The failure count's key and the lockout's key (a digest: no username in the cache)."""
    digest = hashlib.sha256(f"{username.strip().lower()}|{address}".encode()).hexdigest()
    return f"kashforce:login-failures:{digest}", f"kashforce:login-locked-until:{digest}"


class ThrottledAuthenticationForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "throttled": "Too many attempts; wait %(minutes)s minutes before trying again.",
    }

    def clean(self):
        limit = settings.KASHFORCE["LOGIN_ATTEMPTS"]
        lockout = settings.KASHFORCE["LOGIN_LOCKOUT_MINUTES"] * 60
        address = self.request.META.get("REMOTE_ADDR", "") if self.request else ""
        failures_key, until_key = _attempts_keys(self.data.get("username", ""), address)
        now = time.time()
        until = cache.get(until_key, 0.0)
        if until > now:
            raise self._throttled(until - now)
        try:
            return super().clean()
        except ValidationError:
            if self._count_failure(failures_key, lockout) < limit:
                raise
            cache.set(until_key, now + lockout, timeout=lockout)
            cache.delete(failures_key)  # after the lockout, a fresh allowance
            log.warning(
                "sign-in locked for %d minutes after %d failures: username=%r address=%s",
                lockout // 60,
                limit,
                self.data.get("username", "")[:150],
                address,
            )
            raise self._throttled(lockout) from None
        finally:
            if self.user_cache is not None:
                cache.delete_many([failures_key, until_key])

    @staticmethod
    def _count_failure(key: str, window: int) -> int:
        """One more failure; the count lapses `window` seconds after the first one."""
        cache.add(key, 0, timeout=window)
        try:
            return cache.incr(key)
        except ValueError:  # lapsed between add and incr
            cache.set(key, 1, timeout=window)
            return 1

    def _throttled(self, seconds: float) -> ValidationError:
        return ValidationError(
            self.error_messages["throttled"],
            code="throttled",
            params={"minutes": max(1, math.ceil(seconds / 60))},
        )


class ThrottledAdminAuthenticationForm(ThrottledAuthenticationForm, AdminAuthenticationForm):
    """The console's own sign-in page counts with the same counter."""


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
