"""Point kashforce's two connections at the running sandbox (and its Outbound Messages at us).

    python manage.py sandbox_connect [--state-dir DIR] [--auth jwt|password|client_credentials]
                                     [--webhook-base http://127.0.0.1:8000]

It reads the descriptor the sandbox publishes (`sandbox.json`), so it works for any ports. A
production connection is never replaced unless --replace is given.
"""

import json
import secrets
from pathlib import Path

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from integration.models import Connection

SF_AUTH = {
    "jwt": Connection.AuthMethod.SF_JWT,
    "password": Connection.AuthMethod.SF_PASSWORD,
    "client_credentials": Connection.AuthMethod.SF_CLIENT_CREDENTIALS,
}


class Command(BaseCommand):
    help = "Create or update the Salesforce and KashFlow connections for the running sandbox."

    def add_arguments(self, parser):
        parser.add_argument("--state-dir", type=Path, default=None)
        parser.add_argument("--auth", choices=sorted(SF_AUTH), default="jwt")
        parser.add_argument("--webhook-base", default="http://127.0.0.1:8000")
        parser.add_argument(
            "--replace", action="store_true", help="deactivate production connections if active"
        )
        parser.add_argument(
            "--realtime",
            choices=Connection.Realtime.values,
            default=None,
            help="how won deals arrive in seconds (default: keep the connection's setting)",
        )

    def handle(self, state_dir, auth, webhook_base, replace, realtime=None, **options):
        state_dir = state_dir or Path(settings.KASHFORCE["SANDBOX_STATE_DIR"])
        info = self._descriptor(state_dir)
        with transaction.atomic():
            salesforce = self._salesforce(info["salesforce"], SF_AUTH[auth], replace)
            if realtime:
                salesforce.realtime = realtime
                salesforce.save(update_fields=["realtime"])
            kashflow = self._kashflow(info["kashflow"], replace)
        hook = f"{webhook_base.rstrip('/')}/hooks/salesforce/outbound/{salesforce.get_secret('outbound_secret')}/"
        self._configure_outbound(info["control"]["salesforce"], info["salesforce"]["ca_file"], hook)
        self.stdout.write(f"Connected: {salesforce} and {kashflow}.")
        self.stdout.write("Outbound Messages from the sandbox go to kashforce's webhook.")

    def _descriptor(self, state_dir: Path) -> dict:
        path = state_dir / "sandbox.json"
        if not path.exists():
            raise CommandError(
                f"No sandbox is running on {state_dir}. Start one with: python manage.py sandbox"
            )
        info = json.loads(path.read_text())
        if not info.get("kashflow"):
            raise CommandError("The running sandbox has no KashFlow simulator.")
        return info

    def _take_over(self, kind: str, name: str, replace: bool) -> None:
        others = Connection.objects.filter(kind=kind, is_active=True).exclude(name=name)
        if others.filter(environment=Connection.Environment.PRODUCTION).exists() and not replace:
            raise CommandError(
                f"An active production {kind} connection exists; use --replace to switch to the sandbox."
            )
        others.update(is_active=False)

    def _salesforce(self, sf: dict, auth_method: str, replace: bool) -> Connection:
        name = "Sandbox Salesforce"
        self._take_over(Connection.Kind.SALESFORCE, name, replace)
        connection = Connection.objects.filter(name=name).first() or Connection(name=name)
        connection.kind = Connection.Kind.SALESFORCE
        connection.environment = Connection.Environment.SANDBOX
        connection.auth_method = auth_method
        connection.login_url = sf["login_url"]
        connection.instance_url = sf["instance_url"]
        connection.api_version = sf["api_version"]
        connection.ca_file = sf["ca_file"]
        connection.username = sf["username"]
        connection.consumer_key = sf["consumer_key"]
        connection.organization_id = sf.get("organization_id", "")
        connection.pubsub_endpoint = sf.get("pubsub", "")
        connection.is_active = True
        connection.set_secrets(
            password=sf["password"],
            security_token=sf["security_token"],
            consumer_secret=sf["consumer_secret"],
            private_key=Path(sf["jwt_private_key_file"]).read_text(),
            outbound_secret=connection.get_secret("outbound_secret") or secrets.token_urlsafe(24),
        )
        connection.save()
        connection.save_session({})  # the sandbox's sessions are new; start clean
        return connection

    def _kashflow(self, kf: dict, replace: bool) -> Connection:
        name = "Sandbox KashFlow"
        self._take_over(Connection.Kind.KASHFLOW, name, replace)
        connection = Connection.objects.filter(name=name).first() or Connection(name=name)
        connection.kind = Connection.Kind.KASHFLOW
        connection.environment = Connection.Environment.SANDBOX
        connection.auth_method = Connection.AuthMethod.KF_PASSWORD
        # The descriptor names the server; the API lives under /v2 as on api.kashflow.com.
        base = kf["base_url"].rstrip("/")
        connection.base_url = base if base.endswith("/v2") else f"{base}/v2"
        connection.username = kf["username"]
        connection.is_active = True
        connection.set_secrets(password=kf["password"], memorable_word=kf["memorable_word"])
        connection.save()
        connection.save_session({})
        return connection

    def _configure_outbound(self, control_url: str, ca_file: str, hook: str) -> None:
        try:
            response = requests.post(
                f"{control_url.rstrip('/')}/outbound",
                json={"url": hook, "enabled": True},
                verify=ca_file,
                timeout=10,
            )
            response.raise_for_status()
        except requests.RequestException as exc:
            raise CommandError(
                f"The sandbox did not accept the Outbound Message address: {exc}"
            ) from None
