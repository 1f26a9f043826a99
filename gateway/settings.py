"""The gateway's settings. Defined in `fleet_common.settings` with every other role's, so that
start-up can tell a mistyped `FLEET_*` variable from another role's."""

from fleet_common.settings.gateway import GatewaySettings, Limits

__all__ = ["GatewaySettings", "Limits"]
