"""Operator commands: the registry database and the demo model."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_registry(args: argparse.Namespace) -> int:
    from model_registry.database import migrate, open_engine
    from model_registry.registration import register_model
    from model_registry.store import RegistryStore

    engine = open_engine(args.registry_url)
    migrate(engine)
    store = RegistryStore(engine)
    store.ensure_default_pools()
    if args.registry_command == "add-model":
        served = register_model(
            store, model=args.name, version=args.version, checkpoint_dir=Path(args.checkpoint),
            variant=args.variant, pool=args.pool, chat_format=args.chat_format,
            context_limit=args.context_limit, tensor_parallel_size=args.tensor_parallel_size,
            dtype=args.dtype, progress=True)
        print(f"registered {served.model}@{served.version} in pool {served.pool} "
              f"(queue {served.queue}, modes {', '.join(served.modes)})")
    elif args.registry_command == "list":
        for m in store.stable_versions():
            print(f"{m.model}@{m.version}  pool={m.pool} tp={m.tensor_parallel_size} "
                  f"context={m.context_limit} modes={','.join(m.modes)} "
                  f"chat_format={m.chat_format or '-'}  {m.checkpoint_dir}")
    else:
        print(f"registry ready at {args.registry_url}")
    return 0


def run_prepare_demo(args: argparse.Namespace) -> int:
    from demo.smollm2 import prepare_demo_model

    path = prepare_demo_model(Path(args.dest), Path(args.cache_dir))
    print(f"demo model ready at {path}")
    return 0


def add_operator_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    registry = commands.add_parser("registry", help="create the registry, add or list models")
    registry.add_argument("--registry-url", default="sqlite:///var/registry.db")
    registry_commands = registry.add_subparsers(dest="registry_command", required=True)
    registry_commands.add_parser("init", help="create or upgrade the schema, add default pools")
    registry_commands.add_parser("list", help="list each model's stable version")
    add = registry_commands.add_parser("add-model", help="register a checkpoint directory")
    add.add_argument("--name", required=True)
    add.add_argument("--version", default="v1")
    add.add_argument("--checkpoint", required=True)
    add.add_argument("--variant", help="Code Llama variant, e.g. codellama-7b-instruct")
    add.add_argument("--pool")
    add.add_argument("--chat-format", help="llama2, codellama-70b, hf-template or ''")
    add.add_argument("--context-limit", type=int)
    add.add_argument("--tensor-parallel-size", type=int)
    add.add_argument("--dtype", default="auto")
    registry.set_defaults(handler=run_registry)

    demo = commands.add_parser("prepare-demo", help="download and convert the demo model")
    demo.add_argument("--dest", default="var/models/smollm2-135m-instruct")
    demo.add_argument("--cache-dir", default="var/downloads")
    demo.set_defaults(handler=run_prepare_demo)
