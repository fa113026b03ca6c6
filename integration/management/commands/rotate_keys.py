"""Re-encrypt every stored secret with the newest key in KASHFORCE_ENCRYPTION_KEYS.

Rotation: put the new key first in the list (keep the old ones after it), deploy, run this
command, then remove the old keys.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from integration.models import AlertWebhook, Connection
from integration.secrets import SecretDecryptionError


class Command(BaseCommand):
    help = "Re-encrypt all stored secrets with the newest encryption key."

    def handle(self, *args, **options):
        count = 0
        try:
            with transaction.atomic():
                for connection in Connection.objects.select_for_update():
                    connection.rotate_encryption()
                    count += 1
                for webhook in AlertWebhook.objects.select_for_update():
                    webhook.rotate_encryption()
        except SecretDecryptionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Re-encrypted the secrets of {count} connection(s) and the alert webhooks."
            )
        )
