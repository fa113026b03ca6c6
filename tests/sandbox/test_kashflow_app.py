"""The KashFlow simulator through `KashFlowApp.handle()`, in-process: fast, no sockets."""

import json
from datetime import timedelta
from decimal import Decimal
from email.message import Message
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from sandbox import fake
from sandbox.core import Request
from sandbox.kashflow import KashFlowApp

# A refused sign-in step: ASP.NET's bare 401, with no code (what KashFlow sends is undocumented).
REFUSED = {"Message": "Authorization has been denied for this request."}


class Api:
    """Just enough of a KashFlow client to drive the app by hand-built Requests."""

    def __init__(self, app: KashFlowApp):
        self.app = app
        self.token = None

    def call(self, method, url, body=None, raw: bytes | None = None, token=None):
        parts = urlsplit(url)
        headers = Message()
        headers["Host"] = "kashflow.test"
        if token or self.token:
            headers["Authorization"] = f"KfToken {token or self.token}"
        data = (
            raw
            if raw is not None
            else (json.dumps(body, default=str).encode() if body is not None else b"")
        )
        request = Request(method, parts.path, parse_qs(parts.query, True), headers, data)
        response = self.app.handle(request)
        text = response.body.decode()
        return response.status, json.loads(text, parse_float=Decimal) if text else None

    def get(self, url, **kw):
        return self.call("GET", url, **kw)

    def post(self, url, body=None, **kw):
        return self.call("POST", url, body, **kw)

    def put(self, url, body=None, **kw):
        return self.call("PUT", url, body, **kw)

    def put_whole(self, url, changes):
        """A PUT as a KashFlow client must send it: the whole object, changed where asked."""
        status, current = self.get(url)
        assert status == 200, current
        return self.put(url, {**current, **changes})

    def delete(self, url, **kw):
        return self.call("DELETE", url, **kw)

    def start_login(self, password=None):
        creds = self.app.credentials
        body = {"UserName": creds["username"], "Password": password or creds["password"]}
        return self.post("/v2/sessiontoken", body)

    def answer(self, temporary: dict, word=None):
        word = word or self.app.credentials["memorable_word"]
        letters = [
            {"Position": item["Position"], "Value": word[item["Position"] - 1].upper()}
            for item in temporary["MemorableWordList"]
        ]
        body = {"TemporaryToken": temporary["TemporaryToken"], "MemorableWordList": letters}
        return self.put("/v2/sessiontoken", body)

    def login(self):
        status, temporary = self.start_login()
        assert status == 201
        status, session = self.answer(temporary)
        assert status == 200, session
        self.token = session["SessionToken"]
        return self


@pytest.fixture
def app(tmp_path):
    app = KashFlowApp(tmp_path, {"base_url": "http://kashflow.test"})
    yield app
    app.close()


@pytest.fixture
def api(app):
    return Api(app).login()


def customer_body(code="ACME001", name="Acme Widgets Ltd", **extra):
    return {
        "Code": code,
        "Name": name,
        "Contacts": [
            {"Name": "Jo Bloggs", "Firstname": "Jo", "LastName": "Bloggs", "IsPrimary": True}
        ],
        "Addresses": [{"Line1": "1 High St", "PostCode": "EC1A 1AA", "CountryCode": "GB"}],
        "PaymentTerms": {"Days": 30, "Type": "AfterIssuedDate"},
        **extra,
    }


def invoice_body(customer="ACME001", lines=None, **extra):
    lines = lines or [{"Description": "Consulting", "Quantity": 1, "Rate": 100, "VATLevel": 20}]
    return {
        "CustomerCode": customer,
        "IssuedDate": "2024-10-09",
        "LineItems": [{"NominalCode": 4000, **line} for line in lines],
        **extra,
    }


def payment(amount, **extra):
    return {"Amount": amount, "Date": "2024-10-20", "AccountId": 101, "Method": 1, **extra}


# -- Login and sessions ---------------------------------------------------------------------------


def test_login_asks_for_three_distinct_letters_within_the_memorable_word(app):
    status, temporary = Api(app).start_login()
    assert status == 201
    positions = [item["Position"] for item in temporary["MemorableWordList"]]
    assert len(set(positions)) == 3
    assert all(1 <= p <= len(app.credentials["memorable_word"]) for p in positions)
    assert all(item["Value"] == "" for item in temporary["MemorableWordList"])


def test_two_step_login_gives_a_token_that_opens_other_calls(app):
    api = Api(app)
    assert api.get("/v2/customers")[0] == 401
    api.login()
    assert api.get("/v2/customers")[0] == 200


def test_bad_or_missing_token_gets_401_invalid_session_token(api):
    expected = {"Error": "InvalidSessionToken", "Message": "Session token provided is invalid."}
    assert api.get("/v2/customers", token="3F2504E0-4F89-11D3-9A0C-0305E82C3301") == (
        401,
        expected,
    )
    api.token = None
    assert api.get("/v2/customers") == (401, expected)


def test_session_expires_after_an_hour_unused_but_each_call_restarts_the_clock(app, api):
    app.clock_offset += timedelta(minutes=50)
    assert api.get("/v2/nominals")[0] == 200
    app.clock_offset += timedelta(minutes=50)  # 100 minutes since login, 50 since last use
    assert api.get("/v2/nominals")[0] == 200
    app.clock_offset += timedelta(minutes=61)
    assert api.get("/v2/nominals")[1]["Error"] == "InvalidSessionToken"
    assert Api(app).login().get("/v2/nominals")[0] == 200


def test_temporary_token_is_good_for_one_attempt_only(app):
    api = Api(app)
    _, temporary = api.start_login()
    assert api.answer(temporary)[0] == 200
    status, body = api.answer(temporary)
    assert (status, body) == (401, REFUSED)


def test_temporary_token_expires_after_five_minutes(app):
    api = Api(app)
    _, temporary = api.start_login()
    app.clock_offset += timedelta(minutes=6)
    assert api.answer(temporary) == (401, REFUSED)


def test_wrong_password_and_wrong_memorable_word_are_the_same_bare_401(app):
    # KashFlow documents its auth failures as 401s but no code for these: a client must not
    # be able to come to depend on one, nor learn which part was wrong.
    api = Api(app)
    assert api.start_login(password="nope") == (401, REFUSED)
    _, temporary = api.start_login()
    assert api.answer(temporary, word="zzzzzzzzzzzzzzzz") == (401, REFUSED)


def test_five_failures_lock_the_account_until_a_reset(app):
    api = Api(app)
    for _ in range(4):
        assert api.start_login(password="nope") == (401, REFUSED)
    status, body = api.start_login(password="nope")
    assert (status, body["Error"]) == (401, "AccountLocked")
    assert api.start_login()[1]["Error"] == "AccountLocked"  # even the right password
    app.reset("empty")
    assert api.start_login()[0] == 201


def test_a_successful_login_clears_the_failure_count(app):
    api = Api(app)
    for _ in range(4):
        api.start_login(password="nope")
    api.login()
    assert api.start_login(password="nope") == (401, REFUSED)


def test_logout_by_header_or_by_path_ends_the_session(app):
    first, second = Api(app).login(), Api(app).login()
    assert first.delete("/v2/sessiontoken")[0] == 204
    assert first.get("/v2/nominals")[0] == 401
    assert second.delete(f"/v2/sessiontoken/{second.token}", token="unused")[0] == 204
    assert second.get("/v2/nominals")[0] == 401


def test_api_disabled_answers_403_api_access_disabled(tmp_path):
    app = KashFlowApp(tmp_path, {"api_disabled": True})
    status, body = Api(app).start_login()
    assert (status, body["Error"]) == (403, "ApiAccessDisabled")
    app.close()


def test_login_and_data_survive_a_restart_on_the_same_state_dir(tmp_path):
    first = KashFlowApp(tmp_path, {})
    token = Api(first).login().token
    Api(first).post("/v2/customers", customer_body(), token=token)
    credentials = first.credentials
    first.close()
    second = KashFlowApp(tmp_path, {})
    assert second.credentials == credentials
    assert Api(second).get("/v2/customers/ACME001", token=token)[0] == 200
    second.close()


# -- Customers ------------------------------------------------------------------------------------


def test_create_customer_answers_201_with_the_full_customer(api):
    status, customer = api.post("/v2/customers", customer_body())
    assert status == 201
    assert customer["Code"] == "ACME001"
    assert customer["Contacts"][0]["Firstname"] == "Jo"  # lowercase n, as KashFlow spells it
    assert customer["Addresses"][0]["CountryName"] == "United Kingdom"
    assert customer["Currency"]["Code"] == "GBP"
    assert (customer["InvoiceCount"], customer["OutstandingBalance"]) == (0, Decimal(0))
    assert customer["CreatedDate"] == customer["LastUpdatedDate"]
    assert api.get("/v2/customers/ACME001")[1] == customer


def test_duplicate_customer_code_is_400_unless_asked_to_make_one_up(api):
    api.post("/v2/customers", customer_body())
    status, body = api.post("/v2/customers", customer_body())
    assert status == 400
    assert set(body) == {"Error", "Message"}
    assert "ACME001" in body["Message"]
    status, body = api.post("/v2/customers", customer_body(CreateCustomerCodeIfDuplicate=True))
    assert status == 201
    assert body["Code"] not in ("ACME001", "")


def test_customer_without_code_is_400_naming_the_field(api):
    body = customer_body()
    del body["Code"]
    assert api.post("/v2/customers", body) == (
        400,
        {"Error": "ValidationError", "Message": "Code is required."},
    )


def test_customer_codes_are_opaque_strings_in_the_url(api):
    api.post("/v2/customers", customer_body(code="A/B 1"))
    status, body = api.get("/v2/customers/" + quote("A/B 1", safe=""))
    assert (status, body["Code"]) == (200, "A/B 1")


def test_unknown_customer_is_404_not_found(api):
    assert api.get("/v2/customers/NOPE") == (
        404,
        {"Error": "NotFound", "Message": "Customer NOPE not found."},
    )


def test_put_that_renames_the_code_answers_201_and_moves_the_customer(api):
    api.post("/v2/customers", customer_body())
    status, body = api.put("/v2/customers/ACME001", customer_body(code="ACME002"))
    assert (status, body["Code"], body["Name"]) == (201, "ACME002", "Acme Widgets Ltd")
    assert api.get("/v2/customers/ACME001")[0] == 404
    assert api.put("/v2/customers/ACME002", customer_body("ACME002", Note="hello"))[0] == 200


def test_put_replaces_the_whole_customer_and_clears_what_it_leaves_out(api):
    _, created = api.post(
        "/v2/customers",
        customer_body(Note="Pays by BACS", TelephoneNumber="020 7946 0000", VATNumber="GB123"),
    )
    status, body = api.put("/v2/customers/ACME001", {"Code": "ACME001", "Name": "Acme Ltd"})
    assert status == 200
    assert (body["Name"], body["Note"], body["VATNumber"]) == ("Acme Ltd", "", "")
    assert (body["Contacts"], body["Addresses"]) == ([], [])
    assert body["TelephoneNumber"] == ""
    assert body["Key"] == created["Key"] and body["Id"] == created["Id"]  # read-only: kept


def test_put_without_code_or_name_is_refused(api):
    api.post("/v2/customers", customer_body())
    assert api.put("/v2/customers/ACME001", {"Name": "Acme Ltd"}) == (
        400,
        {"Error": "ValidationError", "Message": "Code is required."},
    )
    assert api.put("/v2/customers/ACME001", {"Code": "ACME001"})[1]["Message"] == (
        "Name is required."
    )
    assert api.get("/v2/customers/ACME001")[1]["Contacts"]  # nothing was changed


def test_every_write_moves_last_updated_date_on_the_full_customer_only(app, api):
    api.post("/v2/customers", customer_body())
    app.clock_offset += timedelta(seconds=5)
    _, updated = api.put("/v2/customers/ACME001", customer_body(name="Acme One"))
    assert updated["LastUpdatedDate"] > updated["CreatedDate"]
    assert api.get("/v2/customers/ACME001")[1]["LastUpdatedDate"] == updated["LastUpdatedDate"]
    _, page = api.get("/v2/customers")
    assert "LastUpdatedDate" not in page["Data"][0] and "CreatedDate" not in page["Data"][0]


def test_customer_summaries_carry_the_spec_fields_and_no_dates(api):
    api.post("/v2/customers", customer_body(VATNumber="GB123456789"))
    _, page = api.get("/v2/customers")
    assert set(page["Data"][0]) == {
        "Id", "Code", "Name", "TotalPaidAmount", "OutstandingBalance", "IsSchedule",
        "SourceName", "DefaultNominalCode", "IsArchived", "VATNumber", "TradeBorderType",
        "IsCISReverseCharge", "ApplyWithholdingTax", "CustomerKey", "Contacts", "Addresses",
        "Currency",
    }  # fmt: skip
    summary = page["Data"][0]
    assert summary["Contacts"][0]["Name"] == "Jo Bloggs"
    assert summary["Addresses"][0]["PostCode"] == "EC1A 1AA"
    assert (summary["VATNumber"], summary["Currency"]["Code"]) == ("GB123456789", "GBP")


@pytest.mark.parametrize("sortby", ["LastUpdatedDate", "CreatedDate", "lastupdateddate", "2", "5"])
def test_customer_list_refuses_an_undocumented_sort(api, sortby):
    api.post("/v2/customers", customer_body())
    status, body = api.get(f"/v2/customers?sortby={sortby}&order=desc")
    assert (status, body["Error"]) == (400, "ValidationError")


def test_customer_list_sorts_by_the_documented_enum_and_its_names(api):
    for code, name in (("C1", "Zeta Ltd"), ("C2", "Alpha Ltd"), ("C3", "Mu Ltd")):
        api.post("/v2/customers", customer_body(code=code, name=name))
    for sortby in ("0", "Name"):
        _, page = api.get(f"/v2/customers?sortby={sortby}")
        assert [c["Code"] for c in page["Data"]] == ["C2", "C3", "C1"]
    for sortby in ("1", "Code", "3", "4", "TotalPaidAmount", "OutstandingBalance"):
        assert api.get(f"/v2/customers?sortby={sortby}&order=desc")[0] == 200


def test_paging_follows_next_page_url_to_the_end(api):
    for number in range(7):
        api.post("/v2/customers", customer_body(code=f"P{number}", name=f"Page {number}"))
    url, seen = "/v2/customers?perpage=3&sortby=Code&order=asc", []
    while url:
        _, page = api.get(url)
        seen += [c["Code"] for c in page["Data"]]
        assert page["MetaData"]["TotalRecords"] == 7
        url = page["MetaData"]["NextPageUrl"]
        if url:
            assert url.startswith("http://kashflow.test/v2/customers?")
            assert "sortby=Code" in url
    assert seen == [f"P{n}" for n in range(7)]


def test_perpage_above_the_cap_is_a_400(api):
    assert api.get("/v2/customers?perpage=251")[1]["Error"] == "ValidationError"
    assert api.get("/v2/customers?perpage=250")[0] == 200


def test_customer_filters_by_name_start_and_search_text(api):
    api.post("/v2/customers", customer_body(code="A1", name="Alpha Joinery Ltd"))
    api.post("/v2/customers", customer_body(code="B1", name="Beta Joinery Ltd"))
    _, page = api.get("/v2/customers?namestartswith=alp")
    assert [c["Code"] for c in page["Data"]] == ["A1"]
    _, page = api.get("/v2/customers?searchtext=joinery")
    assert page["MetaData"]["TotalRecords"] == 2


def test_customer_with_invoices_cannot_be_deleted_one_without_can(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/customers", customer_body(code="EMPTY1"))
    api.post("/v2/invoices", invoice_body())
    assert api.delete("/v2/customers/ACME001")[0] == 400
    assert api.delete("/v2/customers/EMPTY1") == (204, None)
    assert api.get("/v2/customers/EMPTY1")[0] == 404


def test_suggested_code_is_unique(api):
    api.post("/v2/customers", customer_body(code="ACMEW001"))
    assert api.post("/v2/customers/suggestedcode", {"Name": "Acme Widgets"}) == (200, "ACMEW002")


# -- Invoices -------------------------------------------------------------------------------------


def test_invoice_totals_3_x_33_33_at_20_percent(api):
    """Net 99.99; VAT 3 x 33.33 x 20% = 19.998, rounded to 20.00; gross 119.99."""
    api.post("/v2/customers", customer_body())
    line = {"Description": "Widget", "Quantity": 3, "Rate": "33.33", "VATLevel": 20}
    status, invoice = api.post("/v2/invoices", invoice_body(lines=[line]))
    assert status == 201
    assert invoice["NetAmount"] == Decimal("99.99")
    assert invoice["VATAmount"] == Decimal("20.00")
    assert invoice["GrossAmount"] == Decimal("119.99")
    assert invoice["LineItems"][0]["VATAmount"] == Decimal("20.00")
    assert (invoice["Status"], invoice["DueAmount"]) == ("Unpaid", Decimal("119.99"))


def test_money_is_sent_as_numbers_with_four_decimals(app, api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/invoices", invoice_body())
    text = app.handle(
        Request("GET", "/v2/invoices/1", {}, _auth_headers(api.token), b"")
    ).body.decode()
    assert '"NetAmount":100.0000' in text
    assert '"GrossAmount":120.0000' in text
    assert '"IssuedDate":"2024-10-09 12:00:00"' in text


def _auth_headers(token):
    headers = Message()
    headers["Authorization"] = f"KfToken {token}"
    return headers


def test_vat_rounds_half_up_and_honours_a_sent_amount_and_exemption(api):
    """10.025 at 20%: VAT 2.005 rounds half-up to 2.01 (banker's rounding would give 2.00)."""
    api.post("/v2/customers", customer_body())
    lines = [
        {"Quantity": 1, "Rate": "10.025", "VATLevel": 20},
        {"Quantity": 1, "Rate": 50, "VATLevel": 20, "VATAmount": "9.99"},
        {"Quantity": 2, "Rate": 25, "VATLevel": 20, "VATExempt": True},
    ]
    _, invoice = api.post("/v2/invoices", invoice_body(lines=lines))
    assert [line["VATAmount"] for line in invoice["LineItems"]] == [
        Decimal("2.01"),
        Decimal("9.99"),
        Decimal(0),
    ]
    assert invoice["NetAmount"] == Decimal("110.03")  # 10.03 + 50 + 50
    assert invoice["GrossAmount"] == Decimal("122.03")


def test_invoice_number_is_assigned_in_sequence_and_a_duplicate_is_400(api):
    api.post("/v2/customers", customer_body())
    assert api.get("/v2/nextavailableinvoicenumber") == (200, 1)
    assert api.post("/v2/invoices", invoice_body())[1]["Number"] == 1
    assert api.post("/v2/invoices", invoice_body(Number=10))[1]["Number"] == 10
    status, body = api.post("/v2/invoices", invoice_body(Number=10))
    assert (status, body["Error"]) == (400, "ValidationError")
    assert api.get("/v2/nextavailableinvoicenumber") == (200, 11)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"CustomerCode": ""}, "CustomerCode"),
        ({"CustomerCode": "NOPE"}, "CustomerCode"),
        ({"LineItems": [{"Quantity": 1, "Rate": 1, "NominalCode": 1200}]}, "NominalCode"),
        ({"LineItems": [{"Rate": 1, "NominalCode": 4000, "ProductCode": "X"}]}, "ProductCode"),
        ({"LineItems": [{"Rate": "abc", "NominalCode": 4000}]}, "Rate"),
        ({"IssuedDate": "09/10/2024"}, "IssuedDate"),
    ],
)
def test_invalid_invoice_is_400_naming_the_field(api, change, field):
    api.post("/v2/customers", customer_body())
    status, body = api.post("/v2/invoices", {**invoice_body(), **change})
    assert (status, body["Error"]) == (400, "ValidationError")
    assert field in body["Message"]


def test_due_date_follows_the_customer_payment_terms(api):
    api.post("/v2/customers", customer_body())
    api.post(
        "/v2/customers",
        customer_body(code="EOM1", PaymentTerms={"Days": 30, "Type": "AfterMonthEnd"}),
    )
    assert api.post("/v2/invoices", invoice_body())[1]["DueDate"] == "2024-11-08 12:00:00"
    due = api.post("/v2/invoices", invoice_body(customer="EOM1"))[1]["DueDate"]
    assert due == "2024-11-30 12:00:00"


def test_payment_lines_move_status_due_amount_and_paid_date(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/invoices", invoice_body())  # gross 120.00
    status, invoice = api.put_whole("/v2/invoices/1", {"PaymentLines": [payment("50.00")]})
    assert status == 200
    assert (invoice["Status"], invoice["DueAmount"]) == ("Part Paid", Decimal("70.00"))
    assert invoice["PaidDate"] is None
    assert invoice["LastPaymentDate"] == "2024-10-20 12:00:00"
    first = invoice["PaymentLines"][0]
    assert first["Id"] > 0
    lines = [first, payment("70.00", Date="2024-10-25")]
    _, invoice = api.put_whole("/v2/invoices/1", {"PaymentLines": lines})
    assert (invoice["Status"], invoice["DueAmount"]) == ("Paid", Decimal(0))
    assert invoice["TotalPaidAmount"] == Decimal("120.00")
    assert invoice["PaidDate"] == "2024-10-25 12:00:00"
    assert invoice["PaymentLines"][0]["Id"] == first["Id"]


def test_an_invoice_put_replaces_the_whole_invoice(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/invoices", invoice_body(PaymentLines=[payment("120")]))
    # The whole invoice sent back with one change keeps the rest, payments included.
    _, invoice = api.put_whole("/v2/invoices/1", {"CustomerReference": "006XX000001"})
    assert (invoice["Status"], len(invoice["PaymentLines"])) == ("Paid", 1)
    assert invoice["GrossAmount"] == Decimal("120.00")
    # A partial body is refused without its required fields ...
    status, body = api.put("/v2/invoices/1", {"CustomerReference": "006XX000002"})
    assert (status, body["Message"]) == (400, "CustomerCode is required.")
    status, body = api.put("/v2/invoices/1", {"CustomerCode": "ACME001"})
    assert (status, body["Message"]) == (400, "IssuedDate is required.")
    # ... and with them, everything left out is cleared: reference, lines and payments.
    _, invoice = api.put(
        "/v2/invoices/1", {"CustomerCode": "ACME001", "IssuedDate": invoice["IssuedDate"]}
    )
    assert invoice["CustomerReference"] == ""
    assert (invoice["LineItems"], invoice["PaymentLines"]) == ([], [])
    assert (invoice["GrossAmount"], invoice["Status"]) == (Decimal(0), "Paid")


def test_an_empty_payment_list_removes_the_payments(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/invoices", invoice_body(PaymentLines=[payment("120")]))
    _, invoice = api.put_whole("/v2/invoices/1", {"PaymentLines": []})
    assert (invoice["Status"], invoice["DueAmount"]) == ("Unpaid", Decimal("120.00"))


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (payment("10", AccountId=1200), "AccountId"),  # the nominal Code, not the Id
        (payment("10", Method=99), "Method"),
        (payment("0"), "Amount"),
        (payment("-5"), "Amount"),
    ],
)
def test_invalid_payment_line_is_400_naming_the_field(api, line, field):
    api.post("/v2/customers", customer_body())
    api.post("/v2/invoices", invoice_body())
    status, body = api.put_whole("/v2/invoices/1", {"PaymentLines": [line]})
    assert (status, body["Error"]) == (400, "ValidationError")
    assert f"PaymentLines[0].{field}" in body["Message"]
    assert api.get("/v2/invoices/1")[1]["PaymentLines"] == []


def test_search_text_finds_an_invoice_by_customer_reference(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/invoices", invoice_body(CustomerReference="006Hs00000AbCdE"))
    api.post("/v2/invoices", invoice_body(CustomerReference="006Hs00000ZZZZZ"))
    _, page = api.get("/v2/invoices?searchtext=006Hs00000AbCdE")
    assert [(i["Number"], i["CustomerReference"]) for i in page["Data"]] == [(1, "006Hs00000AbCdE")]


def test_invoice_list_is_summaries_without_payment_lines(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/invoices", invoice_body(PaymentLines=[payment("1")]))
    _, page = api.get("/v2/invoices")
    summary = page["Data"][0]
    assert "PaymentLines" not in summary
    assert "Permalink" not in summary
    assert summary["TotalPaidAmount"] == Decimal("1.00")
    assert page["MetaData"]["TotalAmount"] == Decimal("120.00")


def test_invoice_list_filters_by_status_and_customer(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/customers", customer_body(code="OTHER1"))
    api.post("/v2/invoices", invoice_body(PaymentLines=[payment("120")]))
    api.post("/v2/invoices", invoice_body(PaymentLines=[payment("20")]))
    api.post("/v2/invoices", invoice_body(customer="OTHER1"))
    numbers = {
        query: [i["Number"] for i in api.get(f"/v2/invoices?{query}")[1]["Data"]]
        for query in ("statusfilter=Paid", "statusfilter=PartPaid", "statusfilter=7",
                      "customercode=OTHER1")
    }  # fmt: skip
    assert numbers == {
        "statusfilter=Paid": [1],
        "statusfilter=PartPaid": [2],
        "statusfilter=7": [2, 3],
        "customercode=OTHER1": [3],
    }


def test_customer_aggregates_follow_its_invoices(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/invoices", invoice_body(PaymentLines=[payment("20")]))
    api.post("/v2/invoices", invoice_body())
    _, customer = api.get("/v2/customers/ACME001")
    assert customer["InvoiceCount"] == 2
    assert customer["TotalPaidAmount"] == Decimal("20.00")
    assert customer["OutstandingBalance"] == Decimal("220.00")


def test_put_renumbering_an_invoice_answers_201_and_delete_is_204(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/invoices", invoice_body())
    status, invoice = api.put_whole("/v2/invoices/1", {"Number": 7})
    assert (status, invoice["Number"]) == (201, 7)
    assert api.delete("/v2/invoices/7") == (204, None)
    assert api.get("/v2/invoices/7") == (
        404,
        {"Error": "NotFound", "Message": "Invoice 7 not found."},
    )


def test_bulk_payment_pays_several_invoices_at_once(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/invoices", invoice_body())
    api.post("/v2/invoices", invoice_body())
    body = {
        "Date": "2024-11-01",
        "AccountId": 101,
        "Method": 1,
        "PaymentItems": [{"ObjectNumber": 1, "Amount": 120}, {"ObjectNumber": 2, "Amount": 60}],
    }
    status, bulk = api.post("/v2/invoices/bulk/payments", body)
    assert status == 201
    statuses = [api.get(f"/v2/invoices/{n}")[1]["Status"] for n in (1, 2)]
    assert statuses == ["Paid", "Part Paid"]
    assert api.get("/v2/invoices/2")[1]["PaymentLines"][0]["BulkId"] == bulk["Number"]


def test_malformed_json_is_400_in_the_error_shape(api):
    status, body = api.call("POST", "/v2/customers", raw=b"{not json")
    assert status == 400
    assert set(body) == {"Error", "Message"}


# -- Products and reference data ------------------------------------------------------------------


def test_products_are_keyed_by_nominal_and_code(api):
    product = {"Code": "W1", "NominalCode": 4000, "Name": "Widget", "Price": "9.99", "VATRate": 20}
    assert api.post("/v2/products", product)[0] == 201
    assert api.post("/v2/products", product)[0] == 400
    assert api.post("/v2/products", {**product, "NominalCode": 4010})[0] == 201
    status, body = api.get("/v2/products/4010/W1")
    assert (status, body["Price"], body["NominalCode"]) == (200, Decimal("9.99"), 4010)
    assert api.get("/v2/nominals/4000/products")[1]["MetaData"]["TotalRecords"] == 1
    assert api.get("/v2/products/list?perpage=101")[0] == 400


def test_a_product_put_replaces_the_whole_product(api):
    product = {"Code": "W1", "NominalCode": 4000, "Name": "Widget", "Description": "Blue",
               "Price": "9.99", "VATRate": 20, "InUse": True}  # fmt: skip
    api.post("/v2/products", product)

    # A partial body: KashFlow's PUT is a full replacement, so the name is required ...
    status, body = api.put("/v2/products/4000/W1", {"Description": "Red"})
    assert (status, body["Message"]) == (400, "Name is required.")
    # ... and every field left out is cleared.
    status, body = api.put("/v2/products/4000/W1", {"Name": "Widget", "Description": "Red"})
    assert status == 200
    assert (body["Description"], body["Price"], body["VATRate"]) == ("Red", 0, 0)
    assert body["InUse"] is False
    # The whole object sent back, changed in one field, keeps the rest.
    _, body = api.put("/v2/products/4000/W1", {**product, "Description": "Green"})
    assert (body["Name"], body["Price"], body["VATRate"]) == ("Widget", Decimal("9.99"), 20)
    assert body["Description"] == "Green"


def test_invoice_line_with_a_product_takes_its_name_and_vat_rate(api):
    api.post("/v2/customers", customer_body())
    api.post("/v2/products", {"Code": "BK1", "NominalCode": 4050, "Name": "Book", "VATRate": 0})
    line = {"NominalCode": 4050, "ProductCode": "BK1", "Quantity": 2, "Rate": 10}
    _, invoice = api.post("/v2/invoices", invoice_body(lines=[line]))
    assert invoice["LineItems"][0]["ProductName"] == "Book"
    assert invoice["VATAmount"] == Decimal(0)


def test_reference_lists_are_bare_arrays(api):
    _, accounts = api.get("/v2/bankaccounts")
    assert [(a["Id"], a["Code"]) for a in accounts] == [(101, 1200), (102, 1210)]
    _, methods = api.get("/v2/paymentmethods/invoice")
    assert {"Id": 1, "Name": "BACS"} in methods
    _, rates = api.get("/v2/vat/settings/vatrates")
    assert {r["VATRate"] for r in rates} == {Decimal(20), Decimal(5), Decimal(0)}
    _, nominals = api.get("/v2/nominals")
    assert {4000, 1200} <= {n["Code"] for n in nominals}


def test_wrong_method_on_a_known_path_is_405_and_unknown_path_404(api):
    assert api.call("PATCH", "/v2/customers")[0] == 405
    assert api.get("/v2/nothing")[0] == 404


def test_route_templates_and_writes_for_the_core(app):
    request = Request("GET", "/v2/customers/ACME%2F1", {}, Message(), b"")
    assert app.route_template(request) == "GET /v2/customers/{code}"
    assert not app.is_write(request)
    assert app.is_write(Request("PUT", "/v2/invoices/3", {}, Message(), b""))
    assert not app.is_write(Request("POST", "/v2/sessiontoken", {}, Message(), b""))


def test_expire_session_turns_the_next_call_into_a_401(app, api):
    request = Request("GET", "/v2/nominals", {}, _auth_headers(api.token), b"")
    app.expire_session(request)
    assert app.handle(request).status == 401


# -- Seeds ----------------------------------------------------------------------------------------


def test_empty_seed_has_reference_data_and_no_customers(api):
    assert api.get("/v2/customers")[1]["MetaData"]["TotalRecords"] == 0
    assert len(api.get("/v2/bankaccounts")[1]) == 2


def test_demo_seed_is_deterministic_and_matches_the_shared_fake_names(app, api):
    app.reset("demo")
    first = api.get("/v2/invoices?perpage=250&page=2")[1]
    app.reset("demo")
    assert api.get("/v2/invoices?perpage=250&page=2")[1] == first
    _, page = api.get("/v2/customers?perpage=250")
    assert page["MetaData"]["TotalRecords"] == 200
    names = {c["Name"] for c in page["Data"]}
    assert names == {c["name"] for c in fake.companies(200, "demo")}
    _, invoices = api.get("/v2/invoices?perpage=250")
    assert invoices["MetaData"]["TotalRecords"] == 300
    assert {i["Status"] for i in invoices["Data"]} == {"Paid", "Part Paid", "Unpaid"}
    assert api.get("/v2/products")[1]["MetaData"]["TotalRecords"] == 60


def test_sized_seed_ignores_the_other_simulators_keys(app, api):
    app.reset("customers=10000,invoices=0,products=5,accounts=50")
    assert api.get("/v2/customers")[1]["MetaData"]["TotalRecords"] == 10000
    assert api.get("/v2/invoices")[1]["MetaData"]["TotalRecords"] == 0
    assert api.get("/v2/products")[1]["MetaData"]["TotalRecords"] == 5


def test_seeded_invoices_add_up(app, api):
    app.reset("demo")
    for number in (1, 50, 300):
        _, invoice = api.get(f"/v2/invoices/{number}")
        net = sum(
            (line["Quantity"] * line["Rate"]).quantize(Decimal("0.01"))
            for line in invoice["LineItems"]
        )
        vat = sum(line["VATAmount"] for line in invoice["LineItems"])
        paid = sum(p["Amount"] for p in invoice["PaymentLines"])
        assert invoice["NetAmount"] == net
        assert invoice["GrossAmount"] == net + vat
        assert invoice["DueAmount"] == net + vat - paid


def test_codes_are_found_whatever_their_case(api):
    api.post("/v2/customers", customer_body(code="Acme001"))
    api.post("/v2/products", {"Code": "Widget", "NominalCode": 4000})
    assert api.get("/v2/customers/ACME001")[1]["Code"] == "Acme001"
    assert api.get("/v2/products/4000/WIDGET")[1]["Code"] == "Widget"
    assert api.post("/v2/products", {"Code": "WIDGET", "NominalCode": 4000})[0] == 400


def test_invoice_list_filters_by_issue_date_range(api):
    api.post("/v2/customers", customer_body())
    for day in ("2024-01-31", "2024-02-01", "2024-02-29", "2024-03-01"):
        api.post("/v2/invoices", invoice_body(IssuedDate=day))
    _, page = api.get("/v2/invoices?issuedatefrom=2024-02-01&issuedateto=2024-02-29")
    assert [i["IssuedDate"] for i in page["Data"]] == ["2024-02-01 12:00:00", "2024-02-29 12:00:00"]
