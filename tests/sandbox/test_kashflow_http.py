"""The KashFlow simulator over real sockets, driven with `requests` as a real client would."""

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests

from tests.fixtures_sandbox import control


class KashFlow:
    """A bare KashFlow REST client: two-step login, KfToken header, Decimal money."""

    def __init__(self, info: dict):
        self.info = info
        self.base = info["base_url"] + "/v2"
        self.http = requests.Session()
        self.http.trust_env = False
        self.token = None

    def request(self, method, path, **kwargs):
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"KfToken {self.token}"
        url = path if path.startswith("http") else self.base + path
        return self.http.request(method, url, headers=headers, timeout=10, **kwargs)

    def login(self, password=None):
        body = {"UserName": self.info["username"], "Password": password or self.info["password"]}
        first = self.request("POST", "/sessiontoken", json=body)
        if first.status_code != 201:
            return first
        word = self.info["memorable_word"]
        letters = [
            {"Position": item["Position"], "Value": word[item["Position"] - 1]}
            for item in first.json()["MemorableWordList"]
        ]
        second = self.request(
            "PUT",
            "/sessiontoken",
            json={"TemporaryToken": first.json()["TemporaryToken"], "MemorableWordList": letters},
        )
        self.token = second.json().get("SessionToken")
        return second

    def json(self, method, path, **kwargs):
        response = self.request(method, path, **kwargs)
        return response.status_code, response.json(
            parse_float=Decimal
        ) if response.content else None


@pytest.fixture
def kashflow(sandbox):
    client = KashFlow(sandbox.info["kashflow"])
    assert client.login().status_code == 200
    return client


@pytest.fixture
def kf_control(sandbox):
    return sandbox.info["control"]["kashflow"]


def make_customer(kashflow, code="ACME001", **extra):
    body = {"Code": code, "Name": f"{code} Trading Ltd", **extra}
    status, customer = kashflow.json("POST", "/customers", json=body)
    assert status == 201, customer
    return customer


def test_two_step_login_over_http_then_401_after_expiry_and_login_again(kashflow, kf_control):
    assert kashflow.request("GET", "/customers").status_code == 200
    control(kf_control, "clock", {"advance_seconds": 61 * 60})
    status, body = kashflow.json("GET", "/customers")
    assert (status, body["Error"]) == (401, "InvalidSessionToken")
    assert kashflow.login().status_code == 200
    assert kashflow.request("GET", "/customers").status_code == 200


def test_lock_out_after_five_bad_passwords(sandbox):
    client = KashFlow(sandbox.info["kashflow"])
    answers = [client.login(password="wrong") for _ in range(5)]
    assert [a.status_code for a in answers] == [401] * 5
    assert [a.json().get("Error") for a in answers] == [None] * 4 + ["AccountLocked"]
    response = client.login()
    assert (response.status_code, response.json()["Error"]) == (401, "AccountLocked")


def test_injected_expired_token_meets_the_real_401(kashflow, kf_control):
    control(
        kf_control, "faults", {"rules": [{"match": "GET /v2/customers", "kind": "expire_token"}]}
    )
    status, body = kashflow.json("GET", "/customers")
    assert (status, body) == (
        401,
        {"Error": "InvalidSessionToken", "Message": "Session token provided is invalid."},
    )


def test_customer_crud_and_duplicate_code(kashflow):
    make_customer(kashflow, Contacts=[{"Firstname": "Jo", "LastName": "Bloggs"}])
    status, body = kashflow.json("POST", "/customers", json={"Code": "ACME001", "Name": "Again"})
    assert (status, body["Error"]) == (400, "ValidationError")
    contacts = kashflow.json("GET", "/customers/ACME001")[1]["Contacts"]
    whole = {"Code": "ACME001", "Name": "Acme Renamed Ltd", "Contacts": contacts}  # PUT: whole
    status, body = kashflow.json("PUT", "/customers/ACME001", json=whole)
    assert (status, body["Name"], body["Contacts"][0]["Firstname"]) == (
        200,
        "Acme Renamed Ltd",
        "Jo",
    )
    assert kashflow.request("DELETE", "/customers/ACME001").status_code == 204
    assert kashflow.json("GET", "/customers/ACME001")[1] == {
        "Error": "NotFound",
        "Message": "Customer ACME001 not found.",
    }


def test_next_page_url_is_absolute_and_leads_to_the_end(kashflow, kf_control):
    control(kf_control, "reset", {"seed": "customers=120"})
    url, codes = "/customers?perpage=50&sortby=1&order=desc", []
    while url:
        status, page = kashflow.json("GET", url)
        assert status == 200
        codes += [c["Code"] for c in page["Data"]]
        url = page["MetaData"]["NextPageUrl"]
    assert len(codes) == len(set(codes)) == 120
    assert codes == sorted(codes, reverse=True)


def test_invoice_over_http_money_on_the_wire_and_payments(kashflow):
    make_customer(kashflow)
    line = {
        "Description": "Widget",
        "Quantity": 3,
        "Rate": 33.33,
        "VATLevel": 20,
        "NominalCode": 4000,
    }
    body = {"CustomerCode": "ACME001", "CustomerReference": "006Hs00000AbCdE", "LineItems": [line]}
    response = kashflow.request("POST", "/invoices", json=body)
    assert response.status_code == 201
    # 3 x 33.33 = 99.99 net; VAT 19.998 rounds to 20.00; gross 119.99, four decimals on the wire.
    assert '"NetAmount":99.9900' in response.text
    assert '"VATAmount":20.0000' in response.text
    assert '"GrossAmount":119.9900' in response.text
    number = response.json()["Number"]
    payment = {"Amount": "100.00", "Date": "2024-10-20", "AccountId": 101, "Method": 1}
    whole = {**response.json(), "PaymentLines": [payment]}  # a PUT replaces the whole invoice
    status, invoice = kashflow.json("PUT", f"/invoices/{number}", json=whole)
    assert (status, invoice["Status"], invoice["DueAmount"]) == (200, "Part Paid", Decimal("19.99"))


def test_lost_answer_to_an_invoice_post_still_leaves_one_findable_invoice(kashflow, kf_control):
    """The 'ambiguous' fault commits the write and drops the answer; the client can then find
    the invoice by its CustomerReference instead of creating a second one."""
    make_customer(kashflow)
    control(kf_control, "faults", {"rules": [{"match": "POST /v2/invoices", "kind": "ambiguous"}]})
    line = {"Quantity": 1, "Rate": 10, "VATLevel": 20, "NominalCode": 4000}
    body = {"CustomerCode": "ACME001", "CustomerReference": "006LOST", "LineItems": [line]}
    with pytest.raises(requests.ConnectionError):
        kashflow.request("POST", "/invoices", json=body)
    control(kf_control, "faults", {})
    _, page = kashflow.json("GET", "/invoices?searchtext=006LOST")
    assert [(i["CustomerReference"], i["GrossAmount"]) for i in page["Data"]] == [
        ("006LOST", Decimal("12.00"))
    ]


def test_control_reset_with_a_sized_seed_and_stats_per_route(kashflow, kf_control):
    control(kf_control, "reset", {"seed": "customers=10000,invoices=0,accounts=3"})
    _, page = kashflow.json("GET", "/customers?perpage=1")
    assert page["MetaData"]["TotalRecords"] == 10000
    kashflow.request("GET", "/customers/NOPE")
    calls = control(kf_control, "stats")["calls"]
    assert calls["GET /v2/customers/{code}"] == 1


def test_concurrent_invoice_posts_get_distinct_numbers(kashflow):
    make_customer(kashflow)
    line = {"Quantity": 1, "Rate": 10, "VATLevel": 20, "NominalCode": 4000}
    body = {"CustomerCode": "ACME001", "LineItems": [line]}

    def post(_):
        client = KashFlow(kashflow.info)
        client.token = kashflow.token
        return client.json("POST", "/invoices", json=body)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(40)))
    assert {status for status, _ in results} == {201}
    assert sorted(invoice["Number"] for _, invoice in results) == list(range(1, 41))
