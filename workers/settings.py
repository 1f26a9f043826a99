"""A worker's settings. Defined in `fleet_common.settings` with every other role's, so that
start-up can tell a mistyped `FLEET_*` variable from another role's."""

from fleet_common.settings.worker import WorkerSettings

__all__ = ["WorkerSettings"]
