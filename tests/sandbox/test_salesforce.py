"""The Salesforce simulator driven by unmodified simple-salesforce over real HTTPS sockets."""

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from sandbox.runner import SandboxServer
from sandbox.salesforce import ids
from tests.fixtures_sandbox import control, simulator_session


def info(sandbox):
    return sandbox.info["salesforce"]


def login(sandbox, version="59.0", **kwargs) -> Salesforce:
    """OAuth password grant (which simple-salesforce repeats on an expired session) unless
    other credentials are given; SOAP login() is off in the simulated org by default."""
    creds = info(sandbox)
    if not kwargs:
        kwargs = {k: creds[k] for k in ("username", "password", "consumer_key", "consumer_secret")}
    return Salesforce(session=simulator_session(creds), version=version, **kwargs)


def soap_kwargs(sandbox, **overrides) -> dict:
    creds = info(sandbox)
    return {k: creds[k] for k in ("username", "password", "security_token")} | overrides


def org_switches(sandbox, **switches) -> dict:
    return control(sandbox.info["control"]["salesforce"], "org", switches)


def direct(sandbox) -> Salesforce:
    """Direct mode: a token from the OAuth endpoint, no login flow inside the client."""
    creds = info(sandbox)
    session = simulator_session(creds)
    token = session.post(
        creds["login_url"] + "/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": creds["consumer_key"],
            "client_secret": creds["consumer_secret"],
        },
    ).json()["access_token"]
    return Salesforce(
        instance_url=creds["instance_url"], session_id=token, session=session, version="59.0"
    )


@pytest.fixture
def sf(sandbox):
    return login(sandbox)


@pytest.fixture
def catalogue(sf):
    """One product with a standard price book entry at 100.00."""
    book = sf.query("SELECT Id FROM Pricebook2 WHERE IsStandard = true")["records"][0]["Id"]
    product = sf.Product2.create({"Name": "Widget", "ProductCode": "W-1", "ExternalID__c": "W-1"})
    entry = sf.PricebookEntry.create(
        {"Pricebook2Id": book, "Product2Id": product["id"], "UnitPrice": 100, "IsActive": True}
    )
    return {"pricebook": book, "product": product["id"], "entry": entry["id"]}


def faults(sandbox, *rules):
    control(sandbox.info["control"]["salesforce"], "faults", {"rules": list(rules)})


# -- ids ----------------------------------------------------------------------------------------


def test_ids_carry_the_case_checksum():
    assert ids.normalize("001000000000001") == "001000000000001AAA"
    # Third chunk "Gv7qJ": upper case at positions 0 and 4 -> 1 + 16 = 17 -> "R".
    assert ids.checksum("0015000000Gv7qJ") == "AAR"
    assert ids.normalize("0015000000Gv7qJAAR") == "0015000000Gv7qJAAR"
    assert ids.normalize("0015000000Gv7qJAAA") is None


# -- login flows --------------------------------------------------------------------------------


def test_soap_login_with_password_and_token(sandbox):
    org_switches(sandbox, soap_login_enabled=True)
    sf = login(sandbox, **soap_kwargs(sandbox))
    assert sf.sf_instance == info(sandbox)["instance_url"].removeprefix("https://")
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 0


def test_soap_login_with_a_wrong_password_is_invalid_login(sandbox):
    org_switches(sandbox, soap_login_enabled=True)
    with pytest.raises(SalesforceAuthenticationFailed) as raised:
        login(sandbox, **soap_kwargs(sandbox, password="nope", security_token="x"))
    assert raised.value.code == "INVALID_LOGIN"


def test_soap_login_is_off_in_a_new_org(sandbox):
    # Orgs created from Winter '26 have "Enable SOAP API login()" off; reset restores that.
    assert org_switches(sandbox)["soap_login_enabled"] is False
    with pytest.raises(SalesforceAuthenticationFailed) as raised:
        login(sandbox, **soap_kwargs(sandbox))
    assert raised.value.code == "INVALID_OPERATION"
    assert "SOAP API login() is disabled" in raised.value.auth_message


def test_soap_login_is_refused_from_api_65_even_when_enabled(sandbox):
    org_switches(sandbox, soap_login_enabled=True)
    assert login(sandbox, version="64.0", **soap_kwargs(sandbox)).query("SELECT Id FROM Account")
    with pytest.raises(SalesforceAuthenticationFailed) as raised:
        login(sandbox, version="65.0", **soap_kwargs(sandbox))
    assert raised.value.code == "INVALID_OPERATION"
    assert "65.0" in raised.value.auth_message
    sandbox.reset("empty")
    assert org_switches(sandbox)["soap_login_enabled"] is False


def test_oauth_password_grant(sandbox):
    creds = info(sandbox)
    sf = login(
        sandbox,
        username=creds["username"],
        password=creds["password"],
        consumer_key=creds["consumer_key"],
        consumer_secret=creds["consumer_secret"],
    )
    assert sf.Account.create({"Name": "Acme"})["success"]


def test_client_credentials_with_my_domain(sandbox):
    creds = info(sandbox)
    sf = login(
        sandbox,
        consumer_key=creds["consumer_key"],
        consumer_secret=creds["consumer_secret"],
        domain="kashforce.my",
    )
    assert sf.describe()["sobjects"]


def test_client_credentials_with_a_wrong_secret_fail(sandbox):
    creds = info(sandbox)
    with pytest.raises(SalesforceAuthenticationFailed):
        login(
            sandbox,
            consumer_key=creds["consumer_key"],
            consumer_secret="bad",
            domain="kashforce.my",
        )


def test_jwt_bearer_with_the_generated_key(sandbox):
    creds = info(sandbox)
    sf = login(
        sandbox,
        username=creds["username"],
        consumer_key=creds["consumer_key"],
        privatekey_file=creds["jwt_private_key_file"],
    )
    assert sf.query("SELECT Id FROM Account")["done"]


def test_jwt_signed_by_another_key_is_refused(sandbox):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    creds = info(sandbox)
    with pytest.raises(SalesforceAuthenticationFailed):
        login(
            sandbox,
            username=creds["username"],
            consumer_key=creds["consumer_key"],
            privatekey=other.decode(),
        )


def test_jwt_for_another_user_is_refused(sandbox):
    creds = info(sandbox)
    with pytest.raises(SalesforceAuthenticationFailed):
        login(
            sandbox,
            username="someone@else",
            consumer_key=creds["consumer_key"],
            privatekey_file=creds["jwt_private_key_file"],
        )


def test_direct_session_mode(sandbox):
    sf = direct(sandbox)
    sf.Account.create({"Name": "Direct Ltd"})
    assert sf.query("SELECT Name FROM Account")["records"][0]["Name"] == "Direct Ltd"


def test_unknown_token_is_401_invalid_session_id(sandbox):
    creds = info(sandbox)
    sf = Salesforce(
        instance_url=creds["instance_url"],
        session_id="00Dbogus!AQ",
        session=simulator_session(creds),
        version="59.0",
    )
    with pytest.raises(SalesforceExpiredSession) as raised:
        sf.query("SELECT Id FROM Account")
    assert raised.value.content[0]["errorCode"] == "INVALID_SESSION_ID"


def test_expired_session_is_renewed_by_a_login_client(sandbox):
    sf = login(sandbox)
    sandbox.salesforce.sessions.expire(sf.session_id)
    old = sf.session_id
    assert sf.query("SELECT Id FROM Account")["done"]
    assert sf.session_id != old


def test_sessions_expire_after_the_configured_lifetime(sandbox):
    sandbox.salesforce.sessions.lifetime_seconds = 0.2
    try:
        sf = direct(sandbox)
        time.sleep(0.3)
        with pytest.raises(SalesforceExpiredSession):
            sf.query("SELECT Id FROM Account")
    finally:
        sandbox.salesforce.sessions.lifetime_seconds = 7200


# -- CRUD, upsert, describe ---------------------------------------------------------------------


def test_create_get_update_delete(sf):
    created = sf.Account.create(
        {"Name": "Acme Ltd", "BillingCity": "Leeds", "BillingPostalCode": "LS1 1AA"}
    )
    assert created["success"] and created["id"].startswith("001") and len(created["id"]) == 18
    record = sf.Account.get(created["id"])
    assert record["attributes"]["type"] == "Account"
    assert record["BillingAddress"]["city"] == "Leeds"
    assert record["CreatedDate"].endswith("+0000")
    assert sf.Account.update(created["id"], {"Phone": "0113 496 0000"}) == 204
    updated = sf.Account.get(created["id"][:15])
    assert updated["Phone"] == "0113 496 0000"
    assert updated["SystemModstamp"] > record["SystemModstamp"]
    assert sf.Account.delete(created["id"]) == 204
    with pytest.raises(SalesforceResourceNotFound) as raised:
        sf.Account.get(created["id"])
    assert raised.value.content[0]["errorCode"] == "ENTITY_IS_DELETED"


def test_validation_errors_use_salesforce_codes(sf):
    cases = [
        ("Account", {"Phone": "1"}, "REQUIRED_FIELD_MISSING"),
        ("Account", {"Name": "x", "Nope__c": 1}, "INVALID_FIELD"),
        ("Account", {"Name": "x" * 256}, "STRING_TOO_LONG"),
        ("Contact", {"LastName": "x", "Email": "not-an-email"}, "INVALID_EMAIL_ADDRESS"),
        ("Contact", {"LastName": "x", "AccountId": "006000000000001"}, "MALFORMED_ID"),
        (
            "Opportunity",
            {"Name": "x", "StageName": "Won-ish", "CloseDate": "2024-01-31"},
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        ),
        (
            "Opportunity",
            {"Name": "x", "StageName": "Prospecting", "CloseDate": "31/01/2024"},
            "INVALID_TYPE_ON_FIELD_IN_RECORD",
        ),
        ("OpportunityLineItem", {"Quantity": 1}, "REQUIRED_FIELD_MISSING"),
    ]
    for type_name, body, code in cases:
        with pytest.raises(SalesforceMalformedRequest) as raised:
            getattr(sf, type_name).create(body)
        assert raised.value.content[0]["errorCode"] == code, (type_name, body)


def test_unique_external_id_refuses_a_duplicate(sf):
    sf.Account.create({"Name": "A", "ExternalID__c": "CUST1"})
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Account.create({"Name": "B", "ExternalID__c": "cust1"})
    assert raised.value.content[0]["errorCode"] == "DUPLICATE_VALUE"


def test_upsert_creates_then_updates(sf):
    created = sf.Account.upsert("ExternalID__c/KF-1", {"Name": "Acme"}, raw_response=True)
    assert created.status_code == 201 and created.json()["created"] is True
    updated = sf.Account.upsert("ExternalID__c/KF-1", {"Name": "Acme 2"}, raw_response=True)
    assert updated.status_code == 200 and updated.json()["created"] is False
    assert updated.json()["id"] == created.json()["id"]
    assert sf.Account.get_by_custom_id("ExternalID__c", "KF-1")["Name"] == "Acme 2"


def test_upsert_update_only_does_not_create(sf):
    with pytest.raises(SalesforceResourceNotFound):
        sf.restful(
            "sobjects/Account/ExternalID__c/NEW",
            method="PATCH",
            params={"updateOnly": "true"},
            json={"Name": "x"},
        )


def test_upsert_by_id_matching_several_records_is_300(sandbox, sf):
    # Unique external ids cannot collide through the API; a data load can leave duplicates.
    first = sf.Account.create({"Name": "A", "ExternalID__c": "DUP"})
    second = sf.Account.create({"Name": "B"})
    record = dict(sandbox.salesforce.store.get("Account", second["id"]), ExternalID__c="DUP")
    with sandbox.salesforce.store.transaction() as store:
        store.put("Account", record)
    with pytest.raises(SalesforceMoreThanOneRecord) as raised:
        sf.Account.upsert("ExternalID__c/DUP", {"Name": "C"})
    assert (
        len(raised.value.content) == 2
        and first["id"] in raised.value.content[0] + raised.value.content[1]
    )


def test_get_by_external_id_decodes_plus_as_space(sf):
    sf.Product2.create({"Name": "P", "ExternalID__c": "A B/C"})
    assert sf.Product2.get_by_custom_id("ExternalID__c", "A B/C")["Name"] == "P"


def test_describe_lists_field_metadata(sf):
    describe = sf.Opportunity.describe()
    fields = {f["name"]: f for f in describe["fields"]}
    assert describe["keyPrefix"] == "006"
    assert fields["Amount"]["type"] == "currency" and fields["Amount"]["scale"] == 2
    assert fields["StageName"]["restrictedPicklist"]
    assert "Closed Won" in [v["value"] for v in fields["StageName"]["picklistValues"]]
    assert fields["IsWon"]["updateable"] is False
    account = {f["name"]: f for f in sf.Account.describe()["fields"]}
    assert account["ExternalID__c"]["externalId"] and account["ExternalID__c"]["unique"]
    assert "KashFlow_Payment__c" in [s["name"] for s in sf.describe()["sobjects"]]


def test_opportunity_rules_stage_line_items_and_roll_up(sf, catalogue):
    account = sf.Account.create({"Name": "Acme"})["id"]
    opp = sf.Opportunity.create(
        {
            "AccountId": account,
            "Name": "Deal",
            "StageName": "Prospecting",
            "CloseDate": "2024-03-31",
        }
    )["id"]
    sf.OpportunityLineItem.create(
        {
            "OpportunityId": opp,
            "PricebookEntryId": catalogue["entry"],
            "Quantity": 3,
            "UnitPrice": 100,
            "Discount": 10,
        }
    )
    line = sf.query(
        f"SELECT TotalPrice, ProductCode, ListPrice FROM OpportunityLineItem "
        f"WHERE OpportunityId = '{opp}'"
    )["records"][0]
    assert line["TotalPrice"] == 270.0 and line["ProductCode"] == "W-1"
    sf.Opportunity.update(opp, {"StageName": "Closed Won"})
    record = sf.Opportunity.get(opp)
    assert record["Amount"] == 270.0 and record["HasOpportunityLineItem"]
    assert record["IsWon"] and record["IsClosed"] and record["Probability"] == 100
    assert record["Pricebook2Id"] == catalogue["pricebook"]


def test_line_item_without_pricebook_entry_is_field_integrity_exception(sf):
    opp = sf.Opportunity.create(
        {"Name": "D", "StageName": "Prospecting", "CloseDate": "2024-03-31"}
    )["id"]
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.OpportunityLineItem.create({"OpportunityId": opp, "Quantity": 1, "UnitPrice": 1})
    assert raised.value.content[0]["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"


def test_updated_and_deleted_windows(sf):
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC) - timedelta(minutes=5)
    keep = sf.Account.create({"Name": "Keep"})["id"]
    gone = sf.Account.create({"Name": "Gone"})["id"]
    sf.Account.delete(gone)
    end = datetime.now(UTC) + timedelta(minutes=1)
    assert sf.Account.updated(start, end)["ids"] == [keep]
    assert [d["id"] for d in sf.Account.deleted(start, end)["deletedRecords"]] == [gone]


# -- SOQL ---------------------------------------------------------------------------------------


def test_query_paging_past_2000_records(sandbox, sf):
    sandbox.reset("customers=2500")
    result = sf.query("SELECT Id, Name FROM Account")
    assert result["totalSize"] == 2500 and len(result["records"]) == 2000
    assert result["nextRecordsUrl"].startswith("/services/data/v59.0/query/01g")
    assert len(sf.query_all("SELECT Id FROM Account")["records"]) == 2500


def test_query_honours_the_batch_size_header(sandbox, sf):
    sandbox.reset("customers=450")
    result = sf.query("SELECT Id FROM Account", headers={"Sforce-Query-Options": "batchSize=200"})
    assert len(result["records"]) == 200 and not result["done"]
    more = sf.query_more(result["nextRecordsUrl"], identifier_is_url=True)
    assert len(more["records"]) == 200


def test_query_where_order_limit_offset(sf):
    for name, amount, stage in [
        ("A", 10, "Prospecting"),
        ("B", 20, "Closed Won"),
        ("C", None, "Closed Lost"),
        ("D", 40, "Closed Won"),
    ]:
        sf.Opportunity.create(
            {"Name": name, "Amount": amount, "StageName": stage, "CloseDate": "2024-02-01"}
        )

    def names(where):
        rows = sf.query(f"SELECT Name FROM Opportunity {where}")["records"]
        return [r["Name"] for r in rows]

    assert names("WHERE IsWon = true ORDER BY Amount DESC") == ["D", "B"]
    assert names("WHERE Amount > 15 AND (Name = 'b' OR Name IN ('D')) ORDER BY Name") == ["B", "D"]
    assert names("WHERE Amount = null") == ["C"]
    assert names("WHERE NOT Name LIKE 'a%' ORDER BY Amount ASC NULLS LAST") == ["B", "D", "C"]
    assert names("WHERE Name NOT IN ('A', 'B') ORDER BY Name DESC LIMIT 1") == ["D"]
    assert names("ORDER BY Name LIMIT 2 OFFSET 1") == ["B", "C"]
    assert names("WHERE CloseDate = 2024-02-01 AND CreatedDate = TODAY ORDER BY Name")[0] == "A"
    assert names("WHERE CreatedDate = LAST_N_DAYS:3 AND Amount >= 40") == ["D"]
    assert sf.query("SELECT COUNT() FROM Opportunity WHERE IsClosed = true")["totalSize"] == 3


def test_query_parent_fields_and_child_subquery(sf, catalogue):
    account = sf.Account.create({"Name": "Parent Co"})["id"]
    opp = sf.Opportunity.create(
        {"AccountId": account, "Name": "D", "StageName": "Closed Won", "CloseDate": "2024-03-31"}
    )["id"]
    sf.OpportunityLineItem.create(
        {
            "OpportunityId": opp,
            "PricebookEntryId": catalogue["entry"],
            "Quantity": 2,
            "UnitPrice": 50,
        }
    )
    sf.KashFlow_Payment__c.create({"Opportunity__c": opp, "Amount__c": 100, "ExternalID__c": "P1"})
    record = sf.query(
        "SELECT Id, Account.Name, (SELECT Quantity, PricebookEntry.Product2.ProductCode, "
        "Product2.ExternalID__c FROM OpportunityLineItems) FROM Opportunity"
    )["records"][0]
    assert record["Account"]["Name"] == "Parent Co"
    line = record["OpportunityLineItems"]["records"][0]
    assert line["PricebookEntry"]["Product2"]["ProductCode"] == "W-1"
    assert line["Product2"]["ExternalID__c"] == "W-1"
    payment = sf.query("SELECT Name, Opportunity__r.Name FROM KashFlow_Payment__c")["records"][0]
    assert payment["Opportunity__r"]["Name"] == "D" and payment["Name"].startswith("PAY-")


def test_query_errors(sf):
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.query("SELECT Id FROM")
    assert raised.value.content[0]["errorCode"] == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.query("SELECT Nope FROM Account")
    assert raised.value.content[0]["errorCode"] == "INVALID_FIELD"


def test_query_all_includes_deleted_rows(sf):
    sf.Account.delete(sf.Account.create({"Name": "Gone"})["id"])
    assert sf.query("SELECT Id FROM Account")["totalSize"] == 0
    rows = sf.query_all("SELECT Id, IsDeleted FROM Account", include_deleted=True)["records"]
    assert rows[0]["IsDeleted"] is True


def test_api_usage_after_a_query(sf):
    sf.query("SELECT Id FROM Account")
    used = sf.api_usage["api-usage"]
    assert used.total == 15000 and used.used >= 1


def test_limits_resource(sf):
    assert sf.limits()["DailyApiRequests"]["Max"] == 15000


def test_request_limit_exceeded_is_403(sandbox, sf):
    control(sandbox.info["control"]["salesforce"], "limits", {"daily_api_limit": 3, "used": 2})
    sf.query("SELECT Id FROM Account")
    with pytest.raises(SalesforceRefusedRequest) as raised:
        sf.query("SELECT Id FROM Account")
    assert raised.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"


# -- collections, composite, bulk ---------------------------------------------------------------


def test_collections_create_update_retrieve_delete(sf):
    records = [{"attributes": {"type": "Account"}, "Name": f"A{i}"} for i in range(200)]
    results = sf.restful("composite/sobjects", method="POST", json={"records": records})
    assert len(results) == 200 and all(r["success"] for r in results)
    ids_ = [r["id"] for r in results[:3]]
    updates = [{"attributes": {"type": "Account"}, "Id": i, "Phone": "1"} for i in ids_]
    assert all(
        r["success"]
        for r in sf.restful("composite/sobjects", method="PATCH", json={"records": updates})
    )
    got = sf.restful(
        "composite/sobjects/Account", params={"ids": ",".join(ids_), "fields": "Name,Phone"}
    )
    assert [g["Phone"] for g in got] == ["1", "1", "1"]
    deleted = sf.restful("composite/sobjects", method="DELETE", params={"ids": ",".join(ids_)})
    assert all(d["success"] for d in deleted)


def test_collections_refuse_more_than_200_records(sf):
    records = [{"attributes": {"type": "Account"}, "Name": "x"}] * 201
    with pytest.raises(SalesforceMalformedRequest):
        sf.restful("composite/sobjects", method="POST", json={"records": records})


def test_collections_report_each_failure_in_order(sf):
    records = [
        {"attributes": {"type": "Account"}, "Name": "ok"},
        {"attributes": {"type": "Account"}},
    ]
    results = sf.restful("composite/sobjects", method="POST", json={"records": records})
    assert results[0]["success"] and not results[1]["success"]
    assert results[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"


def test_collections_all_or_none_rolls_back(sf):
    records = [
        {"attributes": {"type": "Account"}, "Name": "ok"},
        {"attributes": {"type": "Account"}},
    ]
    results = sf.restful(
        "composite/sobjects", method="POST", json={"allOrNone": True, "records": records}
    )
    assert not any(r["success"] for r in results)
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 0


def test_collections_upsert_by_external_id(sf):
    body = {"records": [{"attributes": {"type": "Product2"}, "ExternalID__c": "P1", "Name": "a"}]}
    first = sf.restful("composite/sobjects/Product2/ExternalID__c", method="PATCH", json=body)
    again = sf.restful("composite/sobjects/Product2/ExternalID__c", method="PATCH", json=body)
    assert first[0]["created"] is True and again[0]["created"] is False


def test_composite_with_references(sf):
    body = {
        "allOrNone": True,
        "compositeRequest": [
            {
                "method": "POST",
                "url": "/services/data/v59.0/sobjects/Account",
                "referenceId": "acct",
                "body": {"Name": "Composite Co"},
            },
            {
                "method": "POST",
                "url": "/services/data/v59.0/sobjects/Contact",
                "referenceId": "contact",
                "body": {"LastName": "Smith", "AccountId": "@{acct.id}"},
            },
            {
                "method": "GET",
                "referenceId": "read",
                "url": "/services/data/v59.0/sobjects/Account/@{acct.id}?fields=Name",
            },
        ],
    }
    result = sf.restful("composite", method="POST", json=body)["compositeResponse"]
    assert [r["httpStatusCode"] for r in result] == [201, 201, 200]
    assert result[2]["body"]["Name"] == "Composite Co"


def test_composite_all_or_none_rolls_back(sf):
    body = {
        "allOrNone": True,
        "compositeRequest": [
            {
                "method": "POST",
                "url": "/services/data/v59.0/sobjects/Account",
                "referenceId": "a",
                "body": {"Name": "Ok"},
            },
            {
                "method": "POST",
                "url": "/services/data/v59.0/sobjects/Account",
                "referenceId": "b",
                "body": {"Phone": "1"},
            },
        ],
    }
    result = sf.restful("composite", method="POST", json=body)["compositeResponse"]
    assert result[0]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 0


def test_bulk2_ingest_and_query(sf):
    rows = [{"Name": f"Bulk {i}", "ExternalID__c": f"B{i}"} for i in range(300)]
    rows.append({"Name": "", "ExternalID__c": "BAD"})
    result = sf.bulk2.Account.insert(records=rows, wait=0.1)
    assert result[0]["numberRecordsProcessed"] == 301
    assert result[0]["numberRecordsFailed"] == 1
    failed = sf.bulk2.Account.get_failed_records(result[0]["job_id"])
    assert "REQUIRED_FIELD_MISSING" in failed
    upserted = sf.bulk2.Account.upsert(
        records=[{"ExternalID__c": "B1", "Phone": "7"}], external_id_field="ExternalID__c", wait=0.1
    )
    assert upserted[0]["numberRecordsFailed"] == 0
    pages = list(
        sf.bulk2.Account.query(
            "SELECT Name, Phone FROM Account WHERE Phone = '7'", max_records=50, wait=0.1
        )
    )
    assert pages[0].splitlines() == ['"Name","Phone"', '"Bulk 1","7"']
    all_rows = list(sf.bulk2.Account.query("SELECT Id FROM Account", max_records=120, wait=0.1))
    assert len(all_rows) == 3 and sum(len(p.splitlines()) - 1 for p in all_rows) == 300


# -- faults over the wire -----------------------------------------------------------------------


def test_fault_429_has_retry_after(sandbox, sf):
    faults(sandbox, {"match": "GET /services/data", "kind": "429"})
    response = sf.session.get(sf.base_url + "limits/", headers=sf.headers)
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_error_faults(sandbox, sf, kind):
    faults(sandbox, {"match": "GET", "kind": kind})
    with pytest.raises(SalesforceGeneralError) as raised:
        sf.query("SELECT Id FROM Account")
    assert raised.value.status == int(kind)


def test_timeout_fault(sandbox, sf):
    faults(sandbox, {"match": "GET", "kind": "timeout", "seconds": 2})
    with pytest.raises(requests.exceptions.ReadTimeout):
        sf.query("SELECT Id FROM Account", timeout=0.3)


def test_reset_fault(sandbox, sf):
    faults(sandbox, {"match": "POST", "kind": "reset"})
    with pytest.raises(requests.exceptions.ConnectionError):
        sf.Account.create({"Name": "Lost"})
    faults(sandbox)
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 0


def test_ambiguous_fault_commits_the_write(sandbox, sf):
    faults(sandbox, {"match": "POST /services/data", "kind": "ambiguous"})
    with pytest.raises(requests.exceptions.ConnectionError):
        sf.Account.create({"Name": "Committed"})
    faults(sandbox)
    assert sf.query("SELECT Name FROM Account")["records"][0]["Name"] == "Committed"


def test_expire_token_fault_gives_401_then_login_works(sandbox):
    sf = direct(sandbox)
    faults(sandbox, {"match": "GET", "kind": "expire_token", "rate": 1})
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Account")
    faults(sandbox)
    assert direct(sandbox).query("SELECT Id FROM Account")["done"]


def test_stats_count_calls_by_template(sandbox, sf):
    sandbox.servers["salesforce"].stats.reset()
    sf.Account.create({"Name": "x"})
    sf.Account.create({"Name": "y"})
    sf.query("SELECT Id FROM Account")
    stats = control(sandbox.info["control"]["salesforce"], "stats")
    assert stats["calls"]["POST /services/data/v{version}/sobjects/Account"] == 2
    assert stats["calls"]["GET /services/data/v{version}/query"] == 1
    assert stats["total"] == 3


# -- persistence and outbound messages ----------------------------------------------------------


def test_state_and_credentials_survive_a_restart(tmp_path):
    first = SandboxServer(tmp_path, seed="empty", soap_login_enabled=True).start()
    creds = first.info["salesforce"]
    sf = Salesforce(
        session=simulator_session(creds),
        username=creds["username"],
        password=creds["password"],
        security_token=creds["security_token"],
    )
    record = sf.Account.create({"Name": "Persisted"})
    first.stop()
    # the seed only applies to new state
    second = SandboxServer(tmp_path, seed="demo", soap_login_enabled=True).start()
    try:
        again = second.info["salesforce"]
        assert again["password"] == creds["password"]
        sf = Salesforce(
            session=simulator_session(again),
            username=again["username"],
            password=again["password"],
            security_token=again["security_token"],
        )
        assert sf.Account.get(record["id"])["Name"] == "Persisted"
        assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 1
    finally:
        second.stop()


def test_demo_seed_is_deterministic(tmp_path):
    from sandbox.salesforce import seed
    from sandbox.salesforce.store import Store

    names = []
    for name in ("a", "b"):
        store = Store(tmp_path / f"{name}.sqlite3")
        seed.apply(store, "demo")
        names.append(sorted(r["Name"] for r in store.all("Opportunity")))
        assert len(store.all("Account")) == 150 and len(store.all("Product2")) == 60
        won = [o for o in store.all("Opportunity") if o["IsWon"]]
        assert 0 < len([o for o in won if not o["KashFlow_Invoice_Number__c"]]) <= 8
    assert names[0] == names[1] and len(names[0]) == 400


class _Receiver(BaseHTTPRequestHandler):
    bodies: list = []
    fail_first = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body.decode())
        if len(type(self).bodies) <= type(self).fail_first:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        answer = (
            b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
            b'<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/'
            b'outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body>'
            b"</soapenv:Envelope>"
        )
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def test_outbound_message_on_closed_won_is_retried_until_acked(sandbox, sf):
    _Receiver.bodies, _Receiver.fail_first = [], 2
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/outbound"
        control(sandbox.info["control"]["salesforce"], "outbound", {"url": url, "enabled": True})
        opp = sf.Opportunity.create(
            {"Name": "Won", "StageName": "Prospecting", "CloseDate": "2024-03-31", "Amount": 10}
        )["id"]
        sf.Opportunity.update(opp, {"StageName": "Closed Won"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = control(sandbox.info["control"]["salesforce"], "outbound")
            if status["deliveries"] and status["deliveries"][0]["acked"]:
                break
            time.sleep(0.1)
        delivery = status["deliveries"][0]
        assert delivery["acked"] and delivery["attempts"] == 3
        body = _Receiver.bodies[-1]
        assert 'xmlns="http://soap.sforce.com/2005/09/outbound"' in body
        assert f"<sf:Id>{opp}</sf:Id>" in body and "<sf:IsWon>true</sf:IsWon>" in body
        assert sandbox.salesforce.creds["organization_id"] in body
    finally:
        receiver.shutdown()


# -- multi-currency -----------------------------------------------------------------------------


def enable_multi_currency(sandbox, **rates):
    return control(
        sandbox.info["control"]["salesforce"],
        "currencies",
        {"multi_currency": True, "corporate": "GBP", "rates": rates},
    )


def test_a_single_currency_org_has_no_currency_fields_and_says_its_currency(sf):
    [organization] = sf.query("SELECT Id, DefaultCurrencyIsoCode FROM Organization")["records"]
    assert organization["DefaultCurrencyIsoCode"] == "GBP"
    fields = {f["name"] for f in sf.Opportunity.describe()["fields"]}
    assert "CurrencyIsoCode" not in fields
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.query("SELECT CurrencyIsoCode FROM Opportunity")
    assert raised.value.content[0]["errorCode"] == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.query("SELECT IsoCode FROM CurrencyType")
    assert raised.value.content[0]["errorCode"] == "INVALID_TYPE"


def test_multi_currency_adds_currency_iso_code_and_currency_type(sandbox, sf, catalogue):
    before = sf.Account.create({"Name": "Made before the switch"})
    assert enable_multi_currency(sandbox, EUR="1.17")["multi_currency"] is True
    currencies = sf.query("SELECT IsoCode, ConversionRate, IsCorporate FROM CurrencyType")
    assert {(c["IsoCode"], c["IsCorporate"]) for c in currencies["records"]} == {
        ("GBP", True),
        ("EUR", False),
    }
    assert sf.Account.get(before["id"])["CurrencyIsoCode"] == "GBP"  # the corporate currency
    assert "CurrencyIsoCode" in {f["name"] for f in sf.Opportunity.describe()["fields"]}
    deal = sf.Opportunity.create(
        {"Name": "Euro deal", "StageName": "Prospecting", "CloseDate": "2026-01-31",
         "CurrencyIsoCode": "EUR"}
    )  # fmt: skip
    line = sf.OpportunityLineItem.create(
        {"OpportunityId": deal["id"], "PricebookEntryId": catalogue["entry"], "Quantity": 1,
         "UnitPrice": 10}
    )  # fmt: skip
    assert sf.OpportunityLineItem.get(line["id"])["CurrencyIsoCode"] == "EUR"  # its deal's
    assert (
        sf.Account.create({"Name": "New"})
        and sf.query("SELECT CurrencyIsoCode FROM Account WHERE Name = 'New'")["records"][0][
            "CurrencyIsoCode"
        ]
        == "GBP"
    )
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Account.create({"Name": "Yen", "CurrencyIsoCode": "JPY"})
    assert raised.value.content[0]["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.query("SELECT DefaultCurrencyIsoCode FROM Organization")  # single-currency only
    assert raised.value.content[0]["errorCode"] == "INVALID_FIELD"


def test_multi_currency_cannot_be_turned_off_and_a_reset_gives_one_currency(sandbox, sf):
    enable_multi_currency(sandbox)
    with pytest.raises(requests.HTTPError):
        control(sandbox.info["control"]["salesforce"], "currencies", {"multi_currency": False})
    sandbox.reset("empty")
    assert control(sandbox.info["control"]["salesforce"], "currencies")["multi_currency"] is False


# -- fidelity: URI limit, record faults, money, the payments relationship (issue #12) ---------


def test_a_query_whose_uri_and_headers_pass_16384_bytes_is_refused(sandbox, sf):
    names = ", ".join(f"'{'Harbour & Sons Marine Engineering Ltd'} {n:03d}'" for n in range(400))
    long = f"SELECT Id FROM Account WHERE Name IN ({names})"
    with pytest.raises(SalesforceGeneralError) as raised:
        sf.query(long)
    assert raised.value.status == 414
    # Short enough on its own, tipped over by a header: 431.
    fits = long[: len(long) // 2].rsplit(",", 1)[0] + ")"
    assert sf.query(fits)["done"]
    response = sf.session.get(
        f"{sf.base_url}query/",
        params={"q": fits},
        headers={**sf.headers, "X-Padding": "x" * 9000},
    )
    assert response.status_code == 431


def test_lock_row_fault_fails_some_collection_records_and_writes_the_rest(sandbox, sf):
    faults(sandbox, {"match": "PATCH /services/data", "kind": "lock_row", "count": 1})
    records = [
        {"attributes": {"type": "Account"}, "Name": f"A{n}", "ExternalID__c": f"K{n}"}
        for n in range(10)
    ]
    body = {"allOrNone": False, "records": records}
    results = sf.restful("composite/sobjects/Account/ExternalID__c", method="PATCH", json=body)
    locked = [r for r in results if not r["success"]]
    assert locked and len(locked) < 10
    assert {e["statusCode"] for r in locked for e in r["errors"]} == {"UNABLE_TO_LOCK_ROW"}
    written = sf.query("SELECT ExternalID__c FROM Account")["records"]
    assert len(written) == 10 - len(locked)
    # The rule fired once (count 1): the same call now writes everything, nothing twice.
    again = sf.restful("composite/sobjects/Account/ExternalID__c", method="PATCH", json=body)
    assert all(r["success"] for r in again)
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 10


def test_upsert_race_fault_answers_duplicate_value_for_a_new_key_only(sandbox, sf):
    sf.Account.create({"Name": "Old", "ExternalID__c": "OLD"})
    faults(sandbox, {"match": "PATCH /services/data", "kind": "upsert_race", "count": 1})
    records = [
        {"attributes": {"type": "Account"}, "Name": n, "ExternalID__c": n}
        for n in ("OLD", "NEW1", "NEW2", "NEW3", "NEW4", "NEW5")
    ]
    body = {"allOrNone": False, "records": records}
    results = sf.restful("composite/sobjects/Account/ExternalID__c", method="PATCH", json=body)
    assert results[0]["success"]  # an update races nobody
    lost = [r for r in results if not r["success"]]
    assert lost
    for result in lost:
        (error,) = result["errors"]
        assert error["statusCode"] == "DUPLICATE_VALUE"
        assert "ExternalID__c duplicates value on record with id: 001" in error["message"]
    # The concurrent winner's insert committed: every key is there once.
    keys = sorted(
        r["ExternalID__c"] for r in sf.query("SELECT ExternalID__c FROM Account")["records"]
    )
    assert keys == ["NEW1", "NEW2", "NEW3", "NEW4", "NEW5", "OLD"]


def test_currency_rounds_half_up_in_decimal(sf, catalogue):
    account = sf.Account.create({"Name": "Acme"})["id"]
    # 2.675 is 2.67499999… as a binary float: round() gives 2.67; Salesforce gives 2.68.
    opp = sf.Opportunity.create(
        {
            "AccountId": account,
            "Name": "Deal",
            "StageName": "Prospecting",
            "CloseDate": "2024-03-31",
            "Amount": 2.675,
        }
    )["id"]
    assert sf.Opportunity.get(opp)["Amount"] == 2.68
    sf.Opportunity.update(opp, {"Amount": 1.005})  # 1.00499999… as a float
    assert sf.Opportunity.get(opp)["Amount"] == 1.01  # no products: Amount is editable
    line = sf.OpportunityLineItem.create(
        {
            "OpportunityId": opp,
            "PricebookEntryId": catalogue["entry"],
            "Quantity": 3,
            "UnitPrice": 1.115,
        }
    )["id"]
    # UnitPrice 1.115 -> 1.12 (half-up), TotalPrice 3 x 1.12 = 3.36; Amount is the roll-up.
    assert sf.OpportunityLineItem.get(line)["TotalPrice"] == 3.36
    assert sf.Opportunity.get(opp)["Amount"] == 3.36


def test_amount_of_an_opportunity_with_products_is_the_roll_up_and_a_write_is_ignored(
    sf, catalogue
):
    # help.salesforce.com 004052228: the PATCH answers 204, other fields change, Amount stays.
    account = sf.Account.create({"Name": "Acme"})["id"]
    opp = sf.Opportunity.create(
        {
            "AccountId": account,
            "Name": "Deal",
            "StageName": "Prospecting",
            "CloseDate": "2024-03-31",
        }
    )["id"]
    sf.OpportunityLineItem.create(
        {
            "OpportunityId": opp,
            "PricebookEntryId": catalogue["entry"],
            "Quantity": 2,
            "UnitPrice": 10.5,
        }
    )
    assert sf.Opportunity.update(opp, {"Amount": 999, "Description": "changed"}) == 204
    record = sf.Opportunity.get(opp)
    assert record["Amount"] == 21.0 and record["Description"] == "changed"


def test_the_payments_relationship_name_is_the_admins_choice(sandbox, sf):
    def relationships():
        described = sf.Opportunity.describe()["childRelationships"]
        return {r["relationshipName"]: r["childSObject"] for r in described}

    assert relationships()["KashFlow_Payments__r"] == "KashFlow_Payment__c"
    org_switches(sandbox, payments_relationship="Payments__r")
    assert relationships().get("Payments__r") == "KashFlow_Payment__c"
    assert "KashFlow_Payments__r" not in relationships()
    assert sf.query("SELECT Id, (SELECT Id FROM Payments__r) FROM Opportunity")["done"]
    with pytest.raises(SalesforceMalformedRequest):
        sf.query("SELECT Id, (SELECT Id FROM KashFlow_Payments__r) FROM Opportunity")
    sandbox.reset("empty")
    assert "KashFlow_Payments__r" in relationships()
