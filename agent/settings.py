"""Agent configuration (pydantic-settings).

Precedence, highest first: constructor arguments, environment variables
(``SAGE_AGENT_<FIELD>``, nested with ``__``; ``SAGE_HOME`` for :attr:`sage_home`),
TOML files (``/etc/sage/agent.toml`` then ``~/.config/sage/agent.toml``, the later
one winning; ``SAGE_AGENT_CONFIG`` names one file to use instead), then defaults.

Lists and ranges read from the environment accept JSON or a plain form:
``SAGE_AGENT_MODEL_ALLOWLIST="Qwen/*,meta-llama/*"``,
``SAGE_AGENT_MODEL_ROOTS=/models,/data/hf``, ``SAGE_AGENT_ENGINE_PORT_RANGE=8900-8999``,
``SAGE_AGENT_LABELS=gpu=h100,zone=a`` (or a JSON object).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    NoDecode,
    SettingsConfigDict,
)

from sage.unified.agent.quarantine import CRITICAL_XIDS
from sage.unified.agent.runtimes import RuntimeConfig
from sage.unified.sdk.auth import is_loopback_host
from sage.unified.sdk.config import SageSettings, sage_home, split_list, toml_files_for
from sage.unified.sdk.models import LABEL_PATTERN
from sage.unified.sdk.protocol import BrowserPolicy

__all__ = ["CONFIG_ENV", "DEFAULT_TOML_FILES", "AgentSettings"]

CONFIG_ENV = "SAGE_AGENT_CONFIG"
_LABEL = re.compile(LABEL_PATTERN)
DEFAULT_TOML_FILES: tuple[Path, ...] = toml_files_for("agent")


class AgentSettings(SageSettings):
    """Settings of one agent process. See the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="SAGE_AGENT_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    toml_files: ClassVar[tuple[Path, ...]] = DEFAULT_TOML_FILES
    config_env: ClassVar[str] = CONFIG_ENV

    agent_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    """This host's labels, for deployments' placement constraints (``gpu=h100,zone=a``)."""
    advertise_host: str = "127.0.0.1"
    """Address the gateway and coordinator use to reach this agent and its engines."""
    bind_host: str = "127.0.0.1"
    """Address the agent API listens on. Non-loopback needs a token (or ``insecure``)."""
    engine_bind_host: str = "127.0.0.1"
    """Engines' ``--host``. Set it to a routable address on multi-host clusters."""
    port: int = Field(default=8200, ge=1, le=65535)
    coordinator_url: str | None = "http://127.0.0.1:8000"
    """Where reports go: one URL, or several comma-separated (every gateway of a highly
    available deployment); a report goes to the first that takes it, the others on
    failure."""
    token: SecretStr | None = None
    """Bearer token: required on the agent API and sent to the coordinator."""
    insecure: bool = False
    """Allow a non-loopback bind without a token (trusted networks only)."""
    engine_port_range: Annotated[tuple[int, int], NoDecode] = (8900, 8999)
    model_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    model_roots: Annotated[list[Path] | None, NoDecode] = None
    """Folders a model given as a path must lie in (after resolving ``..`` and symlinks);
    ``None``: ``<sage_home>/models`` and the Hugging Face cache (``$HF_HOME``, else
    ``~/.cache/huggingface``). ``[]``: no path at all, registry names only."""
    vllm_executable: str = "vllm"
    vllm_entrypoint: Literal["serve", "api_server"] = "serve"
    vllm_shutdown_timeout: bool = True
    """The installed vLLM supports ``--shutdown-timeout`` (vLLM ≥ 0.18)."""
    vllm_device: Literal["gpu", "cpu"] = "gpu"
    """``cpu`` for a CPU build of vLLM: its engines get no GPU (and need none)."""
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Names this server is reached by besides its bind address (checked against ``Host``
    on the control APIs; on a loopback bind, loopback names are always allowed)."""
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Web origins (``https://ops.example``) that may change state through the control
    APIs from a browser; the server's own origin always may."""
    vllm_extra_args: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Flags appended to every vLLM command line, e.g. ``--enforce-eager``. Operator
    configuration only: the launch API never adds flags. From the environment as a
    shell-quoted string or a JSON list."""
    sglang_python: str = "python3"
    simulator_python: str = sys.executable
    sage_home: Path = Field(
        default_factory=sage_home,
        validation_alias=AliasChoices("sage_home", "SAGE_HOME"),
    )

    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    probe_interval_s: float = Field(default=2.0, gt=0)
    probe_timeout_s: float = Field(default=3.0, gt=0)
    probe_failures: int = Field(default=3, ge=1)
    restart_backoff_initial_s: float = Field(default=2.0, ge=0)
    restart_backoff_max_s: float = Field(default=60.0, ge=0)
    restart_max: int = Field(default=5, ge=0)
    restart_window_s: float = Field(default=600.0, gt=0)
    stop_grace_s: float = Field(default=30.0, ge=0)
    drain_propagation_s: float = Field(default=2.0, ge=0)
    default_drain_timeout_s: float = Field(default=300.0, ge=0)
    log_max_bytes: int = Field(default=10 * 2**20, ge=1024)
    log_backups: int = Field(default=3, ge=0)
    stop_engines_on_exit: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of the agent process's own log (``sage agent run``: stderr, the journal)."""
    gpu_fault_xids: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: sorted(CRITICAL_XIDS)
    )
    """XIDs that quarantine a GPU (see :data:`~sage.unified.agent.quarantine.CRITICAL_XIDS`)."""

    @property
    def coordinator_urls(self) -> list[str]:
        """:attr:`coordinator_url` split at commas (empty when reporting is off)."""
        return [u.strip() for u in (self.coordinator_url or "").split(",") if u.strip()]

    @property
    def state_dir(self) -> Path:
        """Where the agent keeps its state file."""
        return self.sage_home / "agent"

    @property
    def log_dir(self) -> Path:
        """Where engine logs are written."""
        return self.state_dir / "logs"

    def model_root_dirs(self) -> list[Path]:
        """The effective model roots (see :attr:`model_roots`)."""
        if self.model_roots is not None:
            return list(self.model_roots)
        hf_home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
        return [self.sage_home / "models", Path(hf_home).expanduser()]

    def runtime_config(self) -> RuntimeConfig:
        """The runtime installation settings :func:`build_launch_plan` needs."""
        return RuntimeConfig(
            vllm_executable=self.vllm_executable,
            vllm_entrypoint=self.vllm_entrypoint,
            vllm_shutdown_timeout=self.vllm_shutdown_timeout,
            sglang_python=self.sglang_python,
            simulator_python=self.simulator_python,
            vllm_device=self.vllm_device,
            vllm_extra_args=tuple(self.vllm_extra_args),
        )

    def browser_policy(self) -> BrowserPolicy:
        """Who may call the agent API from a web browser (see ``BrowserPolicy``)."""
        return BrowserPolicy.of(self.bind_host, self.allowed_hosts, self.allowed_origins)

    def check_bind_safety(self) -> None:
        """Refuse to expose an unauthenticated agent API to the network.

        Raises:
            ValueError: ``bind_host`` is not a loopback address, no token is set and
                ``insecure`` is false.
        """
        if is_loopback_host(self.bind_host) or self.insecure:
            return
        if self.token is None or not self.token.get_secret_value():
            raise ValueError(
                f"refusing to bind the agent API to {self.bind_host!r} without a token: "
                "set SAGE_AGENT_TOKEN (the same token the coordinator uses), bind to "
                "127.0.0.1, or set SAGE_AGENT_INSECURE=1 on a trusted network"
            )

    @field_validator("sage_home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("engine_port_range", mode="before")
    @classmethod
    def _parse_port_range(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            low, sep, high = text.replace(",", "-").partition("-")
            if not sep:
                raise ValueError(f"engine_port_range {value!r} must look like 8900-8999")
            return (low.strip(), high.strip())
        return value

    @field_validator("engine_port_range", mode="after")
    @classmethod
    def _check_port_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1 <= low <= high <= 65535:
            raise ValueError(
                f"engine_port_range {low}-{high} must satisfy 1 <= low <= high <= 65535"
            )
        return value

    @field_validator("vllm_extra_args", mode="before")
    @classmethod
    def _parse_extra_args(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else shlex.split(text)
        return value

    @field_validator("model_allowlist", "model_roots", "gpu_fault_xids", mode="before")
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        labels: dict[str, str] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            key, sep, label = item.partition("=")
            if not sep:
                raise ValueError(f"label {item!r} must look like key=value (gpu=h100,zone=a)")
            labels[key.strip()] = label.strip()
        return labels

    @field_validator("labels", mode="after")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [f"{k}={v}" for k, v in value.items() if not (_LABEL.match(k) and _LABEL.match(v))]
        if bad:
            raise ValueError(
                f"labels {bad} must be letters, digits, '-', '_', '.' or '/' (63 at most), "
                "starting and ending with a letter or digit"
            )
        return value

    @field_validator("model_roots", mode="after")
    @classmethod
    def _absolute_roots(cls, value: list[Path] | None) -> list[Path] | None:
        if value is None:
            return None
        roots = [root.expanduser() for root in value]
        relative = [str(root) for root in roots if not root.is_absolute()]
        if relative:
            raise ValueError(f"model_roots must be absolute paths, not {relative}")
        return roots

    @model_validator(mode="after")
    def _check_backoff(self) -> AgentSettings:
        if self.restart_backoff_max_s < self.restart_backoff_initial_s:
            raise ValueError(
                f"restart_backoff_max_s ({self.restart_backoff_max_s}) must be >= "
                f"restart_backoff_initial_s ({self.restart_backoff_initial_s})"
            )
        return self
