"""The child process of a benchmark step: `python -m benchmarks.worker COMMAND ...`.

Run with DJANGO_SETTINGS_MODULE and KASHFORCE_VAR_DIR set (the harness does). Prints one JSON line
last: what the step did and `seconds`, its own wall time without Python and Django start-up.
"""

from __future__ import annotations

import argparse
import json
import random
import time


def sync(flow: str, full: bool = False, until_linked: int = 0) -> dict:
    """What `manage.py sync FLOW` does, timed: one run in the foreground until it finishes.

    `until_linked`: runs one after another until that many customers are linked. A first load
    reads each new customer's full record, and a run stops reading when its time slice (120 s)
    ends, leaving the rest to the next run: the first load is all of those runs."""
    from integration.models import CrossRef, SyncRun, Trigger
    from integration.sync import engine

    started = time.perf_counter()
    totals = {"runs": 0, "read": 0, "written": 0, "skipped": 0, "failed": 0}
    while True:
        run = engine.start_run(flow, Trigger.MANUAL, full=full)
        while True:
            engine.execute_run(run.pk, hand_over=False)
            run.refresh_from_db()
            if run.status not in (SyncRun.Status.RUNNING, SyncRun.Status.QUEUED):
                break
        totals["runs"] += 1
        for name in ("read", "written", "skipped", "failed"):
            totals[name] += getattr(run, f"{name}_count")
        linked = CrossRef.objects.filter(object_type="customer").count()
        if linked >= until_linked or totals["runs"] >= 50 or not run.read_count:
            break
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "status": run.status, **totals, "summary": run.summary}


def touch_customers(count: int, seed: str) -> dict:
    """Rename `count` customers in KashFlow, like a user would (the name is a mapped field).

    Not the phone number: the customer list's summaries, which the flow reads, carry no
    TelephoneNumber, so a phone change alone is not seen (reported with the results).
    """
    from integration.clients.kashflow import KashFlowClient
    from integration.models import Connection

    kashflow = KashFlowClient(Connection.active(Connection.Kind.KASHFLOW))
    codes = sorted(summary["Code"] for summary in kashflow.customers())
    chosen = random.Random(seed).sample(codes, count)
    started = time.perf_counter()
    for code in chosen:
        name = kashflow.get_customer(code)["Name"]
        kashflow.update_customer(code, {"Name": f"{name} (renamed)"})
    return {"seconds": time.perf_counter() - started, "changed": len(chosen)}


def naive_customers(limit: int | None) -> dict:
    from benchmarks import naive

    return naive.sync_customers(limit)


def naive_invoices(limit: int | None) -> dict:
    from benchmarks import naive

    return naive.sync_invoices(limit)


def peak_rss_mb() -> float:
    """This process's own peak resident memory since it started (VmHWM, Linux).

    Not `ru_maxrss` from the parent's wait4: Linux carries the forking parent's resident size over
    fork and exec into the child's ru_maxrss, so a child of a driver holding a 100,000-record
    sandbox "peaked" at the driver's size before it ran a line. VmHWM belongs to the address space
    exec made, so it counts this process alone.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.worker")
    commands = parser.add_subparsers(dest="command", required=True)
    sync_parser = commands.add_parser("sync")
    sync_parser.add_argument("flow")
    sync_parser.add_argument("--full", action="store_true")
    sync_parser.add_argument("--until-linked", type=int, default=0)
    touch = commands.add_parser("touch-customers")
    touch.add_argument("--count", type=int, required=True)
    touch.add_argument("--seed", default="bench")
    naive = commands.add_parser("naive-customers")
    naive.add_argument("--limit", type=int, default=None)
    naive_invoices_parser = commands.add_parser("naive-invoices")
    naive_invoices_parser.add_argument("--limit", type=int, default=None)
    fill = commands.add_parser("fill-ledger")
    fill.add_argument("--events", type=int, required=True)
    fill.add_argument("--seed", default="b5")
    pages = commands.add_parser("dashboard-pages")
    pages.add_argument("--requests", type=int, default=50)
    pages.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import django

    django.setup()
    if args.command == "sync":
        result = sync(args.flow, args.full, args.until_linked)
    elif args.command == "touch-customers":
        result = touch_customers(args.count, args.seed)
    elif args.command == "naive-invoices":
        result = naive_invoices(args.limit)
    elif args.command == "fill-ledger":
        from benchmarks import dashboard

        result = dashboard.fill(args.events, args.seed)
    elif args.command == "dashboard-pages":
        from benchmarks import dashboard

        result = dashboard.measure(args.requests, args.warmup)
    else:
        result = naive_customers(args.limit)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
