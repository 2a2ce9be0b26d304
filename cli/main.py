"""The ``sage`` command: one cyclopts app with a sub-app per component.

Commands are registered by import path, so ``sage --help`` imports neither
Litestar nor NVML; each command module is imported only when it runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from cyclopts import App

from sage.unified.cli import gpu as gpu_commands
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
llm_app = App(
    name="llm",
    help="Deployments, presets, rollouts, engines, GPUs and the engine simulator.",
)
engine_app = App(name="engine", help="Start, stop and list engines through the gateway.")
rollout_app = App(name="rollout", help="Follow or undo a deployment's rolling update.")
preset_app = App(name="preset", help="Built-in sets of deployments: list, show, apply.")
gpu_app = App(name="gpu", help="Every host's GPUs; clear a GPU's fault quarantine.")
studio_app = App(name="studio", help="The web console: fleet, engine actions, routing, playground.")

app.command(gateway_app)
app.command(agent_app)
app.command(coordinator_app)
app.command(llm_app)
app.command(studio_app)
llm_app.command(engine_app)
llm_app.command(rollout_app)
llm_app.command(preset_app)
llm_app.command(gpu_app)

config_app = App(name="config", help="Show the effective configuration.")
app.command(config_app)

gateway_app.command("sage.unified.cli.gateway:start", name="start")
gateway_app.command("sage.unified.cli.gateway:run", name="run")
gateway_app.command("sage.unified.cli.gateway:stop", name="stop")
gateway_app.command("sage.unified.cli.gateway:restart", name="restart")
gateway_app.command("sage.unified.cli.gateway:status", name="status")
gateway_app.command("sage.unified.cli.gateway:logs", name="logs")
studio_app.command("sage.unified.cli.studio:start", name="start")
studio_app.command("sage.unified.cli.studio:stop", name="stop")
studio_app.command("sage.unified.cli.studio:status", name="status")
agent_app.command("sage.unified.cli.agent:run", name="run")
agent_app.command("sage.unified.cli.agent:status", name="status")
agent_app.command("sage.unified.cli.hosts:cordon", name="cordon")
agent_app.command("sage.unified.cli.hosts:drain", name="drain")
agent_app.command("sage.unified.cli.hosts:uncordon", name="uncordon")
coordinator_app.command("sage.unified.cli.coordinator:run", name="run")
engine_app.command("sage.unified.cli.engine:list_engines", name="list")
engine_app.command("sage.unified.cli.engine:start", name="start")
engine_app.command("sage.unified.cli.engine:stop", name="stop")
engine_app.command("sage.unified.cli.engine:logs", name="logs")
llm_app.command("sage.unified.cli.fleet:apply", name="apply")
llm_app.command("sage.unified.cli.fleet:deployments", name="deployments")
llm_app.command("sage.unified.cli.fleet:delete", name="delete")
rollout_app.command("sage.unified.cli.fleet:rollout_status", name="status")
rollout_app.command("sage.unified.cli.fleet:rollout_undo", name="undo")
preset_app.command("sage.unified.cli.preset:list_presets", name="list")
preset_app.command("sage.unified.cli.preset:show", name="show")
preset_app.command("sage.unified.cli.preset:apply", name="apply")
# `sage llm gpu` lists; `sage llm gpu clear HOST:INDEX` clears. cyclopts takes no import
# path for a default command; the module imports its heavy dependencies when it runs.
gpu_app.default(gpu_commands.show)
gpu_app.command("sage.unified.cli.gpu:clear", name="clear")
llm_app.command("sage.unified.cli.simulate:simulate", name="simulate")
llm_app.command("sage.unified.cli.routing:routing", name="routing")
config_app.command("sage.unified.cli.config:show", name="show")


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
