from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import transaction

from integration.mapping_defaults import TEMPLATES, install_default_mappings


class Command(BaseCommand):
    help = (
        "Install the default field mappings for every flow and object pair that has none yet. "
        "Pairs that already have a mapping are left as they are."
    )

    def handle(self, *args, **options):
        with transaction.atomic():
            installed = install_default_mappings(apps)
        for template in TEMPLATES:
            pair = f"{template.source_object} → {template.target_object}"
            if template in installed:
                self.stdout.write(self.style.SUCCESS(f"Installed: {template.name} ({pair})"))
            else:
                self.stdout.write(f"Already mapped, left alone: {template.name} ({pair})")
