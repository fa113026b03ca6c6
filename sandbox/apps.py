from django.apps import AppConfig


class SandboxConfig(AppConfig):
    """Local simulators of the Salesforce and KashFlow APIs.

    A Django app only so that `manage.py sandbox` exists; it has no models and imports nothing
    from integration/.
    """

    name = "sandbox"
    verbose_name = "Sandbox simulators"
