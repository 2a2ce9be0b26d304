"""Gateway configuration (pydantic-settings).

Precedence, highest first: constructor arguments (the CLI passes only the flags a user
gave), environment variables ``SAGE_GATEWAY_<FIELD>``, TOML files
(``/etc/sage/gateway.toml`` then ``~/.config/sage/gateway.toml``), then defaults.
Secrets also come from the shared variables ``SAGE_API_KEYS`` (comma-separated),
``SAGE_ADMIN_TOKEN`` and ``SAGE_AGENT_TOKEN``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator
from pydantic_settings import (
    NoDecode,
    SettingsConfigDict,
)

from sage.unified.sdk.auth import TokenSet, is_loopback_host
from sage.unified.sdk.config import SageSettings, sage_home, split_list, toml_files_for
from sage.unified.sdk.protocol import BrowserPolicy

if TYPE_CHECKING:
    from sage.unified.gateway.sessions import SessionLimits

__all__ = ["GatewaySettings", "InsecureBindError"]


class InsecureBindError(ValueError):
    """The gateway would listen on a non-loopback address without API keys."""


class GatewaySettings(SageSettings):
    """Settings of one gateway process."""

    config_env: ClassVar[str] = "SAGE_GATEWAY_CONFIG"
    toml_files: ClassVar[tuple[Path, ...]] = toml_files_for("gateway")

    model_config = SettingsConfigDict(
        env_prefix="SAGE_GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        # ``SAGE_GATEWAY_COORDINATOR_URL=null`` is "none" (how ``sage gateway restart``
        # passes an unset value on).
        env_parse_none_str="null",
    )
    _local_agent_token: str | None = PrivateAttr(default=None)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    coordinator_url: str | None = None
    """Standalone coordinator to watch. ``None`` embeds the coordinator in this process."""
    store: str | None = None
    """Embedded coordinator's store: ``sqlite`` (the default, one head node) or an etcd
    cluster shared by several gateways (``etcd://h1:2379,h2:2379,h3:2379``)."""
    etcd_prefix: str | None = None
    """Keys of this deployment in etcd (default ``/sage/``)."""
    etcd_ca_file: Path | None = None
    etcd_cert_file: Path | None = None
    etcd_key_file: Path | None = None
    etcd_username: str | None = None
    etcd_password: SecretStr | None = None
    """From the environment (``SAGE_GATEWAY_ETCD_PASSWORD``) or TOML; never a flag."""
    etcd_password_file: Path | None = None
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Names this server is reached by besides its bind address (checked against ``Host``
    on the control APIs; on a loopback bind, loopback names are always allowed)."""
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Web origins (``https://ops.example``) that may change state through the control
    APIs from a browser; the server's own origin always may."""
    backends: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Static backend base URLs (no control plane at all), like vllm-router's --worker-urls."""
    local_agent: bool = True
    """Embedded mode only: also run an agent for this host in the gateway process."""
    agent_port: int = Field(8200, ge=1, le=65535)
    sage_home: Path = Field(default_factory=sage_home)

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    admin_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    agent_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    engine_api_key: SecretStr | None = None
    """Sent to engines as ``Authorization: Bearer``; the client's own key never is."""
    insecure: bool = False
    """Allow a non-loopback bind without API keys (explicit opt-in)."""

    routing_policy: Literal["least_load", "round_robin", "session", "cache_aware"] = "cache_aware"
    """How an engine is picked (docs/routing.md); ``cache_aware`` won the routing benchmark."""
    cache_aware_engine_cache_tokens: int | None = Field(262_144, ge=1)
    """``cache_aware``: prompt tokens one engine's KV cache holds (vLLM logs it at start as
    "GPU KV cache size"); the prefix index keeps that much per engine. Too high, and the
    index believes engines hold prefixes they evicted (the ledger's ``delivery_low``)."""
    cache_aware_chunk_bytes: int = Field(128, ge=16, le=65536)
    """``cache_aware``: bytes of rendered prompt per chunk of the prefix index."""
    cache_aware_load_factor: float = Field(1.25, ge=1.0)
    """``cache_aware``: an engine with more than this many times the mean in-flight
    requests (plus one) is passed over while another is not."""
    cache_aware_decode_weight: float = Field(0.3, ge=0.0)
    """``cache_aware``: the cost of one running request, as a share of the mean prompt."""
    routing_ledger_size: int = Field(2048, ge=1, le=1_000_000)
    """Recent routing decisions kept for ``/v1/management/routing/decisions``."""
    max_body_bytes: int = Field(16 * 2**20, ge=1024)
    max_buffered_response_bytes: int = Field(2**20, ge=1024)
    """A non-streamed answer is held in memory (so a failure is still retried elsewhere)
    up to this size; a larger one is relayed as it arrives."""
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_headers: int = Field(100, ge=8)
    retries: int = Field(1, ge=0, le=3)
    retry_budget_percent: float = Field(20.0, ge=0, le=100)
    retry_backoff_s: float = Field(0.05, ge=0, le=5)
    ejection_failures: int = Field(5, ge=1)
    ejection_base_s: float = Field(30.0, gt=0)
    ejection_max_s: float = Field(300.0, gt=0)
    connect_timeout_s: float = Field(2.0, gt=0)
    first_byte_timeout_s: float = Field(300.0, gt=0)
    read_idle_timeout_s: float = Field(300.0, gt=0)
    stall_timeout_s: float = Field(10.0, ge=0)
    """No byte from an engine for this long makes the gateway ask it ``/health``; an engine
    that does not answer within ``stall_probe_timeout_s`` hangs: it leaves routing and its
    requests are retried elsewhere (if nothing was sent yet). 0 turns this off."""
    stall_probe_timeout_s: float = Field(2.0, gt=0)
    drain_handoff_s: float = Field(10.0, ge=0)
    """How long a continuable stream may stay on an engine that is draining before it is
    continued on another one, so a drain is not held by long streams (0: at once)."""
    continuation_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Models whose broken streams are continued on another engine (``*``: all). Off by
    default; a request can also ask with ``X-Sage-Continue: 1``."""
    keepalive_expiry_s: float = Field(4.0, gt=0, lt=5.0)
    """Below vLLM's (uvicorn's) 5 s keep-alive, so a pooled connection is never reused as
    the engine closes it."""
    max_connections_per_backend: int = Field(512, ge=1)
    static_refresh_s: float = Field(5.0, gt=0)
    graceful_shutdown_s: float = Field(30.0, ge=0)
    keep_alive_s: float = Field(5.0, gt=0)
    """An idle client connection is closed after this long. Behind a load balancer that
    pools connections, set it above the balancer's idle timeout (AWS ALB: 60 s), so the
    gateway never closes a connection the balancer is about to reuse."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Longest silence from a client whose request head or body is incomplete."""
    head_timeout_s: float = Field(10.0, gt=0)
    """A request head must be complete this long after its first byte, however steadily it
    trickles in (408, then close)."""
    min_body_rate_bytes_s: float = Field(1024.0, ge=0)
    """Least average rate of a request body, judged after its first 5 s and never over
    time the gateway itself did not read (408, then close); 0 turns the rule off."""
    max_connections: int = Field(4096, ge=1)
    """Most client connections open at once; one more is answered 503 with ``Retry-After``
    and closed. Lowered at start-up to what the open-file limit allows (two descriptors per
    client connection, one for its upstream connection, and 256 kept back)."""
    expose_backend_header: bool = False
    """Add ``X-Sage-Backend`` (the engine id) to responses; for debugging and tests."""
    access_log: bool = False
    studio: bool = True
    """Serve the Studio console under ``/studio/``. Never served on a non-loopback
    address without an admin token (see :meth:`studio_refusal`)."""
    sessions: bool = True
    """Serve ``/sessions`` and the ``session_id`` extension of chat completions."""
    sessions_db_path: Path | None = None
    """SQLite file of the sessions (default ``<sage_home>/gateway/sessions.db``)."""
    sessions_max: int = Field(10_000, ge=1)
    """Sessions kept in all; the least recently active go first."""
    session_max_messages: int = Field(1_000, ge=2)
    """Messages kept per session; the oldest go first."""
    session_max_message_bytes: int = Field(256 * 1024, ge=1024)
    """Largest message of a session (a larger user message is refused with 413)."""
    session_max_bytes: int = Field(4 * 2**20, ge=1024)
    """Most a session keeps; its oldest messages go first."""
    sessions_max_total_bytes: int = Field(512 * 2**20, ge=2**20)
    """Most all sessions keep together; the least recently active go first."""
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    log_file: Path | None = None
    """Write the log here instead of stderr (``sage gateway start`` uses
    ``<SAGE_HOME>/gateway/gateway.log``); the process's stdout and stderr go there too."""
    log_max_bytes: int = Field(10 * 2**20, ge=1024)
    """The log file rotates when it would exceed this size."""
    log_backups: int = Field(3, ge=0)
    """Rotated log files kept (``gateway.log.1`` is the newest)."""

    @field_validator("continuation_models", "allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("backends", mode="before")
    @classmethod
    def _split_backends(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("api_keys", "admin_tokens", "agent_tokens", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        return split_list(value)

    def model_post_init(self, context: Any, /) -> None:
        shared = {
            "api_keys": os.environ.get("SAGE_API_KEYS"),
            "admin_tokens": os.environ.get("SAGE_ADMIN_TOKEN"),
            "agent_tokens": os.environ.get("SAGE_AGENT_TOKEN"),
        }
        for field, raw in shared.items():
            if raw and not getattr(self, field):
                setattr(self, field, [SecretStr(v) for v in split_list(raw)])

    def local_agent_token(self) -> str | None:
        """The token of the local agent's API (and of the control plane's calls to it).

        The configured agent token; without one, when any other credential is configured
        (API keys or an admin token), a random one made for this process: the local agent's
        API is never open while the rest of the gateway is locked. Only this process knows
        it (the agent and the control plane it embeds); agents on other hosts need
        ``SAGE_AGENT_TOKEN``. ``None``: no credential at all (loopback only).
        """
        if self.agent_tokens:
            return self.agent_tokens[0].get_secret_value()
        if not (self.api_keys or self.admin_tokens):
            return None
        if self._local_agent_token is None:
            self._local_agent_token = secrets.token_urlsafe(32)
        return self._local_agent_token

    @property
    def mode(self) -> Literal["embedded", "remote", "static"]:
        if self.backends:
            return "static"
        return "remote" if self.coordinator_url else "embedded"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::", ""} else self.host
        return f"http://{host}:{self.port}"

    def browser_policy(self) -> BrowserPolicy:
        """Who may call the control APIs from a web browser (see ``BrowserPolicy``)."""
        return BrowserPolicy.of(self.host, self.allowed_hosts, self.allowed_origins)

    def api_key_set(self) -> TokenSet:
        return TokenSet(k.get_secret_value() for k in self.api_keys)

    def admin_token_set(self) -> TokenSet:
        return TokenSet(k.get_secret_value() for k in self.admin_tokens)

    def agent_token_set(self) -> TokenSet:
        return TokenSet(k.get_secret_value() for k in self.agent_tokens)

    def routing_policy_options(self) -> dict[str, Any]:
        """Keyword arguments of the configured routing policy's constructor."""
        if self.routing_policy != "cache_aware":
            return {}
        return {
            "engine_cache_tokens": self.cache_aware_engine_cache_tokens,
            "chunk_bytes": self.cache_aware_chunk_bytes,
            "load_factor": self.cache_aware_load_factor,
            "decode_weight": self.cache_aware_decode_weight,
        }

    def session_limits(self) -> SessionLimits:
        from sage.unified.gateway.sessions import SessionLimits

        return SessionLimits(
            max_sessions=self.sessions_max,
            max_messages=self.session_max_messages,
            max_message_bytes=self.session_max_message_bytes,
            max_session_bytes=self.session_max_bytes,
            max_total_bytes=self.sessions_max_total_bytes,
        )

    def sessions_path(self) -> Path:
        return self.sessions_db_path or self.sage_home / "gateway" / "sessions.db"

    def studio_refusal(self) -> str | None:
        """Why the console must not be served here, or ``None`` when it may be.

        On a non-loopback address the console requires an admin token, even with
        ``insecure``: no one controls engines anonymously from a browser.
        """
        if not self.studio:
            return "Studio is turned off on this gateway (SAGE_GATEWAY_STUDIO=false)"
        if is_loopback_host(self.host) or self.admin_tokens:
            return None
        return (
            f"Studio is not served on {self.host} without an admin token: set "
            "SAGE_ADMIN_TOKEN and restart the gateway, or bind 127.0.0.1"
        )

    def check_bind_safety(self) -> None:
        """Refuse to expose an unauthenticated gateway beyond this machine.

        Raises:
            InsecureBindError: non-loopback ``host``, no API keys or no admin token, and
                ``insecure`` not set.
        """
        if is_loopback_host(self.host) or self.insecure:
            return
        required = [
            ("API keys (SAGE_API_KEYS)", self.api_keys),
            ("an admin token (SAGE_ADMIN_TOKEN)", self.admin_tokens),
        ]
        if self.mode == "embedded":
            # Agents on other hosts report to the embedded coordinator.
            required.append(("an agent token (SAGE_AGENT_TOKEN)", self.agent_tokens))
        missing = [name for name, values in required if not values]
        if missing:
            raise InsecureBindError(
                f"refusing to listen on {self.host} without {' and '.join(missing)}; "
                "set them, bind 127.0.0.1, or pass --insecure to accept an open gateway"
            )
