"""Compare the agent's GPU readings with ``nvidia-smi`` on a GPU host.

Reads every GPU through :class:`GpuReader` idle, then while a PyTorch process holds
about 8 GiB and runs matrix products, then after it exits; prints each reading next to
``nvidia-smi``'s and writes them all to ``gpu-telemetry.json`` (or ``$OUT``). Needs the
package installed (``make install``), an NVIDIA driver and PyTorch with CUDA. The
results of a run on an H100 are in docs/operations.md ("GPU telemetry").

    .venv/bin/python scripts/check_gpu_telemetry.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from sage.unified.agent.telemetry.nvml import GpuReader
from sage.unified.sdk.models import GpuInfo

SMI_FIELDS = (
    "index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu,"
    "utilization.memory,temperature.gpu,power.draw,enforced.power.limit"
)
LOAD = """
import sys, time, torch
hold = torch.empty(8 * 2**30 // 2, dtype=torch.bfloat16, device="cuda")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
"""


async def smi(query: str, what: str = "--query-gpu") -> str:
    try:
        done = await anyio.run_process(
            ["nvidia-smi", f"{what}={query}", "--format=csv,noheader,nounits"], check=False
        )
    except OSError as exc:
        return f"nvidia-smi: {exc}"
    return (done.stdout or done.stderr).decode().strip()


async def reading(reader: GpuReader, label: str, results: dict[str, Any]) -> list[GpuInfo]:
    started = time.perf_counter()
    gpus, error = await reader.read()
    elapsed_ms = (time.perf_counter() - started) * 1000
    results[label] = {
        "read_ms": round(elapsed_ms, 2),
        "error": error,
        "gpus": msgspec.to_builtins(gpus),
        "nvidia_smi": await smi(SMI_FIELDS),
        "nvidia_smi_apps": await smi("pid,used_memory", "--query-compute-apps"),
    }
    print(f"== {label} ({elapsed_ms:.1f} ms){f': {error}' if error else ''}")
    print(json.dumps(results[label], indent=1))
    return gpus


async def main() -> int:
    results: dict[str, Any] = {}
    reader = GpuReader()
    try:
        if not await reading(reader, "idle", results):
            print("no GPU readable on this host (see the error above)", file=sys.stderr)
            return 1
        async with await anyio.open_process([sys.executable, "-c", LOAD, "20"]) as load:
            assert load.stdout is not None
            await load.stdout.receive()  # "ready": memory held, products running
            await anyio.sleep(5)
            gpus = await reading(reader, "loaded", results)
            seen = [p.pid for gpu in gpus for p in gpu.processes]
            print(f"load pid {load.pid} among the GPU processes: {load.pid in seen}")
            await load.wait()
        await anyio.sleep(2)
        await reading(reader, "after", results)
    finally:
        await reader.aclose()
    out = Path(os.environ.get("OUT", ".")) / "gpu-telemetry.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
