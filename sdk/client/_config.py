"""Client settings resolved from arguments and the environment (pure: no I/O).

Nothing here probes ports or falls back to a cloud service: the client talks to
the gateways it was given (``gateway_urls`` / ``SAGE_GATEWAY_URL``) or, in direct
mode, to the engines a control plane lists (``control_plane_url``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sage.unified.sdk.client._errors import ConfigurationError

__all__ = ["ClientConfig", "normalize_base_url", "resolve_config"]

GATEWAY_URL_ENV = "SAGE_GATEWAY_URL"
API_KEY_ENV = "SAGE_API_KEY"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Validated settings of one client.

    Exactly one of ``gateway_urls`` (non-empty) and ``control_plane_url`` is set.
    URLs are base URLs without ``/v1`` and without a trailing slash.
    """

    gateway_urls: tuple[str, ...] = ()
    control_plane_url: str | None = None
    api_key: str | None = None
    engine_api_key: str | None = None
    timeout: float = 60.0
    connect_timeout: float = 3.0
    max_attempts: int = 3
    refresh_interval_s: float = 30.0
    watch: bool = True
    default_llm_model: str | None = None
    default_embedding_model: str | None = None
    trust_env: bool = False
    stall_timeout_s: float | None = 30.0
    """The longest silence from a server before a call gives up on it: before the answer
    starts, the call moves on to the next target (which is tried last for a while); after,
    :class:`StreamInterruptedError`. ``None``: only ``timeout`` applies."""

    @property
    def direct(self) -> bool:
        """Whether requests go straight to engines (no gateway)."""
        return self.control_plane_url is not None

    @property
    def management_urls(self) -> tuple[str, ...]:
        """Where ``/v1/management/backends`` is read, in order of preference."""
        if self.control_plane_url is not None:
            return (self.control_plane_url,)
        return self.gateway_urls


def normalize_base_url(url: str) -> str:
    """``http://h:8000/v1/`` -> ``http://h:8000``.

    Raises:
        ConfigurationError: not an http(s) URL with a host.
    """
    text = url.strip().rstrip("/")
    if text.endswith("/v1"):
        text = text[: -len("/v1")]
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{url!r} is not an http:// or https:// URL with a host")
    return text


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def resolve_config(
    *,
    gateway_urls: str | Sequence[str] | None = None,
    api_key: str | None = None,
    control_plane_url: str | None = None,
    engine_api_key: str | None = None,
    timeout: float = 60.0,
    connect_timeout: float = 3.0,
    max_attempts: int = 3,
    refresh_interval_s: float = 30.0,
    watch: bool = True,
    default_llm_model: str | None = None,
    default_embedding_model: str | None = None,
    trust_env: bool = False,
    stall_timeout_s: float | None = 30.0,
    environ: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Combine constructor arguments with ``SAGE_GATEWAY_URL`` / ``SAGE_API_KEY``.

    Arguments win over the environment. ``SAGE_GATEWAY_URL`` may hold several
    comma-separated URLs. ``refresh_interval_s=0`` turns background discovery off.

    Raises:
        ConfigurationError: neither gateways nor a control plane, both, or an
            invalid value.
    """
    env = os.environ if environ is None else environ
    if gateway_urls is not None and control_plane_url is not None:
        raise ConfigurationError("pass either gateway_urls or control_plane_url, not both")
    if api_key is None:
        api_key = env.get(API_KEY_ENV) or None
    urls: tuple[str, ...] = ()
    if control_plane_url is None:
        raw: Sequence[str]
        if gateway_urls is None:
            raw = [u for u in env.get(GATEWAY_URL_ENV, "").split(",") if u.strip()]
        elif isinstance(gateway_urls, str):
            raw = [u for u in gateway_urls.split(",") if u.strip()]
        else:
            raw = list(gateway_urls)
        if not raw:
            raise ConfigurationError(
                f"no gateway configured: set {GATEWAY_URL_ENV} (e.g. http://127.0.0.1:8000) or pass "
                "gateway_urls=[...] (or control_plane_url=... to route to engines directly); "
                "start a gateway with `sage gateway start`"
            )
        # Keep the caller's order (it is the preference order) but drop repeats.
        urls = tuple(dict.fromkeys(normalize_base_url(u) for u in raw))
        cp_url = None
    else:
        cp_url = normalize_base_url(control_plane_url)
    if (
        not isinstance(max_attempts, int)
        or isinstance(max_attempts, bool)
        or not 1 <= max_attempts <= 10
    ):
        raise ConfigurationError(
            f"max_attempts must be an integer from 1 to 10, not {max_attempts!r}"
        )
    if not (isinstance(refresh_interval_s, int | float) and refresh_interval_s >= 0):
        raise ConfigurationError(f"refresh_interval_s must be >= 0, not {refresh_interval_s!r}")
    return ClientConfig(
        gateway_urls=urls,
        control_plane_url=cp_url,
        api_key=api_key,
        engine_api_key=engine_api_key,
        timeout=_positive("timeout", timeout),
        connect_timeout=_positive("connect_timeout", connect_timeout),
        max_attempts=max_attempts,
        refresh_interval_s=float(refresh_interval_s),
        watch=watch,
        default_llm_model=default_llm_model,
        default_embedding_model=default_embedding_model,
        trust_env=trust_env,
        stall_timeout_s=None
        if stall_timeout_s is None
        else _positive("stall_timeout_s", stall_timeout_s),
    )
