"""The Salesforce client at its seam: unmodified simple-salesforce over a scripted API."""

import logging
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from integration.clients import http
from integration.clients.errors import ApiError
from integration.clients.salesforce import (
    OBJECT_MISSING,
    SalesforceClient,
    budget_exhausted,
    login_arguments,
    parse_limit_info,
    soql_quote,
)
from integration.models import Connection
from tests.factories import SalesforceConnectionFactory
from tests.fake_api import FakeApi, body_of, query_of, reply, use_fast_retries
from tests.fixtures_sandbox import control
from tests.sandbox_connections import (
    calls,
    clear_faults,
    org_switches,
    salesforce_connection,
    set_faults,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def fast_retries(settings, monkeypatch):
    return use_fast_retries(settings, monkeypatch)


INSTANCE = "https://acme.my.salesforce.com"
DATA = "/services/data/v59.0/"
TOKEN = "00D000000000001!AQ4AQFirstTokenValue"
TOKEN_2 = "00D000000000001!AQ4AQSecondTokenValue"
EXPIRED = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
SOAP_OK = f"""<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope
xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com">
<soapenv:Body><loginResponse><result><serverUrl>{INSTANCE}/services/Soap/u/59.0/00D000000000001
</serverUrl><sessionId>{TOKEN}</sessionId></result></loginResponse></soapenv:Body>
</soapenv:Envelope>"""
SOAP_FAULT = """<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope
xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com">
<soapenv:Body><soapenv:Fault><faultcode>sf:INVALID_LOGIN</faultcode><faultstring>INVALID_LOGIN:
Invalid username, password, security token; or user locked out.</faultstring><detail>
<sf:LoginFault><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode><sf:exceptionMessage>Invalid
username, password, security token; or user locked out.</sf:exceptionMessage></sf:LoginFault>
</detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"""


def oauth_ok(token=TOKEN):
    return reply(
        200,
        {
            "access_token": token,
            "instance_url": INSTANCE,
            "id": "https://login.salesforce.com/id/00D000000000001/005000000000001",
            "token_type": "Bearer",
            "issued_at": "1700000000000",
            "scope": "api",
        },
    )


def saved(records, created=True, start=0):
    return [
        {"id": f"001{start + i:015d}", "success": True, "errors": [], "created": created}
        for i, _ in enumerate(records)
    ]


def echo_saved(request):
    """A collections answer saying every record sent was created."""
    return reply(200, saved(body_of(request)["records"]))(request)


@pytest.fixture
def connection():
    return SalesforceConnectionFactory()


@pytest.fixture
def api():
    return FakeApi().on("POST", "/services/Soap/u/59.0", reply(200, SOAP_OK))


def client_for(connection, api):
    client = SalesforceClient(connection)
    client.session.mount("https://", api)
    return client


# -- Signing in ---------------------------------------------------------------------------------


def test_password_login_uses_simple_salesforce_soap_login_and_caches_the_token(connection, api):
    api.on("GET", DATA + "sobjects/Account/describe", reply(200, {"fields": []}))
    client_for(connection, api).describe("Account")
    client_for(Connection.objects.get(pk=connection.pk), api).describe("Account")

    logins = api.calls("POST", "/services/Soap/u/59.0")
    assert len(logins) == 1
    assert logins[0].url == "https://login.salesforce.com/services/Soap/u/59.0"
    assert "s3cret-PassTOKENabc123" in logins[0].body  # password + security token
    describes = api.calls("GET")
    assert [c.headers["Authorization"] for c in describes] == [f"Bearer {TOKEN}"] * 2
    assert describes[0].url.startswith(INSTANCE + DATA)
    assert Connection.objects.get(pk=connection.pk).get_session() == {
        "access_token": TOKEN,
        "instance_url": INSTANCE,
    }


@pytest.mark.parametrize(
    ("method", "login_url", "instance_url", "expected", "host", "redirect"),
    [
        ("sf_password", "https://login.salesforce.com", "", {"domain": "login"}, "login", False),
        ("sf_password", "https://test.salesforce.com", "", {"domain": "test"}, "test", False),
        (
            "sf_jwt",
            "https://login.salesforce.com",
            "",
            {"domain": "login", "instance_url": None},
            "login",
            False,
        ),
        (
            "sf_jwt",
            "https://acme--uat.sandbox.my.salesforce.com",
            "",
            {"domain": "test", "instance_url": "acme--uat.sandbox.my"},
            "acme--uat.sandbox.my",
            False,
        ),
        (
            "sf_client_credentials",
            "https://login.salesforce.com",
            "https://acme.my.salesforce.com",
            {"domain": "acme.my"},
            "acme.my",
            False,
        ),
        (
            "sf_client_credentials",
            "https://acme.my.salesforce.com",
            "",
            {"domain": "acme.my"},
            "acme.my",
            False,
        ),
        ("sf_password", "https://127.0.0.1:8443", "", {"domain": "login"}, "login", True),
        ("sf_jwt", "https://127.0.0.1:8443", "", {"domain": "login"}, "login", True),
        (
            "sf_client_credentials",
            "https://127.0.0.1:8443",
            "",
            {"domain": "kashforce-login.my"},
            "kashforce-login.my",
            True,
        ),
    ],
)
def test_login_hosts_come_from_configuration(
    method, login_url, instance_url, expected, host, redirect
):
    connection = SalesforceConnectionFactory.build(
        auth_method=method, login_url=login_url, instance_url=instance_url
    )
    kwargs, login_host, redirected = login_arguments(connection)
    assert {k: kwargs[k] for k in expected} == expected
    assert (login_host, redirected) == (host, redirect)


def test_a_login_url_off_salesforce_com_is_reached_through_the_adapter(api):
    connection = SalesforceConnectionFactory(login_url="https://127.0.0.1:8443")
    client = SalesforceClient(connection)
    # The fake transport sits behind the redirecting adapter, on the target host only.
    client.session.mount("https://127.0.0.1:8443/", api)
    client.session.mount(INSTANCE, api)

    client.login()

    assert api.requests[0].url == "https://127.0.0.1:8443/services/Soap/u/59.0"


def test_client_credentials_login_posts_basic_auth_to_my_domain(api):
    connection = SalesforceConnectionFactory(
        auth_method="sf_client_credentials",
        login_url="https://acme.my.salesforce.com",
        username="",
        consumer_key="3MVG9KEY",
        secrets={"consumer_secret": "CONSUMERSECRET42"},
    )
    api.on("POST", "/services/oauth2/token", oauth_ok())

    client_for(connection, api).login()

    token_call = api.calls("POST", "/services/oauth2/token")[0]
    assert token_call.url == "https://acme.my.salesforce.com/services/oauth2/token"
    assert token_call.body == "grant_type=client_credentials"
    assert token_call.headers["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            reply(500, SOAP_FAULT, {"Content-Type": "text/xml"}),
            "Salesforce rejected the username, password or security token.",
        ),
    ],
)
def test_login_failures_are_permanent_in_plain_words_and_hold_no_secrets(
    connection, api, answer, message, caplog
):
    caplog.set_level(logging.DEBUG)
    api.on("POST", "/services/Soap/u/59.0", answer)

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).login()

    assert caught.value.message == message and caught.value.permanent
    assert len(api.requests) == 1  # a SOAP fault (HTTP 500) on a POST is not retried
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAILING
    for text in (str(caught.value), caplog.text, connection.last_check_message):
        assert "s3cret-Pass" not in text and "TOKENabc123" not in text


def test_client_credentials_against_login_salesforce_com_explain_my_domain(api):
    connection = SalesforceConnectionFactory(
        auth_method="sf_client_credentials",
        consumer_key="3MVG9KEY",
        secrets={"consumer_secret": "CONSUMERSECRET42"},
    )
    with pytest.raises(ApiError, match="My Domain login URL"):
        client_for(connection, api).login()
    assert api.requests == []


def test_an_expired_session_means_one_new_login_and_one_retry(connection, api):
    connection.save_session({"access_token": "OLD-TOKEN-1234", "instance_url": INSTANCE})
    api.on("POST", "/services/Soap/u/59.0", reply(200, SOAP_OK.replace(TOKEN, TOKEN_2)))
    api.on(
        "GET",
        DATA + "sobjects/Account/describe",
        reply(401, EXPIRED),
        reply(200, {"fields": [{"name": "Id"}]}),
    )

    assert client_for(connection, api).describe("Account") == {"fields": [{"name": "Id"}]}
    assert len(api.calls("POST")) == 1
    assert [c.headers["Authorization"] for c in api.calls("GET")] == [
        "Bearer OLD-TOKEN-1234",
        f"Bearer {TOKEN_2}",
    ]


def test_a_session_that_stays_invalid_is_an_error_not_a_loop(connection, api):
    api.on("GET", DATA + "sobjects/Account/describe", reply(401, EXPIRED))

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).describe("Account")

    assert caught.value.status == 401 and caught.value.transient
    assert len(api.calls("GET")) == 2
    assert len(api.calls("POST")) == 2  # the first login, and one more


# -- Reading --------------------------------------------------------------------------------------


def test_query_follows_next_records_url_and_reads_money_as_decimal(connection, api):
    first = {
        "totalSize": 3,
        "done": False,
        "nextRecordsUrl": DATA + "query/01gD0000002HU6KIAW-2",
        "records": [
            {"attributes": {"type": "Opportunity"}, "Id": "0061", "Amount": 1234.5678},
            {"attributes": {"type": "Opportunity"}, "Id": "0062", "Amount": 0.1},
        ],
    }
    last = {
        "totalSize": 3,
        "done": True,
        "records": [{"attributes": {"type": "Opportunity"}, "Id": "0063", "Amount": 20.0}],
    }
    api.on("GET", DATA + "query/", reply(200, first))
    api.on("GET", DATA + "query/01gD0000002HU6KIAW-2", reply(200, last))

    records = list(client_for(connection, api).query("SELECT Id, Amount FROM Opportunity"))

    assert [r["Id"] for r in records] == ["0061", "0062", "0063"]
    assert records[0]["Amount"] == Decimal("1234.5678")
    assert records[1]["Amount"] == Decimal("0.1")
    assert query_of(api.calls("GET")[0])["q"] == "SELECT Id, Amount FROM Opportunity"


def test_missing_fields_names_fields_and_objects_the_org_lacks(connection, api):
    def describe(*names):
        return reply(200, {"fields": [{"name": n} for n in ("Id", "Name", *names)]})

    api.on("GET", DATA + "sobjects/Account/describe", describe("ExternalID__c"))
    api.on("GET", DATA + "sobjects/Contact/describe", describe("ExternalID__c"))
    api.on("GET", DATA + "sobjects/Product2/describe", describe("ExternalID__c"))
    api.on(
        "GET",
        DATA + "sobjects/Opportunity/describe",
        describe("KashFlow_Invoice_Status__c", "KashFlow_Amount_Due__c"),
    )
    api.on(
        "GET",
        DATA + "sobjects/KashFlow_Payment__c/describe",
        reply(
            404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
        ),
    )

    assert client_for(connection, api).missing_fields() == {
        "Opportunity": ["KashFlow_Invoice_Number__c"],
        "KashFlow_Payment__c": [OBJECT_MISSING],
    }


# -- Writing --------------------------------------------------------------------------------------


def test_upsert_sends_collections_of_200_and_maps_results_back_in_order(connection, api):
    api.on("PATCH", DATA + "composite/sobjects/Account/ExternalID__c", echo_saved)
    records = [{"ExternalID__c": f"CUST{i:04d}", "Name": f"Customer {i}"} for i in range(450)]

    results = client_for(connection, api).upsert("Account", "ExternalID__c", records)

    calls = api.calls("PATCH")
    assert [len(body_of(c)["records"]) for c in calls] == [200, 200, 50]
    assert body_of(calls[0])["allOrNone"] is False
    assert body_of(calls[2])["records"][0] == {
        "attributes": {"type": "Account"},
        "ExternalID__c": "CUST0400",
        "Name": "Customer 400",
    }
    assert [r.index for r in results] == list(range(450))
    assert all(r.success and r.created for r in results)


def test_delete_sends_ids_200_a_call_and_maps_results_back_in_order(connection, api):
    def answer(request):
        ids = query_of(request)["ids"].split(",")
        items = [{"id": i, "success": True, "errors": []} for i in ids]
        if "a0X000000000000002" in ids:
            items[ids.index("a0X000000000000002")] = {
                "id": None,
                "success": False,
                "errors": [{"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted"}],
            }
        return reply(200, items)(request)

    api.on("DELETE", DATA + "composite/sobjects", answer)
    record_ids = [f"a0X{i:015d}" for i in range(250)]

    results = client_for(connection, api).delete(record_ids)

    calls = api.calls("DELETE")
    assert [len(query_of(c)["ids"].split(",")) for c in calls] == [200, 50]
    assert query_of(calls[0])["allOrNone"] == "false"
    assert [r.index for r in results] == list(range(250))
    assert not results[2].success and results[2].error.code == "ENTITY_IS_DELETED"
    assert sum(r.success for r in results) == 249


def test_per_record_failures_come_back_as_permanent_errors_with_the_field(connection, api):
    api.on(
        "PATCH",
        DATA + "composite/sobjects/Account/ExternalID__c",
        reply(
            200,
            [
                {"id": "001A", "success": True, "errors": [], "created": False},
                {
                    "success": False,
                    "errors": [
                        {
                            "statusCode": "REQUIRED_FIELD_MISSING",
                            "message": "Required fields are missing: [Name]",
                            "fields": ["Name"],
                        }
                    ],
                },
            ],
        ),
    )

    ok, failed = client_for(connection, api).upsert(
        "Account", "ExternalID__c", [{"ExternalID__c": "A", "Name": "A"}, {"ExternalID__c": "B"}]
    )

    assert ok.success and ok.id == "001A" and not ok.created
    assert not failed.success and failed.index == 1
    assert failed.error.permanent and failed.error.code == "REQUIRED_FIELD_MISSING"
    assert failed.error.message == (
        "Salesforce could not save Account B: Required fields are missing: [Name] (fields: Name)"
    )


def test_records_that_met_a_lock_are_sent_again_alone(connection, api, fast_retries):
    locked = {
        "success": False,
        "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain lock"}],
    }
    api.on(
        "PATCH",
        DATA + "composite/sobjects",
        reply(200, [{"id": "0061", "success": True, "errors": []}, locked]),
        reply(200, [{"id": "0062", "success": True, "errors": []}]),
    )

    results = client_for(connection, api).update(
        "Opportunity", [{"Id": "0061", "StageName": "Paid"}, {"Id": "0062", "StageName": "Paid"}]
    )

    assert [r.success for r in results] == [True, True]
    assert [len(body_of(c)["records"]) for c in api.calls("PATCH")] == [2, 1]
    assert body_of(api.calls("PATCH")[1])["records"][0]["Id"] == "0062"


def test_an_upsert_that_lost_a_race_is_sent_again_once_and_at_once(connection, api, fast_retries):
    lost = {
        "success": False,
        "errors": [
            {
                "statusCode": "DUPLICATE_VALUE",
                "message": "duplicate value found: ExternalID__c duplicates value on record "
                "with id: 001000000000001AAA",
                "fields": [],
            }
        ],
    }
    path = DATA + "composite/sobjects/Account/ExternalID__c"
    api.on("PATCH", path, reply(200, [lost, lost]), reply(200, [lost, lost]))

    results = client_for(connection, api).upsert("Account", "ExternalID__c", accounts(2))

    # Lost twice is no race: the record's own fault, once retried, never a loop, no waiting.
    assert [r.success for r in results] == [False, False]
    assert all(r.error.code == "DUPLICATE_VALUE" and r.error.permanent for r in results)
    assert len(api.calls("PATCH")) == 2
    assert fast_retries == []


def test_decimals_are_sent_exactly(connection, api):
    api.on("POST", DATA + "composite/sobjects", echo_saved)

    client_for(connection, api).create(
        "Opportunity", [{"Name": "Deal", "Amount": Decimal("1234.5678")}]
    )

    assert '"Amount":1234.5678' in api.calls("POST", DATA + "composite/sobjects")[0].body


def test_a_daily_limit_refusal_is_transient_and_says_so(connection, api):
    api.on(
        "PATCH",
        DATA + "composite/sobjects/Account/ExternalID__c",
        reply(
            403,
            [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
        ),
    )

    with pytest.raises(ApiError) as caught:
        client_for(connection, api).upsert("Account", "ExternalID__c", [{"ExternalID__c": "A"}])

    assert caught.value.transient
    assert "API limit is used up" in caught.value.message


def test_bulk_api_2_is_used_above_the_threshold_and_results_map_back(connection, api, fast_retries):
    jobs = DATA + "jobs/ingest"
    api.on("POST", jobs + "/?", reply(200, {"id": "7501", "state": "Open"}))
    api.on("PUT", jobs + "/7501/batches", reply(201))
    api.on("PATCH", jobs + "/7501", reply(200, {"id": "7501", "state": "UploadComplete"}))
    api.on(
        "GET",
        jobs + "/7501",
        reply(
            200,
            {
                "id": "7501",
                "state": "JobComplete",
                "numberRecordsProcessed": 3,
                "numberRecordsFailed": 1,
            },
        ),
    )
    api.on(
        "GET",
        jobs + "/7501/successfulResults",
        reply(
            200,
            '"sf__Id","sf__Created","ExternalID__c","Name"\n'
            '"001C","true","C","Gamma"\n"001A","false","A","Alpha"\n',
        ),
    )
    api.on(
        "GET",
        jobs + "/7501/failedResults",
        reply(
            200,
            '"sf__Id","sf__Error","ExternalID__c","Name"\n'
            '"","REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --","B",""\n',
        ),
    )
    records = [
        {"ExternalID__c": "A", "Name": "Alpha", "AnnualRevenue": Decimal("1234.5678")},
        {"ExternalID__c": "B", "Name": None},
        {"ExternalID__c": "C", "Name": "Gamma"},
    ]

    results = client_for(connection, api).upsert(
        "Account", "ExternalID__c", records, bulk_threshold=2
    )

    assert [(r.index, r.id, r.created, r.success) for r in results] == [
        (0, "001A", False, True),
        (1, None, False, False),
        (2, "001C", True, True),
    ]
    assert results[1].error.code == "REQUIRED_FIELD_MISSING" and results[1].error.permanent
    uploaded = api.calls("PUT")[0].body
    uploaded = uploaded.decode() if isinstance(uploaded, bytes) else uploaded
    assert "1234.5678" in uploaded and "#N/A" in uploaded
    assert api.calls("PATCH", DATA + "composite/.*") == []


def test_a_bulk_upsert_that_lost_a_race_is_sent_again_by_collections(connection, api, fast_retries):
    jobs = DATA + "jobs/ingest"
    api.on("POST", jobs + "/?", reply(200, {"id": "7501", "state": "Open"}))
    api.on("PUT", jobs + "/7501/batches", reply(201))
    api.on("PATCH", jobs + "/7501", reply(200, {"id": "7501", "state": "UploadComplete"}))
    api.on(
        "GET",
        jobs + "/7501",
        reply(
            200,
            {
                "id": "7501",
                "state": "JobComplete",
                "numberRecordsProcessed": 2,
                "numberRecordsFailed": 1,
            },
        ),
    )
    api.on(
        "GET",
        jobs + "/7501/successfulResults",
        reply(200, '"sf__Id","sf__Created","ExternalID__c","Name"\n"001A","true","A","Alpha"\n'),
    )
    api.on(
        "GET",
        jobs + "/7501/failedResults",
        reply(
            200,
            '"sf__Id","sf__Error","ExternalID__c","Name"\n'
            '"","DUPLICATE_VALUE:duplicate value found: ExternalID__c duplicates value on '
            'record with id: 001000000000009AAA:--","B","Beta"\n',
        ),
    )
    api.on(
        "PATCH",
        DATA + "composite/sobjects/Account/ExternalID__c",
        reply(200, [{"id": "001B", "success": True, "errors": [], "created": False}]),
    )
    records = [{"ExternalID__c": "A", "Name": "Alpha"}, {"ExternalID__c": "B", "Name": "Beta"}]

    results = client_for(connection, api).upsert(
        "Account", "ExternalID__c", records, bulk_threshold=1
    )

    assert [(r.id, r.created, r.success) for r in results] == [
        ("001A", True, True),
        ("001B", False, True),
    ]
    [again] = api.calls("PATCH", DATA + "composite/.*")
    assert [r["ExternalID__c"] for r in body_of(again)["records"]] == ["B"]


# -- API budget ---------------------------------------------------------------------------------


def test_api_usage_is_read_from_every_response_and_stored_sparingly(connection, api):
    api.on(
        "GET",
        DATA + "sobjects/Account/describe",
        reply(200, {"fields": []}, {"Sforce-Limit-Info": "api-usage=12000/15000"}),
        reply(200, {"fields": []}, {"Sforce-Limit-Info": "api-usage=12001/15000"}),
        reply(200, {"fields": []}, {"Sforce-Limit-Info": "api-usage=12345/15000"}),
    )
    client = client_for(connection, api)

    client.describe("Account")
    connection.refresh_from_db()
    assert (connection.api_usage_used, connection.api_usage_limit) == (12000, 15000)

    client.describe("Account")  # moved less than 1 point within seconds: not written
    connection.refresh_from_db()
    assert connection.api_usage_used == 12000

    client.describe("Account")  # moved 2.3 points: written
    connection.refresh_from_db()
    assert connection.api_usage_used == 12345


def test_limit_info_parsing_ignores_the_per_app_figure():
    header = "per-app-api-usage=17/250(appName=sample); api-usage=18/5000"
    assert parse_limit_info(header) == (18, 5000)
    assert parse_limit_info("api-usage=18/5000; per-app-api-usage=17/250(appName=x)") == (18, 5000)
    assert parse_limit_info("") is None


def test_budget_exhausted_says_why_scheduled_runs_wait(connection):
    connection.record_api_usage(12345, 15000)

    assert budget_exhausted(connection) == (
        "Salesforce API use is at 12,345 of 15,000 calls today (82%), above the 80% kept for "
        "urgent work; scheduled syncs wait until it falls."
    )


def test_budget_is_free_below_the_share_or_when_the_reading_is_stale(connection, settings):
    connection.record_api_usage(11000, 15000)
    assert budget_exhausted(connection) is None

    connection.record_api_usage(14000, 15000)
    Connection.objects.filter(pk=connection.pk).update(
        api_usage_at=timezone.now() - timedelta(hours=1)
    )
    assert budget_exhausted(connection) is None  # the next run's first call refreshes it

    settings.KASHFORCE = {**settings.KASHFORCE, "API_BUDGET_SHARE": 0.95}
    connection.record_api_usage(14000, 15000)
    assert budget_exhausted(connection) is None


# -- Over real sockets, against the sandbox -------------------------------------------------------


@pytest.fixture
def sandbox_salesforce(sandbox, settings, fast_retries):
    settings.KASHFORCE = {**settings.KASHFORCE, "HTTP_TIMEOUT": (2.0, 0.5)}
    return salesforce_connection(sandbox)


def new_client(connection):
    return SalesforceClient(Connection.objects.get(pk=connection.pk))


def accounts(count, start=0):
    return [
        {"ExternalID__c": f"CUST{i:04d}", "Name": f"Customer {i}"}
        for i in range(start, start + count)
    ]


@pytest.mark.parametrize("method", ["sf_password", "sf_jwt", "sf_client_credentials"])
def test_sandbox_every_sign_in_method_works_through_configuration(sandbox, method):
    org_switches(sandbox, soap_login_enabled=method == "sf_password")  # an older org for SOAP
    connection = salesforce_connection(sandbox, method)
    client = SalesforceClient(connection)

    assert client.missing_fields() == {}
    assert client.instance_url == sandbox.info["salesforce"]["instance_url"]
    assert calls(sandbox, "salesforce", "POST /services/") == 1  # SOAP or OAuth token


def test_sandbox_the_token_is_reused_across_clients(sandbox, sandbox_salesforce):
    new_client(sandbox_salesforce).describe("Account")
    new_client(sandbox_salesforce).describe("Opportunity")

    assert calls(sandbox, "salesforce", "POST /services/oauth2") == 1


def test_sandbox_an_invalid_token_means_one_new_login(sandbox, sandbox_salesforce):
    new_client(sandbox_salesforce).describe("Account")
    sandbox_salesforce.save_session(
        {
            "access_token": "00D000000000001!AQrevoked",
            "instance_url": new_client(sandbox_salesforce).instance_url,
        }
    )

    new_client(sandbox_salesforce).describe("Account")

    assert calls(sandbox, "salesforce", "POST /services/oauth2") == 2


def test_sandbox_a_session_that_keeps_expiring_is_an_error_not_a_loop(sandbox, sandbox_salesforce):
    client = new_client(sandbox_salesforce)
    client.login()
    set_faults(sandbox, "salesforce", ("GET /services/data/v59.0/query", "expire_token", 1.0))

    with pytest.raises(ApiError) as caught:
        list(client.query("SELECT Id FROM Account"))

    assert caught.value.status == 401
    assert calls(sandbox, "salesforce", "POST /services/oauth2") == 2
    assert calls(sandbox, "salesforce", "/query") == 2


def test_sandbox_450_records_are_upserted_in_3_collection_calls(sandbox, sandbox_salesforce):
    client = new_client(sandbox_salesforce)
    client.login()
    control(sandbox.info["control"]["salesforce"], "stats/reset", {})

    results = client.upsert("Account", "ExternalID__c", accounts(450))
    again = client.upsert("Account", "ExternalID__c", accounts(450))

    assert all(r.success and r.created for r in results)
    assert all(r.success and not r.created for r in again)
    assert [r.id for r in again] == [r.id for r in results]
    assert calls(sandbox, "salesforce", "composite/sobjects") == 6
    assert calls(sandbox, "salesforce") == 6  # nothing else


def test_sandbox_bulk_api_is_used_above_the_threshold(sandbox, sandbox_salesforce):
    client = new_client(sandbox_salesforce)
    records = accounts(5)
    records[3] = {"ExternalID__c": "CUST0003"}  # no Name: that record fails alone

    results = client.upsert("Account", "ExternalID__c", records, bulk_threshold=4)

    assert [r.success for r in results] == [True, True, True, False, True]
    assert results[3].error.code == "REQUIRED_FIELD_MISSING" and results[3].error.permanent
    assert calls(sandbox, "salesforce", "composite") == 0
    assert calls(sandbox, "salesforce", "jobs/ingest") >= 4
    names = {r["ExternalID__c"] for r in client.query("SELECT ExternalID__c FROM Account")}
    assert names == {"CUST0000", "CUST0001", "CUST0002", "CUST0004"}


def test_sandbox_money_round_trips_exactly(sandbox, sandbox_salesforce):
    # Currency fields hold 2 places. (The sandbox keeps numbers as floats, so a value past
    # 15 significant digits would not survive it; exact encoding is tested at the seam above.)
    amount = Decimal("1234.57")
    client = new_client(sandbox_salesforce)
    (result,) = client.create(
        "Opportunity",
        [
            {
                "Name": "Big deal",
                "StageName": "Closed Won",
                "CloseDate": "2024-03-31",
                "Amount": amount,
            }
        ],
    )
    assert result.success, result.error

    (deal,) = client.query(f"SELECT Amount, CloseDate FROM Opportunity WHERE Id = '{result.id}'")
    assert deal["Amount"] == amount  # a float 1234.57 would not equal it
    assert type(deal["Amount"]) is Decimal
    assert deal["CloseDate"] == "2024-03-31"


def test_sandbox_a_429_storm_is_waited_out(sandbox, sandbox_salesforce, monkeypatch):
    client = new_client(sandbox_salesforce)
    client.login()
    set_faults(sandbox, "salesforce", ("PATCH /services/data", "429", 1.0))
    waits = []

    def wait_then_calm(seconds):
        waits.append(seconds)
        if len(waits) == 2:
            clear_faults(sandbox, "salesforce")

    monkeypatch.setattr(http, "sleep", wait_then_calm)

    results = client.upsert("Account", "ExternalID__c", accounts(3))

    assert all(r.success for r in results)
    assert len(waits) == 2 and min(waits) >= 1  # Retry-After: 1 honoured
    assert calls(sandbox, "salesforce", "composite/sobjects") == 3


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
    sandbox, sandbox_salesforce, fast_retries, kind, status, code
):
    client = new_client(sandbox_salesforce)
    client.login()
    set_faults(sandbox, "salesforce", ("GET /services/data/v59.0/query", kind, 1.0, 1))

    with pytest.raises(ApiError) as caught:
        list(client.query("SELECT Id FROM Account"))

    assert caught.value.transient and caught.value.status == status
    assert code is None or caught.value.code == code
    assert calls(sandbox, "salesforce", "/query") == 3  # HTTP_ATTEMPTS
    assert len(fast_retries) == 2


def test_sandbox_an_upsert_whose_answer_is_lost_is_safely_repeated(
    sandbox, sandbox_salesforce, monkeypatch
):
    client = new_client(sandbox_salesforce)
    client.login()
    set_faults(sandbox, "salesforce", ("PATCH /services/data", "ambiguous", 1.0))
    monkeypatch.setattr(http, "sleep", lambda seconds: clear_faults(sandbox, "salesforce"))

    results = client.upsert("Account", "ExternalID__c", accounts(2))

    assert all(r.success for r in results)
    assert not any(r.created for r in results)  # the lost first attempt had created them
    assert len(list(client.query("SELECT Id FROM Account"))) == 2


def test_sandbox_an_ambiguous_create_is_reported_and_the_record_exists(sandbox, sandbox_salesforce):
    client = new_client(sandbox_salesforce)
    client.login()
    set_faults(sandbox, "salesforce", ("POST /services/data", "ambiguous", 1.0))

    with pytest.raises(ApiError) as caught:
        client.create("Account", [{"Name": "Acme Ltd"}])

    assert caught.value.transient and caught.value.ambiguous
    assert calls(sandbox, "salesforce", "POST /services/data") == 1
    clear_faults(sandbox, "salesforce")
    assert [a["Name"] for a in client.query("SELECT Name FROM Account")] == ["Acme Ltd"]


def test_sandbox_api_usage_is_stored_and_holds_back_scheduled_runs(sandbox, sandbox_salesforce):
    control(sandbox.info["control"]["salesforce"], "limits", {"used": 12344})

    new_client(sandbox_salesforce).describe("Account")

    sandbox_salesforce.refresh_from_db()
    assert (sandbox_salesforce.api_usage_used, sandbox_salesforce.api_usage_limit) == (12345, 15000)
    assert budget_exhausted(sandbox_salesforce).startswith(
        "Salesforce API use is at 12,345 of 15,000 calls today (82%)"
    )


# -- Fidelity with the published API (issue #12, #13 case 11) -------------------------------------


def spy_collections(client, monkeypatch) -> list[tuple[list, list]]:
    """(records sent, results answered) of every collections call the client makes."""
    seen = []
    real = client._request

    def request(method, path, what, body=None):
        answer = real(method, path, what, body)
        if path.startswith("composite/sobjects"):
            seen.append(([r.get("ExternalID__c") for r in body["records"]], answer))
        return answer

    monkeypatch.setattr(client, "_request", request)
    return seen


def test_sandbox_unable_to_lock_row_in_a_200_is_retried_for_those_records_only(
    sandbox, sandbox_salesforce, monkeypatch
):
    client = new_client(sandbox_salesforce)
    client.login()
    set_faults(sandbox, "salesforce", ("PATCH /services/data", "lock_row", 1.0))
    seen = spy_collections(client, monkeypatch)
    monkeypatch.setattr(http, "sleep", lambda seconds: clear_faults(sandbox, "salesforce"))

    results = client.upsert("Account", "ExternalID__c", accounts(20))

    assert all(r.success for r in results)
    (first_sent, first_answer), (retry_sent, retry_answer) = seen
    locked = [key for key, r in zip(first_sent, first_answer, strict=True) if not r["success"]]
    assert locked and len(locked) < 20
    assert {e["statusCode"] for r in first_answer for e in r["errors"]} == {"UNABLE_TO_LOCK_ROW"}
    assert retry_sent == locked  # only those, in order
    assert all(r["success"] for r in retry_answer)
    keys = [r["ExternalID__c"] for r in client.query("SELECT ExternalID__c FROM Account")]
    assert sorted(keys) == sorted(a["ExternalID__c"] for a in accounts(20))  # none twice


def test_sandbox_an_upsert_that_lost_to_a_concurrent_one_is_retried_as_an_update(
    sandbox, sandbox_salesforce, monkeypatch
):
    # Two workers (or the customers and invoices flows) upserting one new key at once: one
    # insert wins, the other answer is DUPLICATE_VALUE. Not the record's fault.
    client = new_client(sandbox_salesforce)
    client.login()
    control(
        sandbox.info["control"]["salesforce"],
        "faults",
        {"rules": [{"match": "PATCH /services/data", "kind": "upsert_race", "count": 1}]},
    )
    seen = spy_collections(client, monkeypatch)

    results = client.upsert("Account", "ExternalID__c", accounts(10))

    assert all(r.success for r in results), [r.error.message for r in results if r.error]
    (first_sent, first_answer), (retry_sent, _) = seen
    lost = [key for key, r in zip(first_sent, first_answer, strict=True) if not r["success"]]
    assert lost and retry_sent == lost
    assert not any(r.created for r, key in zip(results, first_sent, strict=True) if key in lost)
    keys = [r["ExternalID__c"] for r in client.query("SELECT ExternalID__c FROM Account")]
    assert sorted(keys) == sorted(a["ExternalID__c"] for a in accounts(10))


def test_sandbox_a_duplicate_value_that_is_no_race_stays_the_records_fault(
    sandbox, sandbox_salesforce
):
    client = new_client(sandbox_salesforce)
    client.create("Account", [{"Name": "Holder", "ExternalID__c": "TAKEN"}])
    other = client.create("Account", [{"Name": "Other"}])[0].id

    (result,) = client.update("Account", [{"Id": other, "ExternalID__c": "TAKEN"}])

    assert not result.success and result.error.code == "DUPLICATE_VALUE"
    assert result.error.permanent


def test_sandbox_password_sign_in_refused_by_the_org_says_to_use_jwt(sandbox):
    connection = salesforce_connection(sandbox, "sf_password")  # the org has SOAP login() off

    with pytest.raises(ApiError) as caught:
        SalesforceClient(connection).login()

    assert caught.value.permanent
    assert "JWT bearer" in caught.value.message and "65.0" in caught.value.message
    connection.refresh_from_db()
    assert "JWT bearer" in connection.last_check_message


def test_sandbox_password_sign_in_at_api_65_says_to_use_jwt(sandbox):
    org_switches(sandbox, soap_login_enabled=True)
    connection = salesforce_connection(sandbox, "sf_password", api_version="65.0")

    with pytest.raises(ApiError) as caught:
        SalesforceClient(connection).login()

    assert caught.value.permanent and "JWT bearer" in caught.value.message


LONG_NAME = "Harbour & Sons Marine Engineering (Southampton) Ltd, Units 4 to 6"


def test_sandbox_a_query_too_long_for_salesforce_is_explained(sandbox, sandbox_salesforce):
    client = new_client(sandbox_salesforce)
    names = ", ".join(f"'{LONG_NAME} {n:03d}'" for n in range(200))

    with pytest.raises(ApiError) as caught:
        list(client.query(f"SELECT Id FROM Account WHERE Name IN ({names})"))

    assert caught.value.status == 414 and caught.value.code == "REQUEST_TOO_LONG"
    assert (
        "too long" in caught.value.message and "records themselves are fine" in caught.value.message
    )


def test_sandbox_query_in_cuts_a_200_item_in_list_to_fit_the_uri_limit(sandbox, sandbox_salesforce):
    client = new_client(sandbox_salesforce)
    names = [f"{LONG_NAME} {n:03d}" for n in range(200)]
    client.upsert(
        "Account",
        "ExternalID__c",
        [{"ExternalID__c": f"K{n}", "Name": name} for n, name in enumerate(names)],
    )
    control(sandbox.info["control"]["salesforce"], "stats/reset", {})

    def build(chunk):
        quoted = ", ".join(soql_quote(name) for name in chunk)
        return f"SELECT Id, Name FROM Account WHERE Name IN ({quoted}) OR Name = {soql_quote(names[0])}"

    found = list(client.query_in(build, names))

    assert sorted(r["Name"] for r in found) == sorted(names)  # each once, despite the OR
    assert 2 <= calls(sandbox, "salesforce", "/query") <= 4
