"""The gateway's settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from fleet_common.logs import LogFormat
from fleet_common.settings.base import FleetSettings


class Limits(FleetSettings):
    """Bounds on request fields; every one appears in the error message that enforces it."""

    model_config = SettingsConfigDict(env_prefix="FLEET_LIMIT_")

    max_n: int = 8
    max_logprobs: int = 5
    max_stop_sequences: int = 8
    max_stop_sequence_chars: int = 64
    max_prompt_chars: int = 1_000_000
    max_messages: int = 256
    default_max_tokens: int = 256


class GatewaySettings(FleetSettings):
    redis_url: str = "redis://127.0.0.1:6379/0"
    registry_url: str = "sqlite:///var/registry.db"
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535, description="0 picks a free port.")
    port_file: str | None = Field(default=None, description="Write the bound port here.")
    default_deadline_s: float = Field(default=120.0, gt=0)
    max_deadline_s: float = Field(default=1800.0, gt=0)
    deadline_margin_s: float = Field(
        default=0.3, ge=0, description="Answer this long (at most a tenth of the budget) before "
        "the client's deadline, so it gets our status and not its own bare DEADLINE_EXCEEDED.")
    api_keys: dict[str, str] = Field(
        default_factory=dict, description="API key -> tenant, as JSON; every scope. Calls need "
        "a key once this is set or the registry has any API key."
    )
    registry_refresh_s: float = Field(default=2.0, gt=0)
    registry_api_key: str = Field(
        default="", description="API key sent to a grpc:// registry (any scope; give gateways "
        "an 'inference' key). Not used with a database URL.")
    worker_liveness_s: float = Field(
        default=5.0, gt=0, description="A worker whose last heartbeat is older is dead: its "
        "requests are re-run elsewhere. Several heartbeat intervals (FLEET_HEARTBEAT_INTERVAL_S).")
    lease_check_s: float = Field(default=0.5, gt=0, description="How often the gateway checks "
                                 "that the workers of its requests in flight are alive.")
    result_retention_s: int = Field(
        default=3600, ge=1, description="How long a finished request's result stays readable "
        "under its id (a retry with the same id gets it); at most the workers' "
        "FLEET_STREAM_TTL_S.")
    admission_control: bool = Field(
        default=True, description="Refuse a request at once (RESOURCE_EXHAUSTED with a retry "
        "delay) when its version's queue is at its bound, or when its estimated queue wait and "
        "service would outlast its deadline.")
    admission_queue_factor: float = Field(
        default=2.0, ge=0, description="Requests that may wait in a queue beyond those running, "
        "in batches of its live workers' total capacity (their FLEET_CAPACITY): the bound on "
        "waiting + running is capacity x (1 + factor).")
    admission_queue_bounds: dict[str, int] = Field(
        default_factory=dict, description="Queue name -> fixed bound on its waiting + running "
        "requests, as JSON; wins over FLEET_ADMISSION_QUEUE_FACTOR for that queue.")
    admission_refresh_s: float = Field(
        default=0.25, gt=0, description="How long the gateway reuses a queue's depth and its "
        "workers' capacity and load before reading them again (one Redis round trip).")
    redis_max_connections: int = 2048
    redis_socket_timeout_s: float = Field(default=10.0, gt=1.0, description="Must exceed the "
                                          "stream read block (1 s).")
    redis_socket_connect_timeout_s: float = Field(
        default=1.0, gt=0, description="How long a call waits to connect to Redis, so a "
        "partitioned Redis cannot hold calls for the socket timeout (redis-py would use it).")
    redis_probe_interval_s: float = Field(
        default=0.25, gt=0, description="How often the gateway PINGs Redis. From a failure until "
        "a PING succeeds, new calls are refused with UNAVAILABLE without touching Redis.")
    redis_probe_timeout_s: float = Field(
        default=0.5, gt=0, description="A PING that takes longer counts as Redis being down.")
    quota_lease_ttl_s: float = Field(
        default=30.0, ge=1.0, description="A request's slot of its tenant's max_concurrent "
        "lapses this long after its gateway last renewed it (every third of it): how long the "
        "requests of a gateway that crashed keep counting.")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus /metrics on this port "
        "(0 picks one); off when unset.")
    metrics_host: str = "0.0.0.0"
    autoscale_interval_s: float = Field(
        default=2.0, gt=0, description="How often the autoscaling gauges (fleet_desired_workers "
        "and the rest) are refreshed, with /metrics on.")
    wait_for_workers: bool = Field(
        default=False, description="Queue requests for a version with no live worker (scale "
        "from zero: the autoscaler starts one on fleet_desired_workers) instead of refusing "
        "them with UNAVAILABLE; each waits at most its deadline.")
    autoscale_default_capacity: int = Field(
        default=8, ge=1, description="Requests per worker assumed for fleet_desired_workers "
        "while a queue has no live worker to say (scale from zero).")
    usage_accounting: bool = Field(
        default=True, description="Count each tenant's requests, tokens and refusals per model "
        "version and UTC day into the Redis stream fleet:usage, which the registry stores "
        "(fleet usage).")
    usage_flush_s: float = Field(
        default=1.0, gt=0, description="How often the gateway writes the usage it counted; a "
        "gateway that crashes loses at most this long's counts.")
    usage_stream_max_len: int = Field(
        default=100_000, ge=1000, description="Bound on the entries of fleet:usage (about one "
        "per gateway and flush with traffic), so a registry that does not consume it cannot "
        "fill Redis; the oldest unconsumed entries go first.")
    jobs_database_url: str = Field(
        default="", description="The database of batch jobs (JobService): the registry's "
        "database, whose migration 0006 made the job tables; a gateway needs rights on those "
        "tables only. Empty: JobService is not served (UNIMPLEMENTED).")
    job_window: int = Field(
        default=2, ge=1, description="Items of one job in the queues or generating at a time, "
        "so a large batch leaves workers' slots to interactive callers (docs/benchmarks/"
        "jobs.md: 2 of a worker's 8 slots kept interactive TTFT p50 within 1.02x; 8 of 8 made "
        "it 1.51x).")
    job_max_in_flight: int = Field(default=64, ge=1, description="Job items this gateway runs "
                                   "at a time, over all jobs.")
    job_lease_s: float = Field(
        default=60.0, ge=3, description="An item this gateway runs is leased for this long and "
        "renewed every third of it; when a gateway dies its items run again elsewhere once "
        "their lease lapses (under the same request id, so a finished generation is reused).")
    job_poll_s: float = Field(default=0.5, gt=0, description="How often the gateway looks for "
                              "job items to run, cancelled jobs and expired ones.")
    job_item_max_attempts: int = Field(
        default=5, ge=1, description="Runs of one item that end UNAVAILABLE or RESOURCE_EXHAUSTED "
        "before the item fails with that status.")
    job_result_retention_s: int = Field(default=7 * 24 * 3600, ge=60, description="How long an "
                                        "ended job and its results are kept.")
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts (as JSON) a job's webhook_url may name although "
        "they resolve to loopback, private or link-local addresses, and with http:// (a "
        "sidecar, tests); every other webhook URL must be https to a public address.")
    limits: Limits = Field(default_factory=Limits)
    log_level: str = "INFO"
    log_format: LogFormat = Field(default="text", description="text, or json: one JSON object "
                                  "per line with request id, tenant, trace and span ids.")
