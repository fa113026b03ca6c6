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


@register.filter
def mapping_attribute(attribute: str) -> str:
    """'source_path' -> 'Filled from': a mapping row's attribute as its history names it."""
    return changes.attribute_words(attribute)


@register.filter
def mapping_value(value: object, attribute: str = "") -> str:
    """A mapping row's attribute value in words (the transform's label, settings spelt out)."""
    return changes.value_words(value, attribute)
