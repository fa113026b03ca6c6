"""The KashFlow client at its seam: a scripted API answering with KashFlow-shaped payloads."""

import logging
from datetime import date, datetime
from decimal import Decimal

import pytest
import requests
from django.utils import timezone

from integration.clients import http
from integration.clients.errors import ApiError
from integration.clients.kashflow import (
    KashFlowClient,
    format_kashflow_date,
    parse_kashflow_date,
    parse_kashflow_datetime,
)
from integration.models import Connection
from tests.factories import KashFlowConnectionFactory
from tests.fake_api import FakeApi, body_of, query_of, reply, use_fast_retries
from tests.fixtures_sandbox import control
from tests.sandbox_connections import calls, clear_faults, kashflow_connection, set_faults

pytestmark = pytest.mark.django_db


@pytest.fixture
def fast_retries(settings, monkeypatch):
    return use_fast_retries(settings, monkeypatch)


TEMPORARY = "6D1E4F0A-3C5B-4D2E-9F7A-0B1C2D3E4F5A"
SESSION = "496F5DBA-DBB2-42A3-9645-DA0253220C9E"
SESSION_2 = "7A0B3C4D-1111-2222-3333-444455556666"
STEP1 = {
    "TemporaryToken": TEMPORARY,
    "MemorableWordList": [
        {"Position": 3, "Value": ""},
        {"Position": 4, "Value": ""},
        {"Position": 6, "Value": ""},
    ],
    "HasTemporaryPassword": False,
    "IsAdmin": True,
    "PackageName": "Business",
}
STEP2 = {"SessionToken": SESSION, "CompanyName": "Acme Ltd", "IsAdmin": True}
INVALID_TOKEN = {"Error": "InvalidSessionToken", "Message": "Session token provided is invalid."}


def customer(code, updated, **extra):
    return {
        "Id": 100 + int(code[-2:]),
        "Code": code,
        "Name": f"Customer {code}",
        "Note": "",
        "PaymentTerms": {"Days": 30, "Type": "AfterIssuedDate"},
        "OutstandingBalance": Decimal("120.0000"),
        "LastUpdatedDate": updated,
        **extra,
    }


def page(data, next_url=None, total=None):
    return {
        "MetaData": {"TotalRecords": total or len(data), "NextPageUrl": next_url},
        "Data": data,
    }


@pytest.fixture
def connection():
    return KashFlowConnectionFactory()


@pytest.fixture
def api():
    return (
        FakeApi()
        .on("POST", "/v2/sessiontoken", reply(201, STEP1))
        .on("PUT", "/v2/sessiontoken", reply(200, STEP2))
    )


def client_for(connection, api):
    client = KashFlowClient(connection)
    client.session.mount("https://", api)
    return client


# -- Signing in ---------------------------------------------------------------------------------


def test_login_sends_the_memorable_word_letters_at_the_positions_asked(connection, api):
    client_for(connection, api).login()

    step1, step2 = api.requests
    assert body_of(step1) == {"UserName": "accounts@example.co.uk", "Password": "Tr0ub4dor&3"}
    # "pineapple" at 3, 4, 6 is n, e, p (the sessiontoken page's own example).
    assert body_of(step2) == {
        "TemporaryToken": TEMPORARY,
        "MemorableWordList": [
            {"Position": 3, "Value": "n"},
            {"Position": 4, "Value": "e"},
            {"Position": 6, "Value": "p"},
        ],
    }
    connection.refresh_from_db()
    assert connection.get_session() == {"token": SESSION}
    assert SESSION not in connection.encrypted_session  # stored encrypted


def test_the_session_token_is_reused_by_later_clients_without_signing_in(connection, api):
    api.on("GET", "/v2/customers/ACME01", reply(200, customer("ACME01", "2024-10-09 12:00:00")))
    client_for(connection, api).get_customer("ACME01")
    client_for(Connection.objects.get(pk=connection.pk), api).get_customer("ACME01")

    assert len(api.calls("POST", "/v2/sessiontoken")) == 1
    for call in api.calls("GET"):
        assert call.headers["Authorization"] == f"KfToken {SESSION}"


def test_an_expired_token_means_one_new_sign_in_and_one_retry(connection, api):
    connection.save_session({"token": "EXPIRED-TOKEN-0000"})
    api.on(
        "GET",
        "/v2/customers/ACME01",
        reply(401, INVALID_TOKEN),
        reply(200, customer("ACME01", "2024-10-09 12:00:00")),
    )

    found = client_for(connection, api).get_customer("ACME01")

    assert found["Code"] == "ACME01"
    assert len(api.calls("POST", "/v2/sessiontoken")) == 1
    assert [c.headers["Authorization"] for c in api.calls("GET")] == [
        "KfToken EXPIRED-TOKEN-0000",
        f"KfToken {SESSION}",
    ]


def test_a_second_401_is_an_error_not_a_loop(connection, api):
    connection.save_session({"token": "EXPIRED-TOKEN-0000"})
    api.on("GET", "/v2/customers/ACME01", reply(401, INVALID_TOKEN))

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).get_customer("ACME01")

    assert caught.value.code == "InvalidSessionToken"
    assert caught.value.transient
    assert len(api.calls("GET")) == 2
    assert len(api.calls("POST", "/v2/sessiontoken")) == 1


def test_after_a_401_a_token_saved_by_another_process_is_used_without_signing_in(connection, api):
    connection.save_session({"token": "EXPIRED-TOKEN-0000"})
    client = client_for(connection, api)
    client._current_token()
    Connection.objects.get(pk=connection.pk).save_session({"token": SESSION_2})
    api.on(
        "GET", "/v2/customers/ACME01", reply(401, INVALID_TOKEN), reply(200, customer("ACME01", ""))
    )

    client.get_customer("ACME01")

    assert api.calls("POST", "/v2/sessiontoken") == []
    assert api.calls("GET")[-1].headers["Authorization"] == f"KfToken {SESSION_2}"


@pytest.mark.parametrize(
    ("step", "status", "error", "message"),
    [
        ("POST", 400, "InvalidCredentials", "KashFlow rejected the username or password."),
        ("PUT", 400, "InvalidMemorableWord", "KashFlow rejected the memorable word."),
        (
            "POST",
            401,
            "AccountLocked",
            "The KashFlow account is locked after too many failed sign-ins; unlock it in KashFlow.",
        ),
        (
            "POST",
            403,
            "ApiAccessDisabled",
            "API access is turned off for this KashFlow account (Settings → API).",
        ),
    ],
)
def test_sign_in_failures_are_permanent_and_in_plain_words(
    connection, api, step, status, error, message
):
    api.on(step, "/v2/sessiontoken", reply(status, {"Error": error, "Message": "..."}))

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).login()

    assert caught.value.message == message
    assert caught.value.permanent
    connection.refresh_from_db()
    # Recorded at once, so scheduled runs stop trying (and locking the account).
    assert connection.status == Connection.Status.FAILING
    assert connection.last_check_message == message


@pytest.mark.parametrize(
    ("step", "status", "body"),
    [
        # What KashFlow answers to a wrong password is undocumented: no code may be relied on.
        ("POST", 401, {"Message": "Authorization has been denied for this request."}),
        ("PUT", 401, {"Message": "Authorization has been denied for this request."}),
        ("POST", 400, {"Error": "SomethingNew", "Message": "Login failed."}),
        ("PUT", 429, {"Message": "Too many requests."}),
        ("POST", 404, {}),
    ],
)
def test_every_4xx_from_sign_in_is_permanent_tried_once_and_stops_signing_in(
    connection, api, fast_retries, step, status, body
):
    api.on(step, "/v2/sessiontoken", reply(status, body))

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).login()

    assert caught.value.permanent
    assert len(api.calls(step, "/v2/sessiontoken")) == 1  # never repeated
    assert "KashFlow refused the sign-in" in caught.value.message
    connection.refresh_from_db()
    assert connection.sign_in_refused_at is not None
    # Any client, any process: no more sign-ins until an admin changes it or presses Test.
    with pytest.raises(ApiError) as again:
        client_for(Connection.objects.get(pk=connection.pk), api).login()
    assert again.value.code == "SIGN_IN_PAUSED"
    assert "presses Test" in again.value.message
    assert len(api.calls(step, "/v2/sessiontoken")) == 1


def test_a_5xx_from_sign_in_is_a_temporary_failure_that_pauses_nothing(connection, api):
    api.on("POST", "/v2/sessiontoken", reply(500, {"Message": "An error has occurred."}))

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).login()

    assert caught.value.transient
    connection.refresh_from_db()
    assert connection.sign_in_refused_at is None


def test_secrets_stay_out_of_errors_and_logs(connection, api, caplog):
    caplog.set_level(logging.DEBUG)
    # An API that echoes what it was sent, as some do.
    api.on(
        "PUT",
        "/v2/sessiontoken",
        reply(400, {"Error": "Oops", "Message": "Bad body: Tr0ub4dor&3 pineapple"}),
    )

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).login()

    connection.refresh_from_db()
    for text in (str(caught.value), repr(caught.value), caplog.text, connection.last_check_message):
        assert "Tr0ub4dor&3" not in text
        assert "pineapple" not in text
    assert "[redacted]" in str(caught.value)


def test_a_session_token_echoed_back_is_redacted(connection, api):
    fresh = "0F1E2D3C-ECHO-4B5A-9687-A1B2C3D4E5F6"  # never stored, so never decrypted
    api.on("PUT", "/v2/sessiontoken", reply(200, STEP2 | {"SessionToken": fresh}))
    api.on(
        "GET",
        "/v2/customers/ACME01",
        reply(400, {"Error": "Oops", "Message": f"Token {fresh} may not read this."}),
    )

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).get_customer("ACME01")

    assert fresh not in str(caught.value)
    assert (
        caught.value.message
        == "KashFlow could not read customer ACME01: Token [redacted] may not read this."
    )


# -- Transient failures ---------------------------------------------------------------------------


def test_the_sql_timeout_400_is_retried_with_backoff(connection, api, fast_retries):
    timeout = {"Error": "-2146232060", "Message": "Execution Timeout Expired."}
    api.on(
        "GET",
        "/v2/customers/ACME01",
        reply(400, timeout),
        reply(200, customer("ACME01", "2024-10-09 12:00:00")),
    )

    assert client_for(connection, api).get_customer("ACME01")["Code"] == "ACME01"
    assert len(fast_retries) == 1


def test_sql_timeouts_that_outlast_the_retries_back_the_account_off_longer_each_time(
    connection, api, fast_retries, settings
):
    settings.KASHFORCE = {
        **settings.KASHFORCE,
        "KASHFLOW_BUSY_BACKOFF_SECONDS": 60,
        "KASHFLOW_BUSY_MAX_SECONDS": 150,
    }
    timeout = {"Error": "-2146232060", "Message": "Execution Timeout Expired."}
    api.on("GET", "/v2/invoices", *[reply(400, timeout)] * 9, reply(200, page([])))
    client = client_for(connection, api)
    waits = []
    for _ in range(3):
        before = timezone.now()
        with pytest.raises(ApiError) as caught:
            list(client.invoices())
        assert caught.value.transient
        connection.refresh_from_db()
        waits.append(round((connection.busy_until - before).total_seconds() / 10) * 10)

    assert connection.busy_count == 3
    assert waits == [60, 120, 150]  # doubling, up to the maximum
    assert list(client.invoices()) == []  # KashFlow answers again: the back-off is over
    connection.refresh_from_db()
    assert (connection.busy_count, connection.busy_until) == (0, None)


def test_retries_are_bounded_and_end_in_a_transient_error(connection, api, fast_retries):
    api.on("GET", "/v2/customers/ACME01", reply(503, {"Error": "Unavailable", "Message": "..."}))

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).get_customer("ACME01")

    assert caught.value.transient
    assert caught.value.status == 503
    assert len(api.calls("GET")) == 3  # HTTP_ATTEMPTS
    assert len(fast_retries) == 2
    assert fast_retries[1] > fast_retries[0] * 0.9  # grows (jitter allowing)


def test_retry_after_is_honoured(connection, api, fast_retries):
    api.on(
        "GET",
        "/v2/customers/ACME01",
        reply(429, {"Error": "TooMany", "Message": "..."}, {"Retry-After": "2"}),
        reply(200, customer("ACME01", "")),
    )

    client_for(connection, api).get_customer("ACME01")

    assert fast_retries[0] >= 2


def test_a_retry_after_beyond_the_longest_wait_fails_at_once_saying_when(
    connection, api, fast_retries
):
    api.on(
        "GET",
        "/v2/customers/ACME01",
        reply(429, {"Error": "TooMany", "Message": "..."}, {"Retry-After": "3600"}),
    )

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).get_customer("ACME01")

    assert caught.value.transient and caught.value.retry_after == 3600
    assert fast_retries == []


def test_a_create_whose_answer_is_lost_is_not_repeated(connection, api, fast_retries):
    connection.save_session({"token": SESSION})
    api.on("POST", "/v2/invoices", requests.exceptions.ReadTimeout("read timed out"))

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).create_invoice({"CustomerCode": "ACME01", "LineItems": []})

    assert caught.value.transient and caught.value.ambiguous
    assert caught.value.code == "timeout"
    assert "may have been saved" in caught.value.message
    assert len(api.calls("POST", "/v2/invoices")) == 1


def test_a_create_that_fails_with_a_server_error_is_not_repeated(connection, api, fast_retries):
    connection.save_session({"token": SESSION})
    api.on("POST", "/v2/customers", reply(500, {"Error": "Error", "Message": "Oops"}))

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).create_customer({"Code": "ACME01", "Name": "Acme"})

    assert caught.value.transient
    assert len(api.calls("POST", "/v2/customers")) == 1


def test_validation_errors_are_permanent_and_say_what_failed(connection, api):
    api.on(
        "POST",
        "/v2/customers",
        reply(400, {"Error": "ValidationError", "Message": "Customer code ACME01 already exists."}),
    )

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).create_customer({"Code": "ACME01", "Name": "Acme Ltd"})

    assert caught.value.permanent
    assert caught.value.message == (
        "KashFlow could not create customer ACME01: Customer code ACME01 already exists."
    )


# -- Reading --------------------------------------------------------------------------------------


def test_customers_walk_every_page_by_code_200_a_call(connection, api):
    summaries = [customer(f"CUST0{n}", "") for n in range(1, 6)]
    for summary in summaries:
        del summary["LastUpdatedDate"]  # summaries carry no dates (reference §4.1)
    api.on(
        "GET",
        "/v2/customers",
        lambda request: reply(
            200,
            page(summaries[:2], "https://api.kashflow.com/v2/customers?page=2", 5)
            if query_of(request)["page"] == "1"
            else page(summaries[2:], None, 5),
        )(request),
    )

    codes = [c["Code"] for c in client_for(connection, api).customers()]

    assert codes == [f"CUST0{n}" for n in range(1, 6)]
    lists = api.calls("GET", "/v2/customers")
    # The spec's enum: 1 is Code. LastUpdatedDate is not a sort KashFlow offers.
    assert [query_of(r) for r in lists] == [
        {"sortby": "1", "order": "asc", "perpage": "200", "page": "1"},
        {"sortby": "1", "order": "asc", "perpage": "200", "page": "2"},
    ]
    assert api.calls("GET", "/v2/customers/.+") == []


MALFORMED_PAGES = {
    "an error body": {"Message": "An error has occurred."},
    "no Data": {"MetaData": {"TotalRecords": 3, "NextPageUrl": None}},
    "Data not a list": {"MetaData": {"TotalRecords": 3, "NextPageUrl": None}, "Data": {}},
    "no MetaData": {"Data": [{"Code": "X"}]},
    "MetaData without NextPageUrl": {"MetaData": {"TotalRecords": 3}, "Data": [{"Code": "X"}]},
    "a bare array": [{"Code": "X"}],
    "records that are not records": page(["X", "Y"]),
    "an empty page that says more follow": page([], "https://api.kashflow.com/v2/x?page=3", 9),
    "a JSON string": '"An error has occurred."',
}
LISTS = {
    "/v2/customers": lambda client: client.customers(),
    "/v2/invoices": lambda client: client.invoices(),
    "/v2/products": lambda client: client.products(),
}


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("answer", MALFORMED_PAGES.values(), ids=MALFORMED_PAGES)
def test_a_list_page_that_is_not_a_well_formed_page_is_an_error_not_the_end(
    connection, api, path, answer
):
    first = page([{"Code": "A", "Number": 1}], f"https://api.kashflow.com{path}?page=2", 9)
    api.on(
        "GET",
        path,
        lambda request: reply(200, first if query_of(request)["page"] == "1" else answer)(request),
    )
    read = []

    with pytest.raises(ApiError) as caught:
        read.extend(LISTS[path](client_for(connection, api)))

    assert len(read) == 1  # page 1 was read; page 2 ends the walk with an error, not quietly
    assert caught.value.code == "UNREADABLE_ANSWER" and caught.value.transient
    assert "cannot read" in caught.value.message and "page 2" in caught.value.message


def test_an_error_body_says_what_kashflow_said(connection, api):
    api.on("GET", "/v2/customers", reply(200, {"Message": "An error has occurred."}))
    with pytest.raises(ApiError) as caught:
        list(client_for(connection, api).customers())
    assert caught.value.message == (
        "KashFlow sent an answer kashforce cannot read when asked to list customers (page 1: it "
        'has no list of records). KashFlow said: "An error has occurred.". Nothing was '
        "skipped; kashforce will read it again on the next run."
    )


def test_a_200_that_is_not_json_is_an_unreadable_answer(connection, api):
    api.on("GET", "/v2/customers", reply(200, "<html><body>Service Unavailable</body></html>"))
    with pytest.raises(ApiError) as caught:
        list(client_for(connection, api).customers())
    assert caught.value.code == "UNREADABLE_ANSWER" and "not JSON" in caught.value.message


@pytest.mark.parametrize("answer", [{"Message": "An error has occurred."}, ["x"], "text"])
def test_a_look_up_list_that_is_not_a_list_is_an_error(connection, api, answer):
    api.on("GET", "/v2/vat/settings/vatrates", reply(200, answer))
    with pytest.raises(ApiError) as caught:
        client_for(connection, api).vat_rates()
    assert caught.value.code == "UNREADABLE_ANSWER"


def test_a_look_up_list_is_a_bare_array_or_an_envelope(connection, api):
    api.on("GET", "/v2/nominals", reply(200, [{"Code": 4000}]))
    api.on("GET", "/v2/bankaccounts", reply(200, page([{"Id": 101}])))
    client = client_for(connection, api)
    assert client.nominals() == [{"Code": 4000}]
    assert client.bank_accounts() == [{"Id": 101}]


def test_update_customer_reads_merges_and_puts_the_whole_customer(connection, api):
    stored = customer(
        "CUST01",
        "2024-10-09 12:00:00",
        TelephoneNumber="020 7946 0000",
        Contacts=[{"Id": 7, "Name": "Jo Bloggs", "IsPrimary": True}],
        DisplayName="Customer CUST01",
    )
    api.on("GET", "/v2/customers/CUST01", reply(200, stored))
    api.on("PUT", "/v2/customers/CUST01", reply(200, {**stored, "Name": "Renamed Ltd"}))

    client_for(connection, api).update_customer("CUST01", {"Name": "Renamed Ltd"})

    sent = body_of(api.calls("PUT", "/v2/customers/CUST01")[0])
    assert sent["Name"] == "Renamed Ltd"
    # Every field KashFlow holds goes back, or the PUT would clear it.
    for name in ("Code", "Note", "PaymentTerms", "TelephoneNumber", "Contacts", "Id"):
        assert sent[name] == stored[name] or str(sent[name]) == str(stored[name]), name
    # Computed fields are KashFlow's, not ours to send.
    for name in ("OutstandingBalance", "LastUpdatedDate", "DisplayName"):
        assert name not in sent


def test_customer_codes_are_one_path_segment(connection, api):
    api.on("GET", "/v2/customers/.*", reply(200, customer("AB 01", "")))
    client_for(connection, api).get_customer("A/B 01")
    assert api.calls("GET")[0].path_url == "/v2/customers/A%2FB%2001"


def test_money_is_decimal_both_ways_and_dates_are_written_as_kashflow_does(connection, api):
    stored = {
        "Number": 2,
        "CustomerCode": "ACME01",
        "IssuedDate": "2024-10-09 12:00:00",
        "NetAmount": 1234.5678,
        "GrossAmount": 1481.4814,
        "DueAmount": 1481.4814,
        "LineItems": [{"Quantity": 1.0000, "Rate": 1234.5678, "VATLevel": 20.0000}],
    }
    api.on("POST", "/v2/invoices", reply(201, stored))

    created = client_for(connection, api).create_invoice(
        {
            "CustomerCode": "ACME01",
            "IssuedDate": date(2024, 10, 9),
            "LineItems": [{"Quantity": Decimal("1"), "Rate": Decimal("1234.5678")}],
        }
    )

    assert created["NetAmount"] == Decimal("1234.5678")
    assert isinstance(created["LineItems"][0]["Rate"], Decimal)
    sent = api.calls("POST", "/v2/invoices")[0].body
    assert '"Rate":1234.5678' in sent
    assert '"IssuedDate":"2024-10-09 12:00:00"' in sent


def test_find_invoices_by_reference_matches_exactly(connection, api):
    api.on(
        "GET",
        "/v2/invoices",
        reply(
            200,
            page(
                [
                    {"Number": 7, "CustomerReference": "SF-0061x000001"},
                    {"Number": 8, "CustomerReference": "SF-0061x0000012"},
                    {"Number": 9, "CustomerReference": "sf-0061x000001"},
                ]
            ),
        ),
    )

    found = client_for(connection, api).find_invoices_by_reference("SF-0061x000001")

    assert [i["Number"] for i in found] == [7]
    assert query_of(api.calls("GET", "/v2/invoices")[0])["searchtext"] == "SF-0061x000001"


def test_invoices_with_payments_fetches_only_paid_ones(connection, api):
    api.on(
        "GET",
        "/v2/invoices",
        reply(
            200,
            page(
                [
                    {"Number": 1, "TotalPaidAmount": Decimal("0.0000")},
                    {"Number": 2, "TotalPaidAmount": Decimal("60.0000")},
                ]
            ),
        ),
    )
    api.on(
        "GET",
        "/v2/invoices/2",
        reply(200, {"Number": 2, "LineItems": [], "PaymentLines": [{"Id": 5}]}),
    )

    paid = list(client_for(connection, api).invoices_with_payments(date(2024, 1, 1)))

    assert [i["Number"] for i in paid] == [2]
    assert query_of(api.calls("GET", "/v2/invoices")[0])["issuedatefrom"] == "2024-01-01"


def test_products_are_created_and_updated_by_nominal_code_and_code(connection, api):
    stored = {"Id": 7, "NominalCode": 4000, "Code": "SOF 1/A", "Name": "Sofa", "Price": 499.5}
    api.on("POST", "/v2/products", reply(201, stored))
    api.on("GET", "/v2/products/4000/.*", reply(200, {**stored, "VATRate": 20.0}))
    api.on("PUT", "/v2/products/4000/.*", reply(200, {**stored, "Description": "Blue"}))
    client = client_for(connection, api)

    created = client.create_product(
        {"NominalCode": 4000, "Code": "SOF 1/A", "Name": "Sofa", "Price": Decimal("499.50")}
    )
    updated = client.update_product(4000, "SOF 1/A", {"Description": "Blue"})

    assert created["Price"] == Decimal("499.5")
    assert '"Price":499.50' in api.calls("POST", "/v2/products")[0].body
    put = api.calls("PUT", "/v2/products/.*")[0]
    assert put.path_url == "/v2/products/4000/SOF%201%2FA"
    # KashFlow's PUT replaces the whole product: what it holds now goes back with the change.
    assert body_of(put) == {
        "NominalCode": 4000,
        "Code": "SOF 1/A",
        "Name": "Sofa",
        "Price": 499.5,
        "VATRate": 20.0,
        "Description": "Blue",
    }
    assert updated["Description"] == "Blue"


def test_bare_array_lists_are_read_in_one_call(connection, api):
    api.on(
        "GET", "/v2/bankaccounts", reply(200, [{"Id": 1, "Code": 1200}, {"Id": 2, "Code": 1210}])
    )
    api.on("GET", "/v2/vat/settings/vatrates", reply(200, [{"VATId": 1, "VATRate": 20.0}]))
    client = client_for(connection, api)

    assert [a["Code"] for a in client.bank_accounts()] == [1200, 1210]
    assert client.vat_rates()[0]["VATRate"] == Decimal("20.0")
    assert len(api.calls("GET")) == 2


# -- Dates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-10-09 12:00:00", datetime(2024, 10, 9, 12)),
        ("2012-10-09 12:00:00 +05:30", datetime(2012, 10, 9, 12)),
        ("2017-05-02", datetime(2017, 5, 2, 12)),
        ("2024-10-09T08:30:15.123", datetime(2024, 10, 9, 8, 30, 15)),
        ("", None),
        (None, None),
    ],
)
def test_kashflow_dates_are_parsed_in_every_form_seen(text, expected):
    assert parse_kashflow_datetime(text) == expected


def test_a_calendar_date_is_written_at_midday_so_it_never_shifts():
    assert format_kashflow_date(date(2024, 3, 31)) == "2024-03-31 12:00:00"
    assert parse_kashflow_date(format_kashflow_date(date(2024, 3, 31))) == date(2024, 3, 31)


# -- Over real sockets, against the sandbox -------------------------------------------------------


@pytest.fixture
def sandbox_kashflow(sandbox, settings, fast_retries):
    settings.KASHFORCE = {**settings.KASHFORCE, "HTTP_TIMEOUT": (2.0, 0.3)}
    return kashflow_connection(sandbox)


def new_client(connection):
    return KashFlowClient(Connection.objects.get(pk=connection.pk))


def test_sandbox_sign_in_happens_once_for_many_calls_and_clients(sandbox, sandbox_kashflow):
    first = new_client(sandbox_kashflow)
    first.create_customer({"Code": "ACME01", "Name": "Acme Ltd"})
    first.get_customer("ACME01")
    new_client(sandbox_kashflow).get_customer("ACME01")

    assert calls(sandbox, "kashflow", "POST /v2/sessiontoken") == 1
    assert calls(sandbox, "kashflow", "PUT /v2/sessiontoken") == 1


def test_sandbox_expired_token_is_renewed_once(sandbox, sandbox_kashflow):
    client = new_client(sandbox_kashflow)
    client.create_customer({"Code": "ACME01", "Name": "Acme Ltd"})
    # 61 idle minutes: the token dies of inactivity.
    control(sandbox.info["control"]["kashflow"], "clock", {"advance_seconds": 61 * 60})

    assert new_client(sandbox_kashflow).get_customer("ACME01")["Name"] == "Acme Ltd"
    assert calls(sandbox, "kashflow", "PUT /v2/sessiontoken") == 2


def test_sandbox_a_token_that_keeps_dying_ends_in_an_error(sandbox, sandbox_kashflow):
    client = new_client(sandbox_kashflow)
    client.login()
    set_faults(sandbox, "kashflow", ("GET /v2/bankaccounts", "expire_token", 1.0))

    with pytest.raises(ApiError) as caught:
        client.bank_accounts()

    assert caught.value.code == "InvalidSessionToken"
    assert calls(sandbox, "kashflow", "GET /v2/bankaccounts") == 2
    assert calls(sandbox, "kashflow", "PUT /v2/sessiontoken") == 2  # the first and one more


def test_sandbox_a_429_storm_is_waited_out_honouring_retry_after(
    sandbox, sandbox_kashflow, fast_retries, monkeypatch
):
    client = new_client(sandbox_kashflow)
    client.login()
    set_faults(sandbox, "kashflow", ("GET /v2/nominals", "429", 1.0))
    waits = []

    def wait_then_calm(seconds):  # the storm passes while we wait
        waits.append(seconds)
        clear_faults(sandbox, "kashflow")

    monkeypatch.setattr(http, "sleep", wait_then_calm)

    assert client.nominals()
    assert waits and waits[0] >= 1  # the sandbox says Retry-After: 1
    assert calls(sandbox, "kashflow", "GET /v2/nominals") == 2


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("429", 429, None),
        ("503", 503, None),
        ("timeout", None, "timeout"),
        ("reset", None, "connection_reset"),
    ],
)
def test_sandbox_faults_that_do_not_clear_end_in_a_bounded_transient_error(
    sandbox, sandbox_kashflow, fast_retries, kind, status, code
):
    client = new_client(sandbox_kashflow)
    client.login()
    set_faults(sandbox, "kashflow", ("GET /v2/bankaccounts", kind, 1.0, 1))

    with pytest.raises(ApiError) as caught:
        client.bank_accounts()

    assert caught.value.transient
    assert caught.value.status == status
    assert code is None or caught.value.code == code
    assert calls(sandbox, "kashflow", "GET /v2/bankaccounts") == 3  # HTTP_ATTEMPTS
    assert len(fast_retries) == 2


def test_sandbox_an_ambiguous_create_is_reported_and_not_repeated(sandbox, sandbox_kashflow):
    client = new_client(sandbox_kashflow)
    client.login()
    set_faults(sandbox, "kashflow", ("POST /v2/customers", "ambiguous", 1.0))

    with pytest.raises(ApiError) as caught:
        client.create_customer({"Code": "ACME01", "Name": "Acme Ltd"})

    assert caught.value.transient and caught.value.ambiguous
    assert calls(sandbox, "kashflow", "POST /v2/customers") == 1
    clear_faults(sandbox, "kashflow")
    assert client.get_customer("ACME01")["Name"] == "Acme Ltd"  # it was saved


def test_sandbox_invoices_round_trip_money_and_dates_exactly(sandbox, sandbox_kashflow):
    client = new_client(sandbox_kashflow)
    client.create_customer({"Code": "ACME01", "Name": "Acme Ltd"})
    created = client.create_invoice(
        {
            "CustomerCode": "ACME01",
            "CustomerReference": "SF-0061x000001",
            "IssuedDate": date(2024, 3, 31),
            "LineItems": [
                {
                    "Description": "Consulting",
                    "Quantity": Decimal("1"),
                    "Rate": Decimal("1234.5678"),
                    "VATLevel": Decimal("20"),
                    "NominalCode": 4000,
                }
            ],
        }
    )

    invoice = client.get_invoice(created["Number"])
    assert invoice["LineItems"][0]["Rate"] == Decimal("1234.5678")
    assert isinstance(invoice["GrossAmount"], Decimal)
    assert parse_kashflow_date(invoice["IssuedDate"]) == date(2024, 3, 31)
    found = client.find_invoices_by_reference("SF-0061x000001")
    assert [i["Number"] for i in found] == [created["Number"]]
    client.update_invoice(created["Number"], {"CustomerReference": "SF-0061x000001-B"})
    assert client.find_invoices_by_reference("SF-0061x000001") == []


def test_sandbox_reference_search_is_loose_and_the_client_keeps_only_the_exact_marker(
    sandbox, sandbox_kashflow
):
    client = new_client(sandbox_kashflow)
    client.create_customer({"Code": "ACME01", "Name": "Acme Ltd"})
    client.create_customer({"Code": "006HS00000ABCDE", "Name": "Named like an Id Ltd"})
    line = {"Description": "Work for 006Hs00000AbCdE", "Rate": Decimal("10"), "NominalCode": 4000}

    def invoice(customer, reference, lines=(line,)):
        body = {"CustomerCode": customer, "CustomerReference": reference, "LineItems": [*lines]}
        return client.create_invoice(body)["Number"]

    mine = invoice("ACME01", "006Hs00000AbCdE", lines=[{**line, "Description": "Chairs"}])
    invoice("ACME01", "006Hs00000ABCDE")  # another Opportunity: Salesforce ids are case-exact
    invoice("ACME01", "006Hs00000AbCdE-credit")
    invoice("006HS00000ABCDE", "PO 12")

    # KashFlow's searchtext finds them all (its matching is undocumented) ...
    loose = list(client.invoices(searchtext="006Hs00000AbCdE"))
    assert len(loose) == 4
    # ... and the marker search keeps the one whose CustomerReference is exactly the marker.
    assert [i["Number"] for i in client.find_invoices_by_reference("006Hs00000AbCdE")] == [mine]


def test_sandbox_update_customer_keeps_every_field_it_does_not_change(sandbox, sandbox_kashflow):
    client = new_client(sandbox_kashflow)
    client.create_customer(
        {
            "Code": "CUST01",
            "Name": "Customer One",
            "Note": "Pays by BACS",
            "VATNumber": "GB123456789",
            "Contacts": [{"Name": "Jo Bloggs", "Email": "jo@example.org", "IsPrimary": True}],
            "Addresses": [{"Line1": "1 High St", "PostCode": "EC1A 1AA"}],
            "PaymentTerms": {"Days": 14, "Type": "AfterMonthEnd"},
        }
    )
    before = client.get_customer("CUST01")

    client.update_customer("CUST01", {"Name": "Customer One Ltd"})

    after = client.get_customer("CUST01")
    assert after["Name"] == "Customer One Ltd"
    for name in ("Note", "VATNumber", "Contacts", "Addresses", "PaymentTerms", "Currency"):
        assert after[name] == before[name], name


def test_sandbox_reference_data(sandbox, sandbox_kashflow):
    client = new_client(sandbox_kashflow)
    assert any(n["Code"] == 4000 for n in client.nominals())
    assert client.bank_accounts() and client.payment_methods() and client.vat_rates()
    assert list(client.products()) == []  # the empty seed has none


def test_sandbox_wrong_memorable_word_is_named_and_no_secret_leaks(sandbox, caplog):
    connection = kashflow_connection(sandbox, memorable_word="zzzzzzzzzzzzzz")
    password = sandbox.info["kashflow"]["password"]
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included

    with pytest.raises(ApiError) as caught:
        KashFlowClient(connection).login()

    assert caught.value.message.startswith(
        "KashFlow refused the sign-in (HTTP 401). Check the memorable word, then press Test."
    )
    connection.refresh_from_db()
    for text in (str(caught.value), caplog.text, connection.last_check_message):
        assert password not in text and "zzzzzzzzzzzzzz" not in text
