from __future__ import annotations

from pathlib import Path

import pytest

from sage.unified.agent.telemetry.engine_metrics import parse_engine_load
from sage.unified.sdk.models import EngineLoad

FIXTURES = Path(__file__).parent / "fixtures"


def test_vllm_fixture_sums_counts_and_takes_max_kv() -> None:
    text = (FIXTURES / "vllm_metrics.txt").read_text()
    load = parse_engine_load(text, now=123.0)
    # Two engine cores (data parallel): counts add up, KV usage is the fuller core.
    assert load == EngineLoad(running=5, waiting=5, kv_cache_usage=0.625, updated_at=123.0)


def test_vllm_deprecated_gpu_cache_name_and_preference() -> None:
    old = 'vllm:num_requests_running{model_name="m"} 1\nvllm:gpu_cache_usage_perc{model_name="m"} 0.5\n'
    assert parse_engine_load(old, now=0).kv_cache_usage == 0.5
    both = old + 'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
    assert parse_engine_load(both, now=0).kv_cache_usage == 0.1


def test_sglang_fixture() -> None:
    text = (FIXTURES / "sglang_metrics.txt").read_text()
    load = parse_engine_load(text, flavor="sglang", now=5.0)
    assert load == EngineLoad(running=5, waiting=2, kv_cache_usage=0.28, updated_at=5.0)
    # The vLLM names are not in an SGLang exposition.
    assert parse_engine_load(text, flavor="vllm", now=5.0) == EngineLoad(updated_at=5.0)


def test_missing_metric_is_none_not_zero() -> None:
    text = '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine="0"} 0.0\n'
    assert parse_engine_load(text, now=1) == EngineLoad(
        running=0, waiting=None, kv_cache_usage=None, updated_at=1
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html><body>502 Bad Gateway</body></html>",
        '{"error": "not found"}',
        'vllm:num_requests_running{engine="0"} NaN\nvllm:num_requests_waiting oops\n',
        "\x00\xff garbage \n\n",
    ],
)
def test_garbage_gives_unknowns(text: str) -> None:
    assert parse_engine_load(text, now=2.0) == EngineLoad(updated_at=2.0)


def test_exact_names_labels_with_braces_and_timestamps() -> None:
    text = (
        "vllm:num_requests_running_total 99\n"  # a different metric with the same prefix
        "# vllm:num_requests_running 50\n"  # a comment
        'vllm:num_requests_running{model_name="we}ird name",engine="0"} 2 1700000000000\n'
        "vllm:num_requests_running 1\n"
        'vllm:num_requests_waiting{engine="0"} +Inf\n'
    )
    load = parse_engine_load(text, now=0)
    assert load.running == 3
    assert load.waiting is None
