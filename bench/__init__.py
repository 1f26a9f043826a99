"""Benchmark of the fleet against vLLM alone and vLLM's own OpenAI server.

`python -m bench run ...` runs, one after another on the same machine, model and workload:

- ``vllm``: vLLM's ``AsyncLLM`` in the client's own process (no server at all);
- ``vllm-server``: ``python -m vllm.entrypoints.openai.api_server`` driven over HTTP/SSE;
- ``fleet``: gateway -> Redis/Celery -> one worker, driven over gRPC ``StreamComplete``;

then the gateway alone (admission rate with no worker consuming). It writes a JSON file, a
Markdown report with the ratios and PNG plots. See ``docs/benchmarks/README.md``.

Modules: ``settings`` (typed settings), ``workload`` (seeded prompts of an exact token length),
``records`` (one request's timings), ``backends/*`` (one module per backend, one async
interface), ``load`` (closed and open loops), ``metrics`` (vLLM's serve.py definitions),
``runner`` (the client process of one backend), ``admission`` (gateway alone),
``cpu``/``profiling`` (per-process CPU time, py-spy), ``report``/``plots``, ``cli``.
"""
