"""What a web browser may not make a control API do (pure: no I/O, no framework).

A server on loopback with no token is still reachable from any web page the machine's
browser opens: a "simple" cross-origin POST (``Content-Type: text/plain``) needs no CORS
preflight, and DNS rebinding lets a page's own name point at 127.0.0.1. So every control
API (management, agent, sessions) refuses:

- a ``Host`` that is not this server: on a loopback bind only loopback names and
  addresses (``localhost``, ``*.localhost``, ``127.x``, ``::1``) and the configured
  ``allowed_hosts``; on another bind, when ``allowed_hosts`` is set, only those (and the
  bind address);
- a state-changing request (POST, PUT, PATCH, DELETE) from another origin: an
  ``Origin`` other than the server's own (scheme and ``Host``) and the configured
  ``allowed_origins``, or ``Sec-Fetch-Site: cross-site``;
- a request body that is not JSON (``application/json`` or ``+json``): 415.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sage.unified.sdk.auth import is_loopback_host

__all__ = ["BrowserPolicy", "Refusal", "browser_refusal"]

_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class BrowserPolicy:
    """Where a control API is served and who may call it from a browser.

    Args:
        bind_host: the address the server listens on.
        allowed_hosts: other names it is reached by (``gateway.example.com``), no port.
        allowed_origins: web origins allowed to change state (``https://ops.example``);
            the server's own origin always is.
    """

    bind_host: str
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    allowed_origins: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls, bind_host: str, hosts: Iterable[str] = (), origins: Iterable[str] = ()
    ) -> BrowserPolicy:
        return cls(
            bind_host,
            frozenset(h.strip().lower().rstrip(".") for h in hosts if h.strip()),
            frozenset(o.strip().lower().rstrip("/") for o in origins if o.strip()),
        )


def _host_name(host: str) -> str:
    """``[::1]:8000`` → ``::1``; ``Example.com:80`` → ``example.com``."""
    text = host.strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _host_allowed(policy: BrowserPolicy, host: str) -> bool:
    name = _host_name(host).rstrip(".")
    if name in policy.allowed_hosts:
        return True
    if is_loopback_host(policy.bind_host):
        return is_loopback_host(name)
    if not policy.allowed_hosts:
        return True  # a network bind needs tokens anyway; names are the operator's
    return name == _host_name(policy.bind_host)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def browser_refusal(
    policy: BrowserPolicy,
    *,
    method: str,
    scheme: str,
    host: str | None,
    origin: str | None,
    fetch_site: str | None,
    content_type: str | None,
    has_body: bool,
) -> Refusal | None:
    """Why the request must be refused, or ``None`` when it may go on."""
    if host is not None and not _host_allowed(policy, host):
        return Refusal(
            403,
            "host_not_allowed",
            f"Host {host[:100]!r} is not this server (DNS rebinding?); call it by its own "
            "address, or add the name to allowed_hosts",
        )
    if method.upper() in _WRITES:
        own = f"{scheme}://{host}".lower() if host else None
        foreign_origin = origin is not None and origin.lower().rstrip("/") not in (
            own,
            *policy.allowed_origins,
        )
        if foreign_origin or (fetch_site or "").lower() == "cross-site":
            return Refusal(
                403,
                "cross_origin",
                f"a web page from another origin ({(origin or 'unknown')[:100]}) may not "
                "change this server's state; add it to allowed_origins if it should",
            )
    if has_body and not _is_json(content_type or ""):
        return Refusal(
            415,
            "unsupported_media_type",
            f"the body must be JSON (Content-Type: application/json), not {content_type!r}",
        )
    return None
