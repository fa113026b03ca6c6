"""Security: kashforce can never lock the company's KashFlow account out (issue #15 case 4).

A wrong stored password used to be retried by every run until KashFlow locked the account, the
finance team's own sign-in included. Now one refusal stops every sign-in with those
credentials until an admin changes them or presses Test."""

import pytest
from django.core.management import CommandError, call_command

from integration.models import Connection
from tests.fake_api import use_fast_retries
from tests.fixtures_sandbox import control
from tests.sandbox_connections import calls, kashflow_connection, salesforce_connection

pytestmark = pytest.mark.django_db


def test_five_runs_of_sync_payments_with_a_wrong_password_never_lock_the_account(
    sandbox, settings, monkeypatch
):
    use_fast_retries(settings, monkeypatch)
    salesforce_connection(sandbox)
    kashflow_connection(sandbox, password="a-guess-or-an-old-one")
    kashflow = sandbox.info["control"]["kashflow"]
    control(kashflow, "stats/reset", {})

    for _ in range(5):  # the simulator locks the account at the fifth failure
        with pytest.raises(CommandError) as stopped:
            call_command("sync", "payments")

    assert "paused until an admin updates the password or memorable word" in str(stopped.value)
    assert calls(sandbox, "kashflow", "sessiontoken") == 1
    assert control(kashflow, "account", {})["locked"] is False
    assert Connection.objects.get(kind="kashflow").sign_in_refused_at is not None
