"""Typed settings of one benchmark run, built once (in ``bench.__main__``) and never mutated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

#: Every backend; each one runs alone on the machine. `fleet-traced` is the fleet with
#: OpenTelemetry tracing on and exporting (to `bench.otlp_sink`): its ratio to `fleet` is the
#: cost of tracing. It runs only when named (`--backends ...,fleet-traced`).
BACKENDS = ("vllm", "vllm-server", "vllm-grpc", "smg", "fleet", "fleet-traced")
#: The backends a run has when none are named, in the order they run.
DEFAULT_BACKENDS = ("vllm", "vllm-server", "vllm-grpc", "smg", "fleet")
BACKEND_LABELS = {
    "vllm": "vLLM alone (AsyncLLM in-process)",
    "vllm-server": "vLLM OpenAI server (HTTP/SSE)",
    "vllm-grpc": "vLLM gRPC servicer (smg-grpc-servicer, driven over gRPC)",
    "smg": "SMG router (Rust, HTTP/SSE /generate) -> vLLM gRPC servicer",
    "fleet": "fleet (gRPC gateway -> Redis/Celery -> worker)",
    "fleet-traced": "fleet with tracing on, exporting over OTLP/gRPC",
}
#: Backends whose packages are optional (bench extra `peers`): when they are missing, or the
#: backend cannot start, the run goes on and the report says why.
OPTIONAL_BACKENDS = ("vllm-grpc", "smg")


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
class OverloadSettings:
    """The fleet past its capacity (`bench.overload`): one worker running `capacity` requests
    at once, first loaded at its capacity, then offered `factor` times what it served."""

    #: The worker's FLEET_CONCURRENCY, hence its published capacity.
    capacity: int = 8
    factor: float = 4.0
    #: The measured window of each phase.
    seconds: float = 30.0
    #: Every request's gRPC deadline.
    deadline_s: float = 10.0
    input_len: int = 64
    output_len: int = 32
    #: The gateway's FLEET_ADMISSION_QUEUE_FACTOR.
    queue_factor: float = 2.0
    #: Tenant A's `max_concurrent` quota (its registry tenant policy): A floods up to it.
    #: None: capacity - 1; 0: no quota.
    a_max_concurrent: int | None = None
    #: Also offer the overload through a second gateway with admission control off.
    baseline: bool = True
    warmup_waves: int = 2

    def __post_init__(self) -> None:
        if self.capacity < 1 or not self.factor > 0 or not self.seconds > 0:
            raise ValueError("overload: capacity >= 1, factor > 0 and seconds > 0 are needed")
        if not self.deadline_s > 0:
            raise ValueError("overload: the deadline must be positive")


@dataclass(frozen=True)
class FairnessSettings:
    """Fair share between tenants (`bench.fairness`): one worker of `capacity` slots; tenant B
    at `b_rate` req/s alone, then with tenant A sending `a_multiple` x B's rate at once."""

    #: The worker's FLEET_CAPACITY: the slots open to every tenant.
    capacity: int = 4
    #: The worker's FLEET_FAIR_SHARE_RESERVE: slots beyond `capacity` (FLEET_CONCURRENCY and
    #: FLEET_MAX_NUM_SEQS are capacity + reserve) for tenants under their fair share.
    reserve: int = 1
    #: The measured window of each phase (the capacity probe has its own).
    seconds: float = 30.0
    probe_seconds: float = 15.0
    #: B's Poisson rate (req/s); 0: `b_share` x the rate the capacity probe completed.
    b_rate: float = 0.0
    b_share: float = 1 / 3
    a_multiple: float = 10.0
    deadline_s: float = 10.0
    input_len: int = 64
    output_len: int = 32
    #: The gateway's FLEET_ADMISSION_QUEUE_FACTOR.
    queue_factor: float = 2.0
    #: Tenant A's `max_concurrent` quota (its registry tenant policy): A floods up to it.
    #: None: capacity - 1; 0: no quota.
    a_max_concurrent: int | None = None
    #: Also offer B + A's flood through a second gateway with admission control off, so that
    #: the fair waiting lines are measured without admission's shared per-version bound.
    no_admission: bool = True
    #: Also run the control: B sends A's key (one tenant, one first-come-first-served line).
    fifo: bool = False
    #: Also run A alone at its flood rate (its throughput without B).
    a_alone: bool = False
    warmup_waves: int = 2

    def __post_init__(self) -> None:
        if self.capacity < 1 or not self.seconds > 0 or not self.probe_seconds > 0:
            raise ValueError("fairness: capacity >= 1, seconds > 0 and probe seconds > 0 "
                             "are needed")
        if self.b_rate < 0 or not self.b_share > 0 or not self.a_multiple > 0:
            raise ValueError("fairness: b_rate >= 0, b_share > 0 and a_multiple > 0 are needed")
        if not self.deadline_s > 0:
            raise ValueError("fairness: the deadline must be positive")
        if self.reserve < 0:
            raise ValueError("fairness: the reserve is >= 0")
        if self.a_max_concurrent is not None and self.a_max_concurrent < 0:
            raise ValueError("fairness: A's max_concurrent is >= 0 (0: no quota)")

    @property
    def a_quota(self) -> int:
        """A's max_concurrent: the given one, else capacity - 1 (0 when that is 0: no quota)."""
        if self.a_max_concurrent is not None:
            return self.a_max_concurrent
        return self.capacity - 1


@dataclass(frozen=True)
class SmgSettings:
    """The SMG peers: vLLM's gRPC servicer (`vllm-grpc`) and the SMG router (`smg`)."""

    #: SMG_VLLM_SERVICER_IMPL: the servicer's Python request path or its Rust one.
    servicer_impl: Literal["python", "rust"] = "python"
    #: The router's --policy (None: its default, cache_aware).
    policy: str | None = None
    #: How the SMG client sends prompts: "text" (the router tokenizes), "ids", or "auto"
    #: (text when the router's tokenizer gives exactly the workload's ids).
    input_mode: Literal["auto", "text", "ids"] = "auto"


@dataclass(frozen=True)
class BenchSettings:
    engine: EngineSettings
    workload: WorkloadSettings = field(default_factory=WorkloadSettings)
    phases: tuple[Phase, ...] = ()
    warmup_requests: int = 4
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    slo: Slo = field(default_factory=Slo)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    #: The overload measurement after the backends (None: not run).
    overload: OverloadSettings | None = None
    smg: SmgSettings = field(default_factory=SmgSettings)
    #: Passes over the backends for the spread of the ratios: the first runs every phase,
    #: each further one reruns the lowest- and highest-concurrency closed phases on every
    #: backend, in reversed backend order every other pass (ABC, CBA, ABC, ...).
    repeat: int = 1
    #: The fair-share measurement between two tenants after the rest (None: not run).
    fairness: FairnessSettings | None = None
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
        if self.repeat < 1:
            raise ValueError("repeat must be at least 1")

    def repeat_phases(self) -> tuple[Phase, ...]:
        """The phases every further pass reruns: the lowest- and highest-concurrency closed
        phases (c=1 and c=32 by default)."""
        closed = [p for p in self.phases if p.kind == "closed"]
        if self.repeat < 2 or not closed:
            return ()
        low = min(closed, key=lambda p: p.concurrency)
        high = max(closed, key=lambda p: p.concurrency)
        return (low,) if low == high else (low, high)

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
