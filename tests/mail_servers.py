"""Real servers on loopback for the alert tests: an SMTP server (aiosmtpd) and an HTTP listener
(http.server), each on a free port, recording what arrived."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Inbox:
    """aiosmtpd handler: keeps every accepted message; `refuse` holds replies to give to the
    next DATA commands instead of accepting (e.g. "421 ..." for a temporary failure)."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.refuse: list[str] = []
        self.delay = 0.0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            reply = self.refuse.pop(0) if self.refuse else None
        if reply:
            return reply
        if self.delay:
            await asyncio.sleep(self.delay)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        with self.lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def subjects(self) -> list[str]:
        return sorted(str(m["Subject"]).strip() for m in self.messages)


class SMTPServer:
    def __init__(self):
        self.inbox = Inbox()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=free_port())

    @property
    def port(self) -> int:
        return self.controller.port

    def __enter__(self) -> SMTPServer:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            status = self.server.answers.pop(0) if self.server.answers else 200
            self.server.requests.append(
                {
                    "path": self.path,
                    "status": status,
                    "content_type": self.headers.get("Content-Type", ""),
                    "body": json.loads(body or b"null"),
                }
            )
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class WebhookListener(ThreadingHTTPServer):
    """Answers POSTs with the statuses in `answers` (then 200) and records each request."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.answers: list[int] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def url(self, path: str = "/services/T000/B000/s3cr3t-t0ken") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    @property
    def delivered(self) -> list[dict]:
        return [r for r in self.requests if r["status"] == 200]

    def __enter__(self) -> WebhookListener:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
