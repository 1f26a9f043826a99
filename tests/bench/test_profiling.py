"""Summaries of py-spy's folded stacks."""

from __future__ import annotations

from pathlib import Path

from bench.profiling import package_of, summarize

_GATEWAY = ("thread (11): MainThread;<module> (gateway/__main__.py:40);"
            "_run_once (asyncio/base_events.py:1922)")
_PUBLISH = ("thread (12): publish_0;_bootstrap (threading.py:1002);"
            "_worker (concurrent/futures/thread.py:83)")
FOLDED = "\n".join([
    f"{_GATEWAY};xread (redis/asyncio/client.py:100);encode (json/encoder.py:200) 6",
    f"{_GATEWAY};handle (gateway/servicer.py:10) 2",
    f"{_PUBLISH};send_task (celery/app/base.py:700);publish (kombu/messaging.py:200) 2",
]) + "\n"


def test_summary_counts_threads_functions_and_packages(tmp_path: Path) -> None:
    path = tmp_path / "x.folded.txt"
    path.write_text(FOLDED)
    s = summarize(path)
    assert s["samples"] == 10
    assert {t["name"]: t["samples"] for t in s["threads"]} == {"MainThread": 8, "publish": 2}
    assert s["self"][0] == {"name": "encode (json/encoder.py)", "samples": 6, "share": 0.6}
    inclusive = {x["name"]: x["samples"] for x in s["inclusive"]}
    assert inclusive["<module> (gateway/__main__.py)"] == 8
    assert inclusive["send_task (celery/app/base.py)"] == 2
    packages = {x["name"]: x["samples"] for x in s["packages"]}
    assert packages == {"json": 6, "fleet gateway": 2, "kombu (Celery transport)": 2}


def test_most_specific_package_wins() -> None:
    assert package_of("grpc/_cython/cygrpc.pyx") == "grpc aio (cython)"
    assert package_of("grpc/aio/_call.py") == "grpc (python layer)"
    assert package_of("somewhere/else.py") is None
