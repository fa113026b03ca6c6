"""Create the two roles as groups with their permissions."""

from django.db import migrations

VIEW_MODELS = [
    "connection",
    "mappingset",
    "fieldmapping",
    "crossref",
    "syncrun",
    "syncevent",
    "cursor",
]
ADMIN_CHANGE_MODELS = ["connection", "mappingset", "fieldmapping"]


def create_roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after migrate; make sure they exist now.
    app_config = apps.get_app_config("integration")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    perms = Permission.objects.filter(content_type__app_label="integration")

    def codenames(*names):
        return list(perms.filter(codename__in=names))

    view = [f"view_{m}" for m in VIEW_MODELS]
    operations, _ = Group.objects.get_or_create(name="Operations")
    operations.permissions.set(codenames(*view, "operate_sync", "change_syncevent"))

    admin_perms = [
        f"{verb}_{m}" for m in ADMIN_CHANGE_MODELS for verb in ("add", "change", "delete")
    ]
    admins, _ = Group.objects.get_or_create(name="Integration admin")
    admins.permissions.set(
        codenames(*view, *admin_perms, "operate_sync", "administer_integration", "change_syncevent")
    )


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(
        name__in=["Operations", "Integration admin"]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("integration", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
