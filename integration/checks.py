"""System checks that stop a production start with missing or unsafe configuration."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.security, deploy=True)
def check_production_secrets(app_configs, **kwargs):
    problems = []
    if not settings.ENCRYPTION_KEYS_FROM_ENV:
        problems.append(
            Warning(
                "KASHFORCE_ENCRYPTION_KEYS is not set: secrets are encrypted with a key generated "
                "in var/, which is lost with the machine.",
                hint="Set KASHFORCE_ENCRYPTION_KEYS to one or more Fernet keys, newest first.",
                id="kashforce.W001",
            )
        )
    if not settings.SECRET_KEY_FROM_ENV:
        problems.append(
            Warning(
                "SECRET_KEY is not set in the environment.",
                hint="Set SECRET_KEY to a long random value.",
                id="kashforce.W002",
            )
        )
    return problems


@register(Tags.security, deploy=True)
def check_shared_cache(app_configs, **kwargs):
    backend = settings.CACHES["default"]["BACKEND"]
    if backend.endswith(("LocMemCache", "DummyCache")):
        return [
            Warning(
                "The cache is per process, so each web process keeps (and pays the API calls "
                "for) its own cached Salesforce describes (failed sign-ins are counted in the "
                "database either way).",
                hint="Set CACHE_URL to redis://... or dbcache://kashforce_cache (or set "
                "REDIS_URL).",
                id="kashforce.W003",
            )
        ]
    return []


@register()
def check_queue_timeouts(app_configs, **kwargs):
    q = settings.Q_CLUSTER
    if q.get("timeout") and q.get("retry") and q["timeout"] >= q["retry"]:
        return [Error("Q_TIMEOUT must be smaller than Q_RETRY.", id="kashforce.E001")]
    return []


@register()
def check_alert_grace_flows(app_configs, **kwargs):
    from integration.models import Flow

    unknown = sorted(set(settings.KASHFORCE["ALERT_GRACE_BY_FLOW"]) - set(Flow.values))
    if unknown:
        return [
            Error(
                f"KASHFORCE_ALERT_GRACE_BY_FLOW names flows that do not exist: {', '.join(unknown)}.",
                hint=f"Use {', '.join(Flow.values)}.",
                id="kashforce.E002",
            )
        ]
    return []


@register()
def check_vat_rules_variable(app_configs, **kwargs):
    if not settings.KASHFORCE["VAT_RULES"]:
        return []
    return [
        Warning(
            "KASHFORCE_VAT_RULES is no longer read: VAT rules are kept on the VAT rules page. "
            "Its value was imported into the first version when the database was migrated.",
            hint="Check the rules on the VAT rules page, then remove KASHFORCE_VAT_RULES.",
            id="kashforce.W010",
        )
    ]
