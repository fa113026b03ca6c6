"""Create the demo sign-ins for a local trial and print them. Never for production."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from integration.access import INTEGRATION_ADMIN_GROUP, OPERATIONS_GROUP

DEMO_USERS = [
    # username, password, group, superuser
    ("admin", "kashforce-admin", INTEGRATION_ADMIN_GROUP, True),
    ("ops", "kashforce-ops", OPERATIONS_GROUP, False),
]


class Command(BaseCommand):
    help = "Create demo users (an admin and an Operations user) and print their credentials."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("Demo users are for a local trial only (DEBUG is off).")
        User = get_user_model()
        for username, password, group_name, superuser in DEMO_USERS:
            user, _ = User.objects.get_or_create(username=username)
            user.set_password(password)
            user.is_staff = True
            user.is_superuser = superuser
            user.save()
            user.groups.add(Group.objects.get(name=group_name))
            self.stdout.write(f"  {group_name:<18} username: {username:<6} password: {password}")
