"""Issue #15 case 5: a NUL byte in the record search, a huge webhook body, formula starts the
CSV exports missed, and what the public health check gives away."""

import csv
import io
import json
import logging

import pytest
from django.test import Client
from django.urls import reverse

from integration.export import safe_cell
from integration.models import SyncEvent
from tests import factories
from tests.test_webhooks import ORG, SECRET, envelope

pytestmark = pytest.mark.django_db


# A NUL byte in the record search ---------------------------------------------------------------


def test_a_nul_byte_in_the_record_search_is_refused_with_a_message(ops_client):
    """On PostgreSQL a NUL in a query parameter was a 500 (text cannot hold it); on SQLite it
    searched. Either way the page now says what is wrong and searches nothing. Run this one on
    PostgreSQL too (DATABASE_URL=postgres://...)."""
    factories.SyncEventFactory(source_id="abcdef")
    response = ops_client.get(reverse("dashboard:timeline"), {"q": "abc\x00def"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "A record id cannot contain a NUL character" in page
    assert "\x00" not in page


# A huge webhook body --------------------------------------------------------------------------


@pytest.fixture
def salesforce():
    connection = factories.SalesforceConnectionFactory(organization_id=ORG)
    connection.set_secrets(outbound_secret=SECRET)
    connection.save()
    return connection


@pytest.mark.parametrize("megabytes", [3, 50])
def test_a_huge_outbound_message_is_a_plain_413_without_a_traceback(salesforce, megabytes, caplog):
    body = envelope(("04l1", "0065g00000Opp01AAA")).replace(
        b"<sf:Name>", b"<sf:Name>" + b"x" * (megabytes * 1024 * 1024)
    )
    with caplog.at_level(logging.INFO):
        response = Client().post(
            f"/hooks/salesforce/outbound/{SECRET}/", body, content_type="text/xml"
        )
    assert response.status_code == 413
    assert b"The message is too large" in response.content
    assert response["Content-Type"].startswith("text/xml")
    assert "Traceback" not in caplog.text and "RequestDataTooBig" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert SyncEvent.objects.count() == 0


def test_a_declared_length_over_the_limit_is_refused_before_reading(salesforce):
    """A 50 MB upload is refused on its Content-Length; nothing of it is read."""
    from django.test import RequestFactory

    from integration.webhooks import salesforce_outbound

    request = RequestFactory().post(
        f"/hooks/salesforce/outbound/{SECRET}/", b"<tiny/>", content_type="text/xml"
    )
    request.META["CONTENT_LENGTH"] = str(50 * 1024 * 1024)
    stream = request.META["wsgi.input"]
    response = salesforce_outbound(request, SECRET)
    assert response.status_code == 413
    assert stream.read() == b"<tiny/>"  # untouched


# CSV formula starts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        ' =HYPERLINK("http://evil")',
        "\u00a0\u00a0+1+1",
        "\n-2+3",
        "\uff1dcmd",  # fullwidth =
        "\uff0bcmd",  # fullwidth +
        "\uff0dcmd",  # fullwidth -
        "\uff20SUM(A1)",  # fullwidth @
        "|calc",
        "  |calc",
    ],
)
def test_formula_starts_after_spaces_fullwidth_and_pipes_are_neutralised(value):
    assert safe_cell(value) == "'" + value


def test_plain_text_is_left_alone():
    assert safe_cell("Acme Ltd") == "Acme Ltd"
    assert safe_cell("  Acme Ltd") == "  Acme Ltd"


def test_the_error_export_neutralises_a_spaced_formula(ops_client):
    factories.SyncEventFactory(
        status=SyncEvent.Status.FAILED_PERMANENT,
        error_class="permanent",
        source_id=" =HYPERLINK(1)",
        message="\uff1d1+1",
    )
    body = b"".join(ops_client.get(reverse("dashboard:errors_csv")).streaming_content)
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert rows[1][3] == "' =HYPERLINK(1)"
    assert rows[1][9] == "'\uff1d1+1"


# The health check -------------------------------------------------------------------------------


def test_public_health_says_up_or_down_only(client):
    response = client.get("/health/")
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "ok"}


def test_public_health_down_gives_no_details(client):
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import OrmQ

    OrmQ.objects.create(key="kashforce", payload="x", lock=timezone.now() - timedelta(hours=1))
    response = client.get("/health/")
    assert response.status_code == 503
    assert json.loads(response.content) == {"status": "error"}


def test_health_details_with_the_token(client, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "HEALTH_TOKEN": "t" * 32}
    wrong = client.get("/health/", HTTP_AUTHORIZATION="Bearer " + "x" * 32)
    assert json.loads(wrong.content) == {"status": "ok"}
    body = json.loads(client.get("/health/", HTTP_AUTHORIZATION="Bearer " + "t" * 32).content)
    assert body["database"] is True and body["queue"]["waiting"] == 0


def test_health_details_for_a_signed_in_user(ops_client):
    body = json.loads(ops_client.get("/health/").content)
    assert body["status"] == "ok" and body["queue"]["ok"] is True


def test_no_token_configured_means_no_token_works(client, settings):
    settings.KASHFORCE = {**settings.KASHFORCE, "HEALTH_TOKEN": ""}
    body = json.loads(client.get("/health/", HTTP_AUTHORIZATION="Bearer ").content)
    assert body == {"status": "ok"}
