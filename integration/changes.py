"""What changed: between two payloads of one record, and between two versions of a mapping."""

from __future__ import annotations

from typing import NamedTuple

MISSING = "—"


class Change(NamedTuple):
    field: str
    before: object
    after: object


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """{'Contacts': [{'Email': 'a@b'}]} -> {'Contacts.0.Email': 'a@b'}: the paths mappings use."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    flat: dict[str, object] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def payload_changes(before: dict | None, after: dict | None) -> list[Change]:
    """Field by field, what differs between two payloads (missing fields shown as —)."""
    old, new = flatten(before or {}), flatten(after or {})
    return [
        Change(field, old.get(field, MISSING), new.get(field, MISSING))
        for field in sorted(old.keys() | new.keys())
        if old.get(field, MISSING) != new.get(field, MISSING)
    ]


class RowChange(NamedTuple):
    kind: str  # "added", "removed" or "changed"
    target: str
    details: list[Change]


ROW_ATTRIBUTES = ("source_path", "transform", "params", "default", "required")


def mapping_changes(old_rows: list[dict], new_rows: list[dict]) -> list[RowChange]:
    """Rows are matched by their target field: a mapping writes each target field once."""
    old = {row["target_path"]: row for row in old_rows}
    new = {row["target_path"]: row for row in new_rows}
    changes = []
    for target in [*old, *(t for t in new if t not in old)]:
        if target not in new:
            changes.append(RowChange("removed", target, []))
        elif target not in old:
            changes.append(RowChange("added", target, _row_details({}, new[target])))
        elif details := _row_details(old[target], new[target]):
            changes.append(RowChange("changed", target, details))
    return changes


def _row_details(old: dict, new: dict) -> list[Change]:
    # An added row lists only what it sets; a changed one, every attribute that differs.
    return [
        Change(attr, old.get(attr, MISSING), new.get(attr, MISSING))
        for attr in ROW_ATTRIBUTES
        if old.get(attr) != new.get(attr) and (old or new.get(attr) not in (None, "", {}, False))
    ]


def describe_mapping_changes(changes: list[RowChange]) -> str:
    """One line for the audit trail: "added Phone; changed Name (how, when empty)"."""
    if not changes:
        return "no field changed"
    parts = []
    for change in changes:
        attrs = (
            f" ({', '.join(attribute_words(d.field).lower() for d in change.details)})"
            if change.kind == "changed"
            else ""
        )
        parts.append(f"{change.kind} {change.target}{attrs}")
    return "; ".join(parts)


# How a mapping row's attributes read on its history page.
ROW_ATTRIBUTE_WORDS = {
    "source_path": "Filled from",
    "transform": "How",
    "params": "Settings",
    "default": "When empty",
    "required": "Required",
}


def attribute_words(attribute: str) -> str:
    return ROW_ATTRIBUTE_WORDS.get(attribute, attribute.replace("_", " ").capitalize())


def value_words(value: object, attribute: str = "") -> str:
    """A mapping row's attribute value in words: the transform's label, settings as
    "Max length: 40; Separator: ' '", yes or no; never a Python dict."""
    from integration.models import Transform

    if value in (None, "", {}, [], MISSING):
        return MISSING
    if attribute == "transform" and value in Transform.values:
        return Transform(value).label
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return "; ".join(
            f"{str(key).replace('_', ' ').capitalize()}: {value_words(item)}"
            for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return ", ".join(value_words(item) for item in value)
    return str(value)
