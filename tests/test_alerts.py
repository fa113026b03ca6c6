"""Alerts (issue #16): each kind found once and delivered once, over a real SMTP server on
loopback and a real HTTP listener; silence within its grace time; retries of temporary
failures; two send_alerts at once sending once; the pages people use."""

import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from integration import alerts
from integration.models import (
    Alert,
    AlertDelivery,
    AlertKind,
    AlertPreference,
    AlertWebhook,
    Connection,
    Flow,
    SyncEvent,
    SyncRun,
)
from tests import factories
from tests.mail_servers import SMTPServer, WebhookListener

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = "https://kashforce.example.co.uk"
TOKEN = "s3cr3t-t0ken"


@pytest.fixture
def smtp(settings):
    with SMTPServer() as server:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        settings.EMAIL_TIMEOUT = 5
        yield server.inbox


@pytest.fixture
def listener():
    with WebhookListener() as server:
        yield server


@pytest.fixture
def knobs(settings):
    """Set kashforce's alert settings for one test."""

    def set_(**values):
        settings.KASHFORCE = {**settings.KASHFORCE, **values}

    set_(BASE_URL=BASE_URL, ALERTS_TO=["finance@example.co.uk"], ALERT_BACKOFF_SECONDS=60)
    return set_


@pytest.fixture
def webhook(db, listener):
    hook = AlertWebhook(name="Finance channel", kinds=AlertKind.values)
    hook.set_url(listener.url())
    hook.save()
    return hook


def failed_event(flow=Flow.CUSTOMERS, code="INVALID_EMAIL_ADDRESS", failed_at=None, **fields):
    event = factories.SyncEventFactory(
        flow=flow,
        status=SyncEvent.Status.FAILED_PERMANENT,
        error_class=SyncEvent.ErrorClass.PERMANENT,
        error_code=code,
        message="Email: invalid email address: bob@@acme",
        **fields,
    )
    if failed_at:
        SyncEvent.objects.filter(pk=event.pk).update(updated_at=failed_at)
    return event


def connections(set_up_at):
    salesforce = factories.SalesforceConnectionFactory()
    kashflow = factories.KashFlowConnectionFactory()
    Connection.objects.update(created_at=set_up_at)
    return salesforce, kashflow


def ran(flow, finished_at, status=SyncRun.Status.SUCCEEDED):
    return factories.SyncRunFactory(flow=flow, status=status, finished_at=finished_at)


def subject(message) -> str:
    # A subject with a non-ASCII character arrives RFC 2047-encoded and folded.
    return str(message["Subject"]).strip()


def kinds_of(messages) -> list[str]:
    return sorted(m["X-Kashforce-Alert"] for m in messages)


# --------------------------------------------------------------------------------------------
# Every kind, once, by mail and by webhook


@pytest.mark.django_db
def test_each_alert_kind_arrives_once_at_the_smtp_server_and_the_webhook(
    smtp, listener, webhook, knobs
):
    now = timezone.now()
    salesforce, kashflow = connections(now - timedelta(days=2))
    for flow in (Flow.CUSTOMERS, Flow.PAYMENTS, Flow.PRODUCTS):
        ran(flow, now - timedelta(minutes=1))
    ran(Flow.INVOICES, now - timedelta(hours=3))  # silent: 1 minute's schedule, 30 minutes' grace
    failed_event(failed_at=now - timedelta(minutes=5))  # a new cause
    failed_event(code="FIELD_CUSTOM_VALIDATION_EXCEPTION", failed_at=now - timedelta(hours=30))
    kashflow.refuse_sign_in("KashFlow refused the sign-in: the password is wrong.")
    salesforce.record_api_usage(90_000, 100_000)  # over the 80% share
    alerts.report_reconciliation("run-7", 3, "/reconciliation/7/")

    first = alerts.run()
    second = alerts.run()

    expected = sorted(
        [
            AlertKind.NEW_ERROR,
            AlertKind.NEW_ERROR,  # the old error's cause is new too
            AlertKind.OLD_ERRORS,
            AlertKind.SILENCE,
            AlertKind.SIGN_IN_REFUSED,
            AlertKind.API_BUDGET,
            AlertKind.RECONCILIATION,
        ]
    )
    assert kinds_of(smtp.messages) == expected
    assert sorted(r["body"]["text"].split("\n")[0] for r in listener.delivered) == sorted(
        Alert.objects.values_list("title", flat=True)
    )
    assert len(listener.requests) == len(expected)
    assert first["sent"] == 2 * len(expected) and second.get("sent", 0) == 0
    assert set(AlertDelivery.objects.values_list("status", "attempts")) == {("sent", 1)}
    for message in smtp.messages:
        assert message["To"] == "finance@example.co.uk"
        assert f"{BASE_URL}/" in message.get_content()
    texts = [m.get_content() for m in smtp.messages] + [
        r["body"]["text"] for r in listener.requests
    ]
    for text in texts:
        # No secret, no payload: not the connection's password, not the record's values.
        assert "s3cret-Pass" not in text and "Tr0ub4dor" not in text
        assert "bob@@acme" not in text and "Acme Ltd" not in text
    silence = Alert.objects.get(kind=AlertKind.SILENCE)
    assert silence.subject == Flow.INVOICES
    assert silence.link == "/runs/?flow=invoices"
    assert listener.requests[0]["content_type"] == "application/json"


@pytest.mark.django_db
def test_a_cause_alerts_once_then_further_errors_come_in_a_digest(smtp, knobs):
    knobs(ALERT_DIGEST_MINUTES=60)
    start = timezone.now().replace(minute=5, second=0, microsecond=0)
    failed_event(failed_at=start - timedelta(minutes=1))
    alerts.run(start)
    assert smtp.subjects() == ["kashforce: New error in Customers: Invalid email address"]

    for minutes in (10, 20, 30):  # three more of the same cause in the hour
        failed_event(failed_at=start + timedelta(minutes=minutes))
    alerts.run(start + timedelta(minutes=40))
    assert len(smtp.messages) == 1  # no mail per error

    alerts.run(start + timedelta(minutes=56))  # the hour is over
    alerts.run(start + timedelta(minutes=57))
    assert len(smtp.messages) == 2
    digest = smtp.messages[1]
    assert digest["X-Kashforce-Alert"] == AlertKind.ERROR_DIGEST
    assert "3 records more failed" in subject(digest)
    assert "3 records: Invalid email address (Customers)" in digest.get_content()


@pytest.mark.django_db
def test_a_cause_is_new_again_after_its_errors_are_resolved(smtp, knobs):
    event = failed_event()
    alerts.run()
    event.ignore(factories.UserFactory(), "Duplicate record in KashFlow")
    alerts.run()  # the cause is over: its alert closes
    failed_event()
    alerts.run()
    assert kinds_of(smtp.messages) == [AlertKind.NEW_ERROR, AlertKind.NEW_ERROR]
    assert Alert.objects.still_open().count() == 1


# --------------------------------------------------------------------------------------------
# Silence


@pytest.mark.django_db
def test_silence_is_detected_within_its_grace_time_and_once(smtp, knobs):
    knobs(ALERT_GRACE_MINUTES=10, ALERT_GRACE_BY_FLOW={"payments": 45})
    last_run = timezone.now() - timedelta(hours=1)
    connections(last_run - timedelta(days=1))
    for flow in Flow:
        ran(flow, last_run)
    due = last_run + timedelta(minutes=1 + 10)  # the schedule's minute, then the grace

    alerts.find(due - timedelta(seconds=30))
    assert not Alert.objects.exists()  # late, still within the grace

    alerts.find(due + timedelta(seconds=30))  # the first pass after the grace: found
    alerts.find(due + timedelta(minutes=5))
    assert sorted(Alert.objects.values_list("subject", flat=True)) == [
        Flow.CUSTOMERS,
        Flow.INVOICES,
        Flow.PRODUCTS,
    ]  # payments has 45 minutes' grace
    alerts.find(last_run + timedelta(minutes=47))
    assert Alert.objects.filter(subject=Flow.PAYMENTS).count() == 1

    alerts.send_due(due + timedelta(minutes=50))
    assert len(smtp.messages) == 4
    assert "has not run for" in subject(smtp.messages[0])


@pytest.mark.django_db
def test_a_flow_that_runs_again_and_then_goes_quiet_again_alerts_again(knobs):
    knobs(ALERT_GRACE_MINUTES=10)
    start = timezone.now() - timedelta(hours=3)
    connections(start - timedelta(days=1))
    for flow in Flow:
        ran(flow, start + timedelta(hours=2, minutes=50))  # alive
    ran(Flow.INVOICES, start)
    SyncRun.objects.filter(flow=Flow.INVOICES, finished_at__gt=start).delete()

    alerts.find(start + timedelta(minutes=30))
    assert Alert.objects.still_open().filter(subject=Flow.INVOICES).count() == 1
    ran(Flow.INVOICES, start + timedelta(minutes=40))
    alerts.find(start + timedelta(minutes=41))
    assert not Alert.objects.still_open().filter(subject=Flow.INVOICES).exists()
    alerts.find(start + timedelta(minutes=60))
    assert Alert.objects.filter(subject=Flow.INVOICES).count() == 2


@pytest.mark.django_db
def test_deals_closed_but_no_invoice_made_is_silence(smtp, knobs):
    knobs(ALERT_GRACE_MINUTES=15)
    now = timezone.now()
    connections(now - timedelta(days=1))
    for flow in Flow:
        ran(flow, now - timedelta(seconds=30))  # the schedule runs...
    for minutes in (20, 16):  # ...but two won deals wait, retrying
        factories.SyncEventFactory(
            flow=Flow.INVOICES,
            status=SyncEvent.Status.FAILED_TRANSIENT,
            created_at=now - timedelta(minutes=minutes),
            next_attempt_at=now + timedelta(minutes=5),
        )
    alerts.run(now)
    alerts.run(now + timedelta(minutes=1))
    assert [subject(m) for m in smtp.messages] == [
        "kashforce: Closed Won → invoices: nothing synced for 20 minutes while work waits"
    ]
    assert "no invoice has been made in KashFlow" in smtp.messages[0].get_content()


@pytest.mark.django_db
def test_no_silence_before_both_connections_exist(knobs):
    factories.KashFlowConnectionFactory()
    Connection.objects.update(created_at=timezone.now() - timedelta(days=3))
    alerts.find()
    assert not Alert.objects.exists()


# --------------------------------------------------------------------------------------------
# Retries and failures


@pytest.mark.django_db
def test_a_temporary_smtp_failure_is_retried_and_arrives_once(smtp, knobs):
    smtp.refuse.append("421 4.3.0 Try again later")
    failed_event()
    now = timezone.now()
    alerts.run(now)
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (AlertDelivery.Status.RETRYING, 1)
    assert "refused the mail for now: 421" in delivery.error
    assert smtp.messages == []

    alerts.send_due(now + timedelta(seconds=30))  # not yet: the backoff is 60 s
    assert AlertDelivery.objects.get().attempts == 1
    alerts.send_due(now + timedelta(seconds=61))
    alerts.send_due(now + timedelta(seconds=300))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.error) == ("sent", 2, "")
    assert len(smtp.messages) == 1


@pytest.mark.django_db
def test_a_refused_address_is_not_delivered_and_not_retried(smtp, knobs):
    smtp.refuse.append("550 5.1.1 No such mailbox")
    failed_event()
    alerts.run()
    alerts.send_due(timezone.now() + timedelta(hours=2))
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (AlertDelivery.Status.FAILED, 1)
    assert "550" in delivery.error


@pytest.mark.django_db
def test_an_unreachable_mail_server_is_retried_then_given_up(settings, knobs):
    knobs(ALERT_ATTEMPTS=2)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # discard: nothing listens
    failed_event()
    now = timezone.now()
    alerts.run(now)
    alerts.send_due(now + timedelta(minutes=2))
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (AlertDelivery.Status.FAILED, 2)
    assert delivery.error.startswith("Gave up after 2 attempts. Could not reach the mail server")


@pytest.mark.django_db
def test_a_temporary_webhook_failure_is_retried_a_gone_webhook_is_not(listener, webhook, knobs):
    knobs(ALERTS_TO=[])
    gone = AlertWebhook(name="Old channel", kinds=AlertKind.values)
    gone.set_url(listener.url("/gone"))
    gone.save()
    listener.answers = [503, 404]  # "Finance channel" first (by name), then "Old channel"
    failed_event()
    now = timezone.now()
    alerts.run(now)
    alerts.send_due(now + timedelta(seconds=61))
    alerts.send_due(now + timedelta(minutes=30))
    finance, old = AlertDelivery.objects.order_by("recipient")
    assert (finance.status, finance.attempts, finance.error) == ("sent", 2, "")
    assert (old.status, old.attempts) == ("failed", 1)
    assert old.error == "127.0.0.1 answered HTTP 404: check the webhook's address."
    assert [r["path"] for r in listener.requests] == [
        f"/services/T000/B000/{TOKEN}",
        "/gone",
        f"/services/T000/B000/{TOKEN}",
    ]


@pytest.mark.django_db
def test_an_unreachable_webhook_error_never_quotes_its_url(knobs):
    knobs(ALERTS_TO=[])
    hook = AlertWebhook(name="Chat", kinds=AlertKind.values)
    hook.set_url(f"http://127.0.0.1:9/hooks/{TOKEN}")
    hook.save()
    failed_event()
    alerts.run()
    delivery = AlertDelivery.objects.get()
    assert delivery.status == "retrying"
    assert delivery.error == "Could not reach 127.0.0.1 (ConnectionError)."


@pytest.mark.django_db
def test_a_delivery_whose_worker_died_is_sent_again(smtp, knobs):
    failed_event()
    alerts.find()
    delivery = AlertDelivery.objects.get()
    long_ago = timezone.now() - timedelta(hours=1)
    AlertDelivery.objects.update(status="sending", claimed_at=long_ago, attempts=1)
    alerts.send_due()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 2)
    assert len(smtp.messages) == 1


# --------------------------------------------------------------------------------------------
# Several workers


@pytest.mark.django_db(transaction=True)
def test_two_workers_sending_at_once_send_each_delivery_once(smtp, knobs):
    """Two threads in this process claim the same deliveries (the subprocess test below runs
    two whole send_alerts)."""
    knobs(ALERTS_TO=[f"person{n}@example.co.uk" for n in range(6)])
    failed_event()
    alerts.find()
    smtp.delay = 0.05
    barrier = threading.Barrier(2)
    results = []

    def worker():
        from django.db import connection

        barrier.wait()
        try:
            results.append(alerts.send_due())
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(m["To"] for m in smtp.messages) == sorted(knobs_to())
    assert sum(r.get("sent", 0) for r in results) == 6


def knobs_to():
    return [f"person{n}@example.co.uk" for n in range(6)]


SEED = """
from datetime import timedelta
from django.utils import timezone
from integration.models import AlertKind, AlertWebhook, SyncEvent
for n, code in enumerate(["INVALID_EMAIL_ADDRESS", "REQUIRED_FIELD_MISSING", "DUPLICATE_VALUE"]):
    SyncEvent.objects.create(flow="customers", direction="kf_to_sf", source_object="kashflow.Customer",
        source_id=f"C{n}", dedupe_key=f"seed-{n}", status="failed_permanent", error_class="permanent",
        error_code=code, message="m")
hook = AlertWebhook(name="Chat", kinds=AlertKind.values)
hook.set_url("{url}")
hook.save()
"""


@pytest.mark.slow
def test_two_send_alerts_processes_at_once_send_each_alert_once(tmp_path, listener):
    """Two `manage.py send_alerts` started together on one database: each alert is found once
    and reaches each recipient once."""
    with SMTPServer() as server:
        server.inbox.delay = 0.1  # each send takes a while, so the two runs overlap
        env = {
            **os.environ,
            "KASHFORCE_VAR_DIR": str(tmp_path),
            "EMAIL_URL": f"smtp://127.0.0.1:{server.port}",
            "KASHFORCE_ALERTS_TO": "a@example.co.uk,b@example.co.uk,c@example.co.uk",
            "DATABASE_URL": "",
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)

        def manage(*args):
            return subprocess.Popen(
                [sys.executable, "manage.py", *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        for step in (
            ["migrate", "--noinput"],
            ["shell", "-c", SEED.replace("{url}", listener.url())],
        ):
            process = manage(*step)
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, out + err
        workers = [manage("send_alerts"), manage("send_alerts")]
        outputs = [worker.communicate(timeout=120) for worker in workers]
        assert [w.returncode for w in workers] == [0, 0], outputs

    received = sorted((m["To"], subject(m)) for m in server.inbox.messages)
    assert len(received) == 9 and len(set(received)) == 9  # 3 causes x 3 people, once each
    assert len(listener.requests) == 3
    assert sum(int(out.split(" new alert")[0]) for out, _ in outputs) == 3


# --------------------------------------------------------------------------------------------
# Who receives what


@pytest.mark.django_db
def test_people_receive_the_kinds_they_chose(smtp, knobs):
    knobs(ALERTS_TO=["finance@example.co.uk", "ops@example.co.uk"])
    viewers = Group.objects.get(name="Operations")
    chooser = factories.UserFactory(username="cara", email="cara@example.co.uk")
    chooser.groups.add(viewers)
    AlertPreference.objects.create(user=chooser, kinds=[AlertKind.NEW_ERROR])
    opted_out = factories.UserFactory(username="otto", email="ops@example.co.uk")
    opted_out.groups.add(viewers)
    AlertPreference.objects.create(user=opted_out, kinds=[AlertKind.SILENCE])
    no_role = factories.UserFactory(username="nora", email="nora@example.co.uk")
    AlertPreference.objects.create(user=no_role, kinds=AlertKind.values)
    failed_event()
    alerts.run()
    assert sorted(m["To"] for m in smtp.messages) == [
        "cara@example.co.uk",
        "finance@example.co.uk",
    ]


@pytest.mark.django_db
def test_the_profile_page_saves_a_persons_choice(ops_client, ops_user):
    page = ops_client.get("/profile/")
    assert "Until you choose, you receive none." in page.content.decode()
    response = ops_client.post(
        "/profile/", {"email": "olivia@example.co.uk", "kinds": ["new_error", "silence"]}
    )
    assert response.status_code == 302
    ops_user.refresh_from_db()
    assert ops_user.email == "olivia@example.co.uk"
    assert ops_user.alert_preference.kinds == ["new_error", "silence"]
    refused = ops_client.post("/profile/", {"email": "", "kinds": ["silence"]})
    assert "Give an address" in refused.content.decode()


# --------------------------------------------------------------------------------------------
# Pages


@pytest.mark.django_db
def test_an_admin_sets_a_webhook_whose_url_is_stored_encrypted(admin_client_, listener):
    url = listener.url()
    response = admin_client_.post(
        "/alerts/webhooks/new/",
        {"name": "Finance channel", "url": url, "kinds": ["silence"], "is_active": "on"},
    )
    assert response.status_code == 302
    hook = AlertWebhook.objects.get()
    assert TOKEN not in hook.encrypted_url and hook.get_url() == url
    for page in ("/alerts/", f"/alerts/webhooks/{hook.pk}/"):
        body = admin_client_.get(page).content.decode()
        assert "Finance channel" in body and "127.0.0.1" in body and TOKEN not in body
    # Saving without a URL keeps the stored one.
    admin_client_.post(f"/alerts/webhooks/{hook.pk}/", {"name": "Chat", "kinds": ["silence"]})
    hook.refresh_from_db()
    assert (hook.name, hook.get_url(), hook.is_active) == ("Chat", url, False)


@pytest.mark.django_db
def test_only_an_admin_sets_webhooks(ops_client):
    assert ops_client.get("/alerts/webhooks/new/").status_code == 403
    response = ops_client.post(
        "/alerts/webhooks/new/", {"name": "x", "url": "https://x.test/", "kinds": ["silence"]}
    )
    assert response.status_code == 403
    assert not AlertWebhook.objects.exists()


@pytest.mark.django_db
def test_the_alerts_page_shows_who_what_when_and_whether_it_arrived(
    ops_client, smtp, knobs, django_assert_num_queries
):
    smtp.refuse.append("550 5.1.1 No such mailbox")
    knobs(ALERTS_TO=["gone@example.co.uk", "finance@example.co.uk"])
    failed_event()
    failed_event(flow=Flow.PAYMENTS, code="")
    alerts.run()
    with django_assert_num_queries(7):  # session, user, perms x2, alerts, deliveries, webhooks
        body = ops_client.get("/alerts/").content.decode()
    assert "New error in Customers: Invalid email address" in body
    assert "New error in Payments: an error that came without a code" in body
    assert body.count("Delivered") == 3 and body.count("Not delivered") == 1
    assert "550 5.1.1 No such mailbox" in body
    assert (
        "/errors/?flow=customers&amp;error_class=permanent&amp;code=INVALID_EMAIL_ADDRESS" in body
    )


@pytest.mark.django_db
def test_the_trial_mail_sink_is_shown_on_a_page(ops_client, settings, knobs, tmp_path):
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Mailbox

    from tests.mail_servers import free_port

    sink = Controller(Mailbox(tmp_path / "mail"), hostname="127.0.0.1", port=free_port())
    sink.start()
    try:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", sink.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        assert ops_client.get("/alerts/mail/").status_code == 404  # no sink configured
        knobs(MAIL_SINK_DIR=str(tmp_path / "mail"))
        failed_event()
        alerts.run()
    finally:
        sink.stop()
    body = ops_client.get("/alerts/mail/").content.decode()
    assert "kashforce: New error in Customers: Invalid email address" in body
    assert "To finance@example.co.uk" in body
    assert f"{BASE_URL}/errors/?flow=customers" in body
    assert "Mails sent in this trial" in ops_client.get("/alerts/").content.decode()


def test_send_alerts_runs_every_minute_on_the_schedule():
    from integration.schedules import wanted_schedules

    schedule = next(s for s in wanted_schedules() if s["func"] == "integration.tasks.send_alerts")
    assert (schedule["schedule_type"], schedule["minutes"]) == ("I", 1)


@pytest.mark.parametrize(
    ("url", "tls", "ssl"),
    [
        ("smtp://alerts:pw@mail.example.co.uk:587", True, False),
        ("smtp+ssl://alerts:pw@mail.example.co.uk:465", False, True),
        ("smtp://127.0.0.1:25", False, False),
    ],
)
def test_email_url_sets_djangos_mail_settings(tmp_path, url, tls, ssl):
    code = (
        "from django.conf import settings as s; "
        "print(s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_USE_TLS, s.EMAIL_USE_SSL, s.EMAIL_BACKEND)"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={**os.environ, "EMAIL_URL": url, "KASHFORCE_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    host, port, use_tls, use_ssl, backend = result.stdout.splitlines()[-1].split()
    assert (use_tls, use_ssl) == (str(tls), str(ssl))
    assert backend == "django.core.mail.backends.smtp.EmailBackend"
    assert host in url and port in url


@pytest.mark.django_db
def test_rotate_keys_reencrypts_the_webhook_urls(settings, listener):
    import io

    from cryptography.fernet import Fernet
    from django.core.management import call_command

    hook = AlertWebhook(name="Chat", kinds=[AlertKind.SILENCE])
    hook.set_url(listener.url())
    hook.save()
    old_key, new_key = settings.ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [new_key, old_key]
    call_command("rotate_keys", stdout=io.StringIO())
    settings.ENCRYPTION_KEYS = [new_key]
    hook.refresh_from_db()
    assert hook.get_url() == listener.url()


@pytest.fixture
def tls_smtp(settings, monkeypatch, tmp_path):
    """An SMTP server that insists on STARTTLS, with a certificate from a local CA."""
    import ssl

    import trustme
    from aiosmtpd.controller import Controller

    from tests.mail_servers import Inbox, free_port

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_context,
        require_starttls=True,
    )
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS, settings.EMAIL_USE_SSL = True, False
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    inbox.trust = lambda: monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    yield inbox
    controller.stop()


@pytest.mark.django_db
def test_mail_goes_over_starttls_to_a_server_whose_certificate_is_trusted(tls_smtp, knobs):
    tls_smtp.trust()
    failed_event()
    alerts.run()
    assert AlertDelivery.objects.get().status == "sent"
    assert len(tls_smtp.messages) == 1


@pytest.mark.django_db
def test_an_untrusted_mail_server_certificate_is_not_delivered_to(tls_smtp, knobs):
    failed_event()
    alerts.run()
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.error.startswith("The mail server's certificate is not trusted")
    assert tls_smtp.messages == []


def test_a_grace_time_for_an_unknown_flow_stops_the_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={
            **os.environ,
            "KASHFORCE_ALERT_GRACE_BY_FLOW": '{"invoice": 60}',
            "KASHFORCE_VAR_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "KASHFORCE_ALERT_GRACE_BY_FLOW names flows that do not exist: invoice" in result.stderr


@pytest.mark.django_db
def test_the_webhook_text_escapes_what_slack_reads_as_markup(listener, webhook, knobs):
    knobs(ALERTS_TO=[])
    alerts.raise_alert(
        AlertKind.RECONCILIATION,
        "reconciliation:x",
        title="Smith & Jones <Ltd>",
        message="3 differences",
        link="/errors/",
    )
    alerts.send_due()
    assert listener.delivered[0]["body"] == {
        "text": f"Smith &amp; Jones &lt;Ltd&gt;\n3 differences\n{BASE_URL}/errors/"
    }


@pytest.mark.django_db
def test_a_refused_connection_alerts_once_until_it_works_again(smtp, knobs):
    kashflow = factories.KashFlowConnectionFactory(name="Accounts")
    kashflow.refuse_sign_in("KashFlow refused the sign-in: the memorable word is wrong.")
    alerts.run()
    alerts.run()  # still refused: the same occurrence
    kashflow.clear_sign_in_refusal()  # an admin pressed Test, or changed the memorable word
    alerts.run()
    kashflow.refuse_sign_in("KashFlow refused the sign-in: the account is locked.")
    alerts.run()
    assert [subject(m) for m in smtp.messages] == [
        "kashforce: The KashFlow connection “Accounts” is refused"
    ] * 2
    assert "the account is locked" in smtp.messages[1].get_content()
    assert "/connections/" in smtp.messages[1].get_content()


@pytest.mark.django_db
def test_an_admin_sends_a_test_to_a_webhook(admin_client_, listener, webhook):
    response = admin_client_.post(f"/alerts/webhooks/{webhook.pk}/test/", follow=True)
    assert "A test alert was posted to “Finance channel”." in response.content.decode()
    assert listener.delivered[0]["body"]["text"].startswith("A test alert\nada asked kashforce")
    listener.answers = [404]
    response = admin_client_.post(f"/alerts/webhooks/{webhook.pk}/test/", follow=True)
    assert "The test did not arrive: 127.0.0.1 answered HTTP 404" in response.content.decode()
    assert not Alert.objects.exists() and not AlertDelivery.objects.exists()


@pytest.mark.django_db
def test_a_person_sends_themself_a_test_mail(ops_client, ops_user, smtp):
    response = ops_client.post("/profile/test/", follow=True)
    assert "Save your e-mail address first." in response.content.decode()
    ops_user.email = "olivia@example.co.uk"
    ops_user.save()
    response = ops_client.post("/profile/test/", follow=True)
    assert "A test alert was sent to olivia@example.co.uk." in response.content.decode()
    assert [m["To"] for m in smtp.messages] == ["olivia@example.co.uk"]
