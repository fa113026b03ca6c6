"""What a flow needs from the mapping tables: the active rows and a MappingContext."""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache

from integration.mapping import FieldInfo, MappingContext, salesforce_fields_from_describe
from integration.models import MappingSet, VatRuleSet
from integration.sync.links import Links

DESCRIBE_CACHE_SECONDS = 15 * 60


class MappingMissing(Exception):
    """No active mapping for a pair; every record of the flow fails with this message."""


def active_rows(ctx, flow: str, source_object: str, target_object: str) -> list[dict]:
    """The active version's rows, read once per task."""
    key = ("rows", flow, source_object, target_object)
    if key not in ctx.cache:
        mapping = (
            MappingSet.objects.active()
            .filter(flow=flow, source_object=source_object, target_object=target_object)
            .prefetch_related("fields")
            .first()
        )
        if mapping is None:
            raise MappingMissing(
                f"There is no active mapping from {source_object} to {target_object}. An "
                "Integration admin can install the defaults with `manage.py install_default_mappings`."
            )
        ctx.cache[key] = mapping.as_rows()
    return ctx.cache[key]


def salesforce_fields(ctx, sobject: str) -> dict[str, FieldInfo]:
    """The org's fields of `sobject` (from describe, cached a while: it rarely changes)."""
    key = f"kashforce:describe:{ctx.salesforce.connection.pk}:{sobject}"
    fields = cache.get(key)
    if fields is None:
        fields = salesforce_fields_from_describe(ctx.salesforce.describe(sobject))
        cache.set(key, fields, DESCRIBE_CACHE_SECONDS)
    return fields


def context(links: Links, target_fields: dict[str, FieldInfo] | None = None) -> MappingContext:
    return MappingContext(
        lookup=links.lookup,
        defaults=dict(settings.KASHFORCE["DEFAULTS"]),
        vat_rules=VatRuleSet.current_rules(),  # the VAT rules page's active version
        target_fields=target_fields,
    )
