"""Who may do what. Roles are Django groups created by a data migration; views check the two
permissions below through these decorators, in one place."""

from django.contrib.auth.decorators import permission_required

OPERATIONS_GROUP = "Operations"
INTEGRATION_ADMIN_GROUP = "Integration admin"

# Start syncs, retry or ignore errors.
OPERATE = "integration.operate_sync"
# Edit connections and mappings.
ADMINISTER = "integration.administer_integration"

operator_required = permission_required(OPERATE, raise_exception=True)
admin_required = permission_required(ADMINISTER, raise_exception=True)

# See the dashboard's pages (both roles have it; a signed-in user with no role does not).
VIEW = "integration.view_syncevent"
viewer_required = permission_required(VIEW, raise_exception=True)
