"""sObject Collections (`/composite/sobjects`) and the Composite resource (`/composite`).

Each item runs in its own savepoint, so a failed item leaves no trace; with allOrNone a single
failure rolls back the whole request. Either way the HTTP status is 200 and every item reports.
"""

import json
import re
from urllib.parse import parse_qs, urlsplit

from sandbox.core import Request, Response
from sandbox.salesforce import ids, rest
from sandbox.salesforce.errors import ApiError

MAX_COLLECTION = 200
MAX_SUBREQUESTS = 25
ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was using "
    "AllOrNone header",
    "fields": [],
}
REFERENCE = re.compile(r"@\{([A-Za-z0-9_]+)((?:\.[A-Za-z0-9_]+|\[\d+\])*)\}")


class _RollBack(Exception):
    """Unwinds the request's outer savepoint when allOrNone meets a failure."""


def create_or_update(app, request: Request, version: str) -> Response:
    body = rest.json_body(request)
    records = _records(body)

    def save(record):
        type_name = (record.get("attributes") or {}).get("type")
        if not type_name:
            raise ApiError(400, "INVALID_TYPE", "No SObject Type defined in record")
        if request.method == "POST":
            return {"id": app.org.create(type_name, record)["Id"], "success": True, "errors": []}
        values = {k: v for k, v in record.items() if k.lower() != "id"}
        saved = app.org.update(type_name, record.get("Id") or record.get("id") or "", values)
        return {"id": saved["Id"], "success": True, "errors": []}

    return Response.json(
        200, run_items(app, records, save, body.get("allOrNone"), request.record_faults)
    )


def upsert(app, request: Request, version: str, type_name: str, field: str) -> Response:
    body = rest.json_body(request)
    sobj = app.org.sobject(type_name)

    def save(record):
        value = next((v for k, v in record.items() if k.lower() == field.lower()), None)
        if value is None:
            raise ApiError(400, "MISSING_ARGUMENT", f"{field} not specified", [field])
        try:
            saved, created = app.org.upsert(sobj.name, field, str(value), record)
        except ApiError as error:
            if error.status == 300:
                raise ApiError(
                    400,
                    "DUPLICATE_EXTERNAL_ID",
                    f"{field}: more than one record found for external id field: {value}",
                    [field],
                ) from None
            raise
        return {"id": saved["Id"], "success": True, "errors": [], "created": created}

    def lost_race(record) -> ApiError | None:
        # Two upserts of one new external id at once: both find no record, both insert, the
        # unique index lets one through and the other gets DUPLICATE_VALUE (real orgs do this).
        value = next((v for k, v in record.items() if k.lower() == field.lower()), None)
        if value is None or app.org.match_external_id(sobj, field, str(value)):
            return None
        winner = save(record)
        name = sobj.field(field).name if sobj.field(field) else field
        return ApiError(
            400,
            "DUPLICATE_VALUE",
            f"duplicate value found: {name} duplicates value on record with id: {winner['id']}",
            [],
        )

    records = _records(body)
    return Response.json(
        200,
        run_items(app, records, save, body.get("allOrNone"), request.record_faults, lost_race),
    )


def delete(app, request: Request, version: str) -> Response:
    record_ids = _ids(request)
    all_or_none = (request.param("allOrNone") or "").lower() == "true"

    def remove(record_id):
        found = app.store.find(ids.normalize(record_id) or "")
        if not found:
            raise ApiError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        app.org.delete(found[0], record_id)
        return {"id": found[1]["Id"], "success": True, "errors": []}

    return Response.json(200, run_items(app, record_ids, remove, all_or_none))


def retrieve(app, request: Request, version: str, type_name: str) -> Response:
    sobj = app.org.sobject(type_name)
    if request.method == "POST":
        body = rest.json_body(request)
        record_ids, fields = body.get("ids") or [], ",".join(body.get("fields") or [])
    else:
        record_ids, fields = _ids(request), request.param("fields")
    if not fields:
        raise ApiError(400, "MISSING_ARGUMENT", "fields must be specified")
    results = []
    for record_id in record_ids:
        record = app.store.get(sobj.name, ids.normalize(record_id) or "")
        alive = record and not record["IsDeleted"]
        results.append(rest.record_json(sobj, record, version, fields) if alive else None)
    return Response.json(200, results)


def _records(body) -> list:
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list):
        raise ApiError(400, "JSON_PARSER_ERROR", "records must be a list")
    if len(records) > MAX_COLLECTION:
        raise ApiError(
            400,
            "INVALID_BATCH_SIZE",
            f"Your request contains {len(records)} records; the maximum is {MAX_COLLECTION}",
        )
    return records


def _ids(request: Request) -> list[str]:
    record_ids = [i for i in (request.param("ids") or "").split(",") if i]
    if len(record_ids) > MAX_COLLECTION:
        raise ApiError(
            400, "EXCEEDED_ID_LIMIT", f"Number of ids exceeds the limit of {MAX_COLLECTION}"
        )
    return record_ids


def run_items(app, items: list, action, all_or_none, faults=None, on_race=None) -> list[dict]:
    """Apply `action` to each item in its own savepoint; roll back all when allOrNone fails.

    `faults` (position -> kind) are injected record faults: "lock_row" fails the item with
    UNABLE_TO_LOCK_ROW unwritten, as when another transaction holds its row; "upsert_race" is
    an upsert that lost to a concurrent one: `on_race(item)` writes the winner (outside the item's
    savepoint: the other transaction committed) and returns this item's error, or None when the
    record already existed (an update races nobody)."""
    results = []
    faults = faults or {}
    try:
        with app.store.savepoint():
            for position, item in enumerate(items):
                try:
                    if faults.get(position) == "lock_row":
                        raise ApiError(
                            400,
                            "UNABLE_TO_LOCK_ROW",
                            "unable to obtain exclusive access to this record or 1 records: "
                            + str(_item_id(item)),
                        )
                    lost = (
                        on_race(item) if on_race and faults.get(position) == "upsert_race" else None
                    )
                    if lost:
                        raise lost
                    with app.store.savepoint():
                        results.append(action(item))
                except ApiError as error:
                    results.append({"id": None, "success": False, "errors": [_save_error(error)]})
            if all_or_none and not all(r["success"] for r in results):
                raise _RollBack
    except _RollBack:
        results = [
            r if not r["success"] else {"id": None, "success": False, "errors": [ROLLED_BACK]}
            for r in results
        ]
    return results


def _item_id(item) -> str:
    if isinstance(item, dict):
        return str(item.get("Id") or item.get("id") or "")
    return str(item)


def _save_error(error: ApiError) -> dict:
    return {"statusCode": error.code, "message": error.message, "fields": error.fields}


# -- Composite -----------------------------------------------------------------------------------

HALTED = [
    {
        "errorCode": "PROCESSING_HALTED",
        "message": "The transaction was rolled back since "
        "another operation in the same transaction failed.",
    }
]


def composite(app, request: Request, version: str) -> Response:
    body = rest.json_body(request)
    subrequests = body.get("compositeRequest") if isinstance(body, dict) else None
    if not isinstance(subrequests, list):
        raise ApiError(400, "JSON_PARSER_ERROR", "compositeRequest must be a list")
    if len(subrequests) > MAX_SUBREQUESTS:
        raise ApiError(
            400,
            "LIMIT_EXCEEDED",
            f"Composite requests support at most {MAX_SUBREQUESTS} subrequests",
        )
    results, answers = [], {}
    try:
        with app.store.savepoint():
            for sub in subrequests:
                results.append(_run_subrequest(app, request, sub, answers))
            if body.get("allOrNone") and any(r["httpStatusCode"] >= 400 for r in results):
                raise _RollBack
    except _RollBack:
        results = [
            r if r["httpStatusCode"] >= 400 else {**r, "body": HALTED, "httpStatusCode": 400}
            for r in results
        ]
    return Response.json(200, {"compositeResponse": results})


def _run_subrequest(app, outer: Request, sub: dict, answers: dict) -> dict:
    reference_id = sub.get("referenceId")
    try:
        url = _substitute(str(sub.get("url", "")), answers)
        body = _substitute(json.dumps(sub["body"]), answers) if "body" in sub else ""
    except KeyError as missing:
        halted = [
            {
                "errorCode": "PROCESSING_HALTED",
                "message": f"Invalid reference specified. No value for {missing.args[0]} "
                "found in any prior subrequest.",
            }
        ]
        return {
            "body": halted,
            "httpHeaders": {},
            "httpStatusCode": 400,
            "referenceId": reference_id,
        }
    parts = urlsplit(url)
    inner = Request(
        str(sub.get("method", "GET")).upper(),
        parts.path,
        parse_qs(parts.query),
        outer.headers,
        body.encode(),
    )
    try:
        with app.store.savepoint():
            response = app.call_rest(inner)
            if response.status >= 400:
                raise _SubrequestFailed(response)
    except _SubrequestFailed as failed:
        response = failed.response
    parsed = json.loads(response.body) if response.body else None
    if reference_id:
        answers[reference_id] = parsed
    headers = {"Location": f"{parts.path}/{parsed['id']}"} if response.status == 201 else {}
    return {
        "body": parsed,
        "httpHeaders": headers,
        "httpStatusCode": response.status,
        "referenceId": reference_id,
    }


class _SubrequestFailed(Exception):
    def __init__(self, response: Response):
        self.response = response


def _substitute(text: str, answers: dict) -> str:
    """Replace @{ref.id}, @{ref.records[0].Id} with values from earlier subrequests."""

    def value(match):
        current = answers[match.group(1)]
        for step in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", match.group(2)):
            try:
                current = current[step[0]] if step[0] else current[int(step[1])]
            except (KeyError, IndexError, TypeError):
                raise KeyError(match.group(0)[2:-1]) from None
        return str(current)

    try:
        return REFERENCE.sub(value, text)
    except KeyError as missing:
        raise KeyError(str(missing.args[0])) from None
