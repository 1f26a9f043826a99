"""The `fleet` command: client calls, operator tasks and a local launcher."""
