"""Code shared by the gateway, the workers and the registry: errors, settings, wire records."""
