"""How ``sage gateway restart`` starts the new process: the running gateway's recorded
settings, this shell's secrets, or a refusal (see :mod:`sage.unified.cli._gateway_config`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sage.unified.cli._daemon import DaemonRecord
from sage.unified.cli._gateway_config import (
    RecordedConfig,
    differences,
    dropped_credentials,
    known_fields,
    restart_environment,
    snapshot,
)
from sage.unified.cli.errors import UsageError

__all__ = ["RestartPlan", "plan_restart"]


@dataclass(frozen=True)
class RestartPlan:
    """The new process's environment, and what to tell the operator first."""

    environment: dict[str, str]
    notes: list[str]


def _settings(values: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from sage.unified.gateway.settings import GatewaySettings
    from sage.unified.sdk.config import ConfigFileError

    try:
        return GatewaySettings(**values)
    except ConfigFileError as exc:
        raise UsageError(f"not restarting: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"not restarting: invalid gateway configuration: {problems}") from None


def plan_restart(record: DaemonRecord) -> RestartPlan:
    """The plan for restarting the gateway of ``record``; nothing is stopped here.

    Raises:
        UsageError: the record holds no configuration (started by an older ``sage``), or
            a credential the running gateway has is not configured in this shell.
    """
    recorded = RecordedConfig.from_json(record.config)
    if recorded is None:
        raise UsageError(
            f"the running gateway (pid {record.pid}) was started by an older `sage` that did "
            "not record its configuration; restart it by hand: `sage gateway stop "
            "--keep-engines`, then `sage gateway start` with its flags and variables"
        )
    settings = known_fields(recorded.settings)
    candidate = _settings(settings)
    dropped = dropped_credentials(recorded.credentials, candidate)
    if dropped:
        raise UsageError(
            f"not restarting: the running gateway has {' and '.join(dropped)}, which this "
            "shell does not set (secrets are never stored); set them and run `sage gateway "
            "restart` again, or `sage gateway stop --keep-engines` then `sage gateway start` "
            "to run without them"
        )
    notes = []
    try:
        current = snapshot(_settings(dict(recorded.flags)))
    except UsageError:
        current = {}
    changed = differences(settings, current)
    if changed:
        notes.append(
            f"Keeping the running gateway's configuration: {'; '.join(changed)}. To change "
            "it: `sage gateway stop --keep-engines`, then `sage gateway start`."
        )
    return RestartPlan(restart_environment(settings, os.environ), notes)
