"""`python -m model_registry bootstrap-key --tenant ops`: the first operator key, written straight
into the registry database (so only someone with its credentials can), for a registry that
authenticates every call and therefore cannot be asked for a first key.

The key goes to stdout alone (`export FLEET_API_KEY=$(python -m model_registry bootstrap-key)`),
the warning that it is never shown again to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fleet_common.errors import FleetError
from fleet_common.settings.registry import RegistrySettings
from model_registry.api_keys import OPERATOR
from model_registry.database import migrate, open_engine
from model_registry.store import RegistryStore
from model_registry.tenants import TenantStore

ACTOR = "bootstrap-key"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_registry bootstrap-key",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenant", default="ops", help="created when it does not exist "
                                                        "[default: ops]")
    parser.add_argument("--key-name", default="bootstrap", help="unique within the tenant, "
                        "for good [default: bootstrap]")
    parser.add_argument("--registry-url", default=None,
                        help="the database [default: FLEET_REGISTRY_URL, else the registry's "
                             "default]")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    url = args.registry_url or RegistrySettings().registry_url
    engine = open_engine(url)
    try:
        migrate(engine)
        tenants = TenantStore(RegistryStore(engine))
        if args.tenant not in {t.name for t in tenants.list_tenants()}:
            tenants.create_tenant(args.tenant, "operators", actor=ACTOR)
        record, secret = tenants.create_key(args.tenant, args.key_name, [OPERATOR], actor=ACTOR)
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"created API key {record.key_id} ({record.tenant}/{record.name}, scope {OPERATOR}). "
          "Store it now: this is the only time it is shown (the registry keeps its sha256). "
          "Send it as `fleet ops --api-key` or FLEET_API_KEY.", file=sys.stderr)
    print(secret)
    return 0
