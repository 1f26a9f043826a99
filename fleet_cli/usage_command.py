"""`fleet usage --tenant T --since YYYY-MM-DD [--until DATE] [--json]`: a tenant's usage per UTC
day, model and version, from the registry's UsageService, as a table or as JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import date
from typing import Any

import grpc

from codellama.fleet.v1 import usage_service_pb2 as pb
from codellama.fleet.v1.usage_service_pb2_grpc import UsageServiceStub


def _day(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, got {text!r}") from None


def usage_json(response: pb.GetUsageResponse) -> dict[str, Any]:
    """The response as plain JSON (counts as numbers), with totals over its records."""
    records = [{"day": r.day, "tenant": r.tenant, "model": r.model,
                "model_version": r.model_version, "requests": r.requests,
                "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "refusals": dict(sorted(r.refusals.items()))} for r in response.records]
    totals: dict[str, Any] = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                              "refusals": {}}
    for record in records:
        for name in ("requests", "prompt_tokens", "completion_tokens"):
            totals[name] += record[name]
        for reason, count in record["refusals"].items():
            totals["refusals"][reason] = totals["refusals"].get(reason, 0) + count
    totals["refusals"] = dict(sorted(totals["refusals"].items()))
    return {"tenant": response.tenant, "since": response.since, "until": response.until,
            "records": records, "totals": totals}


def _refusals(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in by_reason.items()) or "-"


def usage_table(data: dict[str, Any]) -> str:
    """Aligned columns; a tenant column only when the records span every tenant."""
    every_tenant = not data["tenant"]
    header = ["day", *(["tenant"] if every_tenant else []), "model", "version", "requests",
              "prompt tok", "completion tok", "refusals"]
    numeric = {"requests", "prompt tok", "completion tok"}
    rows: list[Sequence[str]] = []
    for r in data["records"]:
        rows.append([r["day"], *([r["tenant"]] if every_tenant else []), r["model"],
                     r["model_version"], str(r["requests"]), str(r["prompt_tokens"]),
                     str(r["completion_tokens"]), _refusals(r["refusals"])])
    t = data["totals"]
    total = ["total", *([""] if every_tenant else []), "", "", str(t["requests"]),
             str(t["prompt_tokens"]), str(t["completion_tokens"]), _refusals(t["refusals"])]
    widths = [max(len(row[i]) for row in (header, *rows, total)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if name in numeric else cell.ljust(w)
                         for cell, w, name in zip(cells, widths, header, strict=True)).rstrip()

    who = f"tenant {data['tenant']}" if data["tenant"] else "every tenant"
    out = [f"usage of {who}, {data['since']} to {data['until']} (UTC days)", line(header)]
    out += [line(row) for row in rows] if rows else ["(no usage in these days)"]
    out.append(line(total))
    return "\n".join(out)


def run_usage(a: argparse.Namespace) -> int:
    key = a.api_key or os.environ.get("FLEET_API_KEY", "")
    request = pb.GetUsageRequest(tenant=a.tenant, since=a.since, until=a.until or "")
    with grpc.insecure_channel(a.registry) as channel:
        try:
            response = UsageServiceStub(channel).GetUsage(
                request, timeout=a.timeout,
                metadata=[("authorization", f"Bearer {key}")] if key else [])
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    data = usage_json(response)
    print(json.dumps(data, indent=2) if a.json else usage_table(data))
    return 0


def add_usage_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    usage = commands.add_parser(
        "usage", help="a tenant's requests, tokens and refusals per UTC day, model and version")
    usage.add_argument("--registry", default="127.0.0.1:50061", help="registry host:port")
    usage.add_argument("--api-key", default="", help="an operator key (any tenant), or any "
                       "key of the tenant itself [default: FLEET_API_KEY]")
    usage.add_argument("--tenant", default="", help="default: the key's own tenant (every "
                       "tenant with an operator key)")
    usage.add_argument("--since", type=_day, required=True, help="first UTC day, YYYY-MM-DD")
    usage.add_argument("--until", type=_day, default=None,
                       help="last UTC day, YYYY-MM-DD [default: today]")
    usage.add_argument("--json", action="store_true", help="JSON with the same data")
    usage.add_argument("--timeout", type=float, default=30.0)
    usage.set_defaults(handler=run_usage)
