"""`manage.py sandbox`: serve the Salesforce and KashFlow simulators until interrupted.

python manage.py sandbox [--state-dir DIR] [--seed demo|empty|customers=N,...] [--reset]
                         [--salesforce-port 8443] [--kashflow-port 8080] [--latency-ms N]
python manage.py sandbox --info [--state-dir DIR]
"""

import json
import signal
import threading
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sandbox.runner import SandboxServer, read_descriptor
from sandbox.salesforce import seed as seeds


def default_state_dir() -> Path:
    configured = getattr(settings, "KASHFORCE", {}).get("SANDBOX_STATE_DIR")
    return Path(configured or Path(settings.BASE_DIR) / "var" / "sandbox")


class Command(BaseCommand):
    help = "Run the local Salesforce and KashFlow simulators (state survives a restart)."

    def add_arguments(self, parser):
        parser.add_argument("--state-dir", type=Path, default=None)
        parser.add_argument("--seed", default="demo", help="demo, empty or key=N,key=N")
        parser.add_argument("--reset", action="store_true", help="wipe state and apply --seed")
        parser.add_argument("--salesforce-port", type=int, default=8443)
        parser.add_argument("--kashflow-port", type=int, default=8080)
        parser.add_argument(
            "--pubsub-port", type=int, default=7443, help="Salesforce Pub/Sub (gRPC)"
        )
        parser.add_argument("--latency-ms", type=float, default=0)
        parser.add_argument("--info", action="store_true", help="print the running descriptor")
        parser.add_argument(
            "--soap-login-enabled",
            action="store_true",
            help="allow Salesforce SOAP login() (off by default, as in orgs from Winter '26)",
        )

    def handle(self, *args, **options):
        state_dir = options["state_dir"] or default_state_dir()
        if options["info"]:
            return self.print_info(state_dir)
        try:
            seeds.parse(options["seed"])
        except ValueError as error:
            raise CommandError(str(error)) from None
        if read_descriptor(state_dir):
            raise CommandError(f"A sandbox is already running on {state_dir}.")
        self.serve(state_dir, options)

    def print_info(self, state_dir: Path) -> None:
        info = read_descriptor(state_dir)
        if info is None:
            raise CommandError(
                f"No sandbox is running on {state_dir}. Start one with: python manage.py sandbox"
            )
        self.stdout.write(json.dumps(info, indent=2))

    def serve(self, state_dir: Path, options: dict) -> None:
        server = SandboxServer(
            state_dir,
            seed=options["seed"],
            salesforce_port=options["salesforce_port"],
            kashflow_port=options["kashflow_port"],
            reset=options["reset"],
            verbose=options["verbosity"] > 1,
            soap_login_enabled=options["soap_login_enabled"],
            pubsub_port=options["pubsub_port"],
        )
        try:
            server.start()
        except OSError as error:
            raise CommandError(f"Cannot start the sandbox: {error}") from None
        if options["latency_ms"]:
            for simulator in server.servers.values():
                simulator.faults.configure({"latency_ms": options["latency_ms"]})
        self.announce(server)
        stop = threading.Event()
        # SIGTERM (docker stop, make) and Ctrl-C both end the wait and stop cleanly.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
            self.stdout.write("Sandbox stopped.")

    def announce(self, server: SandboxServer) -> None:
        info = server.info
        self.stdout.write(f"Salesforce: {info['salesforce']['instance_url']}")
        self.stdout.write(f"Pub/Sub:    {info['salesforce']['pubsub']} (gRPC, same CA)")
        if info["kashflow"]:
            self.stdout.write(f"KashFlow:   {info['kashflow']['base_url']}")
        self.stdout.write(f"Descriptor: {server.state_dir / 'sandbox.json'}")
        self.stdout.write("Credentials: python manage.py sandbox --info. Ctrl-C stops.")
