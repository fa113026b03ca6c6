"""Connections pointing at the running sandbox, and its fault and stats controls, for the
clients' integration tests (real sockets, real simple-salesforce)."""

from pathlib import Path

from tests.factories import KashFlowConnectionFactory, SalesforceConnectionFactory
from tests.fixtures_sandbox import control


def kashflow_connection(sandbox, **secrets):
    info = sandbox.info["kashflow"]
    return KashFlowConnectionFactory(
        base_url=info["base_url"] + "/v2",
        username=info["username"],
        secrets={
            "password": info["password"],
            "memorable_word": info["memorable_word"],
            **secrets,
        },
    )


def salesforce_connection(sandbox, method="sf_jwt", **fields):
    """A connection to the sandbox org; JWT bearer by default, as recommended (password sign-in
    is SOAP login(), off in the simulated org unless `org_switches(soap_login_enabled=True)`)."""
    info = sandbox.info["salesforce"]
    secrets = {
        "sf_password": {"password": info["password"], "security_token": info["security_token"]},
        "sf_jwt": {"private_key": Path(info["jwt_private_key_file"]).read_text()},
        "sf_client_credentials": {"consumer_secret": info["consumer_secret"]},
    }[method]
    values = {
        "auth_method": method,
        "login_url": info["login_url"],
        "instance_url": info["instance_url"],
        "ca_file": info["ca_file"],
        "api_version": info["api_version"],
        "username": info["username"] if method != "sf_client_credentials" else "",
        "consumer_key": info["consumer_key"],
        "secrets": secrets,
        **fields,
    }
    return SalesforceConnectionFactory(**values)


def set_faults(sandbox, system, *rules, latency_ms=0):
    """Replace the simulator's faults: rules like ("GET /v2/customers", "429", 1.0)."""
    config = {
        "latency_ms": latency_ms,
        "rules": [
            {"match": match, "kind": kind, "rate": rate, "seconds": seconds}
            for match, kind, rate, *rest in rules
            for seconds in [rest[0] if rest else 30]
        ],
    }
    control(sandbox.info["control"][system], "faults", config)


def clear_faults(sandbox, system):
    set_faults(sandbox, system)


def calls(sandbox, system, contains=""):
    """How many calls the simulator answered whose route template contains `contains`."""
    stats = control(sandbox.info["control"][system], "stats")
    return sum(n for template, n in stats["calls"].items() if contains in template)


def org_switches(sandbox, **switches) -> dict:
    """Set (or with none given, read) the Salesforce simulator's org switches until the next
    reset: soap_login_enabled, payments_relationship."""
    return control(sandbox.info["control"]["salesforce"], "org", switches)


def connect_both(sandbox, method="sf_jwt"):
    """Active Salesforce and KashFlow connections to the sandbox, as the flows use them."""
    return salesforce_connection(sandbox, method=method), kashflow_connection(sandbox)


def link_products(expected: int | None = None) -> None:
    """The products sync links each Product2 to its KashFlow product, as it does in the first
    minute of a trial: an invoice waits for its products' links. The products' own ledger rows
    are then removed, so a test looks at the invoices' ledger only."""
    from integration.models import CrossRef, SyncEvent, SyncRun, Trigger
    from integration.sync import engine

    run = engine.start_run("products", Trigger.MANUAL)
    engine.execute_run(run.pk)
    if expected is not None:
        assert CrossRef.objects.filter(object_type="product").count() == expected
    SyncEvent.objects.all().delete()
    SyncRun.objects.all().delete()
