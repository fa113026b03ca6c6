"""CSV downloads, streamed a few hundred rows at a time so that 100,000 rows never sit in
memory, with dates in the site's time zone."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice

from django.http import StreamingHttpResponse
from django.utils import timezone

# Rows per streamed chunk: one chunk per row made the response's per-chunk work (encoding,
# the WSGI write) cost as much as the rows themselves.
CHUNK_ROWS = 500

# A cell starting with one of these is a formula to Excel and LibreOffice ("CSV injection"):
# a record name like =HYPERLINK(...) must arrive as text. Spreadsheets skip leading spaces and
# read the fullwidth forms (U+FF1D, FF0B, FF0D, FF20) as = + - @; `|` starts a DDE call in old Excel.
FORMULA_STARTS = frozenset("=+-@|\uff1d\uff0b\uff0d\uff20")


def safe_cell(value: object, zone=None) -> object:
    """A cell as text: a formula start neutralised, a datetime in local time with its zone's
    name, None empty."""
    if isinstance(value, str):
        # lstrip() takes tabs, CR, LF and non-breaking spaces too: a cell starting with any of
        # them, then a formula character, is neutralised (issue #15).
        bare = value.lstrip()
        starts_formula = bare[:1] in FORMULA_STARTS or value[:1] in ("\t", "\r")
        return "'" + value if starts_formula else value
    if isinstance(value, datetime):
        # The site's time with its zone named (GMT or BST), as the pages show it; sortable.
        local = value.astimezone(zone or timezone.get_current_timezone())
        return local.strftime("%Y-%m-%d %H:%M:%S %Z")
    return "" if value is None else value


def csv_response(
    filename: str, header: list[str], rows: Iterable[Iterable]
) -> StreamingHttpResponse:
    """Rows of plain values; a datetime becomes local time to the second, its zone named."""
    response = StreamingHttpResponse(_lines(header, rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _lines(header: list[str], rows: Iterable[Iterable]) -> Iterator[str]:
    zone = timezone.get_current_timezone()  # once, not once a cell
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # A byte order mark, so that Excel opens the UTF-8 file with £ and accents intact.
    buffer.write("\ufeff")
    writer.writerow(header)
    rows = iter(rows)
    while True:
        chunk = list(islice(rows, CHUNK_ROWS))
        writer.writerows([[safe_cell(value, zone) for value in row] for row in chunk])
        yield buffer.getvalue()
        if len(chunk) < CHUNK_ROWS:
            return
        buffer.seek(0)
        buffer.truncate()
