"""Run both simulators side by side and publish how to reach them (`state_dir/sandbox.json`).

    server = SandboxServer(tmp_path, seed="empty").start()
    server.info["salesforce"]["instance_url"]; server.salesforce.store; server.stop()

The KashFlow app is `sandbox.kashflow.app.KashFlowApp(state_dir: Path, options: dict)`; it follows
the protocol in `sandbox.core` and exposes `credentials`: {"username", "password",
"memorable_word"} for the descriptor. Until it exists the sandbox runs Salesforce alone.
"""

import json
import os
from pathlib import Path

from sandbox.core import SimulatorServer
from sandbox.kashflow.app import KashFlowApp
from sandbox.salesforce.app import SalesforceApp

DESCRIPTOR = "sandbox.json"


class SandboxServer:
    def __init__(
        self,
        state_dir,
        seed: str = "demo",
        salesforce_port: int = 0,
        kashflow_port: int = 0,
        reset: bool = False,
        verbose: bool = False,
        **options,
    ):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.seed, self.reset_state = seed, reset
        self.ports = {"salesforce": salesforce_port, "kashflow": kashflow_port}
        self.options, self.verbose = options, verbose
        self.salesforce = self.kashflow = None
        self.servers: dict[str, SimulatorServer] = {}

    def start(self) -> "SandboxServer":
        """Open both apps, seed new (or --reset) state, listen; returns once both accept."""
        self.salesforce = SalesforceApp(self.state_dir, self.options)
        self.servers["salesforce"] = SimulatorServer(
            self.salesforce,
            self.salesforce.ssl_context,
            self.ports["salesforce"],
            verbose=self.verbose,
        )
        self.salesforce.base_url = self.servers["salesforce"].url
        self.kashflow = KashFlowApp(self.state_dir, self.options)
        self.servers["kashflow"] = SimulatorServer(
            self.kashflow, None, self.ports["kashflow"], verbose=self.verbose
        )
        self.kashflow.base_url = self.servers["kashflow"].url
        # Seed each side that is new (or everything on --reset): one side's state can exist
        # without the other's, and a new side must get the seed asked for, not "empty".
        for app in (self.salesforce, self.kashflow):
            if self.reset_state or app.is_new:
                app.reset(self.seed)
        for server in self.servers.values():
            server.start()
        self.salesforce.pubsub.start()  # gRPC beside the REST API, on the same CA
        self._write_descriptor()
        return self

    @property
    def info(self) -> dict:
        return {
            "salesforce": self.salesforce.descriptor(),
            "kashflow": {"base_url": self.servers["kashflow"].url, **self.kashflow.credentials},
            "control": {name: server.control_url for name, server in self.servers.items()},
        }

    def reset(self, seed: str = "empty") -> None:
        """Fresh state for a test: reseed both apps, clear faults and stats."""
        for server in self.servers.values():
            server.app.reset(seed)
            server.faults.configure({})
            server.stats.reset()

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
            server.app.close()
        descriptor = self.state_dir / DESCRIPTOR
        if descriptor.exists() and _descriptor_pid(descriptor) == os.getpid():
            descriptor.unlink()

    def _write_descriptor(self) -> None:
        path = self.state_dir / DESCRIPTOR
        path.write_text(json.dumps({**self.info, "pid": os.getpid()}, indent=2))
        path.chmod(0o600)


def read_descriptor(state_dir) -> dict | None:
    """The descriptor of a sandbox running on this state dir, or None."""
    path = Path(state_dir) / DESCRIPTOR
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    pid = info.pop("pid", None)
    if pid is None or not _alive(pid):
        return None
    return info


def _descriptor_pid(path: Path) -> int | None:
    try:
        return json.loads(path.read_text()).get("pid")
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
