"""Paged lists: the `{"MetaData": {...}, "Data": [...]}` envelope and its query parameters.

Whether KashFlow's page URLs are absolute is not documented (reference §6); we emit absolute
URLs that keep every query parameter, so a client may follow NextPageUrl or loop on `page`.
Per-page defaults and caps differ by endpoint and are mostly unknown: we use 50 (cap 250) for
customers and invoices, 10 (cap 100, as the spec says) for products. Asking for more than the
cap is a 400 rather than a silent clamp, so a client never mistakes a short page for the end.
"""

from dataclasses import dataclass
from urllib.parse import urlencode

from .wire import invalid


@dataclass
class Page:
    number: int
    size: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size


def page_of(request, default_size: int = 50, max_size: int = 250) -> Page:
    number = _whole(request.param("page"), "page", 1)
    size = _whole(request.param("perpage"), "perpage", default_size)
    if number < 1:
        raise invalid("page must be 1 or more.")
    if not 1 <= size <= max_size:
        raise invalid(f"perpage must be between 1 and {max_size}.")
    return Page(number, size)


def _whole(text: str | None, name: str, default: int) -> int:
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise invalid(f"{name} must be a whole number.") from None


def envelope(request, base_url: str, page: Page, total: int, data: list, **extra) -> dict:
    last = max(1, -(-total // page.size))
    return {
        "MetaData": {
            "TotalRecords": total,
            "FirstPageUrl": _page_url(request, base_url, 1),
            "LastPageUrl": _page_url(request, base_url, last),
            "PreviousPageUrl": _page_url(request, base_url, page.number - 1)
            if page.number > 1
            else None,
            "NextPageUrl": _page_url(request, base_url, page.number + 1)
            if page.number < last
            else None,
            **extra,
        },
        "Data": data,
    }


def _page_url(request, base_url: str, number: int) -> str:
    query = [(name, value) for name, values in request.query.items() for value in values]
    query = [(name, value) for name, value in query if name.lower() != "page"]
    query.append(("page", str(number)))
    return f"{base_url}{request.path}?{urlencode(query)}"


def order_of(request) -> str:
    order = (request.param("order") or "asc").lower()
    if order not in ("asc", "desc"):
        raise invalid("order must be asc or desc.")
    return order.upper()


def sort_column(request, columns: dict[str, str], default: str, name: str = "sortby") -> str:
    """The SQL column for `sortby`, given by name or by the spec's integer enum (both are seen)."""
    value = (request.param(name) or "").strip().lower()
    if not value:
        return columns[default.lower()]
    if value not in columns:
        raise invalid(f"{name} {request.param(name)!r} is not a sortable field.")
    return columns[value]


def flag(request, name: str, default: bool = False) -> bool:
    value = (request.param(name) or "").strip().lower()
    if not value:
        return default
    if value not in ("true", "false", "1", "0"):
        raise invalid(f"{name} must be true or false.")
    return value in ("true", "1")
