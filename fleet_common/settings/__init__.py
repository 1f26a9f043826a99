"""Every role's settings, one module per role (gateway, worker, registry), and how a role loads
them at start-up (`loading.load_settings`): environment `FLEET_*`, then command-line flags made
from the same fields. They live together so start-up knows every role's variable names."""
