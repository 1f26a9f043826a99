"""`fleet jobs ...`: batch jobs from the command line (JobService, docs/jobs.md).

`fleet jobs submit --file items.jsonl` streams a batch, one JSON BatchItem per line in
protobuf's JSON mapping (`{"custom_id": "a", "request": {"complete": {"model": "...",
"prompt": "..."}}}`); `fleet jobs results JOB -o results.jsonl` writes one JSON ItemResult per
line; `fleet jobs watch JOB` shows a progress bar until the job ends (`--json`: every change as
a JSON line).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError

from codellama.fleet.v1 import job_service_pb2 as jobs
from codellama.fleet.v1.job_service_pb2_grpc import JobServiceStub

_ITEMS_PER_MESSAGE = 500


def add_job_commands(commands: Any) -> None:
    job = commands.add_parser("jobs", help="batch jobs: submit, list, get, watch, cancel, "
                                           "results, webhook-secret")
    actions = job.add_subparsers(dest="job_command", required=True)

    submit = _action(actions, "submit", "submit a batch from a JSON-lines file")
    submit.add_argument("--file", required=True,
                        help="one BatchItem per line, in protobuf JSON ('-': stdin)")
    submit.add_argument("--webhook", default="", help="URL to POST the job's end event to")
    submit.add_argument("--completion-window-s", type=int, default=0)
    submit.set_defaults(handler=run_submit)

    listing = _action(actions, "list", "the caller's jobs, newest first")
    listing.add_argument("--state", action="append", default=[],
                         choices=[n.removeprefix("JOB_STATE_").lower()
                                  for n in jobs.JobState.keys()[1:]])
    listing.add_argument("--page-size", type=int, default=0)
    listing.add_argument("--page-token", default="")
    listing.set_defaults(handler=run_list)

    secret = _action(actions, "webhook-secret", "the tenant's webhook signing secret")
    secret.set_defaults(handler=run_webhook_secret)

    for name, handler, help_text in (("get", run_get, "a job's state and counts"),
                                     ("watch", run_watch, "a job's progress until it ends"),
                                     ("cancel", run_cancel, "cancel a job"),
                                     ("results", run_results, "the ended items, as JSON lines")):
        action = _action(actions, name, help_text)
        action.add_argument("job_id")
        action.set_defaults(handler=handler)
        if name == "watch":
            action.add_argument("--json", action="store_true",
                                help="every change as a JSON line, no progress bar")
            action.set_defaults(timeout=None)  # as long as the job runs (a deadline: --timeout)
        if name == "results":
            action.add_argument("-o", "--output", help="write the JSON lines here (default: "
                                                       "standard output)")


def _action(actions: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    action = actions.add_parser(name, help=help_text)
    action.add_argument("--target", default="127.0.0.1:50051", help="gateway host:port")
    action.add_argument("--api-key", default=None)
    action.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    return action


def _stub(args: argparse.Namespace) -> JobServiceStub:
    return JobServiceStub(grpc.insecure_channel(args.target))


def _metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {args.api_key}")] if args.api_key else []


def _print(message: Any) -> None:
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True)), flush=True)


def _failed(err: grpc.RpcError) -> int:
    print(f"{err.code().name}: {err.details()}", file=sys.stderr)  # type: ignore[attr-defined]
    return 1


def _read_items(source: str) -> list[jobs.BatchItem]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(ParseDict(json.loads(line), jobs.BatchItem()))
        except (json.JSONDecodeError, ParseError) as exc:
            raise SystemExit(f"{source}:{number}: not a BatchItem: {exc}") from exc
    return items


def _messages(args: argparse.Namespace, items: list[jobs.BatchItem]
              ) -> Iterator[jobs.SubmitBatchStreamRequest]:
    settings = jobs.JobSettings(webhook_url=args.webhook,
                                completion_window_s=args.completion_window_s)
    yield jobs.SubmitBatchStreamRequest(settings=settings, items=items[:_ITEMS_PER_MESSAGE])
    for start in range(_ITEMS_PER_MESSAGE, len(items), _ITEMS_PER_MESSAGE):
        yield jobs.SubmitBatchStreamRequest(items=items[start:start + _ITEMS_PER_MESSAGE])


def run_submit(args: argparse.Namespace) -> int:
    items = _read_items(args.file)
    try:
        response = _stub(args).SubmitBatchStream(_messages(args, items), metadata=_metadata(args),
                                                 timeout=args.timeout)
    except grpc.RpcError as err:
        return _failed(err)
    _print(response.job)
    return 0


def run_list(args: argparse.Namespace) -> int:
    states = [jobs.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state]
    try:
        response = _stub(args).ListJobs(jobs.ListJobsRequest(
            states=states, page_size=args.page_size, page_token=args.page_token),
            metadata=_metadata(args), timeout=args.timeout)
    except grpc.RpcError as err:
        return _failed(err)
    for job in response.jobs:
        _print(job)
    if response.next_page_token:
        print(f"next page: --page-token {response.next_page_token}", file=sys.stderr)
    return 0


def run_get(args: argparse.Namespace) -> int:
    try:
        _print(_stub(args).GetJob(jobs.GetJobRequest(job_id=args.job_id),
                                  metadata=_metadata(args), timeout=args.timeout).job)
    except grpc.RpcError as err:
        return _failed(err)
    return 0


def run_watch(args: argparse.Namespace) -> int:
    changes = _stub(args).WatchJob(jobs.WatchJobRequest(job_id=args.job_id),
                                   metadata=_metadata(args), timeout=args.timeout)
    try:
        if args.json:
            for change in changes:
                _print(change.job)
        else:
            _progress(changes)
    except grpc.RpcError as err:
        return _failed(err)
    return 0


def _progress(changes: Iterator[Any]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                  TextColumn("{task.fields[counts]}"), console=_stderr_console()) as bar:
        task = None
        for change in changes:
            job, c = change.job, change.job.counts
            ended = c.succeeded + c.failed + c.cancelled + c.expired
            counts = f"{c.succeeded} ok, {c.failed} failed, {c.running} running"
            state = jobs.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
            if task is None:
                task = bar.add_task(state, total=job.total_items, counts=counts)
            bar.update(task, completed=ended, description=state, counts=counts)
    if task is not None:
        _print(job)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def run_cancel(args: argparse.Namespace) -> int:
    try:
        _print(_stub(args).CancelJob(jobs.CancelJobRequest(job_id=args.job_id),
                                     metadata=_metadata(args), timeout=args.timeout).job)
    except grpc.RpcError as err:
        return _failed(err)
    return 0


def run_results(args: argparse.Namespace) -> int:
    out = Path(args.output).open("w", encoding="utf-8") if args.output else sys.stdout
    try:
        for page in _stub(args).GetJobResults(jobs.GetJobResultsRequest(job_id=args.job_id),
                                              metadata=_metadata(args), timeout=args.timeout):
            for result in page.results:
                out.write(json.dumps(MessageToDict(result, preserving_proto_field_name=True))
                          + "\n")
    except grpc.RpcError as err:
        return _failed(err)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def run_webhook_secret(args: argparse.Namespace) -> int:
    try:
        print(_stub(args).GetWebhookSecret(jobs.GetWebhookSecretRequest(),
                                           metadata=_metadata(args), timeout=args.timeout).secret)
    except grpc.RpcError as err:
        return _failed(err)
    return 0
