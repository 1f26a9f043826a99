"""vLLM alone: `AsyncLLM` in this very process (no server), fed token ids.

vLLM starts its engine core in a child process, so this backend only runs in a process whose
main module is guarded by `if __name__ == "__main__":` (the runner, `python -m bench.runner`).
The engine gets the same arguments as the fleet's worker builds (workers/engine.py):
dtype, max_model_len, TP size, enforce_eager, seed, stats logging off, DELTA outputs.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
from typing import Any

from bench.records import ChunkClock, RequestRecord
from bench.workload import Prompt


class VllmEngineBackend:
    name = "vllm"

    def __init__(self, *, model_dir: str, dtype: str, max_model_len: int,
                 tensor_parallel_size: int, enforce_eager: bool, seed: int,
                 request_timeout_s: float = 600.0, stop_token_ids: list[int] | None = None
                 ) -> None:
        self._args = dict(model=model_dir, tokenizer=model_dir, dtype=dtype,
                          max_model_len=max_model_len,
                          tensor_parallel_size=tensor_parallel_size,
                          enforce_eager=enforce_eager, seed=seed, disable_log_stats=True)
        self._timeout = request_timeout_s
        #: Only for screening prompts: stop where the fleet would (EOS is otherwise ignored).
        self._stop = list(stop_token_ids or []) or None
        self._llm: Any = None
        self._ids = itertools.count()

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**self._args))
        await self._llm.check_health()

    async def verify(self, prompts: list[Prompt]) -> dict[str, Any]:
        return {"checked": 0, "how": "token ids are given to the engine as they are"}

    async def run_request(self, prompt: Prompt, output_len: int) -> RequestRecord:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True,
                                stop_token_ids=self._stop, output_kind=RequestOutputKind.DELTA)
        request_id = f"bench-{prompt.index}-{next(self._ids)}"
        clock = ChunkClock(prompt.index, len(prompt.token_ids))
        finish = ""
        try:
            async with asyncio.timeout(self._timeout):
                async for output in self._llm.generate(
                        TokensPrompt(prompt_token_ids=list(prompt.token_ids)), params,
                        request_id):
                    choice = output.outputs[0]
                    clock.chunk(len(choice.token_ids))
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except Exception as exc:  # noqa: BLE001 - recorded as a failed request
            await self._llm.abort(request_id)
            return clock.finish(error=f"{type(exc).__name__}: {exc}")
        return clock.finish(finish_reason=finish)

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
            gc.collect()
