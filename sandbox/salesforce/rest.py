"""REST resources: versions, describe, rows, external-id upsert, SOQL, updated/deleted, limits.

Every handler takes (app, request, version, **path params) and returns a Response or raises
ApiError.
They run inside the store transaction that SalesforceApp opens for the request.
"""

import itertools
import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote_plus

from sandbox.core import Request, Response
from sandbox.salesforce import ids, schema, soql
from sandbox.salesforce.errors import ApiError, not_found
from sandbox.salesforce.store import format_datetime, parse_datetime

API_VERSIONS = [f"{v}.0" for v in range(50, 63)]
MAX_OPEN_CURSORS = 200  # Salesforce also caps open query cursors per user


def versions(app, request: Request) -> Response:
    return Response.json(
        200,
        [
            {"label": f"Release {v}", "url": f"/services/data/v{v}", "version": v}
            for v in API_VERSIONS
        ],
    )


def resources(app, request: Request, version: str) -> Response:
    names = ["sobjects", "query", "queryAll", "limits", "composite", "jobs"]
    return Response.json(200, {n: f"/services/data/v{version}/{n}" for n in names})


def describe_global(app, request: Request, version: str) -> Response:
    return Response.json(
        200,
        {
            "encoding": "UTF-8",
            "maxBatchSize": 200,
            "sobjects": [schema.describe_summary(s, version) for s in schema.objects()],
        },
    )


def describe(app, request: Request, version: str, type_name: str) -> Response:
    return Response.json(200, schema.describe_object(app.org.sobject(type_name), version))


def sobject_info(app, request: Request, version: str, type_name: str) -> Response:
    sobj = app.org.sobject(type_name)
    return Response.json(
        200, {"objectDescribe": schema.describe_summary(sobj, version), "recentItems": []}
    )


def create(app, request: Request, version: str, type_name: str) -> Response:
    record = app.org.create(type_name, json_body(request))
    return Response.json(201, {"id": record["Id"], "success": True, "errors": []})


def row(app, request: Request, version: str, type_name: str, record_id: str) -> Response:
    sobj = app.org.sobject(type_name)
    if request.method == "PATCH":
        app.org.update(sobj.name, record_id, json_body(request))
        return Response(204)
    if request.method == "DELETE":
        app.org.delete(sobj.name, record_id)
        return Response(204)
    record = app.org.retrieve(sobj.name, record_id)
    return Response.json(200, record_json(sobj, record, version, request.param("fields")))


def by_external_id(app, request: Request, version: str, type_name: str, field: str, value: str):
    sobj = app.org.sobject(type_name)
    value = unquote_plus(value)  # get_by_custom_id quote_plus-es the value: "+" is a space
    if request.method == "PATCH":
        return upsert(app, request, version, sobj, field, value)
    matches = app.org.match_external_id(sobj, field, value)
    if not matches:
        raise not_found()
    if len(matches) > 1:
        return multiple_choices(matches, sobj, version)
    if request.method == "DELETE":
        app.org.delete(sobj.name, matches[0]["Id"])
        return Response(204)
    return Response.json(200, record_json(sobj, matches[0], version, request.param("fields")))


def upsert(app, request, version, sobj, field, value) -> Response:
    update_only = (request.param("updateOnly") or "").lower() == "true"
    try:
        record, created = app.org.upsert(sobj.name, field, value, json_body(request), update_only)
    except ApiError as error:
        if error.status == 300:
            return multiple_choices(error.matches, sobj, version)
        raise
    body = {"id": record["Id"], "success": True, "errors": [], "created": created}
    return Response.json(201 if created else 200, body)


def multiple_choices(matches: list[dict], sobj: schema.SObject, version: str) -> Response:
    return Response.json(
        300, [soql.attributes(sobj.name, m["Id"], version)["url"] for m in matches]
    )


def updated(app, request: Request, version: str, type_name: str) -> Response:
    sobj = app.org.sobject(type_name)
    start, end = _window(request)
    found = [
        r["Id"]
        for r in app.store.all(sobj.name)
        if not r["IsDeleted"] and start <= r["SystemModstamp"] < end
    ]
    return Response.json(200, {"ids": found, "latestDateCovered": end})


def deleted(app, request: Request, version: str, type_name: str) -> Response:
    sobj = app.org.sobject(type_name)
    start, end = _window(request)
    found = [
        {"id": r["Id"], "deletedDate": r["SystemModstamp"]}
        for r in app.store.all(sobj.name)
        if r["IsDeleted"] and start <= r["SystemModstamp"] < end
    ]
    earliest = format_datetime(datetime.now(UTC) - timedelta(days=15))
    return Response.json(
        200, {"deletedRecords": found, "earliestDateAvailable": earliest, "latestDateCovered": end}
    )


def _window(request: Request) -> tuple[str, str]:
    """Seconds are truncated, start must precede end, at most 30 days back (like the real API)."""
    try:
        start = parse_datetime(request.param("start") or "").replace(microsecond=0)
        end = parse_datetime(request.param("end") or "").replace(microsecond=0)
    except ValueError:
        raise ApiError(
            400, "INVALID_REPLICATION_DATE", "start and end must be ISO-8601 date-times"
        ) from None
    if start >= end:
        raise ApiError(
            400,
            "INVALID_REPLICATION_DATE",
            "startDate must chronologically precede endDate by more than one minute",
        )
    if start < datetime.now(UTC) - timedelta(days=30):
        raise ApiError(400, "INVALID_REPLICATION_DATE", "startDate cannot be more than 30 days ago")
    return format_datetime(start), format_datetime(end)


def limits(app, request: Request, version: str) -> Response:
    used, maximum = app.api_usage()
    return Response.json(
        200,
        {
            "DailyApiRequests": {"Max": maximum, "Remaining": max(0, maximum - used)},
            "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
            "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
            "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
            "DataStorageMB": {"Max": 5, "Remaining": 5},
            "FileStorageMB": {"Max": 20, "Remaining": 20},
        },
    )


# -- SOQL ----------------------------------------------------------------------------------------


class Cursors:
    """Query results kept for nextRecordsUrl paging (in memory: they do not survive a restart)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: OrderedDict[str, list] = OrderedDict()
        self._numbers = itertools.count(1)

    def open(self, records: list, batch_size: int) -> str:
        with self._lock:
            locator = ids.make_id("01g", next(self._numbers))
            self._open[locator] = (records, batch_size)
            while len(self._open) > MAX_OPEN_CURSORS:
                self._open.popitem(last=False)
            return locator

    def get(self, locator: str) -> tuple[list, int]:
        with self._lock:
            if locator not in self._open:
                raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            return self._open[locator]

    def clear(self) -> None:
        with self._lock:
            self._open.clear()


def query(app, request: Request, version: str, include_deleted=False) -> Response:
    text = request.param("q")
    if not text:
        raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
    parsed = soql.parse(text)
    evaluator = soql.Evaluator(app.store, version, include_deleted)
    rows = evaluator.run(parsed)
    if parsed.count:
        return Response.json(200, {"totalSize": len(rows), "done": True, "records": []})
    sobj = schema.sobject(parsed.sobject)
    records = [evaluator.serialize(sobj, r, parsed.fields) for r in rows]
    size = batch_size(app, request, int(app.options["query_batch_size"]))
    return Response.json(200, page(app, version, records, size, None, 0))


def query_all(app, request: Request, version: str) -> Response:
    return query(app, request, version, include_deleted=True)


def query_more(app, request: Request, version: str, locator: str) -> Response:
    cursor, _, offset = locator.rpartition("-")
    if not cursor or not offset.isdigit():
        raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    records, size = app.cursors.get(cursor)
    size = batch_size(app, request, size)
    return Response.json(200, page(app, version, records, size, cursor, int(offset)))


def page(app, version: str, records: list, size: int, cursor, offset: int) -> dict:
    """One batch; the cursor remembers its batch size for the following pages."""
    chunk = records[offset : offset + size]
    result = {"totalSize": len(records), "done": offset + size >= len(records), "records": chunk}
    if not result["done"]:
        cursor = cursor or app.cursors.open(records, size)
        result["nextRecordsUrl"] = f"/services/data/v{version}/query/{cursor}-{offset + size}"
    return result


def batch_size(app, request: Request, default: int) -> int:
    """Sforce-Query-Options: batchSize=N (200..2000) wins over the default."""
    header = request.headers.get("Sforce-Query-Options") or ""
    for option in header.split(","):
        name, _, value = option.strip().partition("=")
        if name.strip() == "batchSize" and value.strip().isdigit():
            return min(2000, max(200, int(value)))
    return default


# -- helpers -------------------------------------------------------------------------------------


def json_body(request: Request):
    try:
        return request.json()
    except ValueError as error:
        raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character: {error}") from None


def record_json(sobj: schema.SObject, record: dict, version: str, fields: str | None) -> dict:
    names = [f.strip() for f in fields.split(",")] if fields else list(sobj.fields)
    out = {"attributes": soql.attributes(sobj.name, record["Id"], version)}
    for name in names:
        f = sobj.field(name)
        if not f:
            raise ApiError(
                400,
                "INVALID_FIELD",
                f"No such column '{name}' on sobject of type {sobj.name}",
                [name],
            )
        out[f.name] = soql.field_value(f, record)
    return out
