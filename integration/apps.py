from django.apps import AppConfig


class IntegrationConfig(AppConfig):
    name = "integration"
    verbose_name = "Integration"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from integration import checks  # noqa: F401  (registers system checks)

        post_migrate.connect(_install_schedules, sender=self)


def _install_schedules(sender, **kwargs) -> None:
    from integration.schedules import install_schedules

    install_schedules()
