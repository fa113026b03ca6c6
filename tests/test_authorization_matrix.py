"""Who may do what, over every URL the resolver knows: one table, five kinds of visitor.

Every URL pattern is enumerated from the resolver, so a new view without a row in the table
fails `test_every_url_has_a_row`. Each is requested with GET and with POST (with a valid CSRF
token and without one, on a client that enforces CSRF), and the database must be exactly as it
was after every GET.
"""

from dataclasses import dataclass, field

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from integration.models import AlertWebhook, Amendment, FinanceHold, SyncEvent
from tests import factories

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "no_role", "operations", "integration_admin", "superuser")

# Outcomes: the status, or where a redirect goes.
OK, FORBIDDEN, NOT_ALLOWED, NOT_FOUND = 200, 403, 405, 404
LOGIN = "login"  # a redirect to the sign-in page
AWAY = "redirect"  # a redirect elsewhere: the action was done (or a signed-in user left /login/)


def row(*outcomes):
    assert len(outcomes) == len(ROLES)
    return dict(zip(ROLES, outcomes, strict=True))


def everyone(outcome):
    return row(*[outcome] * len(ROLES))


# Pages every role but "no role" may read; pages only Integration admins may read or use.
READ = row(LOGIN, FORBIDDEN, OK, OK, OK)
ADMIN_PAGE = row(LOGIN, FORBIDDEN, FORBIDDEN, OK, OK)
POST_ONLY = row(LOGIN, NOT_ALLOWED, NOT_ALLOWED, NOT_ALLOWED, NOT_ALLOWED)
OPERATE = row(LOGIN, FORBIDDEN, AWAY, AWAY, AWAY)
ADMINISTER = row(LOGIN, FORBIDDEN, FORBIDDEN, AWAY, AWAY)
# Finance's decisions: only the Finance group (not a role in this table) and a superuser.
FINANCE = row(LOGIN, FORBIDDEN, FORBIDDEN, FORBIDDEN, AWAY)


@dataclass
class Url:
    get: dict
    post: dict
    kwargs: str = ""  # which sample object's pk the URL takes
    data: dict = field(default_factory=dict)  # what the POST sends (valid, so it acts)


TABLE = {
    "login": Url(get=row(OK, AWAY, AWAY, AWAY, AWAY), post=row(OK, AWAY, AWAY, AWAY, AWAY)),
    "favicon": Url(get=everyone(AWAY), post=everyone(NOT_ALLOWED)),
    # Without a sandbox running it only says so, and goes back to the overview.
    "dashboard:demo_close_deal": Url(get=POST_ONLY, post=OPERATE),
    # Signing out is POST only; it lands on the sign-in page.
    "logout": Url(get=POST_ONLY, post=everyone(LOGIN)),
    "dashboard:health": Url(get=everyone(OK), post=everyone(NOT_ALLOWED)),
    "dashboard:overview": Url(get=READ, post=READ),
    "dashboard:runs": Url(get=READ, post=READ),
    "dashboard:runs_csv": Url(get=READ, post=READ),
    "dashboard:run": Url(get=READ, post=READ, kwargs="run"),
    "dashboard:run_progress": Url(get=READ, post=READ, kwargs="run"),
    "dashboard:errors": Url(get=READ, post=READ),
    "dashboard:errors_csv": Url(get=READ, post=READ),
    "dashboard:timeline": Url(get=READ, post=READ),
    "dashboard:connections": Url(get=READ, post=READ),
    "dashboard:sync_now": Url(get=POST_ONLY, post=OPERATE, data={"flow": "customers"}),
    "dashboard:retry_selected": Url(get=POST_ONLY, post=OPERATE, data={"ids": "EVENT"}),
    "dashboard:retry_group": Url(
        get=POST_ONLY, post=OPERATE, data={"flow": "customers", "code": "INVALID_EMAIL_ADDRESS"}
    ),
    "dashboard:retry_event": Url(get=POST_ONLY, post=OPERATE, kwargs="event"),
    "dashboard:ignore_event": Url(
        get=POST_ONLY, post=OPERATE, kwargs="event", data={"reason": "Known test record"}
    ),
    "dashboard:connection_test": Url(get=POST_ONLY, post=OPERATE, kwargs="connection"),
    "dashboard:connection_new": Url(get=ADMIN_PAGE, post=ADMIN_PAGE),
    "dashboard:connection_edit": Url(get=ADMIN_PAGE, post=ADMIN_PAGE, kwargs="connection"),
    "dashboard:mappings": Url(get=ADMIN_PAGE, post=ADMIN_PAGE),
    "dashboard:mapping": Url(get=ADMIN_PAGE, post=ADMIN_PAGE, kwargs="mapping"),
    "dashboard:mapping_preview": Url(
        get=POST_ONLY, post=row(LOGIN, FORBIDDEN, FORBIDDEN, OK, OK), kwargs="mapping"
    ),
    "dashboard:mapping_history": Url(get=ADMIN_PAGE, post=ADMIN_PAGE, kwargs="mapping"),
    "dashboard:mapping_rollback": Url(get=POST_ONLY, post=ADMINISTER, kwargs="mapping"),
    "dashboard:audit": Url(get=ADMIN_PAGE, post=ADMIN_PAGE),
    "dashboard:alerts": Url(get=READ, post=READ),
    # The local trial's mail sink: none is set up here.
    "dashboard:alert_outbox": Url(
        get=row(LOGIN, FORBIDDEN, NOT_FOUND, NOT_FOUND, NOT_FOUND),
        post=row(LOGIN, FORBIDDEN, NOT_FOUND, NOT_FOUND, NOT_FOUND),
    ),
    "dashboard:alert_webhook_new": Url(
        get=ADMIN_PAGE,
        post=ADMINISTER,
        data={"name": "Chat", "url": "https://hooks.example.com/T/B/x", "kinds": "silence"},
    ),
    "dashboard:alert_webhook_edit": Url(
        get=ADMIN_PAGE,
        post=ADMINISTER,
        kwargs="webhook",
        data={"name": "Chat room", "kinds": "silence"},
    ),
    "dashboard:alert_webhook_test": Url(get=POST_ONLY, post=ADMINISTER, kwargs="webhook"),
    "dashboard:alert_profile_test": Url(get=POST_ONLY, post=OPERATE),
    # Each person's own choice of alerts.
    "dashboard:alert_profile": Url(
        get=READ, post=OPERATE, data={"email": "me@example.co.uk", "kinds": "silence"}
    ),
    # Anyone signed in may turn on two-step sign-in for themselves; a POST without an action
    # only shows the page.
    "dashboard:two_factor": Url(get=row(LOGIN, OK, OK, OK, OK), post=row(LOGIN, OK, OK, OK, OK)),
    "dashboard:vat_rules": Url(get=ADMIN_PAGE, post=ADMINISTER, data={"countries": "NO 25"}),
    "dashboard:amendments": Url(get=READ, post=READ),
    "dashboard:reconciliation": Url(get=READ, post=READ),
    "dashboard:holds": Url(get=READ, post=READ),
    "dashboard:approve_hold": Url(get=POST_ONLY, post=FINANCE, kwargs="hold"),
    "dashboard:finance_settings": Url(
        get=POST_ONLY, post=ADMINISTER, data={"hold_above": "5000.00", "vat_closed_until": ""}
    ),
    "dashboard:reconciliation_csv": Url(
        get=row(LOGIN, FORBIDDEN, NOT_FOUND, NOT_FOUND, NOT_FOUND),
        post=row(LOGIN, FORBIDDEN, NOT_FOUND, NOT_FOUND, NOT_FOUND),
    ),
    "dashboard:reconcile_now": Url(get=POST_ONLY, post=OPERATE),
    "dashboard:decide_amendment": Url(
        get=POST_ONLY,
        post=FINANCE,
        kwargs="amendment",
        data={"action": "accept", "reason": "Agreed with the customer"},
    ),
    # Its own authentication (the secret path, then the org id): a wrong secret is a 404 for
    # everyone, signed in or not, and CSRF does not apply (Salesforce cannot send a token).
    "dashboard:salesforce_outbound": Url(get=everyone(NOT_ALLOWED), post=everyone(NOT_FOUND)),
}

# The console is Django's admin, guarded by its own staff check and model permissions; its
# URLs are checked separately below.
CONSOLE = "admin:"


def named_patterns(resolver=None, prefix=""):
    """(name with namespace, pattern) for every URL the project serves."""
    resolver = resolver or get_resolver()
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            namespace = f"{prefix}{pattern.namespace}:" if pattern.namespace else prefix
            yield from named_patterns(pattern, namespace)
        else:
            assert isinstance(pattern, URLPattern)
            yield f"{prefix}{pattern.name}", pattern


def test_every_url_has_a_row():
    served = {name for name, _ in named_patterns() if not name.startswith(CONSOLE)}
    assert served == set(TABLE), "Add the new URL to TABLE with who may GET and POST it."


# ------------------------------------------------------------------------------------------


@pytest.fixture
def samples():
    """One object of each kind the URLs take. The KashFlow connection lacks its memorable
    word, so a connection test answers at once without reaching the network."""
    connection = factories.KashFlowConnectionFactory(secrets={"password": "Tr0ub4dor&3"})
    mapping_set = factories.MappingSetFactory()
    factories.FieldMappingFactory(mapping_set=mapping_set)
    event = factories.SyncEventFactory(
        status=SyncEvent.Status.FAILED_PERMANENT,
        error_class="permanent",
        error_code="INVALID_EMAIL_ADDRESS",
        message="Email: invalid email address",
    )
    webhook = AlertWebhook(name="Finance channel", kinds=["silence"])
    webhook.set_url("https://hooks.example.com/T/B/token")
    webhook.save()
    amendment = Amendment.objects.create(
        opportunity_id="006000000000001AAA", invoice_number="1042", changes=["amount"]
    )
    return {
        "run": event.run,
        "event": event,
        "connection": connection,
        "mapping": mapping_set,
        "webhook": webhook,
        "amendment": amendment,
        "hold": FinanceHold.objects.create(opportunity_id="006000000000002AAA", amount=9000),
    }


def visitor(role: str) -> Client:
    client = Client(enforce_csrf_checks=True)
    if role == "anonymous":
        return client
    user = factories.UserFactory(
        username=f"{role}-user",
        is_staff=role == "superuser",
        is_superuser=role == "superuser",
    )
    group = {"operations": "Operations", "integration_admin": "Integration admin"}.get(role)
    if group:
        user.groups.add(Group.objects.get(name=group))
    client.force_login(user)
    return client


def url_for(name: str, samples: dict) -> str:
    spec = TABLE[name]
    if name == "dashboard:salesforce_outbound":
        return reverse(name, kwargs={"secret": "not-the-secret"})
    return reverse(name, kwargs={"pk": samples[spec.kwargs].pk} if spec.kwargs else None)


def outcome(response):
    if response.status_code == 302:
        return LOGIN if response["Location"].startswith(reverse("login")) else AWAY
    return response.status_code


def database_state() -> dict:
    """Every row of every table, to prove a request changed nothing."""
    return {
        model._meta.label: sorted(map(repr, model._base_manager.values_list()))
        for model in apps.get_models()
    }


def with_token(client: Client) -> str:
    token = _get_new_csrf_string()
    client.cookies[settings.CSRF_COOKIE_NAME] = token
    return token


@pytest.mark.parametrize("role", ROLES)
def test_get_every_url_as(role, samples):
    client = visitor(role)
    before = database_state()
    found = {name: outcome(client.get(url_for(name, samples))) for name in TABLE}
    assert found == {name: spec.get[role] for name, spec in TABLE.items()}
    assert database_state() == before, "a GET changed the database"


@pytest.mark.parametrize("role", ROLES)
def test_post_to_every_url_with_a_csrf_token_as(role, samples):
    found = {}
    for name, spec in TABLE.items():
        client = visitor(role)  # a fresh session each time: logout ends it
        data = {k: samples["event"].pk if v == "EVENT" else v for k, v in spec.data.items()}
        data["csrfmiddlewaretoken"] = with_token(client)
        found[name] = outcome(client.post(url_for(name, samples), data))
    assert found == {name: spec.post[role] for name, spec in TABLE.items()}


@pytest.mark.parametrize("role", ROLES)
def test_post_without_a_csrf_token_is_refused_everywhere_but_the_webhook(role, samples):
    client = visitor(role)
    before = database_state()
    for name, spec in TABLE.items():
        data = {k: samples["event"].pk if v == "EVENT" else v for k, v in spec.data.items()}
        response = client.post(url_for(name, samples), data)
        if name == "dashboard:salesforce_outbound":
            assert response.status_code == NOT_FOUND  # its own authentication, no CSRF
        else:
            assert response.status_code == FORBIDDEN, name
            assert b"CSRF" in response.content, name
    assert database_state() == before


def test_a_wrong_csrf_token_is_refused(samples):
    client = visitor("integration_admin")
    with_token(client)
    response = client.post(
        url_for("dashboard:mapping_rollback", samples),
        {"csrfmiddlewaretoken": _get_new_csrf_string()},
    )
    assert response.status_code == FORBIDDEN


def test_a_valid_post_does_act(samples):
    """The table's AWAY for an action means it acted: proven once here, on the database."""
    client = visitor("operations")
    data = {"reason": "Known test record", "csrfmiddlewaretoken": with_token(client)}
    client.post(url_for("dashboard:ignore_event", samples), data)
    samples["event"].refresh_from_db()
    assert samples["event"].status == SyncEvent.Status.IGNORED


# The console --------------------------------------------------------------------------------


def console_urls(samples) -> dict[str, str]:
    """Every admin URL with sample arguments: a real object id for object pages."""
    urls = {}
    for name, pattern in named_patterns():
        if not name.startswith(CONSOLE) or name == f"{CONSOLE}None":
            continue  # (the unnamed one is the admin's catch-all)
        kwargs = {}
        for key in pattern.pattern.regex.groupindex:
            kwargs[key] = {
                "object_id": samples["connection"].pk,
                "pk": samples["connection"].pk,
                "id": samples["connection"].pk,
                "app_label": "integration",
                "content_type_id": 1,
                "url": "integration/",
            }[key]
        urls[name] = reverse(name, kwargs=kwargs)
    return urls


@pytest.mark.parametrize("role", ["anonymous", "no_role", "operations"])
def test_the_console_sends_non_staff_to_its_sign_in(role, samples):
    client = visitor(role)
    before = database_state()
    for name, url in console_urls(samples).items():
        response = client.get(url)
        if name in ("admin:login", "admin:logout"):
            continue
        assert response.status_code == 302, name
        # The site's sign-in (anonymous) or the console's (signed in but not staff).
        assert response["Location"].startswith((reverse("login"), reverse("admin:login"))), name
    assert database_state() == before


def test_a_superuser_can_get_every_console_page_and_it_changes_nothing(samples):
    client = visitor("superuser")
    before = database_state()
    for name, url in console_urls(samples).items():
        response = client.get(url)
        # 403: read-only models (the audit trail, the queue's records) have no add page, and
        # autocomplete wants parameters. Never a 500, and never a change.
        assert response.status_code in (200, 302, 403, 404, 405), (name, response.status_code)
    assert database_state() == before


def test_an_operations_member_in_the_console_cannot_change_connections_or_mappings(samples):
    client = visitor("operations")
    get_user_model().objects.filter(username="operations-user").update(is_staff=True)
    for url in (
        reverse("admin:integration_connection_add"),
        reverse("admin:integration_connection_change", args=[samples["connection"].pk]),
        reverse("admin:integration_connection_delete", args=[samples["connection"].pk]),
        reverse("admin:integration_mappingset_add"),
        reverse("admin:integration_auditentry_changelist"),
    ):
        response = client.get(url)
        # The change page of a model one may view shows it read-only: no secret fields there.
        if response.status_code == 200:
            assert b'name="password"' not in response.content, url
        else:
            assert response.status_code == 403, url
