from django.apps import AppConfig


class IntegrationConfig(AppConfig):
    name = "integration"
    verbose_name = "Integration"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from integration import checks  # noqa: F401  (registers system checks)

        post_migrate.connect(_install_schedules, sender=self)
        post_migrate.connect(_create_cache_table, sender=self)


def _install_schedules(sender, **kwargs) -> None:
    from integration.schedules import install_schedules

    install_schedules()


def _create_cache_table(sender, using="default", verbosity=1, **kwargs) -> None:
    """With CACHE_URL=dbcache://..., `migrate` makes the table (it skips one that exists)."""
    from django.core.management import call_command

    call_command("createcachetable", database=using, verbosity=max(0, verbosity - 1))
