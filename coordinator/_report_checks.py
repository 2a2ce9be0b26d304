"""What an agent may say about its engines (pure): the checks a report passes before the
registry takes it.

An agent reports only engines on its own host, on ports of its own range, with URLs that
point at them; it cannot claim a registered engine's id or one of another live agent's
engines, and an engine's incarnation never goes back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from sage.unified.coordinator._errors import (
    ConflictError,
    ReportRejectedError,
    StaleIncarnationError,
)
from sage.unified.sdk.models import AgentReport, EngineInfo

__all__ = ["check_engines"]


def _url_host_port(url: str) -> tuple[str, str, int | None]:
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": matches no host, so the report is rejected
        return "", "", -1
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme, (parts.hostname or "").lower(), port


def check_engines(
    report: AgentReport,
    known_engines: Mapping[str, EngineInfo],
    is_lost: Callable[[str], bool],
) -> None:
    """Raise when ``report`` describes an engine its agent may not describe.

    Args:
        report: the snapshot.
        known_engines: the engines known now, by id.
        is_lost: whether an agent (by id) is lost (its engines may be taken over).

    Raises:
        ReportRejectedError: an engine on another host, outside the port range, or with
            a URL that does not point at its host and port.
        ConflictError: an id of a registered engine or of another live agent's engine.
        StaleIncarnationError: an engine incarnation lower than the known one.
    """
    host = report.host.strip("[]").lower()
    low, high = report.port_range
    for engine in report.engines:
        if engine.host.strip("[]").lower() != host:
            raise ReportRejectedError(
                f"engine {engine.id!r} is on host {engine.host!r}; agent {report.agent_id!r} "
                f"may only report engines on {report.host!r}"
            )
        if not low <= engine.port <= high:
            raise ReportRejectedError(
                f"engine {engine.id!r} port {engine.port} is outside the agent's range {low}-{high}"
            )
        scheme, url_host, url_port = _url_host_port(engine.url)
        if scheme not in {"http", "https"} or url_host != host or url_port != engine.port:
            raise ReportRejectedError(
                f"engine {engine.id!r} url {engine.url!r} must be http(s)://{report.host}:{engine.port}"
            )
        known = known_engines.get(engine.id)
        if known is None:
            continue
        if known.agent_id is None:
            raise ConflictError(
                f"engine id {engine.id!r} is a registered engine", code="engine_exists"
            )
        if known.agent_id != report.agent_id and not is_lost(known.agent_id):
            raise ConflictError(
                f"engine id {engine.id!r} belongs to live agent {known.agent_id!r}",
                code="engine_exists",
            )
        if engine.incarnation < known.incarnation:
            raise StaleIncarnationError(
                f"engine {engine.id!r} incarnation {engine.incarnation} is older than "
                f"the known {known.incarnation}"
            )
