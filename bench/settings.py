"""Typed settings of one benchmark run, built once (in ``bench.__main__``) and never mutated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

#: Backends in the order they run by default. Each one runs alone on the machine.
BACKENDS = ("vllm", "vllm-server", "fleet")
BACKEND_LABELS = {
    "vllm": "vLLM alone (AsyncLLM in-process)",
    "vllm-server": "vLLM OpenAI server (HTTP/SSE)",
    "fleet": "fleet (gRPC gateway -> Redis/Celery -> worker)",
}


@dataclass(frozen=True)
class Phase:
    """One load pattern: a closed loop at a fixed concurrency, or Poisson arrivals at a rate."""

    name: str
    kind: Literal["closed", "open"]
    num_requests: int
    concurrency: int = 0
    rate: float = 0.0

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ValueError(f"phase {self.name}: num_requests must be at least 1")
        if self.kind == "closed" and self.concurrency < 1:
            raise ValueError(f"phase {self.name}: a closed loop needs concurrency >= 1")
        if self.kind == "open" and not self.rate > 0:
            raise ValueError(f"phase {self.name}: an open loop needs a rate > 0")

    @staticmethod
    def closed(concurrency: int, num_requests: int) -> Phase:
        return Phase(f"closed-c{concurrency}", "closed", num_requests, concurrency=concurrency)

    @staticmethod
    def open(rate: float, num_requests: int) -> Phase:
        return Phase(f"open-r{rate:g}", "open", num_requests, rate=rate)

    def describe(self) -> str:
        if self.kind == "closed":
            return f"closed loop, concurrency {self.concurrency}, {self.num_requests} requests"
        return f"Poisson arrivals at {self.rate:g} req/s, {self.num_requests} requests"


@dataclass(frozen=True)
class EngineSettings:
    """What every backend's engine gets, identically."""

    model_dir: Path
    model_name: str
    dtype: str = "auto"
    max_model_len: int = 2048
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    kv_cache_gib: int = 1
    seed: int = 0
    #: Code Llama catalog variant for the fleet's registry (None: defaults for other models).
    variant: str | None = None
    startup_timeout_s: float = 600.0

    def env(self) -> dict[str, str]:
        """Environment every engine process gets (CPU KV cache size; TP thread binding)."""
        env = {"VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib)}
        if self.tensor_parallel_size > 1:
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
                str(i) for i in range(self.tensor_parallel_size))
        return env


@dataclass(frozen=True)
class WorkloadSettings:
    input_len: int = 128
    output_len: int = 128
    seed: int = 0


@dataclass(frozen=True)
class Slo:
    """Goodput limits: a request is good when it meets every limit (vLLM's --goodput)."""

    ttft_ms: float = 1000.0
    tpot_ms: float = 100.0


@dataclass(frozen=True)
class AdmissionSettings:
    """The gateway alone: admission with no worker consuming (0 requests: skipped)."""

    grpc_requests: int = 3000
    grpc_concurrency: int = 64
    inprocess_requests: int = 3000
    inprocess_concurrency: int = 64
    #: max_tokens of the admitted requests (they are never generated).
    max_tokens: int = 128


@dataclass(frozen=True)
class BenchSettings:
    engine: EngineSettings
    workload: WorkloadSettings = field(default_factory=WorkloadSettings)
    phases: tuple[Phase, ...] = ()
    warmup_requests: int = 4
    backends: tuple[str, ...] = BACKENDS
    slo: Slo = field(default_factory=Slo)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    #: Profile gateway and worker with py-spy during an extra (unmeasured) repeat of the
    #: highest-concurrency closed phase of the fleet.
    profile: bool = False
    out_dir: Path = Path("bench-results")
    #: Where the latest report, plots and JSON are copied (None: not copied).
    publish_dir: Path | None = None
    progress: bool = True
    request_timeout_s: float = 600.0
    fleet_log_level: str = "INFO"
    note: str = ""
    #: Before each backend and each phase, wait up to this long for other processes to keep
    #: fewer than `idle_cores` cores busy (e.g. other people's tests on a shared box); 0: do
    #: not wait. A phase during which they used more is run again (fresh prompts) up to
    #: `retry_disturbed` times; the last attempt is the one reported, with every attempt noted.
    idle_wait_s: float = 0.0
    idle_cores: float = 0.25
    retry_disturbed: int = 0
    #: Run the candidate prompts once through vLLM alone (greedy, stopping at the model's stop
    #: tokens) and keep only those whose continuation does not reach a stop token within
    #: output_len, so that lengths hold even on a backend that stops at a stop token despite
    #: ignore_eos. Every backend here honours ignore_eos (the fleet drops the format's stop
    #: tokens too), so it is off by default: a length that does not hold is then a failure
    #: the harness reports, not something screening hides.
    screen_prompts: bool = False
    screen_concurrency: int = 64
    #: What code was measured; None: `git describe` of the repository the bench runs from.
    code_version: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"unknown backends {sorted(unknown)}; known: {', '.join(BACKENDS)}")
        names = [p.name for p in self.phases]
        if len(names) != len(set(names)):
            raise ValueError(f"phase names must be unique, got {names}")
        if not self.phases:
            raise ValueError("at least one phase is needed")

    def total_requests(self) -> int:
        """Prompts one backend uses: warm-up plus every phase (each prompt is used once)."""
        return self.warmup_requests + sum(p.num_requests for p in self.phases)

    def to_json(self) -> dict[str, Any]:
        def convert(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [convert(v) for v in value]
            return value

        return convert(asdict(self))


def default_phases(concurrencies: tuple[int, ...] = (1, 8, 32), waves: int = 3,
                   min_closed: int = 8, rates: tuple[float, ...] = (1.0, 2.0, 4.0),
                   open_requests: int = 32) -> tuple[Phase, ...]:
    """Closed loops with `waves` times the concurrency (at least `min_closed`) requests each,
    then one open loop per rate with `open_requests` requests."""
    closed = tuple(Phase.closed(c, max(min_closed, waves * c)) for c in concurrencies)
    return closed + tuple(Phase.open(r, open_requests) for r in rates)
