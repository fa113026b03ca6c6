"""The naive baseline: the integration a developer would write by hand with the same clients.

One KashFlow call per record, one simple-salesforce call per record and object, no cursor, no
batching, no skipping of unchanged records. simple-salesforce is used unmodified, in direct mode
with a token from kashforce's own sign-in (the sandbox's login host cannot be reached otherwise).
Every figure in docs/benchmarks.md has its ratio to this.
"""

from __future__ import annotations

import time
from decimal import Decimal

import requests
from simple_salesforce import Salesforce

from integration.clients.kashflow import KashFlowClient
from integration.clients.salesforce import SalesforceClient
from integration.models import Connection


def clients() -> tuple[KashFlowClient, Salesforce]:
    kashflow = KashFlowClient(Connection.active(Connection.Kind.KASHFLOW))
    connection = Connection.active(Connection.Kind.SALESFORCE)
    token = SalesforceClient(connection).login()
    session = requests.Session()
    session.trust_env = False
    session.verify = connection.ca_file or True
    salesforce = Salesforce(
        instance_url=token["instance_url"],
        session_id=token["access_token"],
        session=session,
        version=connection.api_version,
    )
    return kashflow, salesforce


def account_fields(customer: dict) -> dict:
    address = (customer.get("Addresses") or [{}])[0]
    street = ", ".join(filter(None, [address.get("Line1"), address.get("Line2")]))
    return {
        "AccountNumber": customer["Code"],
        "Name": customer["Name"],
        "Phone": customer.get("TelephoneNumber") or None,
        "BillingStreet": street or None,
        "BillingCity": address.get("Line3") or None,
        "BillingState": address.get("Line4") or None,
        "BillingPostalCode": address.get("PostCode") or None,
        "BillingCountry": address.get("CountryCode") or None,
    }


def contact_fields(customer: dict) -> dict | None:
    contacts = customer.get("Contacts") or []
    primary = next((c for c in contacts if c.get("IsPrimary")), contacts[0] if contacts else None)
    if not primary or not (primary.get("LastName") or primary.get("Name")):
        return None
    return {
        "FirstName": primary.get("Firstname") or None,
        "LastName": primary.get("LastName") or primary.get("Name"),
        "Email": primary.get("Email") or customer.get("Email") or None,
        "Phone": primary.get("Telephone") or None,
        # A parent reference by External ID: no extra call to find the Account's Id.
        "Account": {"ExternalID__c": customer["Code"]},
    }


def sync_customers(limit: int | None = None) -> dict:
    """List every customer code, then GET and upsert each (the first `limit` of them).

    Returns the time of the listing and of the per-record loop apart, so that a run on a sample
    can be extrapolated: listing + per-record time * N.
    """
    kashflow, salesforce = clients()
    started = time.perf_counter()
    codes = [summary["Code"] for summary in kashflow.customers()]
    listed = time.perf_counter()
    chosen = codes if limit is None else codes[:limit]
    for code in chosen:
        customer = kashflow.get_customer(code)
        salesforce.Account.upsert(f"ExternalID__c/{code}", account_fields(customer))
        contact = contact_fields(customer)
        if contact is not None:
            salesforce.Contact.upsert(f"ExternalID__c/{code}-primary", contact)
    done = time.perf_counter()
    return {
        "customers": len(codes),
        "synced": len(chosen),
        "list_seconds": listed - started,
        "loop_seconds": done - listed,
        "seconds": done - started,
    }


def invoice_fields(opportunity: dict, lines: list[dict]) -> dict:
    """The invoice a hand-written integration sends: the Opportunity's lines at their net unit
    price, standard-rated, on the default sales nominal."""
    return {
        "CustomerCode": opportunity["Account"]["ExternalID__c"],
        "CustomerReference": opportunity["Id"],
        "IssuedDate": opportunity["CloseDate"],
        "LineItems": [
            {
                "Number": number,
                "Description": line.get("Description") or line["Product2"]["Name"],
                "Quantity": str(line["Quantity"]),
                "Rate": str(Decimal(str(line["TotalPrice"])) / Decimal(str(line["Quantity"]))),
                "NominalCode": 4000,
                "VATLevel": "20",
            }
            for number, line in enumerate(lines, start=1)
        ],
    }


def sync_invoices(limit: int | None = None) -> dict:
    """Find the Closed Won Opportunities without an invoice number, then for each: read its
    lines, create the KashFlow invoice and write its number back (the first `limit` of them).

    Generous to the baseline: the customer code comes with the Opportunity (a parent field), and
    nothing checks whether an invoice was already made, so a retry would make a second one.
    """
    kashflow, salesforce = clients()
    started = time.perf_counter()
    won = salesforce.query_all(
        "SELECT Id, CloseDate, Account.ExternalID__c FROM Opportunity "
        "WHERE IsWon = true AND Amount > 0 AND KashFlow_Invoice_Number__c = null"
    )["records"]
    listed = time.perf_counter()
    chosen = won if limit is None else won[:limit]
    for opportunity in chosen:
        lines = salesforce.query(
            "SELECT Description, Quantity, TotalPrice, Product2.Name FROM OpportunityLineItem "
            f"WHERE OpportunityId = '{opportunity['Id']}' ORDER BY SortOrder"
        )["records"]
        invoice = kashflow.create_invoice(invoice_fields(opportunity, lines))
        salesforce.Opportunity.update(
            opportunity["Id"],
            {
                "KashFlow_Invoice_Number__c": str(invoice["Number"]),
                "KashFlow_Invoice_Status__c": invoice.get("Status"),
                "KashFlow_Amount_Due__c": float(invoice["DueAmount"]),
            },
        )
    done = time.perf_counter()
    return {
        "opportunities": len(won),
        "synced": len(chosen),
        "list_seconds": listed - started,
        "loop_seconds": done - listed,
        "seconds": done - started,
    }
