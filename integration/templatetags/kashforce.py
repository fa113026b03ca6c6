"""Small display filters for the dashboard."""

from datetime import timedelta

from django import template

from integration import changes

register = template.Library()


@register.filter
def duration(value: timedelta | None) -> str:
    """12 s, 4 min 05 s, 2 h 10 min."""
    if value is None:
        return "—"
    seconds = int(value.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@register.filter
def shown(value: object) -> str:
    """A payload value as a person reads it: '—' for missing or empty, JSON-ish otherwise."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@register.filter
def object_label(value: str) -> str:
    """'salesforce.Opportunity' -> 'Salesforce Opportunity', 'kashflow.Customer' -> 'KashFlow Customer'."""
    system, _, name = (value or "").partition(".")
    systems = {"salesforce": "Salesforce", "kashflow": "KashFlow"}
    return f"{systems.get(system, system)} {name}".strip() if name else value


# UK time on every page, whatever the browser's locale: 3 Dec 2026 14:02 GMT (or BST), in the
# site's TIME_ZONE (Europe/London unless set), the zone named so nobody takes it for UTC.
WHEN_FORMATS = {"": "j M Y H:i T", "seconds": "j M Y H:i:s T", "time": "H:i T"}


@register.filter
def when(value, style: str = "") -> str:
    if not value:
        return ""
    from django.utils.dateformat import format as date_format
    from django.utils.timezone import is_aware, localtime

    return date_format(localtime(value) if is_aware(value) else value, WHEN_FORMATS[style])


CURRENCY_SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$"}


@register.filter
def money(value, currency: str = "GBP") -> str:
    """£1,234.50 (or €, $; another currency's code before the amount), from a Decimal or its
    text; a value that is not an amount is shown as it is."""
    from decimal import Decimal, InvalidOperation

    if value is None or value == "":
        return "—"
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    code = (currency or "GBP").upper()
    symbol = CURRENCY_SYMBOLS.get(code, f"{code} ")
    sign = "-" if amount < 0 else ""
    return f"{sign}{symbol}{abs(amount):,.2f}"


@register.filter
def get_item(mapping: dict, key):
    return (mapping or {}).get(key)


@register.filter
def mapping_attribute(attribute: str) -> str:
    """'source_path' -> 'Filled from': a mapping row's attribute as its history names it."""
    return changes.attribute_words(attribute)


@register.filter
def mapping_value(value: object, attribute: str = "") -> str:
    """A mapping row's attribute value in words (the transform's label, settings spelt out)."""
    return changes.value_words(value, attribute)
