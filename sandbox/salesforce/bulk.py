"""Bulk API 2.0: ingest jobs (CSV upload → per-row DML → result CSVs) and query jobs (CSV pages).

Processing is synchronous: an ingest job is JobComplete as soon as its upload is marked
UploadComplete, and a query job as soon as it is created; clients polling the job see the final
state at once. Jobs live in memory (they do not survive a restart; real jobs expire after 7 days).
"""

import csv
import io
import itertools
import threading

from sandbox.core import Request, Response
from sandbox.salesforce import ids, schema, soql
from sandbox.salesforce.errors import ApiError, not_found
from sandbox.salesforce.rest import json_body
from sandbox.salesforce.store import format_datetime

OPERATIONS = {"insert", "update", "upsert", "delete", "hardDelete"}
DEFAULT_MAX_RECORDS = 50000


class Jobs:
    def __init__(self):
        self.lock = threading.Lock()
        self.jobs: dict[str, dict] = {}
        self._numbers = itertools.count(1)

    def new(self, info: dict) -> dict:
        with self.lock:
            job_id = ids.make_id("750", next(self._numbers))
            self.jobs[job_id] = {**info, "id": job_id}
            return self.jobs[job_id]

    def get(self, job_id: str, job_type: str) -> dict:
        job = self.jobs.get(ids.normalize(job_id) or "")
        if not job or job["jobType"] != job_type:
            raise not_found()
        return job

    def clear(self) -> None:
        with self.lock:
            self.jobs.clear()


def _now() -> str:
    from datetime import UTC, datetime

    return format_datetime(datetime.now(UTC))


def _public(job: dict) -> dict:
    return {k: v for k, v in job.items() if not k.startswith("_")}


# -- ingest --------------------------------------------------------------------------------------


def create_ingest(app, request: Request, version: str) -> Response:
    body = json_body(request)
    operation = body.get("operation")
    if operation not in OPERATIONS:
        raise ApiError(400, "INVALIDJOB", f"Invalid operation: {operation}")
    sobj = app.org.sobject(body.get("object") or "")
    if operation == "upsert" and not body.get("externalIdFieldName"):
        raise ApiError(400, "INVALIDJOB", "External ID was blank for upsert")
    job = app.jobs.new(
        {
            "operation": operation,
            "object": sobj.name,
            "createdById": app.creds["user_id"],
            "createdDate": _now(),
            "systemModstamp": _now(),
            "state": "Open",
            "externalIdFieldName": body.get("externalIdFieldName"),
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(version),
            "jobType": "V2Ingest",
            "lineEnding": body.get("lineEnding", "LF"),
            "columnDelimiter": "COMMA",
            "numberRecordsProcessed": 0,
            "numberRecordsFailed": 0,
            "retries": 0,
            "totalProcessingTime": 0,
            "_csv": [],
            "_success": [],
            "_failed": [],
        }
    )
    job["contentUrl"] = f"services/data/v{version}/jobs/ingest/{job['id']}/batches"
    return Response.json(200, _public(job))


def upload(app, request: Request, version: str, job_id: str) -> Response:
    job = app.jobs.get(job_id, "V2Ingest")
    if job["state"] != "Open":
        raise ApiError(409, "INVALIDJOBSTATE", "Job is not open for uploads")
    job["_csv"].append(request.body.decode("utf-8-sig"))
    return Response(201)


def ingest_job(app, request: Request, version: str, job_id: str) -> Response:
    job = app.jobs.get(job_id, "V2Ingest")
    if request.method == "DELETE":
        app.jobs.jobs.pop(job["id"], None)
        return Response(204)
    if request.method == "PATCH":
        state = json_body(request).get("state")
        if state == "UploadComplete" and job["state"] == "Open":
            job["state"] = "UploadComplete"
            _process(app, job)
        elif state == "Aborted":
            job["state"] = "Aborted"
        else:
            raise ApiError(400, "INVALIDJOBSTATE", f"Cannot change state to {state}")
    return Response.json(200, _public(job))


def list_ingest(app, request: Request, version: str) -> Response:
    jobs = [_public(j) for j in app.jobs.jobs.values() if j["jobType"] == "V2Ingest"]
    return Response.json(200, {"done": True, "records": jobs, "nextRecordsUrl": None})


def _process(app, job: dict) -> None:
    for text in job["_csv"]:
        for row in csv.DictReader(io.StringIO(text)):
            _process_row(app, job, row)
    job["numberRecordsProcessed"] = len(job["_success"]) + len(job["_failed"])
    job["numberRecordsFailed"] = len(job["_failed"])
    job.update(state="JobComplete", systemModstamp=_now())


def _process_row(app, job: dict, row: dict) -> None:
    """One row, one savepoint: a failed row leaves no trace and the others go on."""
    operation, type_name = job["operation"], job["object"]
    values = {k: v for k, v in row.items() if k and k.lower() != "id"}
    record_id = next((v for k, v in row.items() if k and k.lower() == "id"), "")
    try:
        with app.store.savepoint():
            created = False
            if operation == "insert":
                record_id, created = app.org.create(type_name, values, from_csv=True)["Id"], True
            elif operation == "update":
                record_id = app.org.update(type_name, record_id, values, from_csv=True)["Id"]
            elif operation == "upsert":
                field = job["externalIdFieldName"]
                value = next((v for k, v in row.items() if k.lower() == field.lower()), "")
                record, created = app.org.upsert(type_name, field, value, values, from_csv=True)
                record_id = record["Id"]
            elif operation == "delete":
                app.org.delete(type_name, record_id)
            else:
                app.org.hard_delete(type_name, record_id)
        job["_success"].append((record_id, created, row))
    except ApiError as error:
        job["_failed"].append((record_id or "", f"{error.code}:{error.message}", row))


def ingest_results(app, request: Request, version: str, job_id: str, kind: str) -> Response:
    job = app.jobs.get(job_id, "V2Ingest")
    columns = _columns(job)
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    if kind == "successfulResults":
        writer.writerow(["sf__Id", "sf__Created", *columns])
        for record_id, created, row in job["_success"]:
            writer.writerow([record_id, str(created).lower(), *(row.get(c, "") for c in columns)])
    elif kind == "failedResults":
        writer.writerow(["sf__Id", "sf__Error", *columns])
        for record_id, error, row in job["_failed"]:
            writer.writerow([record_id, error, *(row.get(c, "") for c in columns)])
    elif kind == "unprocessedrecords":
        writer.writerow(columns)  # processing is synchronous: nothing is ever left unprocessed
    else:
        raise not_found()
    return Response.text(200, out.getvalue(), "text/csv")


def _columns(job: dict) -> list[str]:
    for text in job["_csv"]:
        header = next(csv.reader(io.StringIO(text)), None)
        if header:
            return header
    return []


# -- query ---------------------------------------------------------------------------------------


def create_query(app, request: Request, version: str) -> Response:
    body = json_body(request)
    operation = body.get("operation", "query")
    if operation not in ("query", "queryAll"):
        raise ApiError(400, "INVALIDJOB", f"Invalid operation: {operation}")
    parsed = soql.parse(body.get("query") or "")
    if any(isinstance(item, soql.Subquery) for item in parsed.fields) or parsed.count:
        raise ApiError(
            400,
            "INVALIDJOB",
            "Bulk API 2.0 query does not support subqueries or aggregate functions",
        )
    evaluator = soql.Evaluator(app.store, version, include_deleted=operation == "queryAll")
    rows = evaluator.run(parsed)
    sobj = schema.sobject(parsed.sobject)
    table = [
        [_csv_value(evaluator.value_of(sobj, r, path)[1]) for path in parsed.fields] for r in rows
    ]
    job = app.jobs.new(
        {
            "operation": operation,
            "object": sobj.name,
            "createdById": app.creds["user_id"],
            "createdDate": _now(),
            "systemModstamp": _now(),
            "state": "JobComplete",
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(version),
            "jobType": "V2Query",
            "lineEnding": body.get("lineEnding", "LF"),
            "columnDelimiter": "COMMA",
            "numberRecordsProcessed": len(table),
            "retries": 0,
            "totalProcessingTime": 0,
            "_header": parsed.fields,
            "_rows": table,
        }
    )
    return Response.json(200, _public(job))


def query_job(app, request: Request, version: str, job_id: str) -> Response:
    job = app.jobs.get(job_id, "V2Query")
    if request.method == "DELETE":
        app.jobs.jobs.pop(job["id"], None)
        return Response(204)
    if request.method == "PATCH" and json_body(request).get("state") == "Aborted":
        job["state"] = "Aborted"
    return Response.json(200, _public(job))


def query_results(app, request: Request, version: str, job_id: str) -> Response:
    job = app.jobs.get(job_id, "V2Query")
    start = int(request.param("locator") or 0) if (request.param("locator") or "0").isdigit() else 0
    size = int(
        request.param("maxRecords") or app.options.get("bulk_max_records", DEFAULT_MAX_RECORDS)
    )
    rows = job["_rows"][start : start + size]
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(job["_header"])
    writer.writerows(rows)
    following = start + size
    locator = str(following) if following < len(job["_rows"]) else "null"
    return Response.text(
        200,
        out.getvalue(),
        "text/csv",
        {"Sforce-NumberOfRecords": str(len(rows)), "Sforce-Locator": locator},
    )


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return ""  # compound fields are not exported by Bulk API
    return str(value)
