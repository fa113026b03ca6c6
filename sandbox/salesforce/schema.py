"""The simulated org's schema: the objects kashforce syncs, with the metadata describe returns.

Field and object names are case-insensitive in Salesforce (SOQL, JSON bodies, URLs); lookups here
go through lower-cased maps, and responses use the canonical spelling.
"""

import contextvars
from dataclasses import dataclass, field, replace

# The admin names the child relationship when creating the payment's lookup to Opportunity; the
# simulator's org switch `payments_relationship` renames it (process-wide, like SCHEMA).
DEFAULT_PAYMENTS_RELATIONSHIP = "KashFlow_Payments__r"
TEXT_TYPES = {"string", "textarea", "email", "phone", "url", "picklist", "id", "reference"}
NUMBER_TYPES = {"currency", "double", "percent", "int"}


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    label: str = ""
    length: int = 0
    precision: int = 0
    scale: int = 0
    required: bool = False  # on create; "nillable" in describe is the opposite for writable fields
    external_id: bool = False
    unique: bool = False
    createable: bool = True
    updateable: bool = True
    custom: bool = False
    reference_to: tuple = ()
    relationship_name: str | None = None
    picklist: tuple = ()
    restricted: bool = False

    @property
    def nillable(self) -> bool:
        return not self.required and self.type not in ("boolean", "id")

    def describe(self) -> dict:
        return {
            "name": self.name,
            "label": self.label or self.name.removesuffix("__c").replace("_", " "),
            "type": self.type,
            "length": self.length,
            "precision": self.precision,
            "scale": self.scale,
            "externalId": self.external_id,
            "unique": self.unique,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "custom": self.custom,
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name,
            "restrictedPicklist": self.restricted,
            "picklistValues": [
                {"active": True, "defaultValue": False, "label": v, "value": v, "validFor": None}
                for v in self.picklist
            ],
            "calculated": not (self.createable or self.updateable) and self.type != "id",
            "filterable": self.type != "address",
            "sortable": self.type != "address",
            "idLookup": self.type == "id" or self.external_id,
        }


@dataclass
class SObject:
    name: str
    prefix: str
    label: str
    fields: dict[str, Field]
    custom: bool = False
    # relationship name -> (child object, child field), e.g. "OpportunityLineItems"
    children: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self):
        self._by_lower = {name.lower(): f for name, f in self.fields.items()}
        self._relationships = {
            f.relationship_name.lower(): f for f in self.fields.values() if f.relationship_name
        }

    def field(self, name: str) -> Field | None:
        return self._by_lower.get(name.lower())

    def relationship(self, name: str) -> Field | None:
        """The reference field behind a parent relationship name (Account -> AccountId)."""
        return self._relationships.get(name.lower())

    def child_relationship(self, name: str) -> tuple[str, str] | None:
        for rel, target in self.children.items():
            if rel.lower() == name.lower():
                return target
        return None

    def external_id_fields(self) -> list[Field]:
        return [f for f in self.fields.values() if f.external_id]


def _string(name, length=255, **kw):
    return Field(name, "string", length=length, **kw)


def _money(name, **kw):
    return Field(name, "currency", precision=18, scale=2, **kw)


def _reference(name, target, relationship, **kw):
    return Field(
        name, "reference", length=18, reference_to=(target,), relationship_name=relationship, **kw
    )


def _readonly(f: Field) -> Field:
    return Field(**{**f.__dict__, "createable": False, "updateable": False})


def _system_fields(lookup_name=False) -> list[Field]:
    return [
        Field("Id", "id", length=18, createable=False, updateable=False, label="Record ID"),
        Field("IsDeleted", "boolean", createable=False, updateable=False, label="Deleted"),
        Field("CreatedDate", "datetime", createable=False, updateable=False),
        Field("LastModifiedDate", "datetime", createable=False, updateable=False),
        Field("SystemModstamp", "datetime", createable=False, updateable=False),
    ]


def _address(prefix: str) -> list[Field]:
    return [
        Field(f"{prefix}Street", "textarea", length=255),
        _string(f"{prefix}City", 40),
        _string(f"{prefix}State", 80),
        _string(f"{prefix}PostalCode", 20),
        _string(f"{prefix}Country", 80),
        Field(f"{prefix}Address", "address", createable=False, updateable=False),
    ]


def _external_id(length=64):
    return _string(
        "ExternalID__c", length, external_id=True, unique=True, custom=True, label="External ID"
    )


# (stage, default probability, IsClosed, IsWon, forecast category): the standard stage table.
STAGES = [
    ("Prospecting", 10, False, False, "Pipeline"),
    ("Qualification", 10, False, False, "Pipeline"),
    ("Needs Analysis", 20, False, False, "Pipeline"),
    ("Value Proposition", 50, False, False, "Pipeline"),
    ("Id. Decision Makers", 60, False, False, "Pipeline"),
    ("Perception Analysis", 70, False, False, "Pipeline"),
    ("Proposal/Price Quote", 75, False, False, "Pipeline"),
    ("Negotiation/Review", 90, False, False, "Pipeline"),
    ("Closed Won", 100, True, True, "Closed"),
    ("Closed Lost", 0, True, False, "Omitted"),
]
STAGE_BY_NAME = {stage[0]: stage for stage in STAGES}
ACCOUNT_TYPES = ("Prospect", "Customer - Direct", "Customer - Channel", "Partner", "Other")
PRODUCT_FAMILIES = (
    "Consulting",
    "Software",
    "Hardware",
    "Support",
    "Training",
    "Books",
    "Energy",
    "Child Safety",
    "None",
)


def _object(name, prefix, label, fields, custom=False, children=None) -> SObject:
    all_fields = {f.name: f for f in [*_system_fields(), *fields]}
    return SObject(name, prefix, label, all_fields, custom, children or {})


OBJECTS = [
    _object(
        "Account",
        "001",
        "Account",
        [
            _string("Name", required=True, label="Account Name"),
            _string("AccountNumber", 40),
            Field("Phone", "phone", length=40),
            Field("Website", "url", length=255),
            Field("Type", "picklist", length=255, picklist=ACCOUNT_TYPES),
            *_address("Billing"),
            *_address("Shipping"),
            Field("Description", "textarea", length=32000),
            _external_id(),
        ],
        children={
            "Contacts": ("Contact", "AccountId"),
            "Opportunities": ("Opportunity", "AccountId"),
        },
    ),
    _object(
        "Contact",
        "003",
        "Contact",
        [
            _reference("AccountId", "Account", "Account"),
            _string("FirstName", 40),
            _string("LastName", 80, required=True),
            _readonly(_string("Name", 121, label="Full Name")),
            Field("Email", "email", length=80),
            Field("Phone", "phone", length=40),
            Field("MobilePhone", "phone", length=40),
            _string("Title", 128),
            *_address("Mailing"),
            _external_id(),
        ],
    ),
    _object(
        "Opportunity",
        "006",
        "Opportunity",
        [
            _reference("AccountId", "Account", "Account"),
            _string("Name", 120, required=True),
            Field(
                "StageName",
                "picklist",
                length=255,
                required=True,
                restricted=True,
                picklist=tuple(stage[0] for stage in STAGES),
                label="Stage",
            ),
            Field("CloseDate", "date", required=True),
            _money("Amount"),
            Field("Probability", "percent", precision=3, scale=0),
            _readonly(Field("IsClosed", "boolean", label="Closed")),
            _readonly(Field("IsWon", "boolean", label="Won")),
            _readonly(_string("ForecastCategoryName", 40)),
            _reference("Pricebook2Id", "Pricebook2", "Pricebook2"),
            _readonly(Field("HasOpportunityLineItem", "boolean", label="Has Line Item")),
            Field("Description", "textarea", length=32000),
            _string("KashFlow_Invoice_Number__c", 32, custom=True),
            _string("KashFlow_Invoice_Status__c", 32, custom=True),
            # kashforce's own fields keep KashFlow's four decimals (README, "The org's fields").
            Field("KashFlow_Amount_Due__c", "currency", precision=18, scale=4, custom=True),
        ],
        children={
            "OpportunityLineItems": ("OpportunityLineItem", "OpportunityId"),
            DEFAULT_PAYMENTS_RELATIONSHIP: ("KashFlow_Payment__c", "Opportunity__c"),
        },
    ),
    _object(
        "OpportunityLineItem",
        "00k",
        "Opportunity Product",
        [
            Field(
                "OpportunityId",
                "reference",
                length=18,
                required=True,
                updateable=False,
                reference_to=("Opportunity",),
                relationship_name="Opportunity",
            ),
            Field(
                "PricebookEntryId",
                "reference",
                length=18,
                updateable=False,
                reference_to=("PricebookEntry",),
                relationship_name="PricebookEntry",
            ),
            Field(
                "Product2Id",
                "reference",
                length=18,
                updateable=False,
                reference_to=("Product2",),
                relationship_name="Product2",
            ),
            _readonly(_string("Name", 376, label="Opportunity Product Name")),
            _readonly(_string("ProductCode", 255)),
            Field("Quantity", "double", precision=12, scale=2, required=True),
            _money("UnitPrice", label="Sales Price"),
            _money("TotalPrice", label="Total Price"),
            _readonly(_money("ListPrice", label="List Price")),
            Field("Discount", "percent", precision=18, scale=2),
            _string("Description", 255, label="Line Description"),
            Field("ServiceDate", "date"),
            Field("SortOrder", "int", precision=9),
        ],
    ),
    _object(
        "Product2",
        "01t",
        "Product",
        [
            _string("Name", required=True, label="Product Name"),
            _string("ProductCode"),
            Field("Description", "textarea", length=4000),
            Field("Family", "picklist", length=255, picklist=PRODUCT_FAMILIES),
            Field("IsActive", "boolean", label="Active"),
            _external_id(),
        ],
        children={"PricebookEntries": ("PricebookEntry", "Product2Id")},
    ),
    _object(
        "Pricebook2",
        "01s",
        "Price Book",
        [
            _string("Name", required=True),
            Field("IsActive", "boolean", label="Active"),
            _readonly(Field("IsStandard", "boolean", label="Is Standard Price Book")),
            _string("Description"),
        ],
    ),
    _object(
        "PricebookEntry",
        "01u",
        "Price Book Entry",
        [
            _readonly(_string("Name", 255)),
            Field(
                "Pricebook2Id",
                "reference",
                length=18,
                required=True,
                updateable=False,
                reference_to=("Pricebook2",),
                relationship_name="Pricebook2",
            ),
            Field(
                "Product2Id",
                "reference",
                length=18,
                required=True,
                updateable=False,
                reference_to=("Product2",),
                relationship_name="Product2",
            ),
            _money("UnitPrice", required=True, label="List Price"),
            Field("IsActive", "boolean", label="Active"),
            Field("UseStandardPrice", "boolean"),
            _readonly(_string("ProductCode")),
        ],
    ),
    _object(
        "KashFlow_Payment__c",
        "a0X",
        "KashFlow Payment",
        [
            _readonly(_string("Name", 80, label="Payment Number")),
            _external_id(),
            Field(
                "Opportunity__c",
                "reference",
                length=18,
                custom=True,
                reference_to=("Opportunity",),
                relationship_name="Opportunity__r",
            ),
            Field("Amount__c", "currency", precision=18, scale=4, custom=True),  # as KashFlow
            Field("Payment_Date__c", "date", custom=True),
            _string("Method__c", 64, custom=True),
            _string("Invoice_Number__c", 32, custom=True),
        ],
        custom=True,
    ),
]

# Orders (reference/orders-currency-vat-alerts.md §A). Status is admin-defined; each value
# belongs to a category, StatusCode (Draft or Activated), which is what a query should use.
ORDER_STATUSES = {"Draft": "Draft", "Activated": "Activated"}
OBJECTS += [
    _object(
        "Order",
        "801",
        "Order",
        [
            _reference("AccountId", "Account", "Account", required=True),
            Field("EffectiveDate", "date", required=True, label="Order Start Date"),
            Field("EndDate", "date", label="Order End Date"),
            Field(
                "Status",
                "picklist",
                length=40,
                required=True,
                restricted=True,
                picklist=tuple(ORDER_STATUSES),
            ),
            _readonly(
                Field(
                    "StatusCode",
                    "picklist",
                    length=40,
                    picklist=("Draft", "Activated"),
                    label="Status Category",
                )
            ),
            _readonly(_string("OrderNumber", 30, label="Order Number")),
            _readonly(_money("TotalAmount", label="Order Amount")),
            _reference("Pricebook2Id", "Pricebook2", "Pricebook2"),
            # Present in some orgs only (reference §A1, [U]): kept, so the "both" rule can work.
            _reference("OpportunityId", "Opportunity", "Opportunity"),
            _readonly(Field("ActivatedDate", "datetime", label="Activated Date")),
            Field("IsReductionOrder", "boolean", updateable=False, label="Reduction Order"),
            Field(
                "OriginalOrderId",
                "reference",
                length=18,
                updateable=False,
                reference_to=("Order",),
                relationship_name="OriginalOrder",
            ),
            _string("PoNumber", 80, label="PO Number"),
            Field("Description", "textarea", length=32000),
            _string("KashFlow_Invoice_Number__c", 32, custom=True),
            _string("KashFlow_Invoice_Status__c", 32, custom=True),
            _money("KashFlow_Amount_Due__c", custom=True),
        ],
        children={"OrderItems": ("OrderItem", "OrderId")},
    ),
    _object(
        "OrderItem",
        "802",
        "Order Product",
        [
            Field(
                "OrderId",
                "reference",
                length=18,
                required=True,
                updateable=False,
                reference_to=("Order",),
                relationship_name="Order",
            ),
            Field(
                "PricebookEntryId",
                "reference",
                length=18,
                required=True,
                updateable=False,
                reference_to=("PricebookEntry",),
                relationship_name="PricebookEntry",
            ),
            _readonly(_reference("Product2Id", "Product2", "Product2")),
            _readonly(_string("OrderItemNumber", 30, label="Order Product Number")),
            Field("Quantity", "double", precision=12, scale=2, required=True),
            _money("UnitPrice", required=True, label="Unit Price"),
            _readonly(_money("TotalPrice", label="Total Price")),
            _readonly(_money("ListPrice", label="List Price")),
            _string("Description", 255, label="Line Description"),
            Field("ServiceDate", "date", label="Start Date"),
            Field("EndDate", "date"),
            Field(
                "OriginalOrderItemId",
                "reference",
                length=18,
                updateable=False,
                reference_to=("OrderItem",),
                relationship_name="OriginalOrderItem",
            ),
            _readonly(Field("AvailableQuantity", "double", precision=12, scale=2)),
        ],
    ),
    # Who may edit an activated Order: the "Edit Activated Orders" user permission, granted
    # through a permission set. Read-only over the API here; the control call
    # `orders {"edit_activated_orders": true}` grants it to the integration user.
    _object(
        "User",
        "005",
        "User",
        [
            _readonly(_string("Username", 80)),
            _readonly(_string("Name", 121, label="Full Name")),
            _readonly(Field("IsActive", "boolean", label="Active")),
        ],
    ),
    _object(
        "PermissionSet",
        "0PS",
        "Permission Set",
        [
            _readonly(_string("Name", 80)),
            _readonly(_string("Label", 80)),
            _readonly(Field("IsOwnedByProfile", "boolean")),
            _readonly(Field("PermissionsEditActivatedOrders", "boolean")),
        ],
    ),
    _object(
        "PermissionSetAssignment",
        "0Pa",
        "Permission Set Assignment",
        [
            _readonly(_reference("AssigneeId", "User", "Assignee")),
            _readonly(_reference("PermissionSetId", "PermissionSet", "PermissionSet")),
        ],
    ),
]

ORG_PREFIX, USER_PREFIX = "00D", "005"
# The org's one row. DefaultCurrencyIsoCode is the currency of a single-currency org; with
# multi-currency on, the corporate currency is CurrencyType's IsCorporate row instead, and the
# field is left out (the least forgiving reading: the docs tie it to single-currency orgs).
ORGANIZATION = _object(
    "Organization",
    ORG_PREFIX,
    "Organization",
    [
        _readonly(_string("Name", 80)),
        _readonly(Field("DefaultCurrencyIsoCode", "picklist", length=3, label="Locale Currency")),
    ],
)
OBJECTS.append(ORGANIZATION)

# Multi-currency (an org switch, `MULTI_CURRENCY`): these objects gain CurrencyIsoCode, and
# CurrencyType exists. In a single-currency org neither does: SOQL naming them is INVALID_FIELD /
# INVALID_TYPE, as on a real org. A line item's currency is its Opportunity's (read-only).
CURRENCY_OBJECTS = (
    "Account", "Contact", "Opportunity", "OpportunityLineItem", "Product2", "PricebookEntry",
    "KashFlow_Payment__c", "Order", "OrderItem",
)  # fmt: skip
CURRENCY_FIELD = Field("CurrencyIsoCode", "picklist", length=3, label="Currency ISO Code")
# CurrencyType's key prefix is not in our reference; "02H" is a stand-in.
CURRENCY_TYPE = _object(
    "CurrencyType",
    "02H",
    "Currency Type",
    [
        _string("IsoCode", 3, required=True, updateable=False, label="Currency ISO Code"),
        Field("ConversionRate", "double", precision=18, scale=6, label="Conversion Rate"),
        Field("DecimalPlaces", "int", precision=2, label="Decimal Places"),
        Field("IsActive", "boolean", label="Active"),
        _readonly(Field("IsCorporate", "boolean", label="Corporate Currency")),
    ],
)
MULTI_CURRENCY = contextvars.ContextVar("multi_currency", default=False)


def _with_currency(sobj: SObject) -> SObject:
    if sobj.name == "Organization":
        fields = {n: f for n, f in sobj.fields.items() if n != "DefaultCurrencyIsoCode"}
        return replace(sobj, fields=fields)
    if sobj.name not in CURRENCY_OBJECTS:
        return sobj
    currency = CURRENCY_FIELD
    if sobj.name in ("OpportunityLineItem", "OrderItem"):
        currency = _readonly(currency)
    return replace(sobj, fields={**sobj.fields, "CurrencyIsoCode": currency})


SCHEMA = {sobject.name.lower(): sobject for sobject in OBJECTS}
MULTI_CURRENCY_SCHEMA = {
    **{name: _with_currency(sobj) for name, sobj in SCHEMA.items()},
    "currencytype": CURRENCY_TYPE,
}
BY_PREFIX = {sobject.prefix: sobject for sobject in [*OBJECTS, CURRENCY_TYPE]}


def set_payments_relationship(name: str) -> None:
    """Rename Opportunity's child relationship to KashFlow_Payment__c (as an admin may)."""
    children = SCHEMA["opportunity"].children
    for rel, target in list(children.items()):
        if target == ("KashFlow_Payment__c", "Opportunity__c"):
            del children[rel]
    children[name] = ("KashFlow_Payment__c", "Opportunity__c")


def sobject(name: str) -> SObject | None:
    schema = MULTI_CURRENCY_SCHEMA if MULTI_CURRENCY.get() else SCHEMA
    return schema.get(name.lower())


def any_sobject(name: str) -> SObject | None:
    """The object with every field it can have, whatever the switch (for the store's indexes)."""
    return MULTI_CURRENCY_SCHEMA.get(name.lower())


def objects() -> list[SObject]:
    """The org's objects, as describe lists them (CurrencyType only with multi-currency on)."""
    return list((MULTI_CURRENCY_SCHEMA if MULTI_CURRENCY.get() else SCHEMA).values())


def describe_object(sobj: SObject, version: str) -> dict:
    base = f"/services/data/v{version}/sobjects/{sobj.name}"
    return {
        **describe_summary(sobj, version),
        "fields": [f.describe() for f in sobj.fields.values()],
        "childRelationships": [
            {"childSObject": child, "field": fld, "relationshipName": rel, "cascadeDelete": True}
            for rel, (child, fld) in sobj.children.items()
        ],
        "urls": {
            "sobject": base,
            "describe": f"{base}/describe",
            "rowTemplate": f"{base}/{{ID}}",
        },
    }


def describe_summary(sobj: SObject, version: str) -> dict:
    base = f"/services/data/v{version}/sobjects/{sobj.name}"
    return {
        "name": sobj.name,
        "label": sobj.label,
        "labelPlural": sobj.label + "s",
        "keyPrefix": sobj.prefix,
        "custom": sobj.custom,
        "createable": True,
        "updateable": True,
        "deletable": True,
        "queryable": True,
        "retrieveable": True,
        "searchable": True,
        "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
    }
