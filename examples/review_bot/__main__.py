"""A code-review bot on JobService: one chat request per diff hunk, one batch, a signed webhook.

    .venv/bin/python -m examples.review_bot --repo . --range HEAD~1..HEAD \\
        --model smollm2-135m-instruct

It reads `git diff` of the range, builds one chat request per hunk for an Instruct model (the
gateway applies the model's chat format, Llama 2's for Code Llama Instruct), starts a small
HTTP receiver on 127.0.0.1, submits the hunks as one batch whose webhook is that receiver,
verifies the event's signature with the `standardwebhooks` package (the tenant's secret from
GetWebhookSecret), then reads the results and prints the review comments by file and line.
The gateway must allow the receiver's host (FLEET_WEBHOOK_ALLOWED_HOSTS; `fleet up` does).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import grpc
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import job_service_pb2 as jobs
from codellama.fleet.v1.job_service_pb2_grpc import JobServiceStub

SYSTEM = ("You review code changes. Answer with short, concrete review comments about bugs, "
          "risks and style in the hunk you are shown; say 'LGTM' if there is nothing to say.")
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


@dataclass(frozen=True)
class Hunk:
    path: str
    line: int  # first line of the hunk in the new file
    text: str


def hunks(repo: Path, revisions: str) -> list[Hunk]:
    """The hunks of `git diff revisions` (files deleted in the range have none to review)."""
    diff = subprocess.run(["git", "-C", str(repo), "diff", "--no-color", "-U3", revisions],
                          capture_output=True, text=True, check=True).stdout
    found: list[Hunk] = []
    path = ""
    current: tuple[str, int, list[str]] | None = None

    def close() -> None:
        if current is not None and current[0] != "/dev/null":
            found.append(Hunk(current[0], current[1], "\n".join(current[2])))

    for row in diff.splitlines():
        if row.startswith("diff --git"):
            close()
            current = None
        elif row.startswith("+++ "):
            path = row[4:].removeprefix("b/")
        elif match := _HUNK.match(row):
            close()
            current = (path, int(match.group(1)), [row])
        elif current is not None:
            current[2].append(row)
    close()
    return found


def review_request(model: str, hunk: Hunk, max_tokens: int) -> jobs.JobRequest:
    return jobs.JobRequest(chat=api.ChatRequest(model=model, messages=[
        pb.ChatMessage(role=pb.ROLE_SYSTEM, content=SYSTEM),
        pb.ChatMessage(role=pb.ROLE_USER, content=f"Review this change to {hunk.path}:\n"
                                                 f"```diff\n{hunk.text}\n```")],
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0)))


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps the webhook events whose signature verifies."""

    def __init__(self, secret: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.refused = 0
        self.arrived = threading.Event()
        webhook, receiver = Webhook(secret), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    event = webhook.verify(body, {k.lower(): v for k, v in self.headers.items()})
                except WebhookVerificationError:  # a forged, altered or stale event
                    receiver.refused += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver.events.append(event)
                receiver.arrived.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, job_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The first verified event of `job_id` (another job's, a late retry, is skipped)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("data", {}).get("job_id") == job_id:
                    return event
            self.arrived.wait(min(0.5, max(deadline - time.monotonic(), 0)))
            self.arrived.clear()
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def results(stub: JobServiceStub, job_id: str, metadata: list[tuple[str, str]]
            ) -> Iterator[jobs.ItemResult]:
    for page in stub.GetJobResults(jobs.GetJobResultsRequest(job_id=job_id), metadata=metadata,
                                   timeout=60):
        yield from page.results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.review_bot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("."))
    p.add_argument("--range", default="HEAD~1..HEAD", help="git revision range to review")
    p.add_argument("--model", required=True, help="an Instruct model the fleet serves")
    p.add_argument("--target", default="127.0.0.1:50051", help="gateway host:port")
    p.add_argument("--api-key", default=None, help="a key with the jobs scope")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--wait-s", type=float, default=600.0, help="how long to wait for the job")
    args = p.parse_args(argv)
    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else []

    found = hunks(args.repo, args.range)
    if not found:
        print(f"no changes in {args.range}")
        return 0
    stub = JobServiceStub(grpc.insecure_channel(args.target))
    secret = stub.GetWebhookSecret(jobs.GetWebhookSecretRequest(), metadata=metadata,
                                   timeout=10).secret
    receiver = Receiver(secret)
    try:
        job = stub.SubmitBatch(jobs.SubmitBatchRequest(
            settings=jobs.JobSettings(webhook_url=receiver.url),
            items=[jobs.BatchItem(custom_id=f"{h.path}:{h.line}",
                                  request=review_request(args.model, h, args.max_tokens))
                   for h in found]), metadata=metadata, timeout=60).job
        print(f"submitted {job.job_id}: {len(found)} hunks; waiting for its webhook...",
              file=sys.stderr)
        event = receiver.wait_for(job.job_id, args.wait_s)
        if event is None:
            print(f"no webhook within {args.wait_s:g} s", file=sys.stderr)
            return 1
        print(f"webhook {event['type']} verified ({json.dumps(event['data']['counts'])})",
              file=sys.stderr)
        by_id = {f"{h.path}:{h.line}": h for h in found}
        for result in results(stub, job.job_id, metadata):
            hunk = by_id[result.custom_id]
            if result.state == jobs.ITEM_STATE_SUCCEEDED:
                comment = result.chat.choices[0].text.strip()
            else:
                comment = f"(not reviewed: {result.error_message})"
            first, *rest = comment.splitlines() or [""]
            print(f"{hunk.path}:{hunk.line}: {first}")
            for line in rest:
                print(f"    {line}")
    finally:
        receiver.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
