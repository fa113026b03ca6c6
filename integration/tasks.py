"""django-q2 entry points: thin shells that load by id and call the engine. Enqueue ids only."""

from integration.sync import engine


def run_flow(run_id: int) -> None:
    engine.execute_run(run_id)


def scheduled_sync(flow: str) -> None:
    engine.start_run(flow, "schedule")


def sweep() -> dict:
    return engine.sweep()


def cleanup() -> dict:
    return engine.cleanup()
