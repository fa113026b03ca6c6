"""Run the benchmarks and write benchmarks/results.json and docs/benchmarks.md.

python -m benchmarks.run                 # full sizes (make bench)
python -m benchmarks.run --small         # a few minutes (make bench-small)
python -m benchmarks.run --latency-ms 100 --only B1,B2 --naive-sample 500
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

from benchmarks import report, scenarios
from benchmarks.harness import Lab, postgres_server

ROOT = Path(__file__).resolve().parent.parent
SIZES = {
    # N customers for B1/B2, the naive baseline's sample (None = every record), B6's N, B5's
    # events in the ledger (its query counts are compared with the same pages at 1,000 events).
    # B3: Opportunities closed over `window` seconds.
    "full": {
        "customers": 10_000,
        "naive_sample": 1_000,
        "b6_customers": 100_000,
        "won": 1_000,
        "naive_invoices": 200,
        "events": 100_000,
        "closed": 200,
        "window": 300,
    },
    "small": {
        "customers": 1_000,
        "naive_sample": 200,
        "b6_customers": 10_000,
        "won": 200,
        "naive_invoices": 50,
        "events": 10_000,
        "closed": 50,
        "window": 120,
    },
}
# B5 compares each page's query count at N with the count at this many events.
B5_SMALL_N = 1_000
ALL = ["B1", "B2", "B3", "B4", "B5", "B6"]
NOT_YET = {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--only", default=",".join(ALL), help="e.g. B1,B2")
    parser.add_argument("--customers", type=int, help="N for B1/B2")
    parser.add_argument(
        "--naive-sample", type=int, help="records the naive baseline runs on (0: all)"
    )
    parser.add_argument("--b6-customers", type=int, help="N for B6")
    parser.add_argument("--won", type=int, help="Closed Won Opportunities for B4")
    parser.add_argument(
        "--naive-invoices", type=int, help="deals B4's naive baseline runs on (0: all)"
    )
    parser.add_argument("--events", type=int, help="events in the ledger for B5")
    parser.add_argument("--requests", type=int, default=50, help="B5: requests per page")
    parser.add_argument(
        "--postgres",
        help="B5 on PostgreSQL too, in throwaway databases on this server "
        "(default: DATABASE_URL when it is PostgreSQL)",
    )
    parser.add_argument("--closed", type=int, help="Opportunities B3 closes")
    parser.add_argument("--window", type=float, help="seconds B3 spreads its closes over")
    parser.add_argument("--output", type=Path, help="default benchmarks/results[-small].json")
    parser.add_argument("--markdown", type=Path, help="default docs/benchmarks[-small].md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    sizes = dict(SIZES["small" if args.small else "full"])
    suffix = "-small" if args.small else ""
    args.output = args.output or ROOT / f"benchmarks/results{suffix}.json"
    args.markdown = args.markdown or ROOT / f"docs/benchmarks{suffix}.md"
    for name in (
        "customers",
        "naive_sample",
        "b6_customers",
        "won",
        "naive_invoices",
        "events",
        "closed",
        "window",
    ):
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    naive_sample = sizes["naive_sample"] or None
    wanted = [item.strip().upper() for item in args.only.split(",") if item.strip()]
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)

    postgres = postgres_server(args.postgres)
    if args.postgres and not postgres:
        parser.error(f"no PostgreSQL server answers at {args.postgres}")
    results = {
        "header": report.header(
            command.strip(),
            {
                "latency_ms": args.latency_ms,
                "sizes": sizes,
                "only": wanted,
                "b5_postgres": bool(postgres),
            },
        ),
        "scenarios": [],
        "not_measured": [{"id": key, "why": NOT_YET[key]} for key in wanted if key in NOT_YET],
    }
    # SIGTERM ends the driver through its `finally`, which stops the sandbox and every process
    # a scenario started (their own process groups would outlive a plain exit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lab = Lab(args.latency_ms, keep=args.keep).start()
    started = time.perf_counter()
    try:
        if "B1" in wanted or "B2" in wanted:
            _log(f"B1/B2: {sizes['customers']:,} customers")
            for scenario in scenarios.b1_b2(lab, sizes["customers"], naive_sample):
                if scenario["id"] in wanted:
                    results["scenarios"].append(scenario)
        if "B3" in wanted:
            _log(f"B3: {sizes['closed']:,} Opportunities closed over {sizes['window']:g} s")
            results["scenarios"].append(scenarios.b3(lab, sizes["closed"], sizes["window"]))
        if "B4" in wanted:
            _log(f"B4: {sizes['won']:,} Closed Won Opportunities")
            results["scenarios"].append(
                scenarios.b4(lab, sizes["won"], sizes["naive_invoices"] or None)
            )
        if "B5" in wanted:
            where = "SQLite and PostgreSQL" if postgres else "SQLite"
            _log(f"B5: dashboard pages on {sizes['events']:,} events ({where})")
            small_n = min(B5_SMALL_N, sizes["events"])
            results["scenarios"] += scenarios.b5(
                lab, sizes["events"], small_n, args.requests, postgres
            )
        if "B6" in wanted:
            _log(f"B6: {sizes['b6_customers']:,} customers")
            results["scenarios"].append(scenarios.b6(lab, sizes["b6_customers"]))
    finally:
        lab.stop()
    results["header"]["total_seconds"] = time.perf_counter() - started
    report.write(results, args.output, args.markdown)
    for scenario in results["scenarios"]:
        for f in scenario["figures"]:
            verdict = "" if f["ok"] is None else ("PASS" if f["ok"] else f"MISS {f['miss']}")
            _log(f"{scenario['id']} {f['name']}: {f['value']:,.2f} {f['unit']} {verdict}")
    _log(f"wrote {args.output} and {args.markdown}")
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
