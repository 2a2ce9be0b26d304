"""Config parsing, metrics rendering, run-time settings and the scheduler."""

from __future__ import annotations

import asyncio

import pytest

import sage.unified.agent.simulator as simulator
from sage.unified.agent.simulator import SimulatorConfig, parse_args
from sage.unified.agent.simulator._engine import RuntimeSettings, Scheduler
from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._http import chunk, response
from sage.unified.agent.simulator._kvcache import PrefixCache
from sage.unified.agent.simulator._metrics import EngineMetrics
from sage.unified.agent.simulator._timing import PrefillQueue


def test_public_names() -> None:
    assert set(simulator.__all__) == {
        "RequestError",
        "SimulatorConfig",
        "SimulatorError",
        "build_parser",
        "main",
        "parse_args",
        "run",
    }


def test_parse_args_defaults_and_flags() -> None:
    cfg = parse_args(["--model", "m"])
    assert cfg == SimulatorConfig(model="m")
    assert (cfg.host, cfg.port, cfg.kind, cfg.max_num_seqs, cfg.output_tokens) == (
        "127.0.0.1",
        8000,
        "llm",
        256,
        16,
    )
    assert cfg.served_name == "m"
    assert cfg.keep_alive_timeout == 5.0
    assert cfg.crash_after is None
    assert (cfg.kv_blocks, cfg.block_size, cfg.prefill_tokens_per_s) == (2000, 16, 0.0)
    assert not cfg.enable_prompt_tokens_details
    assert cfg.kv_events is None
    cfg = parse_args(
        [
            "--model",
            "m",
            "--served-model-name",
            "s",
            "--kind",
            "embedding",
            "--ttft-ms",
            "5",
            "--itl-ms",
            "1",
            "--crash-after",
            "3",
            "--failure-rate",
            "0.5",
            "--unhealthy",
            "--enable-control",
            "--spawn-child",
            "--ignore-sigterm",
            "--seed",
            "7",
            "--kv-blocks",
            "300",
            "--block-size",
            "32",
            "--prefill-tokens-per-s",
            "5000",
            "--enable-prompt-tokens-details",
            "--kv-events-config",
            '{"enable_kv_cache_events": true, "endpoint": "tcp://*:5557", "topic": "kv"}',
        ]
    )
    assert cfg.served_name == "s"
    assert cfg.kind == "embedding"
    assert cfg.crash_after == 3
    assert cfg.unhealthy
    assert cfg.enable_control
    assert cfg.spawn_child
    assert cfg.ignore_sigterm
    assert cfg.seed == 7
    assert (cfg.kv_blocks, cfg.block_size, cfg.prefill_tokens_per_s) == (300, 32, 5000.0)
    assert cfg.enable_prompt_tokens_details
    events = cfg.kv_events
    assert events is not None
    assert (events.publishes, events.binds, events.topic) == (True, True, "kv")
    for kind in ("classify", "rerank", "transcription"):
        assert parse_args(["--model", "m", "--kind", kind]).kind == kind


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--model", "m", "--kind", "x"],
        ["--model", "m", "--failure-rate", "2"],
        ["--model", "m", "--max-num-seqs", "0"],
        ["--model", "m", "--kv-blocks", "0"],
        ["--model", "m", "--prefill-tokens-per-s", "-1"],
        # The cache must hold one max_model_len sequence, as vLLM checks at start-up.
        ["--model", "m", "--kv-blocks", "10", "--max-model-len", "4096"],
        ["--model", "m", "--kv-events-config", "{not json"],
        ["--model", "m", "--kv-events-config", '{"enable_kv_cache_events": true, "x": 1}'],
    ],
)
def test_parse_args_rejects(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2


def test_metrics_render_names_labels_and_histograms() -> None:
    m = EngineMetrics('we"ird')
    m.record_finished(prompt_tokens=3, generation_tokens=5, reason="length", ttft_s=0.03, e2e_s=0.9)
    text = m.render(
        running=2,
        waiting=1,
        kv_cache_usage=0.5,
        prefix_cache_queries=40,
        prefix_cache_hits=32,
        num_gpu_blocks=100,
        block_size=16,
    ).decode()
    lab = 'engine="0",model_name="we\\"ird"'
    assert f"vllm:num_requests_running{{{lab}}} 2.0" in text
    assert f"vllm:num_requests_waiting{{{lab}}} 1.0" in text
    assert f"vllm:kv_cache_usage_perc{{{lab}}} 0.5" in text
    assert f"vllm:gpu_cache_usage_perc{{{lab}}} 0.5" in text
    assert f"vllm:prompt_tokens_total{{{lab}}} 3.0" in text
    assert f"vllm:generation_tokens_total{{{lab}}} 5.0" in text
    assert f"vllm:prefix_cache_queries_total{{{lab}}} 40.0" in text
    assert f"vllm:prefix_cache_hits_total{{{lab}}} 32.0" in text
    assert "# TYPE vllm:prefix_cache_hits_total counter" in text
    assert 'vllm:cache_config_info{block_size="16",' in text
    assert 'num_gpu_blocks="100"} 1.0' in text
    assert f'vllm:request_success_total{{{lab},finished_reason="length"}} 1.0' in text
    assert f'vllm:time_to_first_token_seconds_bucket{{{lab},le="0.02"}} 0.0' in text
    assert f'vllm:time_to_first_token_seconds_bucket{{{lab},le="0.04"}} 1.0' in text
    assert f'vllm:time_to_first_token_seconds_bucket{{{lab},le="+Inf"}} 1.0' in text
    assert f"vllm:e2e_request_latency_seconds_sum{{{lab}}} 0.9" in text
    assert f"vllm:e2e_request_latency_seconds_count{{{lab}}} 1.0" in text
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text


def test_runtime_settings_update_is_all_or_nothing() -> None:
    s = RuntimeSettings.from_config(SimulatorConfig(model="m", unhealthy=True))
    assert (s.healthy, s.instant) == (False, True)
    s.update({"healthy": True, "ttft_ms": 5, "crash_after": 2})
    assert (s.healthy, s.ttft_ms, s.crash_after, s.instant) == (True, 5.0, 2, False)
    s.update({"ttft_ms": 0, "prefill_tokens_per_s": 100})
    assert (s.prefill_tokens_per_s, s.instant) == (100.0, False)
    for bad in (
        {"hang_rate": 1.5},
        {"healthy": "yes"},
        {"nope": 1},
        {"output_tokens": 0},
        {"ttft_ms": -1},
        {"prefill_tokens_per_s": -5},
    ):
        with pytest.raises(BadRequestError):
            s.update({"itl_ms": 9, **bad})
        assert s.itl_ms == 0.0


def test_http_framing() -> None:
    raw = response(404, b"{}", request_id=b"r1", keep_alive=False)
    assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"content-length: 2\r\n" in raw
    assert b"x-request-id: r1\r\n" in raw
    assert b"connection: close\r\n" in raw
    assert raw.endswith(b"\r\n\r\n{}")
    assert chunk(b"abc") == b"3\r\nabc\r\n"


def test_scheduler_fifo_and_cancellation() -> None:
    async def scenario() -> None:
        sched = Scheduler(1, PrefixCache(8, 4))
        assert sched.try_admit(()) is not None
        assert sched.try_admit(()) is None
        order: list[str] = []

        async def waiter(name: str) -> None:
            await sched.admit(())
            order.append(name)

        a = asyncio.create_task(waiter("a"))
        b = asyncio.create_task(waiter("b"))
        c = asyncio.create_task(waiter("c"))
        await asyncio.sleep(0)
        assert (sched.running, sched.waiting) == (1, 3)
        b.cancel()  # a client left while queued: it leaves the queue at once
        await asyncio.sleep(0)
        assert sched.waiting == 2
        sched.finish([], None)  # the slot goes to the oldest waiter
        await asyncio.sleep(0)
        assert order == ["a"]
        assert (sched.running, sched.waiting) == (1, 1)
        sched.finish([], None)
        c.cancel()  # admitted, cancelled before it ran: the slot comes back
        await asyncio.gather(a, b, c, return_exceptions=True)
        assert (sched.running, sched.waiting) == (0, 0)
        assert sched.try_admit(()) is not None

    asyncio.run(scenario())


def test_scheduler_waits_for_kv_blocks_in_fifo_order() -> None:
    async def scenario() -> None:
        cache = PrefixCache(4, 4)
        sched = Scheduler(10, cache)
        big = [([1, 2, 3], 12)]  # 3 of the 4 blocks
        first = sched.try_admit(big)
        assert first is not None
        assert cache.usage == 0.75
        assert not sched.fits_ever([([1], 20)])  # 5 blocks: never, so never queued
        order: list[str] = []

        async def waiter(name: str, needs: list[tuple[list[int], int]]) -> None:
            seqs = await sched.admit(needs)
            order.append(name)
            sched.finish(seqs, None)

        head = asyncio.create_task(waiter("big", [([9, 9, 9], 12)]))
        small = asyncio.create_task(waiter("small", [([5], 2)]))
        await asyncio.sleep(0)
        # One block is free, but the head needs three: the small one waits behind it.
        assert (sched.running, sched.waiting, order) == (1, 2, [])
        sched.finish(first, None)
        await asyncio.gather(head, small)
        assert order == ["big", "small"]
        assert (sched.running, sched.waiting, cache.usage) == (0, 0, 0.0)

    asyncio.run(scenario())


def test_prefill_queue_serializes_prefill_work() -> None:
    queue = PrefillQueue()
    assert queue.schedule(10.0, 500, 0.0) == 10.0  # rate 0: prefill is free
    assert queue.schedule(10.0, 1000, 1000.0) == 11.0
    assert queue.schedule(10.5, 500, 1000.0) == 11.5  # waits behind the first
    assert queue.schedule(20.0, 100, 1000.0) == pytest.approx(20.1)  # idle again
