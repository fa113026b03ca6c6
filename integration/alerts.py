"""Alerts: find what people should hear about, and send it by e-mail and webhook.

`run()` (the `send_alerts` command, every minute on the schedule) does two things, after the
shape of healthchecks' sendalerts:

1. **Find.** Each finder looks at the ledger and the connections and records an `Alert` per
   occurrence: a new cause of errors (then a digest of further ones), errors left unresolved too
   long, a flow gone quiet past its grace time or a backlog that syncs nothing, a connection whose
   sign-in is refused, Salesforce API use over its share. Reconciliation differences arrive from
   the reconciliation itself (`report_reconciliation`). An alert's `key` names its occurrence,
   so finding it twice makes one row; finders run one at a time (`_one_finder`), so "is one
   already open?" has one answer. Each new alert gets its deliveries at once: one per e-mail
   recipient and webhook that wants its kind.
2. **Send.** Each due delivery is claimed with a conditional UPDATE, so two workers send it
   once; a temporary SMTP or HTTP failure waits and is tried again, a permanent one is recorded
   as not delivered. Every attempt's outcome is on the Alerts page.

Messages say what happened in plain words and link to the page that explains it. They never
carry a secret or a record's payload: counts, flow names, error codes and times only.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta
from urllib.parse import urlencode, urlsplit

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import Max, Min, Q
from django.urls import reverse
from django.utils import timezone

from integration import secrets
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

log = logging.getLogger(__name__)

# Any number, the same in every process: PostgreSQL's advisory lock that lets one finder work.
FINDER_LOCK = 4_216_001
SEND_BATCH = 200
WEBHOOK_TIMEOUT = (5.0, 15.0)


def run(now: datetime | None = None) -> dict:
    """Find what is due now and send it (the `send_alerts` command and its schedule)."""
    found = find(now)
    return {"found": found, **send_due(now)}


# --------------------------------------------------------------------------------------------
# Finding


@contextmanager
def _one_finder():
    """One finder at a time across every worker and host. SQLite: kashforce opens every
    transaction IMMEDIATE (settings), which takes the write lock, so a second finder waits.
    PostgreSQL: a transaction-scoped advisory lock does the same."""
    with transaction.atomic():
        if db_connection.vendor == "postgresql":
            with db_connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [FINDER_LOCK])
        yield


def find(now: datetime | None = None) -> int:
    """Record every alert that is due; returns how many are new."""
    now = now or timezone.now()
    with _one_finder():
        return sum(finder(now) for finder in FINDERS)


def raise_alert(
    kind: str,
    key: str,
    *,
    title: str,
    message: str,
    link: str,
    subject: str = "",
    covers_until: datetime | None = None,
    now: datetime | None = None,
) -> Alert | None:
    """Record one occurrence and who is to receive it (together, or a crash between the two
    would leave an alert nobody is sent); None when it was recorded before."""
    with transaction.atomic():
        return _record_alert(kind, key, title, message, link, subject, covers_until, now)


def _record_alert(kind, key, title, message, link, subject, covers_until, now) -> Alert | None:
    alert, created = Alert.objects.get_or_create(
        key=key[:255],
        defaults={
            "kind": kind,
            "subject": subject[:255],
            "title": title[:200],
            "message": message,
            "link": link,
            "covers_until": covers_until,
            "created_at": now or timezone.now(),
        },
    )
    if not created:
        return None
    _add_deliveries(alert)
    log.info("alert kind=%s key=%s deliveries=%d", kind, alert.key, alert.deliveries.count())
    return alert


def _keep_open(kind: str, current: dict[str, dict], now: datetime) -> int:
    """Alerts for conditions that last (a cause of errors, a refused sign-in, a quiet flow):
    `current` holds, by subject, the fields of each condition true now. A subject with no open
    alert gets one; an open alert whose condition has ended closes, so the next time is a new
    occurrence. Returns how many alerts are new."""
    open_alerts = Alert.objects.still_open().filter(kind=kind)
    open_alerts.exclude(subject__in=list(current)).update(closed_at=now)
    already = set(open_alerts.filter(subject__in=list(current)).values_list("subject", flat=True))
    new = 0
    for subject, fields in current.items():
        if subject not in already:
            occurrence = fields.pop("occurrence")
            key = f"{kind}:{subject}:{occurrence}"
            new += raise_alert(kind, key, subject=subject, now=now, **fields) is not None
    return new


def _path(name: str, **query) -> str:
    path = reverse(name)
    return f"{path}?{urlencode(query)}" if query else path


def _when(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%d %b %Y %H:%M")


def _records(count: int) -> str:
    return f"{count} record{'s' if count != 1 else ''}"


# Errors ----------------------------------------------------------------------------------------


def _cause(group: dict) -> str:
    return f"{group['flow']}:{group['error_class'] or '-'}:{group['error_code'] or '-'}"


def _cause_words(error_code: str) -> str:
    """A cause by its code only: an error's message can quote a record's values."""
    if error_code:
        return SyncEvent.cause_label(error_code)
    return "an error that came without a code"


def _errors_link(flow: str, error_class: str, error_code: str) -> str:
    from integration.forms import NO_CODE

    return _path("dashboard:errors", flow=flow, error_class=error_class, code=error_code or NO_CODE)


def find_new_errors(now: datetime) -> int:
    """A cause (flow, code, class) that reaches the error queue while no alert of it is open
    is new: one alert at once. It stays open until none of its errors is left unresolved."""
    groups = SyncEvent.objects.unresolved().error_groups().annotate(first=Min("pk"))
    current = {}
    for group in groups:
        flow_label = Flow(group["flow"]).label
        words = _cause_words(group["error_code"])
        current[_cause(group)] = {
            "occurrence": group["first"],
            "title": f"New error in {flow_label}: {words}",
            "message": (
                f"{_records(group['count'])} of the {flow_label} sync failed for a reason not "
                f"reported before ({words}): {'it waits' if group['count'] == 1 else 'they wait'} "
                "for a person in the error queue. Further errors of this kind come in a digest."
            ),
            "link": _errors_link(group["flow"], group["error_class"], group["error_code"]),
        }
    return _keep_open(AlertKind.NEW_ERROR, current, now)


def find_error_digest(now: datetime) -> int:
    """Every ALERT_DIGEST_MINUTES, one alert counting the errors of causes already reported
    that failed since (by the time they failed, `updated_at`). The window ends on a boundary
    of the period, so two workers name the same digest."""
    period = timedelta(minutes=settings.KASHFORCE["ALERT_DIGEST_MINUTES"])
    end = _floor(now, period)
    last = Alert.objects.filter(kind=AlertKind.ERROR_DIGEST).aggregate(end=Max("covers_until"))
    start = last["end"] or end - period
    if start >= end:
        return 0
    counts = Counter()
    for alert in Alert.objects.still_open().filter(kind=AlertKind.NEW_ERROR):
        flow, error_class, error_code = alert.subject.split(":", 2)
        failed = SyncEvent.objects.unresolved().filter(
            flow=flow,
            error_class="" if error_class == "-" else error_class,
            error_code="" if error_code == "-" else error_code,
            updated_at__gte=max(start, alert.created_at),
            updated_at__lt=end,
        )
        if count := failed.count():
            counts[(flow, error_code)] += count
    if not counts:
        return 0
    total = sum(counts.values())
    lines = [
        f"- {_records(count)}: {_cause_words('' if code == '-' else code)} ({Flow(flow).label})"
        for (flow, code), count in counts.most_common(10)
    ]
    message = (
        f"Between {_when(start)} and {_when(end)}, {_records(total)} more failed for reasons "
        "already reported:\n" + "\n".join(lines)
    )
    key = f"{AlertKind.ERROR_DIGEST}:{end.isoformat()}"
    title = f"{_records(total)} more failed for reasons already reported"
    return bool(
        raise_alert(
            AlertKind.ERROR_DIGEST,
            key,
            title=title,
            message=message,
            link=_path("dashboard:errors"),
            covers_until=end,
            now=now,
        )
    )


def _floor(moment: datetime, period: timedelta) -> datetime:
    epoch = datetime(2000, 1, 1, tzinfo=moment.tzinfo)
    return epoch + ((moment - epoch) // period) * period


def find_old_errors(now: datetime) -> int:
    """Errors still unresolved ALERT_OLD_ERROR_HOURS after they failed: one alert for those
    that crossed the line since the last such alert."""
    hours = settings.KASHFORCE["ALERT_OLD_ERROR_HOURS"]
    line = now - timedelta(hours=hours)
    last = Alert.objects.filter(kind=AlertKind.OLD_ERRORS).aggregate(end=Max("covers_until"))
    old = SyncEvent.objects.unresolved().filter(updated_at__lte=line)
    if last["end"]:
        old = old.filter(updated_at__gt=last["end"])
    count = old.count()
    if not count:
        return 0
    oldest = old.aggregate(oldest=Min("updated_at"))["oldest"]
    message = (
        f"{_records(count)} in the error queue {'have' if count != 1 else 'has'} waited more "
        f"than {hours} hours for a person (the oldest since {_when(oldest)}). Until someone "
        "fixes, retries or ignores them, Salesforce and KashFlow disagree about these records."
    )
    return bool(
        raise_alert(
            AlertKind.OLD_ERRORS,
            f"{AlertKind.OLD_ERRORS}:{line.isoformat()}",
            title=f"{_records(count)} unresolved for more than {hours} hours",
            message=message,
            link=_path("dashboard:errors"),
            covers_until=line,
            now=now,
        )
    )


# Silence ---------------------------------------------------------------------------------------

# A run that ended as planned is a sign of life; so is one waiting for the API budget (the
# budget alert says why). A failed run is not: a flow whose every run fails has gone quiet.
ALIVE = [SyncRun.Status.SUCCEEDED, SyncRun.Status.PARTIAL, SyncRun.Status.WAITING]
WAITING = [SyncEvent.Status.PENDING, SyncEvent.Status.RUNNING, SyncEvent.Status.FAILED_TRANSIENT]


def grace_for(flow: str) -> timedelta:
    by_flow = settings.KASHFORCE["ALERT_GRACE_BY_FLOW"]
    return timedelta(minutes=by_flow.get(flow, settings.KASHFORCE["ALERT_GRACE_MINUTES"]))


def last_sign_of_life(flow: str) -> datetime | None:
    """When the flow last ran: its newest run that finished as planned, or the heartbeat of
    one still running (a long first load is not silence)."""
    runs = SyncRun.objects.for_flow(flow).filter(dry_run=False)
    finished = runs.filter(status__in=ALIVE).aggregate(at=Max("finished_at"))["at"]
    running = runs.filter(status=SyncRun.Status.RUNNING).aggregate(at=Max("heartbeat_at"))["at"]
    return max((at for at in (finished, running) if at), default=None)


def find_silence(now: datetime) -> int:
    """healthchecks' "down on silence", per flow: a flow is scheduled every
    SYNC_INTERVAL_MINUTES; past that and its grace time with no sign of life, it is down. And a
    flow that runs but syncs nothing: changes (deals closed, for invoices) waiting longer than
    the grace time, and no record of the flow synced since the oldest of them arrived."""
    connections = list(Connection.objects.filter(is_active=True))
    if {c.kind for c in connections} != set(Connection.Kind.values):
        return 0  # nothing can run before both connections exist; that is not silence
    set_up_at = max(c.created_at for c in connections)
    interval = timedelta(minutes=settings.KASHFORCE["SYNC_INTERVAL_MINUTES"])
    current = {}
    for flow in Flow:
        grace = grace_for(flow)
        since = last_sign_of_life(flow) or set_up_at
        if now > since + interval + grace:
            current[flow.value] = _silence_alert(flow, since, interval, grace, now)
        if stuck := _stuck(flow, grace, now):
            current[f"{flow.value}:waiting"] = stuck
    return _keep_open(AlertKind.SILENCE, current, now)


def _silence_alert(flow: Flow, since, interval, grace, now) -> dict:
    minutes = int((now - since).total_seconds() // 60)
    every = int(interval.total_seconds() // 60)
    return {
        "occurrence": since.isoformat(),
        "title": f"{flow.label} has not run for {minutes} minutes",
        "message": (
            f"The {flow.label} sync should run every {every} minute{'s' if every != 1 else ''}, "
            f"but it has not finished a run since {_when(since)} ({minutes} minutes, past its "
            f"{int(grace.total_seconds() // 60)}-minute grace time). The job queue may have "
            "stopped, or every run is failing: the runs page says which."
        ),
        "link": _path("dashboard:runs", flow=flow.value),
    }


def _stuck(flow: Flow, grace: timedelta, now: datetime) -> dict | None:
    oldest = (
        SyncEvent.objects.filter(flow=flow, status__in=WAITING)
        .order_by("created_at", "pk")
        .values("pk", "created_at")
        .first()
    )
    if oldest is None or oldest["created_at"] > now - grace:
        return None
    synced_since = SyncEvent.objects.filter(
        flow=flow, status=SyncEvent.Status.SUCCEEDED, finished_at__gte=oldest["created_at"]
    )
    if synced_since.exists():
        return None
    waiting = SyncEvent.objects.filter(flow=flow, status__in=WAITING).count()
    minutes = int((now - oldest["created_at"]).total_seconds() // 60)
    what = (
        "deals have closed in Salesforce but no invoice has been made in KashFlow"
        if flow == Flow.INVOICES
        else f"changes have arrived but no {flow.label} record has synced"
    )
    return {
        "occurrence": oldest["pk"],
        "title": f"{flow.label}: nothing synced for {minutes} minutes while work waits",
        "message": (
            f"For {minutes} minutes {what}: {_records(waiting)} wait, the oldest since "
            f"{_when(oldest['created_at'])}. The sync runs, but nothing gets through."
        ),
        "link": _path("dashboard:runs", flow=flow.value),
    }


# Connections -----------------------------------------------------------------------------------


def sign_in_refused_since(connection: Connection) -> datetime | None:
    """Since when Salesforce or KashFlow refuses the connection's sign-in (a wrong password, a
    revoked app, a locked user), or None. A refusal pauses every run of the connection until
    an admin changes its credentials or presses Test (Connection.refuse_sign_in)."""
    return connection.sign_in_refused_at


def find_refused_sign_ins(now: datetime) -> int:
    current = {}
    for connection in Connection.objects.filter(is_active=True):
        since = sign_in_refused_since(connection)
        if since is None:
            continue
        current[str(connection.pk)] = {
            "occurrence": since.isoformat(),
            "title": f"The {connection.get_kind_display()} connection “{connection.name}” is refused",
            "message": (
                f"{connection.get_kind_display()} refused kashforce with the connection "
                f"“{connection.name}” ({_when(since)}): {connection.sign_in_refused_message} "
                "Its syncs are paused until an Integration admin updates its credentials or "
                "presses Test."
            ),
            "link": _path("dashboard:connections"),
        }
    return _keep_open(AlertKind.SIGN_IN_REFUSED, current, now)


def find_api_budget(now: datetime) -> int:
    """Salesforce API use (from the Sforce-Limit-Info header the clients store) at or over the
    KASHFORCE_API_BUDGET_SHARE kept for urgent work: scheduled syncs wait from there."""
    share = settings.KASHFORCE["API_BUDGET_SHARE"]
    current = {}
    for connection in Connection.objects.filter(kind=Connection.Kind.SALESFORCE, is_active=True):
        if not connection.over_api_budget():
            continue
        at = connection.api_usage_at or now
        current[str(connection.pk)] = {
            "occurrence": timezone.localdate(at).isoformat(),
            "title": f"Salesforce API use is at {connection.api_usage_share:.0%} of the daily limit",
            "message": (
                f"The Salesforce org of “{connection.name}” has used {connection.api_usage_used:,} "
                f"of its {connection.api_usage_limit:,} API calls for the last 24 hours "
                f"({_when(at)}), over the {share:.0%} kashforce may use. Scheduled syncs wait "
                "until the use falls; manual syncs and pushes still run."
            ),
            "link": _path("dashboard:connections"),
        }
    return _keep_open(AlertKind.API_BUDGET, current, now)


# Reconciliation --------------------------------------------------------------------------------


def report_reconciliation(
    reference: str, differences: int, link: str, checked_at: datetime | None = None
) -> Alert | None:
    """Called by a reconciliation when it has compared the two sides: one alert per
    reconciliation (`reference` names it, e.g. its row's pk) that found differences; `link` is
    the path of the page that lists them. Sent on the next `send_alerts`."""
    if differences <= 0:
        return None
    checked_at = checked_at or timezone.now()
    return raise_alert(
        AlertKind.RECONCILIATION,
        f"{AlertKind.RECONCILIATION}:{reference}",
        title=f"Reconciliation found {differences} difference{'s' if differences != 1 else ''}",
        message=(
            f"The reconciliation of {_when(checked_at)} found {differences} place"
            f"{'s' if differences != 1 else ''} where KashFlow and Salesforce disagree. Each "
            "needs a finance user's decision."
        ),
        link=link,
        now=checked_at,
    )


FINDERS = [
    find_new_errors,
    find_error_digest,
    find_old_errors,
    find_silence,
    find_refused_sign_ins,
    find_api_budget,
]


# --------------------------------------------------------------------------------------------
# Who receives what


def email_recipients(kind: str) -> list[tuple[str, object]]:
    """(address, user or None) for an alert kind: people who chose it on their profile page,
    and the addresses in KASHFORCE_ALERTS_TO, except a person's who has made their own choice.
    Only people who may see the dashboard receive alerts about it."""
    User = get_user_model()
    viewers = (
        User.objects.filter(is_active=True)
        .exclude(email="")
        .filter(
            Q(is_superuser=True)
            | Q(groups__permissions__codename="view_syncevent")
            | Q(user_permissions__codename="view_syncevent")
        )
        .distinct()
    )
    chosen = {p.user_id: p.kinds for p in AlertPreference.objects.all()}
    recipients, decided = {}, set()
    for user in viewers:
        address = user.email.strip()
        if user.pk in chosen:
            decided.add(address.lower())
            if kind in chosen[user.pk]:
                recipients.setdefault(address.lower(), (address, user))
    for address in settings.KASHFORCE["ALERTS_TO"]:
        if address.strip() and address.strip().lower() not in decided:
            recipients.setdefault(address.strip().lower(), (address.strip(), None))
    return list(recipients.values())


def _add_deliveries(alert: Alert) -> None:
    rows = [
        AlertDelivery(
            alert=alert, channel=AlertDelivery.Channel.EMAIL, recipient=address, user=user
        )
        for address, user in email_recipients(alert.kind)
    ]
    rows += [
        AlertDelivery(
            alert=alert,
            channel=AlertDelivery.Channel.WEBHOOK,
            recipient=webhook.name,
            webhook=webhook,
        )
        for webhook in AlertWebhook.objects.filter(is_active=True)
        if alert.kind in webhook.kinds
    ]
    AlertDelivery.objects.bulk_create(rows, ignore_conflicts=True)


# --------------------------------------------------------------------------------------------
# Sending


class TransportError(Exception):
    """A delivery that did not arrive. `permanent`: trying again will not help (an address the
    server refuses, a webhook that no longer exists). `unreachable`: the server could not be
    reached, so the rest of this pass's deliveries on the channel wait for the next one."""

    def __init__(self, message: str, *, permanent: bool, unreachable: bool = False):
        super().__init__(message)
        self.message = secrets.redact(message)
        self.permanent = permanent
        self.unreachable = unreachable


def send_due(now: datetime | None = None) -> dict:
    """Send every due delivery this pass has time for; returns counts by outcome."""
    now = now or timezone.now()
    _release_stale(now)
    deadline = time.monotonic() + settings.KASHFORCE["TASK_SLICE_SECONDS"]
    counts = Counter()
    unreachable = set()
    due = AlertDelivery.objects.due(now).select_related("alert", "webhook").order_by("pk")
    for delivery in due[:SEND_BATCH]:
        if delivery.channel in unreachable or time.monotonic() > deadline:
            counts["later"] += 1
            continue
        if not delivery.claim(now):
            continue  # another worker has it
        try:
            deliver(delivery)
        except TransportError as exc:
            delivery.mark_failed(exc.message, permanent=exc.permanent)
            counts[delivery.status] += 1
            if exc.unreachable:
                unreachable.add(delivery.channel)
            log.warning(
                "alert delivery=%s channel=%s failed permanent=%s: %s",
                delivery.pk,
                delivery.channel,
                exc.permanent,
                exc.message,
            )
        else:
            delivery.mark_sent()
            counts["sent"] += 1
    return dict(counts)


def _release_stale(now: datetime) -> None:
    """A delivery claimed by a worker that died mid-send goes back in line. It may have
    arrived before the worker died: better twice than never."""
    older_than = timedelta(seconds=settings.KASHFORCE["STALE_AFTER_SECONDS"])
    AlertDelivery.objects.filter(
        status=AlertDelivery.Status.SENDING, claimed_at__lt=now - older_than
    ).update(
        status=AlertDelivery.Status.RETRYING,
        claimed_at=None,
        next_attempt_at=now,
        error="The worker sending it stopped before it knew whether it arrived.",
    )


def email_body(alert: Alert) -> str:
    profile = settings.KASHFORCE["BASE_URL"] + reverse("dashboard:alert_profile")
    return (
        f"{alert.message}\n\n"
        f"What this means and what to do: {alert.url}\n\n"
        f"-- \nkashforce, {_when(alert.created_at)}. "
        f"Choose which alerts you receive: {profile}\n"
    )


def deliver(delivery: AlertDelivery) -> None:
    """Send one delivery; raises TransportError when it did not arrive."""
    if delivery.channel == AlertDelivery.Channel.WEBHOOK:
        send_webhook(delivery.alert, delivery.webhook)
    else:
        send_email(delivery.alert, delivery.recipient)


def send_email(alert: Alert, address: str) -> None:
    message = EmailMessage(
        subject=f"kashforce: {alert.title}",
        body=email_body(alert),
        to=[address],
        headers={"Auto-Submitted": "auto-generated", "X-Kashforce-Alert": alert.kind},
    )
    try:
        message.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = next(iter(exc.recipients.values()), (0, b""))
        raise _smtp_refusal(code, reply, "refused the address") from None
    except smtplib.SMTPResponseException as exc:  # sender refused, data refused, sign-in
        raise _smtp_refusal(exc.smtp_code, exc.smtp_error, "refused the mail") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise TransportError(
            f"The mail server cannot do what EMAIL_URL asks: {exc}", permanent=True
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise TransportError(
            f"The mail server's certificate is not trusted: {exc.verify_message}.", permanent=True
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise TransportError(
            f"Could not reach the mail server ({type(exc).__name__}: {exc}).",
            permanent=False,
            unreachable=not isinstance(exc, smtplib.SMTPServerDisconnected),
        ) from None


def _smtp_refusal(code: int, reply, what: str) -> TransportError:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    # 4xx: "try again later" (greylisting, a full queue); 5xx: it will not be accepted.
    permanent = code >= 500
    later = " for now" if not permanent else ""
    return TransportError(
        f"The mail server {what}{later}: {code} {text[:200]}", permanent=permanent
    )


def webhook_body(alert: Alert) -> dict:
    """Slack's incoming-webhook body, which Mattermost, Rocket.Chat and other Slack-compatible
    receivers also read. Slack reads <, > and & as markup, so those three are escaped
    (https://api.slack.com/reference/surfaces/formatting#escaping)."""
    text = f"{alert.title}\n{alert.message}\n{alert.url}"
    return {"text": text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}


def send_webhook(alert: Alert, webhook: AlertWebhook | None) -> None:
    if webhook is None or not webhook.is_active:
        raise TransportError("The webhook was removed or turned off.", permanent=True)
    url = webhook.get_url()
    host = urlsplit(url).hostname or "the webhook"
    try:
        response = requests.post(
            url, json=webhook_body(alert), timeout=WEBHOOK_TIMEOUT, allow_redirects=False
        )
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema):
        raise TransportError("The webhook's address is not a valid URL.", permanent=True) from None
    except requests.exceptions.SSLError:
        raise TransportError(f"{host}'s certificate is not trusted.", permanent=True) from None
    except requests.RequestException as exc:
        # Never the exception's text: it quotes the URL, token and all.
        raise TransportError(
            f"Could not reach {host} ({type(exc).__name__}).", permanent=False, unreachable=True
        ) from None
    if 200 <= response.status_code < 300:
        return
    transient = response.status_code in (408, 425, 429) or response.status_code >= 500
    raise TransportError(
        f"{host} answered HTTP {response.status_code}"
        + (" (will retry)." if transient else ": check the webhook's address."),
        permanent=not transient,
    )


def sample_alert(user) -> Alert:
    """What a "Send a test" button sends (never recorded: it is not an occurrence)."""
    return Alert(
        kind="test",
        title="A test alert",
        message=(
            f"{user.get_username()} asked kashforce to send this test. Alerts look like this: "
            "what happened in plain words, and a link to the page that explains it."
        ),
        link=reverse("dashboard:alerts"),
        created_at=timezone.now(),
    )
