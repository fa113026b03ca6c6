"""Record operations of the simulated org: validation, coercion and the platform's own automation.

The automation we reproduce is what the sync depends on: stage → IsClosed/IsWon/Probability,
line-item TotalPrice and the Opportunity.Amount roll-up, HasOpportunityLineItem, cascade deletes,
unique external ids, and a hook when an Opportunity becomes won (for Outbound Messages).
"""

import math
import re
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

from sandbox.salesforce import ids, schema
from sandbox.salesforce.errors import ApiError, not_found
from sandbox.salesforce.store import Store, format_datetime, parse_datetime

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Children removed with their parent (master-detail or standard cascade).
CASCADES = {
    "Account": [("Contact", "AccountId"), ("Opportunity", "AccountId")],
    "Opportunity": [("OpportunityLineItem", "OpportunityId")],
    "Product2": [("PricebookEntry", "Product2Id")],
    "PricebookEntry": [("OpportunityLineItem", "PricebookEntryId")],
    "Order": [("OrderItem", "OrderId")],
}
LOCKED = (
    "Unable to modify activated or superseded Order: cannot delete Order, or add or remove "
    "Order Products"
)
# Editing an activated Order (or its products) needs the "Edit Activated Orders" permission.
# Whether a custom field alone is exempt is unknown (reference §A3, §F2): not exempt here.
LOCKED_NO_PERMISSION = (
    "Unable to modify activated Order: you need the Edit Activated Orders permission to edit "
    "an activated order or its order products"
)


class Org:
    def __init__(self, store: Store, user_id: str = ""):
        self.store = store
        self.user_id = user_id  # the integration user, for its permissions
        self.won_listeners: list = []  # called with the Opportunity after commit
        self.activated_listeners: list = []  # called with an Order activated, after commit

    # -- reads ---------------------------------------------------------------------------------

    def sobject(self, name: str) -> schema.SObject:
        sobj = schema.sobject(name)
        if not sobj:
            raise ApiError(404, "NOT_FOUND", f"The requested resource does not exist: {name}")
        return sobj

    def retrieve(self, type_name: str, record_id: str, allow_deleted=False) -> dict:
        sobj = self.sobject(type_name)
        normal = ids.normalize(record_id)
        if not normal or normal[:3] != sobj.prefix:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {record_id}",
            )
        record = self.store.get(sobj.name, normal)
        if not record:
            raise not_found()
        if record["IsDeleted"] and not allow_deleted:
            raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted")
        return record

    def standard_pricebook(self) -> dict | None:
        return next((p for p in self.store.all("Pricebook2") if p.get("IsStandard")), None)

    # -- writes --------------------------------------------------------------------------------

    def create(self, type_name: str, data: dict, from_csv=False) -> dict:
        sobj = self.sobject(type_name)
        if "Id" in data or "id" in data:
            raise ApiError(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                "Unable to create/update fields: Id. Please check the security "
                "settings of this field.",
                ["Id"],
            )
        values = self._prepare(sobj, data, creating=True, from_csv=from_csv)
        record = {f.name: _default(f) for f in sobj.fields.values() if f.type != "address"}
        record.update(values)
        missing = [
            f.name for f in sobj.fields.values() if f.required and record.get(f.name) is None
        ]
        if missing:
            raise ApiError(
                400,
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                missing,
            )
        now = self.store.next_modstamp()
        record.update(
            Id=self.store.new_id(sobj.prefix),
            IsDeleted=False,
            CreatedDate=now,
            LastModifiedDate=now,
            SystemModstamp=now,
        )
        self._automate(sobj, None, record)
        self._check_unique(sobj, record)
        self.store.put(sobj.name, record)
        self._after_write(sobj, None, record)
        return record

    def update(self, type_name: str, record_id: str, data: dict, from_csv=False) -> dict:
        sobj = self.sobject(type_name)
        before = self.retrieve(sobj.name, record_id)
        values = self._prepare(sobj, data, creating=False, from_csv=from_csv)
        for name in values:
            if sobj.fields[name].required and values[name] is None:
                raise ApiError(
                    400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]", [name]
                )
        record = {**before, **values}
        self._automate(sobj, before, record)
        self._check_unique(sobj, record)
        self.touch(sobj.name, record)
        self._after_write(sobj, before, record)
        return record

    def upsert(
        self,
        type_name: str,
        field_name: str,
        value: str,
        data: dict,
        update_only=False,
        from_csv=False,
    ) -> tuple[dict, bool]:
        """(record, created). Raises a 300 ApiError listing the matches when several match."""
        sobj = self.sobject(type_name)
        matches = self.match_external_id(sobj, field_name, value)
        if len(matches) > 1:
            error = ApiError(300, "MULTIPLE_RECORDS", "More than one record found")
            error.matches = matches
            raise error
        data = {k: v for k, v in data.items() if k.lower() not in ("id", field_name.lower())}
        if matches:
            return self.update(sobj.name, matches[0]["Id"], data, from_csv), False
        if update_only:
            raise not_found()
        if field_name.lower() != "id":
            data[sobj.field(field_name).name] = value
        return self.create(sobj.name, data, from_csv), True

    def match_external_id(self, sobj: schema.SObject, field_name: str, value) -> list[dict]:
        f = sobj.field(field_name)
        if f and f.type == "id":
            record = self.store.get(sobj.name, ids.normalize(str(value)) or "")
            return [record] if record and not record["IsDeleted"] else []
        if not f or not f.external_id:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {field_name}",
            )
        return self.store.by_external_id(sobj.name, f.name, value)

    def delete(self, type_name: str, record_id: str) -> None:
        sobj = self.sobject(type_name)
        record = self.retrieve(sobj.name, record_id)
        self._order_delete_rules(sobj, record)
        for child_type, child_field in CASCADES.get(sobj.name, []):
            for child in self.store.all(child_type):
                if child.get(child_field) == record["Id"] and not child["IsDeleted"]:
                    self.delete(child_type, child["Id"])
        deleted = {**record, "IsDeleted": True}
        self.touch(sobj.name, deleted)
        self._after_write(sobj, record, deleted)

    def hard_delete(self, type_name: str, record_id: str) -> None:
        sobj = self.sobject(type_name)
        self.delete(sobj.name, record_id)
        self.store.hard_delete(sobj.name, ids.normalize(record_id))

    def touch(self, type_name: str, record: dict) -> None:
        stamp = self.store.next_modstamp()
        record.update(LastModifiedDate=stamp, SystemModstamp=stamp)
        self.store.put(type_name, record)

    # -- field preparation ---------------------------------------------------------------------

    def _prepare(self, sobj: schema.SObject, data: dict, creating: bool, from_csv: bool) -> dict:
        if not isinstance(data, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "The body must be a JSON object")
        values = {}
        for key, value in data.items():
            if key == "attributes":
                continue
            f = sobj.field(key)
            if f is None and isinstance(value, dict) and sobj.relationship(key):
                f = sobj.relationship(key)
                value = self._resolve_foreign_key(f, value)
            if f is None:
                raise ApiError(
                    400,
                    "INVALID_FIELD",
                    f"No such column '{key}' on sobject of type {sobj.name}",
                    [key],
                )
            writable = f.createable if creating else f.updateable
            if not writable:
                verb = "create" if creating else "update"
                raise ApiError(
                    400,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to {verb} fields: {f.name}. Please check the security "
                    "settings of this field and verify that it is read/write for "
                    "your profile or permission set.",
                    [f.name],
                )
            values[f.name] = self._coerce(f, value, from_csv)
        return values

    def _resolve_foreign_key(self, f: schema.Field, value: dict) -> str:
        """`"Account": {"ExternalID__c": "X"}` in a body names the parent by external id."""
        target = schema.sobject(f.reference_to[0])
        (key, external_value), *_ = [(k, v) for k, v in value.items() if k != "attributes"]
        matches = self.match_external_id(target, key, external_value)
        if len(matches) != 1:
            raise ApiError(
                400,
                "INVALID_FIELD",
                f"Foreign key external ID: {external_value} not "
                f"found for field {key} in entity {target.name}",
                [],
            )
        return matches[0]["Id"]

    def _coerce(self, f: schema.Field, value, from_csv: bool):
        if from_csv and value == "#N/A":
            return None
        if value is None or (from_csv and value == ""):
            return None
        try:
            coerced = COERCERS.get(f.type, _coerce_text)(f, value, from_csv)
        except (ValueError, TypeError):
            raise ApiError(
                400,
                "INVALID_TYPE_ON_FIELD_IN_RECORD",
                f"{f.label or f.name}: value not of required type: {value}",
                [f.name],
            ) from None
        if f.type == "reference":
            self._check_reference(f, coerced, value)
        return coerced

    def _check_reference(self, f: schema.Field, normal: str | None, raw) -> None:
        target = schema.BY_PREFIX.get((normal or "")[:3])
        if not normal or not target or target.name not in f.reference_to:
            raise ApiError(
                400,
                "MALFORMED_ID",
                f"{f.label or f.name}: id value of incorrect type: {raw}",
                [f.name],
            )
        parent = self.store.get(target.name, normal)
        if not parent or parent["IsDeleted"]:
            raise ApiError(
                400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [f.name]
            )

    def _check_unique(self, sobj: schema.SObject, record: dict) -> None:
        for f in sobj.external_id_fields():
            if not f.unique or record.get(f.name) is None:
                continue
            for other in self.store.by_external_id(sobj.name, f.name, record[f.name]):
                if other["Id"] != record["Id"]:
                    raise ApiError(
                        400,
                        "DUPLICATE_VALUE",
                        f"duplicate value found: {f.name} "
                        f"duplicates value on record with id: {other['Id']}",
                        [],
                    )

    # -- automation ----------------------------------------------------------------------------

    def _currency(self, sobj: schema.SObject, before: dict | None, record: dict) -> None:
        """Multi-currency: CurrencyIsoCode is a restricted picklist of the org's active
        currencies, the corporate one by default; a line item takes its Opportunity's."""
        if sobj.field("CurrencyIsoCode") is None:
            return
        currencies = [r for r in self.store.all("CurrencyType") if r["IsActive"]]
        parent_field = {"OpportunityLineItem": "OpportunityId", "OrderItem": "OrderId"}
        if sobj.name in parent_field:
            parent_type = parent_field[sobj.name].removesuffix("Id")
            parent = self.store.get(parent_type, record[parent_field[sobj.name]]) or {}
            record["CurrencyIsoCode"] = parent.get("CurrencyIsoCode")
            return
        code = record.get("CurrencyIsoCode")
        if code is None:
            corporate = next((r["IsoCode"] for r in currencies if r["IsCorporate"]), None)
            record["CurrencyIsoCode"] = (before or {}).get("CurrencyIsoCode") or corporate
        elif code not in {r["IsoCode"] for r in currencies}:
            raise ApiError(
                400,
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                f"Currency ISO Code: bad value for restricted picklist field: {code}",
                ["CurrencyIsoCode"],
            )

    def _automate(self, sobj: schema.SObject, before: dict | None, record: dict) -> None:
        self._currency(sobj, before, record)
        automation = {
            "Opportunity": self._opportunity_rules,
            "OpportunityLineItem": self._line_item_rules,
            "Contact": _contact_name,
            "PricebookEntry": self._pricebook_entry_rules,
            "KashFlow_Payment__c": self._payment_name,
            "Order": self._order_rules,
            "OrderItem": self._order_item_rules,
        }.get(sobj.name)
        if automation:
            automation(before, record)

    def _opportunity_rules(self, before: dict | None, record: dict) -> None:
        stage = schema.STAGE_BY_NAME[record["StageName"]]
        stage_changed = before is None or before["StageName"] != record["StageName"]
        probability_given = before is None or before.get("Probability") != record["Probability"]
        if stage_changed and not (probability_given and record.get("Probability") is not None):
            record["Probability"] = stage[1]
        record.update(IsClosed=stage[2], IsWon=stage[3], ForecastCategoryName=stage[4])
        if before is not None and before.get("HasOpportunityLineItem"):
            record["Amount"] = before["Amount"]  # rolled up from the lines, not writable

    def _line_item_rules(self, before: dict | None, line: dict) -> None:
        if before is None:
            self._attach_line_to_pricebook(line)
        elif "TotalPrice" in line and line["TotalPrice"] != before["TotalPrice"]:
            if line["UnitPrice"] != before["UnitPrice"]:
                raise ApiError(
                    400,
                    "INVALID_FIELD",
                    "Cannot change both 'UnitPrice' and 'TotalPrice' in update call",
                    ["TotalPrice"],
                )
            line["UnitPrice"] = _unit_price_from_total(line)
        line["TotalPrice"] = _total_price(line)

    def _attach_line_to_pricebook(self, line: dict) -> None:
        entry = self._pricebook_entry_for(line)
        opportunity = self.store.get("Opportunity", line["OpportunityId"])
        if opportunity["Pricebook2Id"] not in (None, entry["Pricebook2Id"]):
            raise ApiError(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: "
                "PricebookEntryId (pricebook entry is in a different pricebook than "
                "the one assigned to the opportunity)",
                ["PricebookEntryId"],
            )
        product = self.store.get("Product2", entry["Product2Id"])
        line.update(
            PricebookEntryId=entry["Id"],
            Product2Id=entry["Product2Id"],
            ListPrice=entry["UnitPrice"],
            ProductCode=product.get("ProductCode"),
            Name=f"{opportunity['Name']} {product['Name']}"[:376],
        )
        if line.get("UnitPrice") is not None and line.get("TotalPrice") is not None:
            raise ApiError(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: "
                "TotalPrice (only one of unit price or total price may be specified)",
                ["TotalPrice"],
            )
        if line.get("UnitPrice") is None and line.get("TotalPrice") is None:
            raise ApiError(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: unknown (must specify either TotalPrice or UnitPrice)",
                [],
            )
        if line.get("UnitPrice") is None:
            line["UnitPrice"] = _unit_price_from_total(line)

    def _pricebook_entry_for(self, line: dict) -> dict:
        entry = line.get("PricebookEntryId") and self.store.get(
            "PricebookEntry", line["PricebookEntryId"]
        )
        if not entry and line.get("Product2Id"):  # newer API versions accept Product2Id alone
            standard = self.standard_pricebook() or {}
            entry = next(
                (
                    e
                    for e in self.store.all("PricebookEntry")
                    if e["Product2Id"] == line["Product2Id"]
                    and not e["IsDeleted"]
                    and e["Pricebook2Id"] == standard.get("Id")
                ),
                None,
            )
        if not entry:
            raise ApiError(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: "
                "PricebookEntryId, unknown (versions 3.0 and higher must specify "
                "pricebook entry id, others must specify product id)",
                ["PricebookEntryId"],
            )
        return entry

    def _pricebook_entry_rules(self, before: dict | None, entry: dict) -> None:
        product = self.store.get("Product2", entry["Product2Id"])
        entry.update(Name=product["Name"], ProductCode=product.get("ProductCode"))

    def _payment_name(self, before: dict | None, payment: dict) -> None:
        if before is None:
            payment["Name"] = f"PAY-{self.store.next_number('autonumber:payment'):06d}"

    def _after_write(self, sobj: schema.SObject, before: dict | None, record: dict) -> None:
        if sobj.name == "OpportunityLineItem":
            self._roll_up(record["OpportunityId"])
        if sobj.name == "OrderItem":
            self._roll_up_order(record["OrderId"])
        activated = record.get("StatusCode") == "Activated"
        if sobj.name == "Order" and activated and (before or {}).get("StatusCode") != "Activated":
            for listener in self.activated_listeners:
                self.store.on_commit(lambda f=listener, i=record["Id"]: f(i))
        became_won = record.get("IsWon") and not (before or {}).get("IsWon")
        if sobj.name == "Opportunity" and became_won and not record["IsDeleted"]:
            for listener in self.won_listeners:
                self.store.on_commit(lambda f=listener, i=record["Id"]: f(i))

    def _roll_up(self, opportunity_id: str) -> None:
        opportunity = self.store.get("Opportunity", opportunity_id)
        if opportunity is None or opportunity["IsDeleted"]:
            return
        lines = [
            line
            for line in self.store.all("OpportunityLineItem")
            if line["OpportunityId"] == opportunity_id and not line["IsDeleted"]
        ]
        updated = {**opportunity, "HasOpportunityLineItem": bool(lines)}
        if lines:
            updated["Amount"] = _money(sum(_decimal(line["TotalPrice"]) for line in lines))
            updated["Pricebook2Id"] = (
                opportunity["Pricebook2Id"]
                or self.store.get("PricebookEntry", lines[0]["PricebookEntryId"])["Pricebook2Id"]
            )
        self.touch("Opportunity", updated)

    # -- Orders (reference/orders-currency-vat-alerts.md §A) -------------------------------------

    def can_edit_activated_orders(self) -> bool:
        """The integration user holds a permission set with Edit Activated Orders."""
        granted = {
            p["Id"] for p in self.store.all("PermissionSet") if p["PermissionsEditActivatedOrders"]
        }
        return any(
            a["AssigneeId"] == self.user_id and a["PermissionSetId"] in granted
            for a in self.store.all("PermissionSetAssignment")
            if not a["IsDeleted"]
        )

    def reduction_orders_enabled(self) -> bool:
        return bool(self.store.get_meta("reduction_orders", False))

    def _order_rules(self, before: dict | None, order: dict) -> None:
        category = schema.ORDER_STATUSES[order["Status"]]
        if before is None:
            # A new Order starts in a Draft-category status; activation is an update.
            if category != "Draft":
                raise ApiError(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "field integrity exception: Status (you can't create an activated order; "
                    "create it as Draft, add its products, then activate it)",
                    ["Status"],
                )
            order.update(
                OrderNumber=f"{self.store.next_number('autonumber:order'):08d}",
                StatusCode="Draft",
                TotalAmount=0.0,
            )
            if order.get("IsReductionOrder"):
                self._reduction_order_rules(order)
            elif order.get("OriginalOrderId"):
                raise ApiError(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "field integrity exception: OriginalOrderId (only a reduction order "
                    "has an original order)",
                    ["OriginalOrderId"],
                )
            return
        if before["StatusCode"] == "Activated" and not self.can_edit_activated_orders():
            raise ApiError(400, "ENTITY_IS_LOCKED", LOCKED_NO_PERMISSION, [])
        for name in ("AccountId", "Pricebook2Id"):
            changed = before.get(name) != order.get(name)
            if changed and ((name == "Pricebook2Id" and before.get(name)) or category != "Draft"):
                raise ApiError(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    f"field integrity exception: {name} (it can be changed only while the "
                    "order is Draft, and a price book once set cannot be changed)",
                    [name],
                )
        order["StatusCode"] = category
        order["TotalAmount"] = before["TotalAmount"]  # rolled up from the products
        if category == "Activated" and before["StatusCode"] == "Draft":
            if not self._items_of(order["Id"]):
                # Unknown whether the API refuses this (reference §A3, §F1): refused here.
                raise ApiError(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "field integrity exception: Status (you can't activate an order that has "
                    "no order products)",
                    ["Status"],
                )
            order["ActivatedDate"] = format_datetime(_now())
        if category == "Draft" and before["StatusCode"] == "Activated":
            reductions = [
                o for o in self.store.all("Order")
                if o.get("OriginalOrderId") == order["Id"] and not o["IsDeleted"]
            ]  # fmt: skip
            if reductions:
                raise ApiError(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "field integrity exception: Status (an order with reduction orders can't "
                    "be deactivated)",
                    ["Status"],
                )
            order["ActivatedDate"] = None

    def _reduction_order_rules(self, order: dict) -> None:
        if not self.reduction_orders_enabled():
            raise ApiError(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: IsReductionOrder (reduction orders are not enabled "
                "in Order Settings)",
                ["IsReductionOrder"],
            )
        original = self.store.get("Order", order.get("OriginalOrderId") or "")
        if not original or original["IsDeleted"] or original["StatusCode"] != "Activated":
            raise ApiError(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: OriginalOrderId (a reduction order reduces an "
                "activated order)",
                ["OriginalOrderId"],
            )
        if original.get("IsReductionOrder"):
            raise ApiError(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: OriginalOrderId (a reduction order can't be reduced)",
                ["OriginalOrderId"],
            )
        order.update(
            AccountId=original["AccountId"],
            Pricebook2Id=original["Pricebook2Id"],
            OpportunityId=original.get("OpportunityId"),
        )
        if "CurrencyIsoCode" in original:
            order["CurrencyIsoCode"] = original["CurrencyIsoCode"]

    def _order_item_rules(self, before: dict | None, item: dict) -> None:
        order = self.store.get("Order", item["OrderId"])
        if order["StatusCode"] == "Activated":
            if before is None:
                raise ApiError(400, "ENTITY_IS_LOCKED", LOCKED, [])
            if not self.can_edit_activated_orders():
                raise ApiError(400, "ENTITY_IS_LOCKED", LOCKED_NO_PERMISSION, [])
        if before is None:
            entry = self.store.get("PricebookEntry", item["PricebookEntryId"])
            if not order.get("Pricebook2Id"):
                raise ApiError(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "field integrity exception: PricebookEntryId (Price Book Not Set on Order)",
                    ["PricebookEntryId"],
                )
            if entry["Pricebook2Id"] != order["Pricebook2Id"]:
                raise ApiError(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "field integrity exception: PricebookEntryId (pricebook entry is in a "
                    "different pricebook than the one assigned to the order)",
                    ["PricebookEntryId"],
                )
            item.update(
                Product2Id=entry["Product2Id"],
                ListPrice=entry["UnitPrice"],
                OrderItemNumber=f"{self.store.next_number('autonumber:orderitem'):010d}",
            )
            if order.get("IsReductionOrder"):
                self._reduction_item_rules(order, item)
            else:
                if item.get("OriginalOrderItemId"):
                    raise ApiError(
                        400,
                        "FIELD_INTEGRITY_EXCEPTION",
                        "field integrity exception: OriginalOrderItemId (only a reduction "
                        "order's products have one)",
                        ["OriginalOrderItemId"],
                    )
                item["AvailableQuantity"] = item["Quantity"]
        elif item.get("OriginalOrderItemId"):
            if item["Quantity"] != before["Quantity"]:
                raise ApiError(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "field integrity exception: Quantity (a reduction order product's quantity "
                    "can't be changed)",
                    ["Quantity"],
                )
        elif item["Quantity"] != before["Quantity"]:
            if before["AvailableQuantity"] != before["Quantity"]:
                raise ApiError(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "You can't update Quantity because the order product has been reduced.",
                    ["Quantity"],
                )
            item["AvailableQuantity"] = item["Quantity"]
        item["TotalPrice"] = round(item["Quantity"] * item["UnitPrice"], 2)

    def _reduction_item_rules(self, order: dict, item: dict) -> None:
        """A reduction order's product names the product it reduces and a negative quantity
        (sign [U], reference §A4: negative here), at most the quantity still available."""
        original = self.store.get("OrderItem", item.get("OriginalOrderItemId") or "")
        if not original or original["OrderId"] != order["OriginalOrderId"]:
            raise ApiError(
                400,
                "REQUIRED_FIELD_MISSING" if not item.get("OriginalOrderItemId") else
                "FIELD_INTEGRITY_EXCEPTION",
                "Required fields are missing: [OriginalOrderItemId] (a product of the "
                "original order)",
                ["OriginalOrderItemId"],
            )  # fmt: skip
        if original["PricebookEntryId"] != item["PricebookEntryId"]:
            raise ApiError(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: PricebookEntryId (must be the original product's)",
                ["PricebookEntryId"],
            )
        if item["Quantity"] >= 0 or -item["Quantity"] > original["AvailableQuantity"]:
            raise ApiError(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: Quantity (a reduction is a negative quantity no "
                f"larger than the {original['AvailableQuantity']:g} still available)",
                ["Quantity"],
            )
        item["AvailableQuantity"] = 0.0
        self.touch(
            "OrderItem",
            {**original, "AvailableQuantity": original["AvailableQuantity"] + item["Quantity"]},
        )

    def _order_delete_rules(self, sobj: schema.SObject, record: dict) -> None:
        order = record if sobj.name == "Order" else None
        if sobj.name == "OrderItem":
            order = self.store.get("Order", record["OrderId"])
        if order and order["StatusCode"] == "Activated":
            raise ApiError(400, "ENTITY_IS_LOCKED", LOCKED, [])

    def _items_of(self, order_id: str) -> list[dict]:
        return [
            item
            for item in self.store.all("OrderItem")
            if item["OrderId"] == order_id and not item["IsDeleted"]
        ]

    def _roll_up_order(self, order_id: str) -> None:
        order = self.store.get("Order", order_id)
        if order is None or order["IsDeleted"]:
            return
        total = round(sum(item["TotalPrice"] for item in self._items_of(order_id)), 2)
        self.touch("Order", {**order, "TotalAmount": total})


def _default(f: schema.Field):
    if f.type == "boolean":
        return f.name in ("IsActive",)
    return None


def _contact_name(before: dict | None, contact: dict) -> None:
    contact["Name"] = " ".join(p for p in (contact.get("FirstName"), contact["LastName"]) if p)


# Money is worked in decimal and rounded half-up to the field's scale, as Salesforce does; it is
# stored (and answered in JSON) as the float of that exact decimal, which prints back the same.


def _decimal(value) -> Decimal:
    return Decimal(str(value or 0))


def _money(value: Decimal, scale: int = 2) -> float:
    return float(value.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP))


def _factor(line: dict) -> Decimal:
    return _decimal(line["Quantity"]) * (1 - _decimal(line.get("Discount")) / 100)


def _total_price(line: dict) -> float:
    return _money(_factor(line) * _decimal(line["UnitPrice"]))


def _unit_price_from_total(line: dict) -> float:
    factor = _factor(line)
    return _money(_decimal(line["TotalPrice"]) / factor) if factor else 0.0


# -- coercion per field type (raise ValueError/TypeError for "value not of required type") ----


def _coerce_text(f: schema.Field, value, from_csv: bool) -> str:
    if isinstance(value, (bool, dict, list)):
        raise TypeError(value)
    text = str(value)
    if f.length and len(text) > f.length:
        raise ApiError(
            400,
            "STRING_TOO_LONG",
            f"{f.label or f.name}: data value too large: {text[:40]} (max length={f.length})",
            [f.name],
        )
    if f.type == "email" and not EMAIL.match(text):
        raise ApiError(
            400, "INVALID_EMAIL_ADDRESS", f"Email: invalid email address: {text}", [f.name]
        )
    if f.type == "picklist" and f.restricted and text not in f.picklist:
        raise ApiError(
            400,
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            f"{f.label or f.name}: bad value for restricted picklist field: {text}",
            [f.name],
        )
    return text


def _coerce_number(f: schema.Field, value, from_csv: bool):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    exact = Decimal(str(value))  # the digits sent (a JSON number parses to its shortest float)
    if f.precision and abs(number) >= 10 ** (f.precision - f.scale):
        raise ApiError(
            400,
            "NUMBER_OUTSIDE_VALID_RANGE",
            f"{f.label or f.name}: value outside of valid range on numeric field: {value}",
            [f.name],
        )
    if f.type == "int":
        return int(number)
    return _money(exact, f.scale) if f.scale else number


def _coerce_boolean(f: schema.Field, value, from_csv: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise TypeError(value)


def _coerce_date(f: schema.Field, value, from_csv: bool) -> str:
    return date.fromisoformat(str(value)[:10]).isoformat()


def _coerce_datetime(f: schema.Field, value, from_csv: bool) -> str:
    return format_datetime(parse_datetime(str(value)))


def _coerce_reference(f: schema.Field, value, from_csv: bool) -> str | None:
    if not isinstance(value, str):
        raise TypeError(value)
    return ids.normalize(value)


COERCERS = {
    "currency": _coerce_number,
    "double": _coerce_number,
    "percent": _coerce_number,
    "int": _coerce_number,
    "boolean": _coerce_boolean,
    "date": _coerce_date,
    "datetime": _coerce_datetime,
    "reference": _coerce_reference,
}


def _now() -> datetime:
    return datetime.now(UTC)
