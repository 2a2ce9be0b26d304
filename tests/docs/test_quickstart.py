"""docs/quickstart.md works as written: every ```bash and ```python block runs, in order.

Blocks whose info string carries ``norun`` (installing, vLLM on a GPU host) are not run;
every other block must exit 0. The page is written for the default ports; the test
gives it free ones by replacing ``127.0.0.1:8000`` in the blocks and setting
``SAGE_GATEWAY_PORT``, ``SAGE_GATEWAY_AGENT_PORT`` and ``SAGE_GATEWAY_URL``, with an
isolated ``SAGE_HOME``. The gateway is always stopped at the end and no process that
inherited this test's ``SAGE_HOME`` may survive it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
BIN = Path(sys.executable).parent
DEFAULT_ADDRESS = "127.0.0.1:8000"
MIN_BLOCKS_RUN = 10
BLOCK_TIMEOUT_S = 120

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    language: str
    flags: frozenset[str]
    code: str
    line: int


def parse_blocks(text: str) -> list[Block]:
    """Fenced ```bash / ```python blocks in document order (others are ignored)."""
    blocks = []
    for match in _FENCE.finditer(text):
        words = match.group(1).split()
        if not words or words[0] not in {"bash", "python"}:
            continue
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(words[0], frozenset(words[1:]), match.group(2), line))
    return blocks


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _survivors(home: str) -> list[psutil.Process]:
    """Processes that inherited this test's SAGE_HOME (the gateway, its engines)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("SAGE_HOME") == home:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture
def doc_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    home = tmp_path / "sage-home"
    home.mkdir()
    port = _free_port()
    agent_port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SAGE_") and k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
    }
    env.update(
        SAGE_HOME=str(home),
        SAGE_GATEWAY_PORT=str(port),
        SAGE_GATEWAY_AGENT_PORT=str(agent_port),
        SAGE_GATEWAY_URL=f"http://127.0.0.1:{port}",
        # The doc's `sage` is the one installed next to this interpreter.
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        NO_PROXY="127.0.0.1,localhost",
        COLUMNS="200",
    )
    try:
        yield env
    finally:
        subprocess.run(
            [str(BIN / "sage"), "gateway", "stop", "--timeout", "20"],
            env=env,
            capture_output=True,
            timeout=90,
            check=False,
        )
        left = _survivors(str(home))
        for proc in left:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        assert left == [], f"processes left behind: {[p.pid for p in left]}"


def _run(block: Block, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    address = f"127.0.0.1:{env['SAGE_GATEWAY_PORT']}"
    code = block.code.replace(DEFAULT_ADDRESS, address)
    if block.language == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", code]
    else:
        argv = [sys.executable, "-c", code]
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )


def test_parse_blocks_keeps_order_language_and_flags() -> None:
    text = "x\n```bash\necho 1\n```\n```python norun\nprint(2)\n```\n```text\nno\n```\n"
    blocks = parse_blocks(text)
    assert [(b.language, sorted(b.flags), b.code, b.line) for b in blocks] == [
        ("bash", [], "echo 1\n", 2),
        ("python", ["norun"], "print(2)\n", 5),
    ]


def test_every_quickstart_block_runs(doc_env: dict[str, str], tmp_path: Path) -> None:
    blocks = parse_blocks(QUICKSTART.read_text(encoding="utf-8"))
    ran = 0
    outputs: list[str] = []
    for block in blocks:
        if "norun" in block.flags:
            continue
        started = time.monotonic()
        result = _run(block, doc_env, tmp_path)
        took = time.monotonic() - started
        outputs.append(f"--- line {block.line} ({took:.1f} s)\n{result.stdout}{result.stderr}")
        assert result.returncode == 0, (
            f"docs/quickstart.md block at line {block.line} exited {result.returncode}:\n"
            f"{block.code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
        ran += 1
    assert ran >= MIN_BLOCKS_RUN, f"only {ran} blocks ran"
    text = "\n".join(outputs)
    # What the page promises the reader sees.
    assert "Gateway ready at http://127.0.0.1:" in text
    assert "READY" in text
    assert '"model_not_found"' in text
    assert "data: [DONE]" in text
    assert "2 vectors of" in text
    assert "Gateway stopped" in text
    # The last block stopped the gateway: nothing that inherited SAGE_HOME is left.
    deadline = time.monotonic() + 10
    while _survivors(doc_env["SAGE_HOME"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _survivors(doc_env["SAGE_HOME"]) == []
