"""``make demo``: start the system on loopback with simulated engines and use it.

Starts the gateway (embedded coordinator + local agent) with ``sage gateway start``,
starts a simulated chat engine and a simulated embedding engine with
``sage llm engine start … --runtime simulated --wait``, then sends a chat, a streamed
chat and an embedding through the gateway with ``UnifiedInferenceClient`` and prints
what came back. Everything stays running for you to explore; ``make demo-stop``
(``python -m sage.unified.cli.demo --stop``) stops it all.

Run it with ``SAGE_HOME`` set (the Makefile uses ``./.sage-demo``) so it touches
nothing else. Ports: the gateway's 8000, the agent's 8200 (``SAGE_GATEWAY_PORT`` and
``SAGE_GATEWAY_AGENT_PORT`` choose others) and engines from 8900, or free ports nearby
when another process listens there. A port a stopped process left in ``TIME_WAIT`` is
free, as it is for the gateway itself (``SO_REUSEADDR``).

Running it again is safe: it reuses the gateway this ``SAGE_HOME`` runs and the demo
engines already there, and on failure stops only what this run started.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from sage.unified.cli._daemon import DaemonFiles, running_record
from sage.unified.sdk.ports import can_listen

__all__ = ["main", "pick_port"]

CHAT_MODEL = "demo-chat"
EMBED_MODEL = "demo-embed"
_LIVE_STATES = {"STARTING", "READY"}


def pick_port(preferred: int) -> int:
    """``preferred`` when a server can listen there, else the next such port (or any)."""
    for port in range(preferred, preferred + 50):
        if can_listen("127.0.0.1", port):
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _preferred(variable: str, default: int) -> int:
    value = os.environ.get(variable, "")
    return int(value) if value.isascii() and value.isdigit() else default


def _sage(*args: str, quiet: bool = False) -> str:
    """Run ``sage args``, echoing the command and (unless ``quiet``) its output."""
    command = [sys.executable, "-m", "sage.unified.cli", *args]
    print(f"$ sage {' '.join(args)}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    output = (result.stderr if quiet else result.stdout + result.stderr).strip()
    if output:
        print("  " + output.replace("\n", "\n  "), flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo: `sage {' '.join(args)}` failed (exit {result.returncode})")
    return result.stdout.strip()


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


class Demo:
    """One run of the demo; remembers whether it started the gateway."""

    def __init__(self) -> None:
        self.home = os.environ.get("SAGE_HOME", "~/.sage")
        self.started_gateway = False

    def gateway(self) -> str:
        """The URL of the gateway this ``SAGE_HOME`` runs, started if none runs."""
        running = running_record(DaemonFiles("gateway"))
        if running is not None:
            _section(f"Reusing the gateway running at {running.url} (SAGE_HOME={self.home})")
            return running.url
        _section(f"Starting the gateway (SAGE_HOME={self.home})")
        port = pick_port(_preferred("SAGE_GATEWAY_PORT", 8000))
        agent_port = pick_port(_preferred("SAGE_GATEWAY_AGENT_PORT", 8200))
        self.started_gateway = True
        _sage("gateway", "start", "--port", str(port), "--agent-port", str(agent_port))
        return f"http://127.0.0.1:{port}"

    def engines(self) -> None:
        """Start the demo's two simulated engines, unless they already run."""
        _section("Starting two simulated engines through the gateway")
        listed = json.loads(_sage("llm", "engine", "list", "--json", quiet=True))
        running = {e["model"] for e in listed["engines"] if e["state"] in _LIVE_STATES}
        for model, extra in ((CHAT_MODEL, ()), (EMBED_MODEL, ("--kind", "embedding"))):
            if model in running:
                print(f"{model}: already running", flush=True)
                continue
            _sage("llm", "engine", "start", model, "--runtime", "simulated", *extra, "--wait")
        _sage("llm", "engine", "list")


def start(demo: Demo) -> int:
    url = demo.gateway()
    # The demo's own commands talk to this gateway, whatever the shell says.
    os.environ["SAGE_GATEWAY_URL"] = url
    demo.engines()

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

    _follow_up(demo.home, url)
    return 0


def _follow_up(home: str, url: str) -> None:
    _section("The system is running")
    print(f"Gateway (OpenAI endpoint): {url}/v1")
    print(f"Try: curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\")
    print(
        f'       -d \'{{"model": "{CHAT_MODEL}", "messages": [{{"role": "user", "content": "hi"}}]}}\''
    )
    print(f"     SAGE_HOME={home} .venv/bin/sage gateway status")
    print(f"     SAGE_HOME={home} .venv/bin/sage llm engine list")
    print(f"Open the web console: SAGE_HOME={home} .venv/bin/sage studio start")
    print("Stop everything with: make demo-stop")


def stop() -> int:
    _section("Stopping the demo")
    _sage("gateway", "stop")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--stop" in args:
        return stop()
    demo = Demo()
    try:
        return start(demo)
    except BaseException:
        if demo.started_gateway:
            print("\nThe demo failed; stopping what it started.", file=sys.stderr)
            stop()
        else:
            print("\nThe demo failed; the gateway it reused keeps running.", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
