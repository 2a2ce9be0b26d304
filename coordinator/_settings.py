"""Coordinator configuration (pydantic-settings).

Precedence, highest first: constructor arguments, environment variables
(``SAGE_COORDINATOR_<FIELD>``), TOML files (``/etc/sage/coordinator.toml`` then
``~/.config/sage/coordinator.toml``, the later one winning; ``SAGE_COORDINATOR_CONFIG``
names one file to use instead), then defaults. The shared ``SAGE_ADMIN_TOKEN`` and
``SAGE_AGENT_TOKEN`` are added to the token lists when set.

Lists from the environment accept JSON or comma-separated values
(``SAGE_COORDINATOR_ADMIN_TOKENS=t1,t2``). ``SAGE_COORDINATOR_DB_PATH=`` (empty)
selects the in-memory store.

``store`` selects where the state lives: ``sqlite`` (the default; one head node) or an
etcd cluster (``SAGE_COORDINATOR_STORE=etcd://h1:2379,h2:2379,h3:2379``, ``etcds://`` for
TLS) shared by several gateways. etcd's TLS files and user come from the ``etcd_*``
settings; its password from ``SAGE_COORDINATOR_ETCD_PASSWORD`` or a file
(``etcd_password_file``), never from a command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    NoDecode,
    SettingsConfigDict,
)

from sage.unified.coordinator._errors import ConfigError
from sage.unified.coordinator._etcd._endpoints import EtcdTarget, parse_etcd_url
from sage.unified.coordinator._etcd._errors import EtcdConfigError
from sage.unified.coordinator._netcheck import DEFAULT_ALLOWED_NETWORKS, IPNetwork, parse_networks
from sage.unified.sdk.auth import TokenSet, is_loopback_host
from sage.unified.sdk.config import SageSettings, sage_home, split_list, toml_files_for
from sage.unified.sdk.protocol import BrowserPolicy

__all__ = ["CONFIG_ENV", "DEFAULT_TOML_FILES", "CoordinatorSettings", "default_db_path"]

CONFIG_ENV = "SAGE_COORDINATOR_CONFIG"
DEFAULT_TOML_FILES: tuple[Path, ...] = toml_files_for("coordinator")


def default_db_path() -> Path:
    """``<SAGE_HOME>/coordinator/coordinator.db`` (``SAGE_HOME`` defaults to ``~/.sage``)."""
    return sage_home() / "coordinator" / "coordinator.db"


class CoordinatorSettings(SageSettings):
    """Settings of the coordinator (embedded or standalone). See the module docstring."""

    model_config = SettingsConfigDict(
        env_prefix="SAGE_COORDINATOR_", extra="ignore", validate_default=True
    )

    toml_files: ClassVar[tuple[Path, ...]] = DEFAULT_TOML_FILES
    config_env: ClassVar[str] = CONFIG_ENV

    admin_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Tokens for ``/v1/management/*``. None configured (and no agent tokens): auth off."""
    agent_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Tokens agents present on ``PUT /v1/agents/{id}``; the first is also sent to agents'
    APIs (unless ``agent_command_token`` is set)."""
    agent_command_token: str | None = None
    """Sent to agents' APIs instead of the first agent token (a gateway gives its embedded
    coordinator the local agent's token this way)."""
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=1, le=65535)
    insecure: bool = False
    """Allow a non-loopback bind without tokens (trusted networks only)."""
    lease_ttl_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    restart_grace_s: float = Field(default=30.0, ge=0)
    lost_engine_retention_s: float = Field(default=300.0, ge=0)
    stopped_engine_retention_s: float = Field(default=3600.0, ge=0)
    """How long an engine of no deployment stays listed once STOPPED or ERROR (the audit
    log keeps it)."""
    reconcile_interval_s: float = Field(default=2.0, gt=0)
    """How often the reconciler compares deployments with what runs (also on every change)."""
    replica_error_timeout_s: float = Field(default=600.0, gt=0)
    """A deployment replica ERROR for this long is replaced (at once when its restarts are
    exhausted or its GPU is quarantined)."""
    sweep_interval_s: float = Field(default=1.0, gt=0)
    load_publish_interval_s: float = Field(default=1.0, ge=0)
    probe_interval_s: float = Field(default=2.0, gt=0)
    probe_timeout_s: float = Field(default=3.0, gt=0)
    probe_failures: int = Field(default=3, ge=1)
    probe_successes_to_recover: int = Field(default=2, ge=1)
    """Good probes that bring an ERROR engine back to READY (the first one moves it to STARTING)."""
    probe_successes_to_start: int = Field(default=1, ge=1)
    """Good probes that make a newly registered engine READY."""
    agent_timeout_s: float = Field(default=10.0, gt=0)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Names this server is reached by besides its bind address (checked against ``Host``
    on the control APIs; on a loopback bind, loopback names are always allowed)."""
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Web origins (``https://ops.example``) that may change state through the control
    APIs from a browser; the server's own origin always may."""
    allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_NETWORKS)
    )
    """Networks registered engine URLs may resolve into (link-local never allowed)."""
    db_path: Path | None = Field(default_factory=default_db_path)
    """SQLite database; ``None`` keeps everything in memory."""
    store: str = "sqlite"
    """``sqlite`` (``db_path``; memory when that is empty), ``memory``, or an etcd cluster
    URL (``etcd://h1:2379,h2:2379,h3:2379``; ``etcds://`` for TLS) for several gateways."""
    etcd_prefix: str = Field(default="/sage/", pattern=r"^/[A-Za-z0-9_./-]*/$")
    """Keys of this deployment in etcd (two deployments may share a cluster)."""
    etcd_ca_file: Path | None = None
    """CA bundle that signed the etcd members' certificates (``etcds://``)."""
    etcd_cert_file: Path | None = None
    """Client certificate for etcd's ``--client-cert-auth``; needs ``etcd_key_file``."""
    etcd_key_file: Path | None = None
    etcd_username: str | None = None
    """etcd user (etcd's authentication); the password from one of the next two."""
    etcd_password: SecretStr | None = None
    etcd_password_file: Path | None = None
    """A file holding the etcd password (first line), e.g. a systemd credential."""
    etcd_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline of one etcd call (all members tried within it)."""
    leader_lease_ttl_s: int = Field(default=10, ge=2, le=600)
    """etcd lease of the elected leader: a dead leader is replaced this long after it died."""
    telemetry_publish_interval_s: float = Field(default=10.0, ge=0)
    """etcd: an agent's load and GPU figures are written at most this often (changes of
    engines or states at once)."""
    start_timeout_s: float = Field(default=60.0, gt=0)
    """etcd: how long the leader keeps trying an accepted engine start."""
    max_watch_s: float = Field(default=60.0, gt=0)
    watch_coalesce_s: float = Field(default=0.05, ge=0, le=0.1)
    """Watchers are woken at most once per this window (0: on every revision)."""
    log_level: str = "info"

    @field_validator(
        "admin_tokens",
        "agent_tokens",
        "allowed_networks",
        "allowed_hosts",
        "allowed_origins",
        mode="before",
    )
    @classmethod
    def _parse_lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("db_path", mode="before")
    @classmethod
    def _empty_path_is_memory(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("store", mode="after")
    @classmethod
    def _check_store(cls, value: str) -> str:
        value = value.strip()
        if value.lower() in {"sqlite", "memory"}:
            return value.lower()
        try:
            parse_etcd_url(value)
        except EtcdConfigError as exc:
            raise ValueError(
                f"store must be sqlite, memory or an etcd URL: {exc.message}"
            ) from None
        return value

    @field_validator("allowed_networks", mode="after")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _add_shared_tokens(self) -> CoordinatorSettings:
        for env, target in (
            ("SAGE_ADMIN_TOKEN", self.admin_tokens),
            ("SAGE_AGENT_TOKEN", self.agent_tokens),
        ):
            token = os.environ.get(env, "").strip()
            if token and token not in target:
                target.append(token)
        self.admin_tokens = [t for t in self.admin_tokens if t]
        self.agent_tokens = [t for t in self.agent_tokens if t]
        if self.lease_ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"lease_ttl_s ({self.lease_ttl_s}) must be at least twice heartbeat_interval_s "
                f"({self.heartbeat_interval_s})"
            )
        return self

    @property
    def etcd_store(self) -> bool:
        """Whether the state lives in etcd (several gateways share it)."""
        return self.store not in {"sqlite", "memory"}

    @property
    def local_db_path(self) -> Path | None:
        """The SQLite file of a local store (``None``: memory)."""
        return None if self.store == "memory" else self.db_path

    def etcd_target(self) -> EtcdTarget:
        """The etcd cluster (raises :class:`ConfigError` for a local store)."""
        if not self.etcd_store:
            raise ConfigError(f"the store is {self.store}, not an etcd cluster")
        return parse_etcd_url(self.store)

    def etcd_password_value(self) -> str | None:
        """The etcd password: the setting, else the first line of its file, else the URL's.

        Raises:
            ConfigError: the password file cannot be read.
        """
        if self.etcd_password is not None:
            return self.etcd_password.get_secret_value()
        if self.etcd_password_file is not None:
            try:
                return self.etcd_password_file.read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise ConfigError(
                    f"cannot read the etcd password from {self.etcd_password_file}: {exc}"
                ) from None
        return None

    @property
    def auth_enabled(self) -> bool:
        """Whether any token is configured (otherwise every request is accepted)."""
        return bool(self.admin_tokens or self.agent_tokens)

    def browser_policy(self, bind_host: str | None = None) -> BrowserPolicy:
        """Who may call the control APIs from a web browser (see ``BrowserPolicy``)."""
        return BrowserPolicy.of(
            self.host if bind_host is None else bind_host, self.allowed_hosts, self.allowed_origins
        )

    def admin_token_set(self) -> TokenSet:
        return TokenSet(self.admin_tokens)

    def agent_token_set(self) -> TokenSet:
        return TokenSet(self.agent_tokens)

    def networks(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.allowed_networks)

    def check_bind(self, host: str | None = None) -> None:
        """Refuse to serve without authentication on a non-loopback address.

        Args:
            host: the address the serving process binds (``self.host`` when omitted;
                the gateway passes its own bind address in embedded mode).

        Raises:
            ConfigError: ``host`` is not loopback, admin or agent tokens are missing,
                and ``insecure`` is false.
        """
        bind = self.host if host is None else host
        if is_loopback_host(bind) or self.insecure:
            return
        missing = [
            name
            for name, tokens in (("admin", self.admin_tokens), ("agent", self.agent_tokens))
            if not tokens
        ]
        if missing:
            raise ConfigError(
                f"refusing to bind the coordinator to {bind!r} without {' and '.join(missing)} "
                "tokens: set SAGE_ADMIN_TOKEN / SAGE_AGENT_TOKEN (or SAGE_COORDINATOR_ADMIN_TOKENS "
                "/ SAGE_COORDINATOR_AGENT_TOKENS), bind to 127.0.0.1, or set "
                "SAGE_COORDINATOR_INSECURE=1 on a trusted network"
            )
