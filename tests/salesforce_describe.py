"""Salesforce describe results (GET /sobjects/<Object>/describe), trimmed to the fields kashforce
maps plus the system fields every object has, with the keys and flags the real API returns."""


def _field(name, field_type="string", length=0, *, nillable=True, createable=True,
           updateable=True, defaulted=False, external_id=False, custom=None, **extra):  # fmt: skip
    return {
        "name": name,
        "label": name.removesuffix("__c").replace("_", " "),
        "type": field_type,
        "length": length,
        "precision": extra.get("precision", 0),
        "scale": extra.get("scale", 0),
        "nillable": nillable,
        "createable": createable,
        "updateable": updateable,
        "defaultedOnCreate": defaulted,
        "externalId": external_id,
        "unique": external_id,
        "custom": name.endswith("__c") if custom is None else custom,
        "calculated": False,
        "referenceTo": extra.get("reference_to", []),
        "relationshipName": extra.get("relationship"),
        "picklistValues": [],
    }


def _read_only(name, field_type, length=0, nillable=True):
    return _field(name, field_type, length, nillable=nillable, createable=False,
                  updateable=False, defaulted=field_type in ("id", "datetime", "boolean"))  # fmt: skip


def _system():
    return [
        _read_only("Id", "id", 18, nillable=False),
        _read_only("IsDeleted", "boolean", nillable=False),
        _field("OwnerId", "reference", 18, nillable=False, defaulted=True, reference_to=["User"]),
        _read_only("CreatedDate", "datetime", nillable=False),
        _read_only("LastModifiedDate", "datetime", nillable=False),
        _read_only("SystemModstamp", "datetime", nillable=False),
    ]


def _address(prefix):
    return [
        _field(f"{prefix}Street", "textarea", 255),
        _field(f"{prefix}City", "string", 40),
        _field(f"{prefix}State", "string", 80),
        _field(f"{prefix}PostalCode", "string", 20),
        _field(f"{prefix}Country", "string", 80),
        _read_only(f"{prefix}Address", "address"),
    ]


def _money(name, **kw):
    return _field(name, "currency", precision=18, scale=2, **kw)


EXTERNAL_ID = _field("ExternalID__c", "string", 64, external_id=True)

DESCRIBES = {
    "Account": [
        *_system(),
        _field("Name", "string", 255, nillable=False),
        _field("AccountNumber", "string", 40),
        _field("Phone", "phone", 40),
        _field("Website", "url", 255),
        _field("Type", "picklist", 255),
        *_address("Billing"),
        *_address("Shipping"),
        EXTERNAL_ID,
    ],
    "Contact": [
        *_system(),
        _field("AccountId", "reference", 18, reference_to=["Account"], relationship="Account"),
        _field("Salutation", "picklist", 40),
        _field("FirstName", "string", 40),
        _field("LastName", "string", 80, nillable=False),
        _read_only("Name", "string", 121, nillable=False),
        _field("Email", "email", 80),
        _field("Phone", "phone", 40),
        _field("MobilePhone", "phone", 40),
        _field("Title", "string", 128),
        *_address("Mailing"),
        EXTERNAL_ID,
    ],
    "Opportunity": [
        *_system(),
        _field("AccountId", "reference", 18, reference_to=["Account"], relationship="Account"),
        _field("Name", "string", 120, nillable=False),
        _field("StageName", "picklist", 255, nillable=False),
        _field("CloseDate", "date", nillable=False),
        _money("Amount"),
        _read_only("IsClosed", "boolean", nillable=False),
        _read_only("IsWon", "boolean", nillable=False),
        _field("Pricebook2Id", "reference", 18, reference_to=["Pricebook2"]),
        _field("KashFlow_Invoice_Number__c", "string", 32),
        _field("KashFlow_Invoice_Status__c", "string", 32),
        _money("KashFlow_Amount_Due__c"),
    ],
    "Product2": [
        *_system(),
        _field("Name", "string", 255, nillable=False),
        _field("ProductCode", "string", 255),
        _field("Description", "textarea", 4000),
        _field("Family", "picklist", 255),
        _field("IsActive", "boolean", nillable=False, defaulted=True),
        EXTERNAL_ID,
    ],
    "PricebookEntry": [
        *_system(),
        _read_only("Name", "string", 255),
        _field("Pricebook2Id", "reference", 18, nillable=False, updateable=False),
        _field("Product2Id", "reference", 18, nillable=False, updateable=False),
        _money("UnitPrice", nillable=False),
        _field("IsActive", "boolean", nillable=False, defaulted=True),
        _field("UseStandardPrice", "boolean", nillable=False, defaulted=True),
        _read_only("ProductCode", "string", 255),
    ],
    "Order": [
        *_system(),
        _field(
            "AccountId",
            "reference",
            18,
            nillable=False,
            reference_to=["Account"],
            relationship="Account",
        ),
        _field("EffectiveDate", "date", nillable=False),
        _field("Status", "picklist", 40, nillable=False),
        _read_only("StatusCode", "picklist", 40),
        _read_only("OrderNumber", "string", 30, nillable=False),
        _read_only("TotalAmount", "currency"),
        _field("Pricebook2Id", "reference", 18, reference_to=["Pricebook2"]),
        _field("OpportunityId", "reference", 18, reference_to=["Opportunity"]),
        _field("IsReductionOrder", "boolean", nillable=False, updateable=False, defaulted=True),
        _field("OriginalOrderId", "reference", 18, updateable=False, reference_to=["Order"]),
        _field("KashFlow_Invoice_Number__c", "string", 32),
        _field("KashFlow_Invoice_Status__c", "string", 32),
        _money("KashFlow_Amount_Due__c"),
    ],
    "KashFlow_Payment__c": [
        *_system(),
        _read_only("Name", "string", 80),  # an auto-number
        EXTERNAL_ID,
        _field("Opportunity__c", "reference", 18, reference_to=["Opportunity"]),
        _money("Amount__c"),
        _field("Payment_Date__c", "date"),
        _field("Method__c", "string", 64),
        _field("Invoice_Number__c", "string", 32),
    ],
}


def describe(sobject: str) -> dict:
    return {"name": sobject, "custom": sobject.endswith("__c"), "fields": DESCRIBES[sobject]}
