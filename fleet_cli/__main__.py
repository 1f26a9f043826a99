"""`fleet`: talk to a gateway, run operator tasks, or start a local fleet."""

from __future__ import annotations

import argparse
import sys

from fleet_cli import client, local_preview, registry_client
from fleet_cli.job_commands import add_job_commands
from fleet_cli.operator import add_operator_commands
from fleet_cli.usage_command import add_usage_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    complete = commands.add_parser("complete", help="complete a prompt")
    client.add_client_arguments(complete)
    client.add_sampling_arguments(complete)
    complete.add_argument("prompt")
    complete.set_defaults(handler=lambda a: client.run_generation(a, "complete", prompt=a.prompt))

    infill = commands.add_parser("infill", help="fill in the middle between prefix and suffix")
    client.add_client_arguments(infill)
    client.add_sampling_arguments(infill)
    infill.add_argument("--prefix", required=True)
    infill.add_argument("--suffix", default="")
    infill.add_argument("--spm", action="store_true", help="suffix-prefix-middle order")
    infill.set_defaults(handler=lambda a: client.run_generation(
        a, "infill", prefix=a.prefix, suffix=a.suffix,
        order=client.pb.INFILL_ORDER_SPM if a.spm else client.pb.INFILL_ORDER_PSM))

    chat = commands.add_parser("chat", help="chat with an Instruct model")
    client.add_client_arguments(chat)
    client.add_sampling_arguments(chat)
    chat.add_argument("--system")
    chat.add_argument("turns", nargs="+", help="user, assistant, user, ... (or role:text)")
    chat.set_defaults(handler=lambda a: client.run_generation(
        a, "chat", messages=client.parse_messages(a.system, a.turns)))

    preview = commands.add_parser(
        "preview", help="show the exact token ids of a request: of a served model (-m, asks the "
                        "gateway) or of a tokenizer directory and prompt format (--tokenizer)")
    preview.add_argument("--target", default="127.0.0.1:50051", help="gateway host:port")
    preview.add_argument("--api-key", default=None)
    preview.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    source = preview.add_mutually_exclusive_group(required=True)
    source.add_argument("-m", "--model", help="a served model (asks the gateway)")
    source.add_argument("--tokenizer", metavar="DIR",
                        help="a checkpoint or tokenizer directory, built locally")
    preview.add_argument("--chat-format", choices=local_preview.CHAT_FORMATS,
                         help="with --tokenizer: the chat format of chat turns")
    preview.add_argument("--infill", action=argparse.BooleanOptionalAction, default=None,
                         help="with --tokenizer: whether the model can infill (default: when "
                              "its tokenizer has Code Llama's infill pieces and is not 70B's)")
    preview.add_argument("--prompt")
    preview.add_argument("--prefix")
    preview.add_argument("--suffix")
    preview.add_argument("--spm", action="store_true")
    preview.add_argument("--system")
    preview.add_argument("--max-tokens", type=int)
    preview.add_argument("--json", action="store_true")
    preview.add_argument("turns", nargs="*", help="chat turns (when no --prompt/--prefix)")
    preview.set_defaults(handler=lambda a: (local_preview.run_local_preview(a) if a.tokenizer
                                            else client.run_preview(a)))

    models = commands.add_parser("models", help="list the served models")
    models.add_argument("--target", default="127.0.0.1:50051")
    models.add_argument("--api-key", default=None)
    models.add_argument("--timeout", type=float, default=10.0)
    models.set_defaults(handler=client.run_models)

    up = commands.add_parser("up", help="run Redis (if needed), a worker and a gateway locally "
                                        "with the demo model")
    up.add_argument("--state-dir", default="var")
    up.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    up.add_argument("--port", type=int, default=50051)
    up.set_defaults(handler=lambda a: __import__("fleet_cli.launcher").launcher.run_up(a))

    add_operator_commands(commands)
    registry_client.add_commands(commands)
    add_usage_command(commands)
    add_job_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
