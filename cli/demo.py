"""``make demo``: start the system on loopback with simulated engines and use it.

Starts the gateway (embedded coordinator + local agent) with ``sage gateway start``,
starts a simulated chat engine and a simulated embedding engine with
``sage llm engine start … --runtime simulated --wait``, then sends a chat, a streamed
chat and an embedding through the gateway with ``UnifiedInferenceClient`` and prints
what came back. Everything stays running for you to explore; ``make demo-stop``
(``python -m sage.unified.cli.demo --stop``) stops it all.

Run it with ``SAGE_HOME`` set (the Makefile uses ``./.sage-demo``) so it touches
nothing else. Ports: the gateway's 8000, the agent's 8200 and engines from 8900, or
free ports nearby when those are taken.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

__all__ = ["main"]

CHAT_MODEL = "demo-chat"
EMBED_MODEL = "demo-embed"


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick(preferred: int) -> int:
    for port in range(preferred, preferred + 50):
        if _free(port):
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _sage(*args: str, env: dict[str, str] | None = None) -> str:
    command = [sys.executable, "-m", "sage.unified.cli", *args]
    print(f"$ sage {' '.join(args)}", flush=True)
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    output = (result.stdout + result.stderr).strip()
    if output:
        print("  " + output.replace("\n", "\n  "), flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo: `sage {' '.join(args)}` failed (exit {result.returncode})")
    return result.stdout.strip()


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def start() -> int:
    home = os.environ.get("SAGE_HOME", "~/.sage")
    _section(f"Starting the gateway (SAGE_HOME={home})")
    gateway_port = _pick(8000)
    agent_port = _pick(8200)
    env = {"SAGE_GATEWAY_AGENT_PORT": str(agent_port)}
    os.environ.update(env)
    url = f"http://127.0.0.1:{gateway_port}"
    os.environ["SAGE_GATEWAY_URL"] = url
    _sage("gateway", "start", "--port", str(gateway_port))

    _section("Starting two simulated engines through the gateway")
    _sage("llm", "engine", "start", CHAT_MODEL, "--runtime", "simulated", "--wait")
    _sage(
        "llm",
        "engine",
        "start",
        EMBED_MODEL,
        "--runtime",
        "simulated",
        "--kind",
        "embedding",
        "--wait",
    )
    _sage("llm", "engine", "list")

    from sage.unified.sdk.client import UnifiedInferenceClient

    with UnifiedInferenceClient(gateway_urls=url) as client:
        _section("Chat (POST /v1/chat/completions)")
        messages = [{"role": "user", "content": "Say hello to the SAGE gateway."}]
        result = client.chat(messages, model=CHAT_MODEL, max_tokens=12, temperature=0)
        print(f"model={result.model} finish_reason={result.finish_reason}")
        print(f"answer: {result.text}")
        if result.usage is not None:
            print(
                f"usage: {result.usage.prompt_tokens} prompt + {result.usage.completion_tokens} completion tokens"
            )

        _section("Streamed chat (stream=true, tokens printed as they arrive)")
        started = time.monotonic()
        with client.chat(messages, model=CHAT_MODEL, stream=True, max_tokens=16) as stream:
            print("answer: ", end="", flush=True)
            for delta in stream:
                print(delta, end="", flush=True)
            print()
            print(f"finish_reason={stream.finish_reason} in {time.monotonic() - started:.2f} s")

        _section("Embedding (POST /v1/embeddings)")
        embedded = client.embed(
            ["SAGE unified gateway", "one endpoint, many engines"], model=EMBED_MODEL
        )
        for text, vector in zip(
            ["SAGE unified gateway", "one endpoint, many engines"], embedded.vectors, strict=True
        ):
            head = ", ".join(f"{v:+.3f}" for v in vector[:4])
            print(f"{text!r}: {len(vector)} dims [{head}, ...]")

    _section("The system is running")
    print(f"Gateway (OpenAI endpoint): {url}/v1")
    print(f"Try: curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\")
    print(
        f'       -d \'{{"model": "{CHAT_MODEL}", "messages": [{{"role": "user", "content": "hi"}}]}}\''
    )
    print(f"     SAGE_HOME={home} SAGE_GATEWAY_URL={url} .venv/bin/sage gateway status")
    print(f"     SAGE_HOME={home} SAGE_GATEWAY_URL={url} .venv/bin/sage llm engine list")
    print(f"Open the web console: SAGE_HOME={home} .venv/bin/sage studio start")
    print("Stop everything with: make demo-stop")
    return 0


def stop() -> int:
    _section("Stopping the demo")
    _sage("gateway", "stop")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--stop" in args:
        return stop()
    try:
        return start()
    except BaseException:
        print("\nThe demo failed; stopping what it started.", file=sys.stderr)
        stop()
        raise


if __name__ == "__main__":
    sys.exit(main())
