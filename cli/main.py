"""The ``sage`` command: one cyclopts app with a sub-app per component.

Commands are registered by import path, so ``sage --help`` imports neither
Litestar nor NVML; each command module is imported only when it runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from cyclopts import App

from sage.unified.cli.errors import CliError

__all__ = ["app", "main"]

app = App(
    name="sage",
    help="SAGE Unified Gateway: one OpenAI-compatible endpoint in front of LLM engines on many GPU hosts.",
    version_flags=["--version"],
)

gateway_app = App(
    name="gateway", help="Run and manage the gateway (the OpenAI endpoint and control plane)."
)
agent_app = App(name="agent", help="Run and inspect the per-host agent that supervises engines.")
coordinator_app = App(
    name="coordinator", help="Run a standalone coordinator (for several gateways)."
)
llm_app = App(name="llm", help="Engines, GPUs and the engine simulator.")
engine_app = App(name="engine", help="Start, stop and list engines through the gateway.")

app.command(gateway_app)
app.command(agent_app)
app.command(coordinator_app)
app.command(llm_app)
llm_app.command(engine_app)

llm_app.command("sage.unified.cli.simulate:simulate", name="simulate")


def _version() -> str:
    from importlib.metadata import version

    return version("sage-unified-gateway")


app.version = _version


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sage`` console script. Returns the process exit code."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(tokens, result_action="return_value")
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        if os.environ.get("SAGE_DEBUG"):
            raise
        print(
            f"error: {type(exc).__name__}: {exc} (set SAGE_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        return 1
    return result if isinstance(result, int) else 0
