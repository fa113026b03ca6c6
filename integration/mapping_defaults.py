"""The default field mappings, one template per flow and object pair, installed as version 1.

They are data: people edit them later in the mapping editor, which saves new versions. The
migration 0004_default_mappings installs them on a new database and the command
`install_default_mappings` on an existing one; both skip a pair that already has a mapping.

Conventions the templates share
- Addresses: a KashFlow address has four lines. Line1 and Line2 hold the street, Line3 the town
  and Line4 the county, as in KashFlow's own examples ("1 High St", "", "London", ""). So a
  Salesforce BillingStreet of up to two lines round-trips exactly; a longer one keeps every word,
  its extra lines folded into Line2 with ", " (and a warning).
- Countries: Salesforce's BillingCountry is free text and usually a name ("United Kingdom"), so
  KashFlow's CountryName goes to Salesforce, and a Salesforce name or code becomes KashFlow's
  ISO CountryCode (`as_country_code`).
- The primary contact is `Contacts[?IsPrimary]`: the contact marked IsPrimary, else the first.
- A Salesforce Account becoming a KashFlow customer gets its Code from the flow (a deterministic
  code), and its primary Contact under `PrimaryContact.*` when the flow has one.
- KashFlow product keys are "{NominalCode}-{Code}", the CrossRef key and Product2.ExternalID__c.
- Payment lines: KashFlow sends InvoiceNumber as 0 inside an invoice, so the flow sets it (and
  MethodName, the payment method's name from /paymentmethods) before mapping.
- Products: `params.master` names the side that owns each field; an update sends only the
  fields the source side owns (`mapping.rows_owned_by`), a create sends every row.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Template:
    flow: str
    source_object: str
    target_object: str
    name: str
    rows: list[dict]
    # Write-backs only ever update a record: no required-on-create fields, only updateable ones.
    update_only: bool = False
    # Target fields the flow sets itself, outside the mapping.
    filled_by_flow: tuple[str, ...] = field(default_factory=tuple)
    # Target fields the engine depends on and sets itself: (field, why), shown as fixed rows in
    # the editor; no row may write them.
    fixed_by_engine: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # Source names the flow adds to the record before mapping (beside the object's own fields).
    source_extras: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fixed_fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fixed_by_engine)


def row(target: str, source: str = "", transform: str = "copy", *, default: str = "",
        required: bool = False, **params) -> dict:  # fmt: skip
    return {
        "source_path": source,
        "target_path": target,
        "transform": transform,
        "params": params,
        "default": default,
        "required": required,
    }


def _when_empty(path: str) -> dict:
    return {"path": path, "empty": True}


def _when_present(path: str) -> dict:
    return {"path": path, "not_empty": True}


def _shipping_rows() -> list[dict]:
    """Shipping* from the delivery address, or from the billing address when there is none.

    Each field has two rows with opposite conditions, so one address is never mixed with the
    other (a delivery street with the billing postcode)."""
    rows = []
    for address, when in (
        ("DeliveryAddresses.0", _when_present("DeliveryAddresses.0.Line1")),
        ("Addresses.0", _when_empty("DeliveryAddresses.0.Line1")),
    ):
        rows += [
            row("ShippingStreet", transform="join_street", when=when,
                sources=[f"{address}.Line1", f"{address}.Line2"]),
            row("ShippingCity", f"{address}.Line3", when=when),
            row("ShippingState", f"{address}.Line4", when=when),
            row("ShippingPostalCode", f"{address}.PostCode", when=when),
            row("ShippingCountry", f"{address}.CountryName", when=when,
                fallbacks=[f"{address}.CountryCode"]),
        ]  # fmt: skip
    return rows


PRIMARY = "Contacts[?IsPrimary]"

CUSTOMER_TO_ACCOUNT = Template(
    "customers", "kashflow.Customer", "salesforce.Account", "KashFlow customers to Accounts",
    [
        row("ExternalID__c", "Code", required=True),
        row("AccountNumber", "Code"),
        row("Name", "Name", required=True, missing="the customer has no name"),
        row("Phone", "TelephoneNumber", fallbacks=[f"{PRIMARY}.Telephone"]),
        row("BillingStreet", transform="join_street",
            sources=["Addresses.0.Line1", "Addresses.0.Line2"]),
        row("BillingCity", "Addresses.0.Line3"),
        row("BillingState", "Addresses.0.Line4"),
        row("BillingPostalCode", "Addresses.0.PostCode"),
        row("BillingCountry", "Addresses.0.CountryName", fallbacks=["Addresses.0.CountryCode"]),
        *_shipping_rows(),
    ],
)  # fmt: skip

CUSTOMER_TO_CONTACT = Template(
    "customers", "kashflow.Customer", "salesforce.Contact", "KashFlow primary contacts to Contacts",
    [
        # One Contact per customer: the primary contact, whoever that is at the time.
        row("ExternalID__c", transform="concat", required=True,
            sources=["Code", {"value": "-primary"}], separator=""),
        row("FirstName", f"{PRIMARY}.Firstname", when=_when_present(f"{PRIMARY}.Firstname")),
        row("FirstName", f"{PRIMARY}.Name", "split_name", part="first",
            when=_when_empty(f"{PRIMARY}.Firstname")),
        row("LastName", f"{PRIMARY}.LastName", required=True,
            when=_when_present(f"{PRIMARY}.LastName")),
        row("LastName", f"{PRIMARY}.Name", "split_name", part="last", required=True,
            when=_when_empty(f"{PRIMARY}.LastName"),
            missing="the customer's primary contact has no name"),
        row("Email", f"{PRIMARY}.Email", fallbacks=["Email"]),
        row("Phone", f"{PRIMARY}.Telephone", fallbacks=["TelephoneNumber"]),
    ],
    filled_by_flow=("AccountId",),
)  # fmt: skip

_HAS_CONTACT = _when_present("PrimaryContact.LastName")

ACCOUNT_TO_CUSTOMER = Template(
    "customers", "salesforce.Account", "kashflow.Customer", "Accounts to KashFlow customers",
    [
        row("Name", "Name", required=True, missing="the Account has no name"),
        row("TelephoneNumber", "Phone"),
        row("Addresses.0.Line1", "BillingStreet", "split_street", line=1, lines=2),
        row("Addresses.0.Line2", "BillingStreet", "split_street", line=2, lines=2),
        row("Addresses.0.Line3", "BillingCity"),
        row("Addresses.0.Line4", "BillingState"),
        row("Addresses.0.PostCode", "BillingPostalCode"),
        # Salesforce's BillingCountry is free text, usually a name; KashFlow wants a code.
        row("Addresses.0.CountryCode", "BillingCountry", as_country_code=True),
        row("Contacts.0.Name", transform="concat", when=_HAS_CONTACT,
            sources=["PrimaryContact.FirstName", "PrimaryContact.LastName"]),
        row("Contacts.0.Firstname", "PrimaryContact.FirstName", when=_HAS_CONTACT),
        row("Contacts.0.LastName", "PrimaryContact.LastName", when=_HAS_CONTACT),
        row("Contacts.0.Email", "PrimaryContact.Email", when=_HAS_CONTACT),
        row("Contacts.0.Telephone", "PrimaryContact.Phone", when=_HAS_CONTACT),
        row("Contacts.0.IsPrimary", transform="constant", value=True, when=_HAS_CONTACT),
    ],
    filled_by_flow=("Code",),
    source_extras=("PrimaryContact",),  # the Account's first Contact, read by the flow
)  # fmt: skip

OPPORTUNITY_TO_INVOICE = Template(
    "invoices", "salesforce.Opportunity", "kashflow.Invoice", "Closed Won Opportunities to invoices",
    [
        row("CustomerCode", "AccountId", "lookup", required=True,
            object_type="customer", side="salesforce"),
        row("IssuedDate", "CloseDate", "date", required=True, to="kashflow"),
    ],
    filled_by_flow=("LineItems",),
    # The Opportunity's id marks the invoice, so a retry finds it instead of making another. The
    # engine sets it: a mapping row could change it and remove that protection.
    fixed_by_engine=(("CustomerReference", "the Opportunity Id, so that a retry finds the "
                      "invoice instead of making a second one"),),
)  # fmt: skip

LINE_ITEM_TO_INVOICE_LINE = Template(
    "invoices", "salesforce.OpportunityLineItem", "kashflow.InvoiceLine",
    "Opportunity products to invoice lines",
    [
        row("Description", "Description", required=True,
            fallbacks=["PricebookEntry.Product2.Name", "Product2.Name", "Name"]),
        # Salesforce keeps quantities to 2 places by default; KashFlow to 4, so nothing is lost.
        row("Quantity", "Quantity", "decimal", required=True, places=4),
        # KashFlow keeps rates to 4 places; the flow prices a discounted line so that
        # Quantity x Rate is Salesforce's TotalPrice exactly, which may need all 4.
        row("Rate", "UnitPrice", "decimal", required=True, places=4),
        row("NominalCode", "Product2Id", "lookup", default="4000", default_from="nominal_code",
            object_type="product", side="salesforce", part="nominal_code",
            fallbacks=["PricebookEntry.Product2Id"]),
        row("ProductCode", "Product2Id", "lookup", omit_empty=True,
            object_type="product", side="salesforce", part="code",
            fallbacks=["PricebookEntry.Product2Id"]),
        # The flow puts the KashFlow customer (VAT number, country) and product (VATRate) beside
        # the line; see mapping.VAT_DEFAULT_PATHS and vat_decision.
        row("VATLevel", transform="vat_rate",
            country_path="Opportunity.Account.BillingCountry", product_path="ProductCode"),
    ],
    source_extras=("Opportunity",),  # the line's Opportunity and Account, added by the flow
)  # fmt: skip

INVOICE_TO_OPPORTUNITY = Template(
    "invoices", "kashflow.Invoice", "salesforce.Opportunity", "Invoice number and status back",
    [
        row("KashFlow_Invoice_Number__c", "Number", required=True),
        row("KashFlow_Invoice_Status__c", "Status"),
        # KashFlow keeps four decimals (10.005): carried exactly, so the amount due in
        # Salesforce is KashFlow's (109.995, not 110.00). The field is made with 4 decimals.
        row("KashFlow_Amount_Due__c", "DueAmount", "decimal", places=4),
    ],
    update_only=True,
)  # fmt: skip


# Activated Orders become invoices exactly as Closed Won Opportunities do: the same rows, with
# the Order's start date as the invoice date (its tax point, like a deal's close date). An
# OrderItem has no Name, so its description falls back on the product's name only.
def _order_line(line: dict) -> dict:
    """An Opportunity product's row, for an Order product."""
    params = dict(line["params"])
    if line["transform"] == "vat_rate":
        params["country_path"] = "Order.Account.BillingCountry"
    if "fallbacks" in params:
        params["fallbacks"] = [path for path in params["fallbacks"] if path != "Name"]
    return {**line, "params": params}


ORDER_TO_INVOICE = Template(
    "invoices", "salesforce.Order", "kashflow.Invoice", "Activated Orders to invoices",
    [
        row("CustomerCode", "AccountId", "lookup", required=True,
            object_type="customer", side="salesforce"),
        row("IssuedDate", "EffectiveDate", "date", required=True, to="kashflow"),
    ],
    filled_by_flow=("LineItems",),
    fixed_by_engine=(("CustomerReference", "the Order Id, so that a retry finds the invoice "
                      "instead of making a second one"),),
)  # fmt: skip

ORDER_ITEM_TO_INVOICE_LINE = Template(
    "invoices", "salesforce.OrderItem", "kashflow.InvoiceLine", "Order products to invoice lines",
    [_order_line(line) for line in LINE_ITEM_TO_INVOICE_LINE.rows],
    source_extras=("Order",),  # the line's Order and Account, added by the flow
)  # fmt: skip

INVOICE_TO_ORDER = Template(
    "invoices",
    "kashflow.Invoice",
    "salesforce.Order",
    "Invoice number and status back to Orders",
    INVOICE_TO_OPPORTUNITY.rows,
    update_only=True,
)

PAYMENT_TO_SALESFORCE = Template(
    "payments", "kashflow.PaymentLine", "salesforce.KashFlow_Payment__c", "Payments to Salesforce",
    [
        row("ExternalID__c", transform="concat", required=True,
            sources=[{"value": "KF-PAY-"}, "Id"], separator=""),
        row("Opportunity__c", "InvoiceNumber", "lookup", required=True,
            object_type="invoice", side="kashflow"),
        row("Amount__c", "Amount", "decimal", required=True, places=4),  # exact, as KashFlow
        row("Payment_Date__c", "Date", "date", required=True, to="salesforce"),
        row("Method__c", "MethodName", fallbacks=["Method"]),
        row("Invoice_Number__c", "InvoiceNumber"),
    ],
    source_extras=("MethodName",),  # the payment method's name, looked up by the flow
)  # fmt: skip

PRODUCT_TO_PRODUCT2 = Template(
    "products", "kashflow.Product", "salesforce.Product2", "KashFlow products to Product2",
    [
        row("ExternalID__c", transform="concat", required=True, master="kashflow",
            sources=["NominalCode", "Code"], separator="-"),
        row("ProductCode", "Code", required=True, master="kashflow"),
        row("Name", "Name", required=True, master="kashflow"),
        row("Description", "Description", master="salesforce"),
        row("IsActive", "InUse", default="true", master="salesforce"),
    ],
)  # fmt: skip

PRODUCT_TO_PRICEBOOK_ENTRY = Template(
    "products", "kashflow.Product", "salesforce.PricebookEntry", "KashFlow prices to the standard price book",
    [
        row("UnitPrice", "Price", "decimal", required=True, places=2, master="kashflow"),
        row("IsActive", transform="constant", value=True, master="salesforce"),
    ],
    filled_by_flow=("Pricebook2Id", "Product2Id"),
)  # fmt: skip

PRODUCT2_TO_PRODUCT = Template(
    "products", "salesforce.Product2", "kashflow.Product", "Product2 to KashFlow products",
    [
        row("Code", "ProductCode", required=True, master="kashflow",
            missing="the product has no Product Code"),
        row("NominalCode", "Id", "lookup", default="4000", default_from="nominal_code",
            object_type="product", side="salesforce", part="nominal_code", master="kashflow"),
        row("Name", "Name", required=True, master="kashflow"),
        row("Description", "Description", master="salesforce"),
    ],
)  # fmt: skip

TEMPLATES = [
    CUSTOMER_TO_ACCOUNT,
    CUSTOMER_TO_CONTACT,
    ACCOUNT_TO_CUSTOMER,
    OPPORTUNITY_TO_INVOICE,
    LINE_ITEM_TO_INVOICE_LINE,
    INVOICE_TO_OPPORTUNITY,
    ORDER_TO_INVOICE,
    ORDER_ITEM_TO_INVOICE_LINE,
    INVOICE_TO_ORDER,
    PAYMENT_TO_SALESFORCE,
    PRODUCT_TO_PRODUCT2,
    PRODUCT_TO_PRICEBOOK_ENTRY,
    PRODUCT2_TO_PRODUCT,
]
INSTALL_NOTE = "Default template"


def template_for(flow: str, source_object: str, target_object: str) -> Template | None:
    return next(
        (
            t
            for t in TEMPLATES
            if (t.flow, t.source_object, t.target_object) == (flow, source_object, target_object)
        ),
        None,
    )


def install_default_mappings(apps, user=None) -> list[Template]:
    """Install each template as active version 1 where its pair has no mapping yet.

    `apps` is the migration's app registry or django.apps.apps, so this runs on the historical
    models in 0004_default_mappings as well as from the management command. Returns what it
    installed; running it twice installs nothing the second time.
    """
    mapping_set_model = apps.get_model("integration", "MappingSet")
    field_mapping_model = apps.get_model("integration", "FieldMapping")
    installed = []
    for template in TEMPLATES:
        pair = {
            "flow": template.flow,
            "source_object": template.source_object,
            "target_object": template.target_object,
        }
        if mapping_set_model.objects.filter(**pair).exists():
            continue
        mapping_set = mapping_set_model.objects.create(
            **pair, name=template.name, version=1, is_active=True, note=INSTALL_NOTE,
            created_by=user,
        )  # fmt: skip
        field_mapping_model.objects.bulk_create(
            field_mapping_model(mapping_set=mapping_set, order=order, **fields)
            for order, fields in enumerate(template.rows, start=1)
        )
        installed.append(template)
    return installed


def import_vat_rules_variable(apps) -> bool:
    """KASHFORCE_VAT_RULES, where it was set, becomes the first version of the VAT rules (the
    migration that brought the VAT rules page runs this). True if it imported something."""
    from django.conf import settings

    rules = settings.KASHFORCE["VAT_RULES"] or {}
    vat_rule_set = apps.get_model("integration", "VatRuleSet")
    if not rules or vat_rule_set.objects.exists():
        return False
    vat_rule_set.objects.create(
        version=1,
        is_active=True,
        rules={
            "countries": {str(k).upper(): str(v) for k, v in rules.get("countries", {}).items()},
            "products": {str(k): str(v) for k, v in rules.get("products", {}).items()},
        },
        note="Imported from KASHFORCE_VAT_RULES",
    )
    return True
