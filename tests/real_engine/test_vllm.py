"""The gateway runs a REAL vLLM end to end (CPU build, tiny model, dummy weights).

Opt-in: ``make test-vllm`` (docs/real-vllm.md). Skipped with a reason when
``SAGE_VLLM_PYTHON`` is unset or cannot import vllm.

One engine serves every test in this file, in order: the start (by the model's
absolute path, through the CLI; through the embedded agent's API while the
coordinator refuses vllm on a host without GPUs, see docs/real-vllm.md), traffic through the gateway with the ``openai`` SDK, load read from vLLM's
``/metrics``, a killed ``EngineCore`` restarted by the agent, and finally a drained
stop that leaves no process of the tree behind.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

pytestmark = pytest.mark.real_engine

SERVED_NAME = "tiny"
EXTRA_ARGS = ("--load-format", "dummy", "--dtype", "float32", "--max-num-seqs", "4")
"""What the gateway's ``SAGE_AGENT_VLLM_EXTRA_ARGS`` says (tests/real_engine/conftest.py)."""
RESTART_TIMEOUT_S = 600.0


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} {proc.name()} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            out.append(f"{proc.pid} (gone)")
    return out


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def _engine_core(api_server_pid: int) -> psutil.Process:
    for child in psutil.Process(api_server_pid).children(recursive=True):
        try:
            text = child.name() + " " + " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "EngineCore" in text:
            return child
    raise AssertionError(
        f"no EngineCore under pid {api_server_pid}: {_describe(_tree(api_server_pid))}"
    )


@pytest.fixture
def client(gateway: Any) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", timeout=120) as sdk:
        yield sdk


def expected_argv(vllm_python: Path, model_path: Path, port: int) -> list[str]:
    """The API server's argv as the agent builds it from its settings alone.

    ``SAGE_AGENT_VLLM_EXECUTABLE`` + ``SAGE_AGENT_VLLM_ENTRYPOINT=api_server``, the
    flags from the launch spec, then ``SAGE_AGENT_VLLM_EXTRA_ARGS`` last.
    """
    return [
        str(vllm_python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        SERVED_NAME,
        "--tensor-parallel-size",
        "1",
        "--max-model-len",
        "256",
        "--enable-prompt-tokens-details",
        "--shutdown-timeout",
        "300",
        *EXTRA_ARGS,
    ]


def test_the_real_engine_starts_with_the_verified_argv_and_env(
    gateway: Any, engine: Any, vllm_python: Path
) -> None:
    info = gateway.engines()[engine.id]
    assert info["state"] == "READY"
    assert info["runtime"] == "vllm"
    assert info["model"] == SERVED_NAME
    assert info["gpu_ids"] == []  # SAGE_AGENT_VLLM_DEVICE=cpu: no GPU assigned
    assert engine.model_path.is_absolute()
    assert info["spec"]["model"] == str(engine.model_path)
    api_server = psutil.Process(info["pid"])
    argv = api_server.cmdline()
    print(f"\n[real-vllm] argv: {shlex.join(argv)}")
    print(f"[real-vllm] tree: {_describe(_tree(info['pid']))}")
    # The agent's argv, verbatim: the pid it supervises is vLLM's API server itself.
    assert argv == expected_argv(vllm_python, engine.model_path, info["port"])
    env = api_server.environ()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_CPU_KVCACHE_SPACE"):
        assert env.get(name) == "1", name
    assert env.get("VLLM_NO_USAGE_STATS") == "1"
    assert env.get("DO_NOT_TRACK") == "1"  # set by the agent's launch plan
    # No GPU pinning on a CPU host (the gateway's own environment has no CUDA_*).
    assert not [name for name in env if name.startswith("CUDA_")], env
    assert "SAGE_REAL_ENGINE_TEST_TOKEN" not in env  # secrets stay with the agent
    version = httpx.get(f"{info['url']}/version", timeout=10).json()["version"]
    assert version == "0.32.0"  # the real engine answers, not something else on the port
    assert any("EngineCore" in line for line in _describe(_tree(info["pid"])))
    print(f"[real-vllm] vLLM {version}; startup {engine.startup_s:.1f} s")
    rss = sum(p.memory_info().rss for p in _alive(_tree(info["pid"])))
    print(f"[real-vllm] tree RSS {rss / 2**20:.0f} MiB")


def test_models_lists_the_engine(gateway: Any, engine: Any, client: openai.OpenAI) -> None:
    assert SERVED_NAME in {model.id for model in client.models.list()}


def test_chat_completion_through_the_gateway(
    gateway: Any, engine: Any, client: openai.OpenAI
) -> None:
    reply = client.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.model == SERVED_NAME
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content is not None
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert 1 <= reply.usage.completion_tokens <= 8


def test_streaming_chat_arrives_in_chunks_and_ends_with_done(
    gateway: Any, engine: Any, client: openai.OpenAI
) -> None:
    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "tell me something"}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # vLLM extension: exactly max_tokens tokens
    }
    reads = 0
    buffer = b""
    with (
        httpx.Client(timeout=120) as raw,
        raw.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for piece in response.iter_raw():
            reads += 1
            buffer += piece
    events = [
        line[len("data: ") :] for line in buffer.decode().split("\n") if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    with_choices = [c for c in chunks if c["choices"]]
    # Dummy weights emit random bytes and vLLM holds back a token that ends inside
    # a UTF-8 sequence, so there is not exactly one chunk per token; many, though.
    assert len(with_choices) >= 6, events
    assert with_choices[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 24
    # Forwarded as it came, not as one buffered body.
    assert reads > 1

    stream = client.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    received = list(stream)
    assert len([c for c in received if c.choices]) >= 2
    assert received[-1].usage is not None
    assert received[-1].usage.completion_tokens == 6
    assert stream.response.headers.get("x-sage-backend") == engine.id


def test_completions_through_the_gateway(gateway: Any, engine: Any, client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=SERVED_NAME, prompt="the quick brown", max_tokens=5, temperature=0
    )
    assert reply.choices[0].text is not None
    assert reply.usage is not None
    assert reply.usage.completion_tokens >= 1


def test_agent_reads_load_from_the_real_metrics(gateway: Any, engine: Any) -> None:
    def load() -> dict[str, Any]:
        loaded: dict[str, Any] = gateway.engines()[engine.id]["load"]
        return loaded

    deadline = time.monotonic() + 60
    while load()["running"] is None and time.monotonic() < deadline:
        time.sleep(1)
    current = load()
    assert current["running"] is not None, current
    assert current["waiting"] is not None, current
    assert current["kv_cache_usage"] is not None, current
    assert current["updated_at"] is not None
    text = httpx.get(f"{engine.info['url']}/metrics", timeout=10).text
    assert "vllm:num_requests_running" in text


def test_killing_engine_core_makes_the_agent_restart_the_engine(
    gateway: Any, engine: Any, client: openai.OpenAI, vllm_python: Path
) -> None:
    before = gateway.engine(engine.id)
    old_tree = _tree(before["pid"])
    core = _engine_core(before["pid"])
    print(f"\n[real-vllm] killing {core.pid} {core.name()} (tree {_describe(old_tree)})")
    os.kill(core.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    seen: list[str] = []
    current = before
    deadline = killed_at + RESTART_TIMEOUT_S
    while time.monotonic() < deadline:
        current = gateway.engine(engine.id)
        if not seen or seen[-1] != current["state"]:
            seen.append(current["state"])
            print(f"[real-vllm] {current['state']}: {current['reason'][:300]}")
        if current["state"] == "READY" and current["incarnation"] > before["incarnation"]:
            break
        time.sleep(0.25)
    restarted_after = time.monotonic() - killed_at
    print(f"[real-vllm] states after the kill: {seen}; READY again after {restarted_after:.1f} s")
    assert "ERROR" in seen, (seen, current["reason"])
    assert current["state"] == "READY", (seen, current, gateway.engine_log(engine.id))
    assert current["incarnation"] == before["incarnation"] + 1
    assert current["restarts"] == before["restarts"] + 1
    assert current["pid"] != before["pid"]
    # Same launch again, on the same port (the agent keeps it across restarts).
    assert current["port"] == before["port"]
    assert psutil.Process(current["pid"]).cmdline() == expected_argv(
        vllm_python, engine.model_path, before["port"]
    )
    # The whole old incarnation is gone: no orphaned API server or worker.
    assert _alive(old_tree) == [], _describe(_alive(old_tree))
    reply = client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "again"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None


def test_drained_stop_ends_the_whole_process_tree(gateway: Any, engine: Any) -> None:
    info = gateway.engine(engine.id)
    tree = _tree(info["pid"])
    names = _describe(tree)
    print(f"\n[real-vllm] tree before stop: {names}")
    assert any("EngineCore" in line for line in names), names
    started = time.monotonic()
    result = gateway.cli("llm", "engine", "stop", engine.id, "--drain", timeout=300)
    took = time.monotonic() - started
    print(f"[real-vllm] drained stop took {took:.1f} s")
    assert result.stdout.strip() == f"{engine.id} STOPPED"
    assert gateway.engines()[engine.id]["state"] == "STOPPED"
    _, alive = psutil.wait_procs(_alive(tree), timeout=10)
    assert alive == [], _describe(alive)
    assert SERVED_NAME not in {
        m["id"] for m in httpx.get(f"{gateway.url}/v1/models", timeout=10).json()["data"]
    }
