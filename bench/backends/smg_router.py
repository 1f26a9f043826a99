"""SMG, the Shepherd Model Gateway (PyPI `smg`, a Rust router), in front of vLLM's gRPC servicer.

The router (`python -m smg launch`) gets the servicer as its one worker
(`--worker-urls grpc://...`) and the checkpoint as `--model-path`, so it tokenizes and
detokenizes in Rust and talks `vllm.grpc.engine.VllmEngine` to the servicer. Its policy stays
the router's default (cache_aware) unless `--smg-policy` says otherwise.

The client uses the router's native `/generate` (SSE) rather than `/v1/completions`, because
its chunks carry the delta `output_ids` (as vLLM's server chunks do with `return_token_ids`
and the fleet's deltas do), so tokens are counted, not guessed from text:

- the prompt goes as `text` when the router's tokenizer turns every prompt of the run into
  exactly the workload's ids (checked up front through `/v1/tokenize`, which encodes as
  `/generate` does: no special tokens), so the router's Rust tokenizer is on the measured
  path as the fleet's gateway tokenizer is; otherwise (a model whose completion format adds a
  BOS, e.g. Code Llama) as `input_ids`;
- `sampling_params`: `max_new_tokens = output_len`, temperature 0, `ignore_eos`;
- every event before the last carries one engine output's ids; the last one (with
  `finish_reason`) repeats the last id and carries the totals: its ids are not counted again,
  and `meta_info.completion_tokens` must equal what the chunks carried.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

from bench.records import ChunkClock, RequestRecord
from bench.workload import Prompt
from fleet_cli.processes import ManagedProcess, free_port, spawn, wait_until

INPUT_MODES = ("auto", "text", "ids")


def unavailable() -> str | None:
    """Why the router cannot be started here (None: the `smg` wheel is installed)."""
    try:
        metadata.version("smg")
    except metadata.PackageNotFoundError:
        return "smg (the router) is not installed: pip install --no-deps smg"
    if util.find_spec("smg") is None:
        return "smg is installed but not importable"
    return None


def router_command(worker_target: str, model_dir: Path, port: int, metrics_port: int,
                   log_level: str = "info", policy: str | None = None,
                   python: str = sys.executable) -> list[str]:
    args = [python, "-m", "smg", "launch", "--worker-urls", f"grpc://{worker_target}",
            "--model-path", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--log-level", _level(log_level)]
    if policy:
        args += ["--policy", policy]
    return args


def _level(level: str) -> str:
    level = level.lower()
    return {"warning": "warn", "critical": "error"}.get(level, level)


def router_ready(base_url: str) -> bool:
    """/readiness answers 200 with every worker healthy (and at least one)."""
    try:
        with urllib.request.urlopen(f"{base_url}/readiness", timeout=2) as response:
            if response.status != 200:
                return False
            body = json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return int(body.get("healthy_workers") or 0) >= 1


@dataclass
class LaunchedRouter:
    process: ManagedProcess
    base_url: str
    command: list[str]


def launch_router(worker_target: str, model_dir: Path, log_dir: Path, timeout_s: float,
                  log_level: str = "info", policy: str | None = None,
                  ports: tuple[int, int] | None = None) -> LaunchedRouter:
    """Starts the router (`ports`: its HTTP and metrics ports, free ones when None) and waits
    until its worker is registered and healthy."""
    port, metrics_port = ports or (free_port(), free_port())
    command = router_command(worker_target, model_dir, port, metrics_port, log_level, policy)
    proc = spawn("smg-router", command, log_dir, {"NO_COLOR": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: router_ready(base), timeout_s, "SMG router /readiness", proc)
    except BaseException:
        proc.stop()
        raise
    return LaunchedRouter(proc, base, command)


# ------------------------------------------------------------------------------------------
# the request and the stream, as pure functions of JSON


def generate_payload(model: str, prompt: Prompt, output_len: int, send_text: bool
                     ) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model, "stream": True,
        "sampling_params": {"max_new_tokens": output_len, "temperature": 0.0,
                            "ignore_eos": True}}
    if send_text:
        payload["text"] = prompt.text
    else:
        payload["input_ids"] = list(prompt.token_ids)
    return payload


def _finish(reason: Any) -> str:
    """`finish_reason` as a word: a string, or SGLang's {"type": "length", ...} object."""
    if isinstance(reason, dict):
        return str(reason.get("type") or "")
    return str(reason)


@dataclass
class GenerateTally:
    """What the events of one streamed `/generate` said."""

    finish_reason: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str = ""

    def tokens(self, event: dict[str, Any]) -> int:
        """Output tokens one SSE event (parsed JSON) adds."""
        if "error" in event:
            self.error = json.dumps(event["error"])[:500]
            return 0
        meta = event.get("meta_info") or {}
        if meta.get("prompt_tokens"):
            self.prompt_tokens = int(meta["prompt_tokens"])
        if meta.get("finish_reason") is not None:
            # The closing event repeats the last id; its completion_tokens is the total.
            self.finish_reason = _finish(meta["finish_reason"])
            if meta.get("completion_tokens") is not None:
                self.completion_tokens = int(meta["completion_tokens"])
            return 0
        return len(event.get("output_ids") or ())

    def problem(self, counted: int) -> str:
        """Why the stream is not a proper completion of `counted` tokens ("" when it is)."""
        if self.error:
            return f"error event: {self.error}"
        if not self.finish_reason:
            return "the stream ended without a finish_reason"
        if self.completion_tokens is not None and self.completion_tokens != counted:
            return (f"meta_info says {self.completion_tokens} completion tokens, "
                    f"chunks carried {counted}")
        return ""


def tokenize_mismatches(prompts: list[Prompt], tokens: list[list[int]]) -> list[int]:
    """Indices of the prompts whose router tokenization is not their workload ids."""
    if len(tokens) != len(prompts):
        return [p.index for p in prompts]
    return [p.index for p, ids in zip(prompts, tokens) if tuple(ids) != p.token_ids]


class SmgRouterBackend:
    name = "smg"

    def __init__(self, *, base_url: str, model_name: str, input_mode: str = "auto",
                 request_timeout_s: float = 600.0) -> None:
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        self._base = base_url
        self._model = model_name
        self._mode = input_mode
        self._send_text = input_mode == "text"
        self._timeout = request_timeout_s
        self._session: Any = None

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self._timeout))

    async def _tokenize(self, prompts: list[Prompt]) -> list[list[int]]:
        tokens: list[list[int]] = []
        for start in range(0, len(prompts), 64):
            batch = prompts[start:start + 64]
            async with self._session.post(f"{self._base}/v1/tokenize", json={
                    "model": self._model, "prompt": [p.text for p in batch]}) as response:
                if response.status != 200:
                    raise RuntimeError(f"/v1/tokenize answered HTTP {response.status}: "
                                       f"{(await response.text())[:300]}")
                body = await response.json()
            tokens += body["tokens"]
        return tokens

    async def verify(self, prompts: list[Prompt]) -> dict[str, Any]:
        """Decides text or ids (auto): text when the router's tokenizer makes exactly the
        workload's ids of every prompt."""
        if self._mode == "ids":
            return {"checked": 0, "input": "input_ids",
                    "how": "token ids are sent as they are (--smg-input ids)"}
        bad = tokenize_mismatches(prompts, await self._tokenize(prompts))
        if bad and self._mode == "text":
            raise RuntimeError(f"the router tokenizes {len(bad)} prompts differently from "
                               f"the workload, e.g. prompt {bad[0]}")
        self._send_text = not bad
        how = ("text sent; /v1/tokenize (the /generate encoding) == workload ids"
               if not bad else f"/v1/tokenize differs from the workload ids for {len(bad)} "
               "prompts (the completion format adds tokens): input_ids sent")
        return {"checked": len(prompts), "input": "text" if not bad else "input_ids",
                "mismatches": len(bad), "how": how}

    async def run_request(self, prompt: Prompt, output_len: int) -> RequestRecord:
        payload = generate_payload(self._model, prompt, output_len, self._send_text)
        clock = ChunkClock(prompt.index, len(prompt.token_ids))
        tally = GenerateTally()
        try:
            async with self._session.post(f"{self._base}/generate", json=payload) as response:
                if response.status != 200:
                    body = (await response.text())[:500]
                    return clock.finish(error=f"HTTP {response.status}: {body}")
                async for line in response.content:
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    clock.chunk(tally.tokens(json.loads(data)))
        except Exception as exc:  # noqa: BLE001 - recorded as a failed request
            return clock.finish(error=f"{type(exc).__name__}: {exc}")
        record = clock.finish(finish_reason=tally.finish_reason,
                              error=tally.problem(clock.record.output_tokens))
        if tally.prompt_tokens is not None:
            record.prompt_tokens = tally.prompt_tokens
        return record

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
