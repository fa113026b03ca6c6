"""The Salesforce simulator's Orders: activation, the lock, TotalAmount, reduction orders and the
Edit Activated Orders permission, driven by unmodified simple-salesforce over real sockets."""

import threading
import time
from http.server import HTTPServer

import pytest
from simple_salesforce.exceptions import SalesforceMalformedRequest

from tests.fixtures_sandbox import control
from tests.sandbox.test_salesforce import _Receiver, catalogue, login  # noqa: F401  (fixture)


@pytest.fixture
def sf(sandbox):
    return login(sandbox)


def orders_switch(sandbox, **settings):
    return control(sandbox.info["control"]["salesforce"], "orders", settings)


def draft_order(sf, catalogue, quantity=2, price=100):  # noqa: F811
    account = sf.Account.create({"Name": "Acme"})["id"]
    order = sf.Order.create(
        {"AccountId": account, "EffectiveDate": "2026-12-01", "Status": "Draft",
         "Pricebook2Id": catalogue["pricebook"]}
    )["id"]  # fmt: skip
    item = sf.OrderItem.create(
        {"OrderId": order, "PricebookEntryId": catalogue["entry"], "Quantity": quantity,
         "UnitPrice": price}
    )["id"]  # fmt: skip
    return order, item


def error_code(raised) -> str:
    return raised.value.content[0]["errorCode"]


def test_an_order_rolls_up_its_products_and_activates_into_the_activated_category(sf, catalogue):  # noqa: F811
    order, item = draft_order(sf, catalogue)
    record = sf.Order.get(order)
    assert (record["Status"], record["StatusCode"], record["TotalAmount"]) == (
        "Draft",
        "Draft",
        200,
    )
    assert record["OrderNumber"] == "00000001"
    assert sf.OrderItem.get(item)["TotalPrice"] == 200
    sf.Order.update(order, {"Status": "Activated"})
    record = sf.Order.get(order)
    assert record["StatusCode"] == "Activated" and record["ActivatedDate"]
    found = sf.query("SELECT Id FROM Order WHERE StatusCode = 'Activated'")["records"]
    assert [r["Id"] for r in found] == [order]


def test_an_order_cannot_be_created_activated_nor_activated_without_products(sf, catalogue):  # noqa: F811
    account = sf.Account.create({"Name": "Acme"})["id"]
    base = {"AccountId": account, "EffectiveDate": "2026-12-01"}
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Order.create({**base, "Status": "Activated"})
    assert error_code(raised) == "FIELD_INTEGRITY_EXCEPTION"
    empty = sf.Order.create({**base, "Status": "Draft"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Order.update(empty, {"Status": "Activated"})
    assert "no order products" in raised.value.content[0]["message"]
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.OrderItem.create({"OrderId": empty, "PricebookEntryId": catalogue["entry"],
                             "Quantity": 1, "UnitPrice": 1})  # fmt: skip
    assert "Price Book Not Set" in raised.value.content[0]["message"]


def test_an_activated_order_is_locked_unless_the_user_may_edit_activated_orders(
    sandbox,
    sf,
    catalogue,  # noqa: F811
):
    order, item = draft_order(sf, catalogue)
    sf.Order.update(order, {"Status": "Activated"})
    assert orders_switch(sandbox)["edit_activated_orders"] is False  # the default
    for call in (
        lambda: sf.Order.update(order, {"KashFlow_Invoice_Number__c": "1001"}),
        lambda: sf.OrderItem.update(item, {"Description": "x"}),
        lambda: sf.OrderItem.create(
            {
                "OrderId": order,
                "PricebookEntryId": catalogue["entry"],
                "Quantity": 1,
                "UnitPrice": 1,
            }
        ),
        lambda: sf.Order.delete(order),
    ):
        with pytest.raises(SalesforceMalformedRequest) as raised:
            call()
        assert error_code(raised) == "ENTITY_IS_LOCKED"
    assert orders_switch(sandbox, edit_activated_orders=True)["edit_activated_orders"] is True
    sf.Order.update(order, {"KashFlow_Invoice_Number__c": "1001"})
    assert sf.Order.get(order)["KashFlow_Invoice_Number__c"] == "1001"
    with pytest.raises(SalesforceMalformedRequest) as raised:  # still: no products added
        sf.OrderItem.create({"OrderId": order, "PricebookEntryId": catalogue["entry"],
                             "Quantity": 1, "UnitPrice": 1})  # fmt: skip
    assert error_code(raised) == "ENTITY_IS_LOCKED"
    # The permission is data, as in an org: a permission set assigned to the user.
    username = sandbox.info["salesforce"]["username"]
    granted = sf.query(
        "SELECT Id FROM PermissionSetAssignment WHERE Assignee.Username = "
        f"'{username}' AND PermissionSet.PermissionsEditActivatedOrders = true"
    )
    assert granted["totalSize"] == 1
    orders_switch(sandbox, edit_activated_orders=False)
    with pytest.raises(SalesforceMalformedRequest):
        sf.Order.update(order, {"KashFlow_Invoice_Number__c": "1002"})


def test_a_reduction_order_reduces_an_activated_order_with_negative_quantities(
    sandbox,
    sf,
    catalogue,  # noqa: F811
):
    order, item = draft_order(sf, catalogue, quantity=3)
    sf.Order.update(order, {"Status": "Activated"})
    reduction = {"IsReductionOrder": True, "OriginalOrderId": order, "Status": "Draft",
                 "EffectiveDate": "2026-12-05"}  # fmt: skip
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Order.create({**reduction, "AccountId": sf.Order.get(order)["AccountId"]})
    assert "not enabled" in raised.value.content[0]["message"]
    orders_switch(sandbox, reduction_orders=True)
    created = sf.Order.create({**reduction, "AccountId": sf.Order.get(order)["AccountId"]})["id"]
    line = {"OrderId": created, "PricebookEntryId": catalogue["entry"], "UnitPrice": 100}
    with pytest.raises(SalesforceMalformedRequest):  # the product it reduces is required
        sf.OrderItem.create({**line, "Quantity": -1})
    with pytest.raises(SalesforceMalformedRequest):  # no more than was ordered
        sf.OrderItem.create({**line, "Quantity": -4, "OriginalOrderItemId": item})
    sf.OrderItem.create({**line, "Quantity": -1, "OriginalOrderItemId": item})
    sf.Order.update(created, {"Status": "Activated"})
    record = sf.Order.get(created)
    assert (record["IsReductionOrder"], record["OriginalOrderId"]) == (True, order)
    assert record["TotalAmount"] == -100
    assert sf.OrderItem.get(item)["AvailableQuantity"] == 2
    orders_switch(sandbox, edit_activated_orders=True)
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Order.update(order, {"Status": "Draft"})
    assert "reduction orders" in raised.value.content[0]["message"]


def test_an_order_takes_the_currency_its_items_inherit_in_a_multi_currency_org(
    sandbox,
    sf,
    catalogue,  # noqa: F811
):
    control(sandbox.info["control"]["salesforce"], "currencies",
            {"multi_currency": True, "corporate": "GBP", "rates": {"EUR": "1.17"}})  # fmt: skip
    order, item = draft_order(sf, catalogue)
    assert sf.Order.get(order)["CurrencyIsoCode"] == "GBP"
    assert sf.OrderItem.get(item)["CurrencyIsoCode"] == "GBP"


def test_an_outbound_message_for_orders_is_sent_when_an_order_is_activated(
    sandbox,
    sf,
    catalogue,  # noqa: F811
):
    _Receiver.bodies, _Receiver.fail_first = [], 0
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/outbound"
        config = {"url": url, "enabled": True}
        control(sandbox.info["control"]["salesforce"], "outbound", config)
        order, _item = draft_order(sf, catalogue)
        sf.Order.update(order, {"Status": "Activated"})
        time.sleep(0.5)
        assert control(sandbox.info["control"]["salesforce"], "outbound")["deliveries"] == []
        control(sandbox.info["control"]["salesforce"], "outbound", {**config, "orders": True})
        second, _item = draft_order(sf, catalogue)
        sf.Order.update(second, {"Status": "Activated"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _Receiver.bodies:
            time.sleep(0.1)
        [body] = _Receiver.bodies
        assert 'xsi:type="sf:Order"' in body and f"<sf:Id>{second}</sf:Id>" in body
        assert "<sf:StatusCode>Activated</sf:StatusCode>" in body
    finally:
        receiver.shutdown()
