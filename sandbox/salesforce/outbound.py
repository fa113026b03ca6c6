"""Outbound Messages: a SOAP `notifications` POST when an Opportunity becomes won, and (when
configured with `"orders": true`, a second outbound message an admin sets up) when an Order
is activated.

Like Salesforce, the message carries the record's state at send time, is retried until the
receiver answers 200 with <Ack>true</Ack>, and may therefore arrive more than once (receivers
dedupe by notification Id). Unlike Salesforce (retries for 24 h, backing off up to 2 h between
tries), the simulator retries on a short schedule (`outbound_backoff_seconds`, default 0.2 s
doubling up to 5 s) for at most `outbound_retry_for_seconds` (default 600), so tests see
redelivery in seconds.
"""

import itertools
import ssl
import threading
import time
import urllib.request
from xml.sax.saxutils import escape

from sandbox.salesforce import ids

NAMESPACE = "http://soap.sforce.com/2005/09/outbound"
FIELDS = ["Id", "AccountId", "Name", "StageName", "Amount", "CloseDate", "IsWon"]
ORDER_FIELDS = ["Id", "AccountId", "OrderNumber", "Status", "StatusCode", "TotalAmount",
                "EffectiveDate", "IsReductionOrder"]  # fmt: skip


class Outbound:
    def __init__(self, app, options: dict):
        self.app = app
        self.options = options
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.deliveries: list[dict] = []
        self._numbers = itertools.count(1)
        self.configure(
            {"url": options.get("outbound_url"), "enabled": bool(options.get("outbound_url"))}
        )

    def configure(self, config: dict) -> dict:
        with self.lock:
            self.url = config.get("url")
            self.enabled = bool(config.get("enabled", True)) and bool(self.url)
            self.action_id = config.get("action_id", "04k8d0000000001AAA")
            self.orders = bool(config.get("orders", False))
        return self.status()

    def status(self) -> dict:
        with self.lock:
            return {
                "url": self.url,
                "enabled": self.enabled,
                "orders": self.orders,
                "deliveries": [dict(d) for d in self.deliveries],
            }

    def reset(self) -> None:
        self.configure(
            {
                "url": self.options.get("outbound_url"),
                "enabled": bool(self.options.get("outbound_url")),
            }
        )
        with self.lock:
            self.deliveries.clear()

    def notify_order(self, order_id: str) -> None:
        """Called after a commit that activated an Order."""
        if self.orders:
            self.notify(order_id, "Order")

    def notify(self, opportunity_id: str, sobject: str = "Opportunity") -> None:
        """Called after a commit that made an Opportunity won."""
        with self.lock:
            if not self.enabled:
                return
            delivery = {
                "notification_id": ids.make_id("04l", next(self._numbers)),
                "opportunity_id": opportunity_id,
                "sobject": sobject,
                "url": self.url,
                "attempts": 0,
                "acked": False,
                "last_status": None,
                "last_error": None,
            }
            self.deliveries.append(delivery)
        threading.Thread(
            target=self._deliver, args=(delivery,), daemon=True, name="sandbox-outbound"
        ).start()

    def _deliver(self, delivery: dict) -> None:
        delay = float(self.options.get("outbound_backoff_seconds", 0.2))
        deadline = time.monotonic() + float(self.options.get("outbound_retry_for_seconds", 600))
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if self._attempt(delivery):
                return
            self.stopping.wait(delay)
            delay = min(delay * 2, float(self.options.get("outbound_max_backoff_seconds", 5)))

    def _attempt(self, delivery: dict) -> bool:
        if not delivery["url"].startswith(("http://", "https://")):
            raise ValueError("outbound url must be http(s)")
        envelope = self.envelope(
            delivery["notification_id"], delivery["opportunity_id"], delivery["sobject"]
        )
        request = urllib.request.Request(  # noqa: S310 (http/https checked above)
            delivery["url"],
            data=envelope.encode("utf-8"),
            method="POST",
            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
        )
        status, error, acked = None, None, False
        try:
            opened = urllib.request.urlopen(request, timeout=10, context=_client_tls())  # noqa: S310
            with opened as response:
                status = response.status
                acked = status == 200 and b"<Ack>true</Ack>" in response.read().replace(b" ", b"")
        except urllib.error.HTTPError as failure:
            status = failure.code
        except OSError as failure:
            error = str(failure)
        with self.lock:
            delivery.update(
                attempts=delivery["attempts"] + 1, acked=acked, last_status=status, last_error=error
            )
        return acked

    def envelope(self, notification_id: str, opportunity_id: str, sobject="Opportunity") -> str:
        with self.app.store.lock:
            record = dict(self.app.store.get(sobject, opportunity_id) or {})
        base, org = self.app.base_url, self.app.creds["organization_id"]
        names = ORDER_FIELDS if sobject == "Order" else FIELDS
        fields = "".join(_element(name, record.get(name)) for name in names)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            f'<soapenv:Body><notifications xmlns="{NAMESPACE}">'
            f"<OrganizationId>{org}</OrganizationId><ActionId>{self.action_id}</ActionId>"
            '<SessionId xsi:nil="true"/>'
            f"<EnterpriseUrl>{base}/services/Soap/c/59.0/{org[:15]}</EnterpriseUrl>"
            f"<PartnerUrl>{base}/services/Soap/u/59.0/{org[:15]}</PartnerUrl>"
            f"<Notification><Id>{notification_id}</Id>"
            f'<sObject xsi:type="sf:{sobject}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
            f"{fields}</sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>"
        )

    def close(self) -> None:
        self.stopping.set()


def _element(name: str, value) -> str:
    if value is None:
        return ""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"<sf:{name}>{escape(text)}</sf:{name}>"


def _client_tls() -> ssl.SSLContext:
    # The receiver is a local development server; in production Salesforce requires a certificate
    # from a public CA, which the simulator does not try to check.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
