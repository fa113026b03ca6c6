"""The job schedules kashforce needs, kept in step with settings after every migrate."""

from datetime import UTC, datetime, time, timedelta

from django.conf import settings

from integration.models import Flow
from integration.sync.engine import schedule_name


def wanted_schedules() -> list[dict]:
    from django_q.models import Schedule

    minutes = settings.KASHFORCE["SYNC_INTERVAL_MINUTES"]
    schedules = [
        {
            "name": schedule_name(flow),
            "func": "integration.tasks.scheduled_sync",
            "args": repr(flow),
            "schedule_type": Schedule.MINUTES,
            "minutes": minutes,
        }
        for flow in Flow.values
    ]
    schedules += [
        {
            "name": "kashforce: sweeper",
            "func": "integration.tasks.sweep",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
        },
        {
            "name": "kashforce: send alerts",
            "func": "integration.tasks.send_alerts",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
        },
        {
            "name": "kashforce: weekly full comparison",
            "func": "integration.tasks.weekly_full_sync",
            "schedule_type": Schedule.WEEKLY,
            "next_run": _next_quiet_hour(days=7 - datetime.now(UTC).weekday()),  # Monday
        },
        {
            "name": "kashforce: nightly reconciliation",
            "func": "integration.tasks.nightly_reconciliation",
            "schedule_type": Schedule.DAILY,
            "next_run": _next_quiet_hour() + timedelta(minutes=30),
        },
        {
            "name": "kashforce: nightly cleanup",
            "func": "integration.tasks.cleanup",
            "schedule_type": Schedule.DAILY,
            "next_run": _next_quiet_hour(),
        },
    ]
    return schedules


def _next_quiet_hour(days: int = 1) -> datetime:
    """02:30 UTC `days` from today: for work that runs while nobody works (the schedule keeps
    that hour afterwards)."""
    day = datetime.now(UTC).date() + timedelta(days=days)
    return datetime.combine(day, time(2, 30), tzinfo=UTC)


def install_schedules(**kwargs) -> int:
    """Create or update kashforce's schedules; returns how many were created."""
    from django_q.models import Schedule

    created = 0
    for spec in wanted_schedules():
        defaults = {k: v for k, v in spec.items() if k not in ("name", "next_run")}
        create_defaults = {
            **defaults,
            **({"next_run": spec["next_run"]} if "next_run" in spec else {}),
        }
        _, was_created = Schedule.objects.update_or_create(
            name=spec["name"], defaults=defaults, create_defaults=create_defaults
        )
        created += was_created
    return created
