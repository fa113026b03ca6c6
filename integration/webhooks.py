"""Salesforce Outbound Messages: the push that makes a Closed Won Opportunity an invoice in seconds.

Salesforce POSTs a SOAP `notifications` envelope and retries (for up to 24 hours, out of order,
at least once) until it gets `<Ack>true</Ack>`. We acknowledge only once every notification is
recorded in the ledger, so a crash before the ack means Salesforce sends it again, and the
ledger's dedupe key makes the repeat a no-op. There is no signature on these messages: the secret
in the URL and the org id in the body are what authenticate them.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring
from django.contrib.auth.decorators import login_not_required
from django.db import transaction
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from integration.access import client_address
from integration.models import Connection, Direction, Flow, Trigger
from integration.sync import engine

log = logging.getLogger(__name__)

OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
MAX_BODY_BYTES = 2 * 1024 * 1024  # 100 notifications of a few fields each fit easily
RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
NOTIFICATION_ID = re.compile(r"[A-Za-z0-9]{1,18}")

ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}"><soapenv:Body>'
    f'<notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body></soapenv:Envelope>"
)


class BadMessage(Exception):
    """The request is not an Outbound Message we accept; the text says why."""


def _fault(message: str, status: int) -> HttpResponse:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_NS}">'
        "<soapenv:Body><soapenv:Fault><faultcode>soapenv:Client</faultcode>"
        f"<faultstring>{_escape(message)}</faultstring></soapenv:Fault></soapenv:Body>"
        "</soapenv:Envelope>"
    )
    return HttpResponse(body, status=status, content_type="text/xml; charset=utf-8")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _declared_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _too_large() -> HttpResponse:
    log.info("outbound message refused: over %d bytes", MAX_BODY_BYTES)
    return _fault(
        f"The message is too large (kashforce takes up to {MAX_BODY_BYTES // (1024 * 1024)} MB).",
        status=413,
    )


def _connection_for_secret(secret: str) -> Connection | None:
    """The active Salesforce connection whose Outbound secret is this one (constant-time)."""
    found = None
    for connection in Connection.objects.filter(kind=Connection.Kind.SALESFORCE, is_active=True):
        stored = connection.get_secret("outbound_secret")
        if stored and hmac.compare_digest(stored.encode(), secret.encode()):
            found = connection
    return found


def parse_notifications(body: bytes) -> tuple[str, list[dict]]:
    """(OrganizationId, [{"notification_id", "sobject_type", "fields": {...}}]) or BadMessage."""
    try:
        root = fromstring(body, forbid_dtd=True)
    except DefusedXmlException:
        raise BadMessage("Document type declarations and entities are not accepted.") from None
    except ParseError as exc:
        raise BadMessage(f"The body is not valid XML ({exc}).") from None
    envelope = root.find(f"{{{SOAP_NS}}}Body/{{{OUTBOUND_NS}}}notifications")
    if envelope is None:
        raise BadMessage("This is not a Salesforce Outbound Message (no notifications element).")
    org_id = (envelope.findtext(f"{{{OUTBOUND_NS}}}OrganizationId") or "").strip()
    notifications = []
    for item in envelope.findall(f"{{{OUTBOUND_NS}}}Notification"):
        notification_id = (item.findtext(f"{{{OUTBOUND_NS}}}Id") or "").strip()
        sobject = item.find(f"{{{OUTBOUND_NS}}}sObject")
        if not notification_id or sobject is None:
            raise BadMessage("A notification has no Id or no sObject.")
        if not NOTIFICATION_ID.fullmatch(notification_id):
            raise BadMessage("A notification Id is not a Salesforce id.")
        fields = {
            child.tag.rsplit("}", 1)[-1]: (child.text or "").strip()
            for child in sobject
            if child.get("{http://www.w3.org/2001/XMLSchema-instance}nil") != "true"
        }
        if not fields.get("Id"):
            raise BadMessage(f"Notification {notification_id} carries no record Id.")
        if not RECORD_ID.fullmatch(fields["Id"]):
            raise BadMessage(
                f"Notification {notification_id}: the record Id is not a Salesforce id."
            )
        sobject_type = (sobject.get(XSI_TYPE) or "").split(":")[-1]
        notifications.append(
            {"notification_id": notification_id, "sobject_type": sobject_type, "fields": fields}
        )
    if not notifications:
        raise BadMessage("The message holds no notifications.")
    return org_id, notifications


def _order_change(notification: dict) -> engine.Change:
    """An activated Order's notification: the same event as the poll's (sync/orders.py)."""
    from integration.sync.orders import _change

    fields = notification["fields"]
    change = _change({**fields, "SystemModstamp": fields.get("SystemModstamp") or ""})
    payload = {**change.payload, "_notification_id": notification["notification_id"]}
    return dataclasses.replace(change, payload=payload)


@csrf_exempt  # Salesforce cannot send a CSRF token; the secret path authenticates the caller
@login_not_required
@require_POST
def salesforce_outbound(request, secret: str):
    # Checked before anything is read: request.body would raise RequestDataTooBig past
    # DATA_UPLOAD_MAX_MEMORY_SIZE (Django's HTML 400 and a logged traceback, issue #15).
    if _declared_length(request) > MAX_BODY_BYTES:
        return _too_large()
    connection = _connection_for_secret(secret)
    if connection is None:
        log.warning("outbound message with an unknown secret from %s", client_address(request))
        return _fault("Unknown endpoint.", status=404)
    if not connection.organization_id:
        # Without the org id, the secret path alone would authenticate: refuse until it is set.
        log.warning("outbound message refused: connection %s has no org id", connection.pk)
        return _fault(
            "kashforce does not know this Salesforce org's id yet; an Integration admin sets it "
            "on the connection.",
            status=403,
        )
    # Read at most one byte past the limit, whatever the stream holds.
    body = request.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return _too_large()
    try:
        org_id, notifications = parse_notifications(body)
    except BadMessage as exc:
        return _fault(str(exc), status=400)
    if org_id[:15] != connection.organization_id[:15]:
        log.warning(
            "outbound message for org %r refused (expected %s)",
            org_id[:18],
            connection.organization_id,
        )
        return _fault("This message is for another Salesforce org.", status=403)
    opportunities = [n for n in notifications if n["sobject_type"] in ("Opportunity", "")]
    orders = [n for n in notifications if n["sobject_type"] == "Order"]
    with transaction.atomic():
        # The message carries the changes: the run does not poll Salesforce for them again.
        run = engine.start_run(Flow.INVOICES, Trigger.PUSH, collected=True)
        ctx = engine.RunContext(run=run, deadline=0)
        engine.record_changes(
            ctx,
            [
                engine.Change(
                    direction=Direction.SALESFORCE_TO_KASHFLOW,
                    source_object="salesforce.Opportunity",
                    source_id=notification["fields"]["Id"],
                    payload={
                        **notification["fields"],
                        "_notification_id": notification["notification_id"],
                    },
                    # One invoice per won Opportunity: the poll and every repeat of this push for
                    # the same Opportunity are the same event.
                    version="won",
                    target_object="kashflow.Invoice",
                )
                for notification in opportunities
            ]
            + [_order_change(notification) for notification in orders],
        )
        ctx.flush_counts()
        run.add_to_total(ctx.recorded)
        if not ctx.recorded:
            # A repeat (Salesforce delivers at least once, and may replay): every notification
            # is in the ledger already, so the run made for it is dropped with its queue task.
            transaction.set_rollback(True)
    log.info(
        "outbound message org=%s notifications=%d new=%d run=%s",
        org_id,
        len(notifications),
        ctx.recorded,
        run.pk if ctx.recorded else "-",
    )
    return HttpResponse(ACK, content_type="text/xml; charset=utf-8")
