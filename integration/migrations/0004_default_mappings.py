"""Install the default field mappings (integration/mapping_defaults.py) as version 1 of each."""

from django.db import migrations


def install(apps, schema_editor):
    from integration.mapping_defaults import install_default_mappings

    install_default_mappings(apps)


class Migration(migrations.Migration):
    dependencies = [("integration", "0003_run_phases")]

    # Reversing leaves the mappings alone: by then people may have edited them.
    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
