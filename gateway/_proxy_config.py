"""The data plane's knobs, copied from :class:`GatewaySettings` once at start."""

from __future__ import annotations

from sage.unified.sdk.auth import TokenSet

__all__ = ["ProxyConfig"]


class ProxyConfig:
    """The data plane's knobs (copied from :class:`GatewaySettings` once)."""

    __slots__ = (
        "api_keys",
        "continuation_models",
        "drain_handoff_s",
        "engine_authorization",
        "expose_backend_header",
        "max_body_bytes",
        "max_buffered_response_bytes",
        "max_header_bytes",
        "max_headers",
        "retries",
        "stall_probe_timeout_s",
        "stall_timeout_s",
        "unavailable_retry_after_s",
    )

    def __init__(
        self,
        *,
        api_keys: TokenSet,
        engine_api_key: str | None = None,
        max_body_bytes: int = 16 * 2**20,
        max_header_bytes: int = 64 * 1024,
        max_headers: int = 100,
        retries: int = 1,
        expose_backend_header: bool = False,
        unavailable_retry_after_s: int = 5,
        stall_timeout_s: float = 10.0,
        stall_probe_timeout_s: float = 2.0,
        continuation_models: frozenset[str] = frozenset(),
        drain_handoff_s: float | None = 10.0,
        max_buffered_response_bytes: int = 1 << 20,
    ) -> None:
        self.api_keys = api_keys
        self.engine_authorization = f"Bearer {engine_api_key}".encode() if engine_api_key else None
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.retries = retries
        self.expose_backend_header = expose_backend_header
        self.unavailable_retry_after_s = unavailable_retry_after_s
        self.stall_timeout_s = stall_timeout_s
        """0 turns stall detection off."""
        self.stall_probe_timeout_s = stall_probe_timeout_s
        self.continuation_models = continuation_models
        """Models whose broken streams are continued elsewhere (``*``: every model); a
        request may also ask with ``X-Sage-Continue: 1``."""
        self.max_buffered_response_bytes = max_buffered_response_bytes
        """A non-streamed answer is held (and retryable) up to this size, then relayed as it
        comes."""
        self.drain_handoff_s = drain_handoff_s
        """A continuable stream of an engine that left routing (drained) this long ago is
        continued elsewhere; ``None``: streams stay until the engine ends them."""
