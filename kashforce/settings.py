"""kashforce settings, read from the environment (django-environ).

Every variable is listed with a comment in .env.example. The defaults run a fresh clone with no
configuration: SQLite under var/, DEBUG on, locally generated keys kept in var/. A malformed value
fails at start with a message naming the variable.
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("KASHFORCE_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _read(name: str, cast, default):
    """Read one variable; a value that does not parse stops the start with a clear message."""
    try:
        return cast(name, default=default)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"Environment variable {name} is not valid: {exc}") from None


def _local_secret(filename: str, make) -> str:
    """A development secret generated once and kept in var/ (never committed).

    Production sets the variable instead; see check_production_secrets in integration/checks.py.
    """
    path = VAR_DIR / filename
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def _new_django_key() -> str:
    from django.core.management.utils import get_random_secret_key

    return get_random_secret_key()


def _new_fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


DEBUG = _read("DEBUG", env.bool, True)
SECRET_KEY_FROM_ENV = bool(_read("SECRET_KEY", env.str, ""))
SECRET_KEY = _read("SECRET_KEY", env.str, "") or _local_secret("django-secret-key", _new_django_key)
# Fernet keys for secrets at rest, newest first (MultiFernet). Independent of SECRET_KEY so that
# rotating one never makes the other unreadable.
ENCRYPTION_KEYS_FROM_ENV = bool(_read("KASHFORCE_ENCRYPTION_KEYS", env.list, []))
ENCRYPTION_KEYS = _read("KASHFORCE_ENCRYPTION_KEYS", env.list, []) or [
    _local_secret("encryption-key", _new_fernet_key)
]
ALLOWED_HOSTS = _read("ALLOWED_HOSTS", env.list, ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = _read("CSRF_TRUSTED_ORIGINS", env.list, [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    # Sign-in protection: failed sign-ins counted per name and address (django-axes), and
    # two-step sign-in with an authenticator app (django-otp's TOTP).
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "integration",
    "sandbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "kashforce.headers.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "integration.access.TwoFactorRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes asks: it turns a locked-out sign-in into our 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "kashforce.urls"
WSGI_APPLICATION = "kashforce.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Databases. SQLite needs WAL, IMMEDIATE transactions and a busy timeout, or concurrent writers
# (django-q2's monitor among them) fail at once with "database is locked" and results are lost
# (../shared/reference/django-q2.md section 5).
DATABASE_URL = _read("DATABASE_URL", env.str, "")
if DATABASE_URL:
    DATABASES = {"default": env.db_url_config(DATABASE_URL)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Without persistent connections django-q2 reconnects on every enqueue/dequeue (~20x slower).
        DATABASES["default"]["CONN_MAX_AGE"] = _read("CONN_MAX_AGE", env.int, 60)
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "kashforce.sqlite3",
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The job queue (django-q2). The database is the source of truth for work; the queue is only a
# doorbell, and a periodic sweeper re-enqueues what a lost message left behind.
REDIS_URL = _read("REDIS_URL", env.str, "")
Q_CLUSTER = {
    "name": "kashforce",
    "workers": _read("Q_WORKERS", env.int, 2),
    # A task is killed after `timeout` seconds; the broker re-delivers an unacknowledged task after
    # `retry` seconds. timeout < retry, or a slow task runs twice at once.
    "timeout": _read("Q_TIMEOUT", env.int, 600),
    "retry": _read("Q_RETRY", env.int, 720),
    # Our tasks record their own failures; a bounded count stops a poison task looping for ever.
    "max_attempts": 3,
    # Our SyncRun/SyncEvent ledger records every outcome, so django-q2's Success table is not
    # needed; keeping it (save_limit > 0) costs a select_for_update over all rows on each save.
    # Failures are still saved for the admin.
    "save_limit": -1,
    "catch_up": False,
    "poll": 0.2,
    "label": "Job queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# The cache holds sign-in failure counters (and cached Salesforce describes). Counters must be
# shared by every web process, or each gunicorn worker allows its own 5 attempts: CACHE_URL
# chooses (redis://..., or dbcache://kashforce_cache for a table `migrate` makes); with REDIS_URL
# set the cache is Redis; otherwise it is per process, which suits one process and tests.
# check --deploy warns about a per-process cache in production.
CACHE_URL = _read("CACHE_URL", env.str, "") or REDIS_URL or "locmemcache://kashforce"
try:
    CACHES = {"default": environ.Env.cache_url_config(CACHE_URL)}
except (ImproperlyConfigured, ValueError) as exc:
    raise ImproperlyConfigured(f"Environment variable CACHE_URL is not valid: {exc}") from None


def _check_networks(name: str, entries: list[str]) -> list[str]:
    import ipaddress

    for entry in entries:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"Environment variable {name} is not valid: {entry!r} is not an address or "
                "network (e.g. 10.0.0.5 or 10.0.0.0/24)."
            ) from None
    return entries


if Q_CLUSTER["timeout"] >= Q_CLUSTER["retry"]:
    raise ImproperlyConfigured(
        "Q_TIMEOUT must be smaller than Q_RETRY (a slow task would run twice)."
    )

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# axes' backend first: it refuses a locked name-and-address before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = _read("TIME_ZONE", env.str, "Europe/London")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"  # collectstatic's output; whitenoise serves it
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = DEBUG
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Security. Finance staff sessions end after 8 hours or when the browser closes.
SESSION_COOKIE_AGE = _read("SESSION_COOKIE_AGE", env.int, 8 * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURITY_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    ),
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
if not DEBUG:
    SECURE_SSL_REDIRECT = _read("SECURE_SSL_REDIRECT", env.bool, True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = _read("SECURE_HSTS_SECONDS", env.int, 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = _read("SECURE_HSTS_PRELOAD", env.bool, True)

# Logging: one line per record, key=value, easy to grep. The redaction filter replaces any secret
# kashforce has decrypted in this process, in case one ever reaches a message by mistake.
LOG_LEVEL = _read("LOG_LEVEL", env.str, "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "integration.secrets.RedactSecretsFilter"}},
    "formatters": {
        "line": {
            "format": "time=%(asctime)s level=%(levelname)s logger=%(name)s pid=%(process)d "
            "msg=%(message)s",
        }
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "line", "filters": ["redact"]}
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "urllib3": {"level": "WARNING"},
    },
}

# Mail for alerts (integration/alerts.py), from one URL: smtp://USER:PASSWORD@HOST:587 (STARTTLS
# on the submission port 587), smtp+tls://... (STARTTLS on any port), smtp+ssl://...:465
# (TLS from the start), consolemail:// to print. Unset: Django's default, SMTP on localhost:25.
EMAIL_URL = _read("EMAIL_URL", env.str, "")
if EMAIL_URL:
    try:
        _email = environ.Env.email_url_config(EMAIL_URL)
    except (ImproperlyConfigured, ValueError) as exc:
        raise ImproperlyConfigured(f"Environment variable EMAIL_URL is not valid: {exc}") from None
    if EMAIL_URL.startswith("smtp://") and _email.get("EMAIL_PORT") == 587:
        _email.setdefault("EMAIL_USE_TLS", True)  # RFC 8314: submission on 587 is STARTTLS
    _email.pop("OPTIONS", None)
    vars().update(_email)  # EMAIL_BACKEND, EMAIL_HOST, EMAIL_PORT, EMAIL_HOST_USER, ...
DEFAULT_FROM_EMAIL = _read("DEFAULT_FROM_EMAIL", env.str, "kashforce <kashforce@localhost>")
EMAIL_TIMEOUT = _read("EMAIL_TIMEOUT", env.int, 20)

# Sign-in throttling (django-axes): KASHFORCE_LOGIN_ATTEMPTS failures of one user name from
# one address lock that pair (only) for KASHFORCE_LOGIN_LOCKOUT_MINUTES; the count lives in the
# database (shared by every web process); attempts while locked do not extend the lock.
# The address is integration.access.client_address (trusted proxies, below).
AXES_FAILURE_LIMIT = _read("KASHFORCE_LOGIN_ATTEMPTS", env.int, 5)
AXES_COOLOFF_TIME = timedelta(minutes=_read("KASHFORCE_LOGIN_LOCKOUT_MINUTES", env.int, 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_CLIENT_IP_CALLABLE = "integration.access.client_address"
AXES_USERNAME_CALLABLE = "integration.access.sign_in_name"
AXES_LOCKOUT_CALLABLE = "integration.access.lockout_response"
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_DISABLE_ACCESS_LOG = True  # successful sign-ins are not kept (no retention for them)
AXES_VERBOSE = False
# Two-step sign-in: the issuer name authenticator apps show; a wrong code doubles the wait.
OTP_TOTP_ISSUER = "kashforce"
OTP_TOTP_THROTTLE_FACTOR = 1

# kashforce's own knobs.
KASHFORCE = {
    # Share of Salesforce's daily API limit above which scheduled, non-urgent runs wait.
    "API_BUDGET_SHARE": _read("KASHFORCE_API_BUDGET_SHARE", env.float, 0.8),
    # Minutes between scheduled runs of each flow.
    "SYNC_INTERVAL_MINUTES": _read("KASHFORCE_SYNC_INTERVAL_MINUTES", env.int, 1),
    # Failed sign-ins per username and address before sign-in is refused, and for how long
    # (django-axes applies them: AXES_* above).
    "LOGIN_ATTEMPTS": AXES_FAILURE_LIMIT,
    "LOGIN_LOCKOUT_MINUTES": int(AXES_COOLOFF_TIME.total_seconds() // 60),
    # Proxies (addresses or networks) whose X-Forwarded-For is believed for the client's
    # address; empty: the connecting address is the client's, whatever the header says.
    "TRUSTED_PROXIES": _check_networks(
        "KASHFORCE_TRUSTED_PROXIES", _read("KASHFORCE_TRUSTED_PROXIES", env.list, [])
    ),
    # Integration admins (and superusers) must sign in with an authenticator code.
    "REQUIRE_TWO_FACTOR_FOR_ADMINS": _read(
        "KASHFORCE_REQUIRE_TWO_FACTOR_FOR_ADMINS", env.bool, False
    ),
    # Attempts for a record that fails transiently before it joins the error queue.
    "MAX_ATTEMPTS": _read("KASHFORCE_MAX_ATTEMPTS", env.int, 5),
    # Seconds before such a record is tried again; the wait doubles each attempt (at most 1 hour).
    "RETRY_BACKOFF_SECONDS": _read("KASHFORCE_RETRY_BACKOFF_SECONDS", env.float, 30.0),
    # HTTP timeouts (connect, read) in seconds for both APIs.
    "HTTP_TIMEOUT": (
        _read("KASHFORCE_HTTP_CONNECT_TIMEOUT", env.float, 5.0),
        _read("KASHFORCE_HTTP_READ_TIMEOUT", env.float, 60.0),
    ),
    # Attempts per HTTP call for transient failures (429, 5xx, timeouts, resets), and the first
    # backoff in seconds (doubling, with jitter). A Retry-After longer than HTTP_MAX_WAIT is not
    # slept through: the call fails as transient and the sync engine reschedules the work.
    "HTTP_ATTEMPTS": _read("KASHFORCE_HTTP_ATTEMPTS", env.int, 4),
    "HTTP_BACKOFF": _read("KASHFORCE_HTTP_BACKOFF", env.float, 1.0),
    "HTTP_MAX_WAIT": _read("KASHFORCE_HTTP_MAX_WAIT", env.float, 60.0),
    # Salesforce writes of more records than this go through Bulk API 2.0 instead of sObject
    # Collections (200 a call); Bulk jobs are polled every BULK_POLL seconds.
    "BULK_THRESHOLD": _read("KASHFORCE_BULK_THRESHOLD", env.int, 2000),
    "BULK_POLL": _read("KASHFORCE_BULK_POLL", env.float, 2.0),
    # A task works on a run for this long, then hands over to a fresh task (stays far below
    # Q_TIMEOUT, so a long initial load never gets killed mid-way).
    "TASK_SLICE_SECONDS": _read("KASHFORCE_TASK_SLICE_SECONDS", env.int, 120),
    # Work claimed but not finished for this long is taken to belong to a dead worker. Keep it
    # above the longest one API call can take (HTTP_ATTEMPTS x (timeouts + HTTP_MAX_WAIT)): a
    # worker renews its claim just before creating an invoice, and must finish that call in time.
    "STALE_AFTER_SECONDS": _read("KASHFORCE_STALE_AFTER_SECONDS", env.int, 900),
    # A run still queued after this long lost its queue message; the sweeper enqueues it again.
    "LOST_TASK_SECONDS": _read("KASHFORCE_LOST_TASK_SECONDS", env.int, 120),
    # The customers flow re-reads each KashFlow customer's full record (the fields a list
    # summary lacks: TelephoneNumber, Email, Note...) at least once in this many hours, spread
    # over the runs, and at most this many customers a run.
    "CUSTOMER_REFRESH_HOURS": _read("KASHFORCE_CUSTOMER_REFRESH_HOURS", env.float, 24.0),
    "CUSTOMER_REFRESH_PER_RUN": _read("KASHFORCE_CUSTOMER_REFRESH_PER_RUN", env.int, 200),
    # Full KashFlow records read at once (threads), as production integrations do (4 to 8).
    "KASHFLOW_READ_THREADS": _read("KASHFORCE_KASHFLOW_READ_THREADS", env.int, 4),
    # The Pub/Sub subscriber (`manage.py subscribe`, for connections set to Pub/Sub): events
    # requested at a time (at most 100), the lease a subscriber holds a topic for (renewed every
    # few seconds), seconds without any answer (events or keepalives, which come every ~60 s)
    # before the stream is taken for dead and the poll runs, the longest wait between reconnects,
    # and the client id its Salesforce calls carry (Sforce-Call-Options), by which change events
    # of kashforce's own writes are recognised. Platform Event topics (e.g. /event/Deal_Won__e)
    # may be added; the field of theirs that holds the Opportunity Id is named below.
    "PUBSUB_CREDIT": _read("KASHFORCE_PUBSUB_CREDIT", env.int, 100),
    "PUBSUB_LEASE_SECONDS": _read("KASHFORCE_PUBSUB_LEASE_SECONDS", env.float, 30.0),
    "PUBSUB_SILENCE_SECONDS": _read("KASHFORCE_PUBSUB_SILENCE_SECONDS", env.float, 300.0),
    "PUBSUB_MAX_BACKOFF": _read("KASHFORCE_PUBSUB_MAX_BACKOFF", env.float, 60.0),
    "PUBSUB_CLIENT_ID": _read("KASHFORCE_PUBSUB_CLIENT_ID", env.str, "kashforce"),
    "PUBSUB_EVENT_TOPICS": _read("KASHFORCE_PUBSUB_EVENT_TOPICS", env.list, []),
    "PUBSUB_EVENT_OPPORTUNITY_FIELD": _read(
        "KASHFORCE_PUBSUB_EVENT_OPPORTUNITY_FIELD", env.str, "OpportunityId__c"
    ),
    # Days to keep successful ledger rows (errors are kept until resolved).
    "LEDGER_RETENTION_DAYS": _read("KASHFORCE_LEDGER_RETENTION_DAYS", env.int, 90),
    # Values the mappings fall back on (an invoice line's nominal code, a payment's method...).
    "DEFAULTS": {
        "nominal_code": _read("KASHFORCE_DEFAULT_NOMINAL_CODE", env.int, 4000),
        "vat_rate": _read("KASHFORCE_DEFAULT_VAT_RATE", env.str, "20"),
        "payment_method": _read("KASHFORCE_DEFAULT_PAYMENT_METHOD", env.str, ""),
        "bank_account": _read("KASHFORCE_DEFAULT_BANK_ACCOUNT", env.str, ""),
        "invoice_prefix": _read("KASHFORCE_INVOICE_PREFIX", env.str, ""),
    },
    # Deprecated: VAT rules are kept on the VAT rules page (versioned and audited). Read only
    # to import them once, into the first version, by migration 0009; a system check warns.
    "VAT_RULES": _read("KASHFORCE_VAT_RULES", env.json, {}),
    # An invoice line whose Salesforce product is not linked to a KashFlow product yet waits
    # for the products sync (then Needs attention), unless an admin chooses, on purpose, to
    # invoice it on the default nominal code with no product code (a warning on the record).
    "DEFAULT_NOMINAL_FOR_UNLINKED_PRODUCTS": _read(
        "KASHFORCE_DEFAULT_NOMINAL_FOR_UNLINKED_PRODUCTS", env.bool, False
    ),
    # How far back (days, by issue date) the payments flow looks at invoices for new payments.
    # KashFlow has no modified-since filter on invoices; a full run reads every invoice.
    "PAYMENTS_LOOKBACK_DAYS": _read("KASHFORCE_PAYMENTS_LOOKBACK_DAYS", env.int, 400),
    # The name of Opportunity's child relationship to KashFlow_Payment__c (the admin chose it
    # when making the Opportunity__c lookup). Empty: read from describe(Opportunity).
    "PAYMENTS_RELATIONSHIP": _read("KASHFORCE_PAYMENTS_RELATIONSHIP", env.str, ""),
    # Each run reads the unpaid invoices of the lookback and those issued in the last RECENT
    # days; older ones are read a slice of SLICE days per run, so each is visited within
    # LOOKBACK / SLICE runs. LINE_CHECKS full invoices a run are read to find payment edits that
    # keep the totals; GONE_CHECKS a run to confirm an unpaid invoice vanished (deleted).
    "PAYMENTS_RECENT_DAYS": _read("KASHFORCE_PAYMENTS_RECENT_DAYS", env.int, 31),
    "PAYMENTS_SLICE_DAYS": _read("KASHFORCE_PAYMENTS_SLICE_DAYS", env.int, 4),
    "PAYMENTS_LINE_CHECKS": _read("KASHFORCE_PAYMENTS_LINE_CHECKS", env.int, 20),
    "PAYMENTS_GONE_CHECKS": _read("KASHFORCE_PAYMENTS_GONE_CHECKS", env.int, 20),
    # After KashFlow's "too busy" answers (SQL timeouts), scheduled runs wait this long, doubled
    # for each such answer in a row, up to the maximum (seconds).
    "KASHFLOW_BUSY_BACKOFF_SECONDS": _read("KASHFORCE_KASHFLOW_BUSY_BACKOFF_SECONDS", env.int, 60),
    "KASHFLOW_BUSY_MAX_SECONDS": _read("KASHFORCE_KASHFLOW_BUSY_MAX_SECONDS", env.int, 3600),
    # Which Opportunities become invoices (a SOQL condition on Opportunity).
    "INVOICE_WHEN": _read("KASHFORCE_INVOICE_WHEN", env.str, "IsWon = true AND Amount > 0"),
    # What becomes an invoice, unless a Salesforce connection says otherwise: Closed Won
    # Opportunities, activated Orders, or both (an Order of an invoiced Opportunity, or of one
    # the rule above invoices, is not invoiced again; see integration/sync/orders.py).
    "INVOICE_FROM": _read("KASHFORCE_INVOICE_FROM", env.str, "opportunities").strip().lower(),
    # This site's address as people reach it: alerts link back to the page that explains them.
    "BASE_URL": _read("KASHFORCE_BASE_URL", env.str, "http://127.0.0.1:8000").rstrip("/"),
    # Alerts (integration/alerts.py): who gets every kind by e-mail unless they choose otherwise
    # on their profile page, how long a flow may be quiet past its schedule before it is
    # reported (minutes, and per flow as JSON), when an unresolved error is old (hours), how
    # often further errors of known causes are sent as a digest (minutes), and the attempts
    # and first backoff (seconds, doubling) for a temporary SMTP or HTTP failure.
    "ALERTS_TO": _read("KASHFORCE_ALERTS_TO", env.list, []),
    "ALERT_GRACE_MINUTES": _read("KASHFORCE_ALERT_GRACE_MINUTES", env.int, 30),
    "ALERT_GRACE_BY_FLOW": _read("KASHFORCE_ALERT_GRACE_BY_FLOW", env.json, {}),
    "ALERT_OLD_ERROR_HOURS": _read("KASHFORCE_ALERT_OLD_ERROR_HOURS", env.int, 24),
    "ALERT_DIGEST_MINUTES": _read("KASHFORCE_ALERT_DIGEST_MINUTES", env.int, 60),
    "ALERT_ATTEMPTS": _read("KASHFORCE_ALERT_ATTEMPTS", env.int, 5),
    "ALERT_BACKOFF_SECONDS": _read("KASHFORCE_ALERT_BACKOFF_SECONDS", env.float, 60.0),
    # A local trial's mail sink (scripts/run-local.sh): a Maildir whose mails the Alerts page shows.
    "MAIL_SINK_DIR": _read("KASHFORCE_MAIL_SINK_DIR", env.str, ""),
    # A token that lets a monitor read /health/'s details (Authorization: Bearer <token>);
    # without it (or a sign-in) /health/ says only up or down.
    "HEALTH_TOKEN": _read("KASHFORCE_HEALTH_TOKEN", env.str, ""),
    # Where the sandbox keeps its state and descriptor.
    "SANDBOX_STATE_DIR": _read("KASHFORCE_SANDBOX_DIR", env.str, str(VAR_DIR / "sandbox")),
}

if KASHFORCE["INVOICE_FROM"] not in ("opportunities", "orders", "both"):
    raise ImproperlyConfigured(
        "Environment variable KASHFORCE_INVOICE_FROM is not valid: give opportunities, orders "
        "or both."
    )

_grace_by_flow = KASHFORCE["ALERT_GRACE_BY_FLOW"]
if not isinstance(_grace_by_flow, dict) or not all(
    isinstance(minutes, int) and minutes > 0 for minutes in _grace_by_flow.values()
):
    raise ImproperlyConfigured(
        "Environment variable KASHFORCE_ALERT_GRACE_BY_FLOW is not valid: give minutes by flow "
        'as JSON, e.g. {"payments": 120}.'
    )
