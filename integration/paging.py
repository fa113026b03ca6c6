"""Keyset paging for the ledger's long lists (runs, events, the error queue).

OFFSET n reads and throws away n rows and a page count needs COUNT(*) over everything; with
100,000 events both get slower the deeper you go. A page that starts just after the last row
seen reads one page of the (…, -created_at) index at any depth, in one query, with no count.
The cursor is that row's (created_at, pk), so rows with the same timestamp are not skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Q, QuerySet

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Page:
    rows: list
    older: str | None  # cursor for the next page of older rows
    newer: str | None  # cursor for the page of newer rows, None on the first page


def encode(row) -> str:
    micros = (row.created_at - EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{row.pk}"


def decode(cursor: str) -> tuple[datetime, int] | None:
    try:
        micros, pk = (int(part) for part in cursor.split("."))
    except (AttributeError, ValueError):
        return None
    return EPOCH + timedelta(microseconds=micros), pk


def keyset_page(queryset: QuerySet, size: int, older: str = "", newer: str = "") -> Page:
    """One page of `queryset`, newest first, starting after cursor `older` or before `newer`."""
    if position := decode(newer):
        created_at, pk = position
        after = Q(created_at__gt=created_at) | Q(created_at=created_at, pk__gt=pk)
        rows = list(queryset.filter(after).order_by("created_at", "pk")[: size + 1])
        has_newer = len(rows) > size
        rows = rows[:size][::-1]
        return Page(
            rows, encode(rows[-1]) if rows else None, encode(rows[0]) if has_newer else None
        )
    queryset = queryset.order_by("-created_at", "-pk")
    if position := decode(older):
        created_at, pk = position
        queryset = queryset.filter(
            Q(created_at__lt=created_at) | Q(created_at=created_at, pk__lt=pk)
        )
    rows = list(queryset[: size + 1])
    has_older = len(rows) > size
    rows = rows[:size]
    newer_cursor = encode(rows[0]) if position and rows else None
    return Page(rows, encode(rows[-1]) if has_older else None, newer_cursor)
