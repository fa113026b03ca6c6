"""django-q2 entry points: thin shells that load by id and call the engine. Enqueue ids only."""

from integration.models import Flow
from integration.sync import engine


def run_flow(run_id: int) -> None:
    engine.execute_run(run_id)


def scheduled_sync(flow: str) -> None:
    engine.start_run(flow, "schedule")


def weekly_full_sync() -> None:
    """Compare everything, not just changes, and put right what drifted (once a week)."""
    for flow in Flow.values:
        engine.start_run(flow, "schedule", full=True)


def sweep() -> dict:
    return engine.sweep()


def cleanup() -> dict:
    return engine.cleanup()


def send_alerts() -> dict:
    from integration import alerts

    return alerts.run()


def nightly_reconciliation() -> int:
    """Compare Salesforce and KashFlow; the result is a Reconciliation row the overview shows."""
    from integration import reconcile

    return reconcile.from_connections(trigger="schedule").pk


def reconciliation_now() -> int:
    """A reconciliation a person asked for on its page."""
    from integration import reconcile

    return reconcile.from_connections(trigger="manual").pk
