"""Response headers Django's SecurityMiddleware does not set (Django 5.2 has no CSP support)."""

from django.conf import settings


class SecurityHeadersMiddleware:
    """Adds Content-Security-Policy and Permissions-Policy to every response that has none.

    The policy allows scripts, styles, images and fonts from this site only: the templates
    have no inline script or style (data goes through json_script, which is not executed), the
    vendored htmx is told not to inject its indicator style or eval anything (base.html), and
    Chart.js draws on a canvas. The admin's templates need nothing more.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        for header, value in settings.SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        return response
