"""Policy for engine URLs the coordinator will call itself (SSRF guard). Pure: no I/O.

Allow-list, not deny-list (OWASP SSRF): a URL passes when its scheme is http(s), it
carries no user info, and *every* address its host resolves to lies in a configured
network. Link-local (169.254.0.0/16, fe80::/10), cloud metadata addresses, unspecified
and multicast addresses are refused even when a configured network contains them.
The caller resolves the host (so a name is judged by its addresses, not its spelling)
and re-checks on every probe, which narrows the DNS-rebinding window to one probe.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sage.unified.coordinator._errors import UrlPolicyError

__all__ = [
    "DEFAULT_ALLOWED_NETWORKS",
    "EngineUrl",
    "IPNetwork",
    "canonical_host",
    "check_addresses",
    "parse_engine_url",
    "parse_networks",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOWED_NETWORKS: tuple[str, ...] = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)

_NEVER_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)
# Metadata services outside link-local: AWS IPv6 IMDS (inside fc00::/7!), Alibaba, Azure.
_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)


@dataclass(frozen=True, slots=True)
class EngineUrl:
    """A parsed engine base URL."""

    url: str
    """Normalised: no trailing slash."""
    scheme: str
    host: str
    """Without IPv6 brackets."""
    port: int


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def canonical_host(host: str) -> str:
    """``host`` as one strict spelling everyone agrees on, or :class:`UrlPolicyError`.

    An IP address must be canonical (``127.0.0.1``, ``::1``); the forms a C resolver
    still reads as numbers (``127.0.0.01`` and ``0177.0.0.1`` in octal, ``127.1``,
    ``0x7f.0.0.1``, ``2130706433``) are refused, because the check, the resolver and the
    HTTP client would each read them differently. A name must be an ASCII host name
    (letters, digits and hyphens in labels of up to 63; internationalised names in their
    ``xn--`` form) whose last label is not all digits.
    """
    text = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    labels = text.split(".")
    if (
        not text
        or len(text) > 253
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
        or labels[-1].startswith("0x")
    ):
        raise UrlPolicyError(
            f"host {host[:80]!r} is neither a canonical IP address nor a host name "
            "(write addresses as 127.0.0.1 or [::1], names in ASCII)",
            param="url",
        )
    return text


def parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings. Raises :class:`ValueError` on a malformed one."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def parse_engine_url(url: str) -> EngineUrl:
    """Check the shape of an engine base URL.

    Raises:
        UrlPolicyError: not http(s), no host, user info, query/fragment, or a bad port.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # e.g. "Invalid IPv6 URL" for an unbalanced "[" or "]"
        raise UrlPolicyError(f"engine url {url!r} is malformed", param="url") from None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise UrlPolicyError(
            f"engine url {url!r}: only http and https URLs are allowed", param="url"
        )
    if parts.username is not None or parts.password is not None:
        raise UrlPolicyError(f"engine url {url!r}: user info is not allowed", param="url")
    if parts.query or parts.fragment:
        raise UrlPolicyError(f"engine url {url!r}: query and fragment are not allowed", param="url")
    host = parts.hostname
    if not host:
        raise UrlPolicyError(f"engine url {url!r}: no host", param="url")
    host = canonical_host(host)
    try:
        port = parts.port
    except ValueError:
        raise UrlPolicyError(f"engine url {url!r}: invalid port", param="url") from None
    if port is None:
        port = 443 if scheme == "https" else 80
    path = parts.path.rstrip("/")
    netloc = f"[{host}]" if ":" in host else host
    return EngineUrl(url=f"{scheme}://{netloc}:{port}{path}", scheme=scheme, host=host, port=port)


def _address_problem(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in _NEVER_NETWORKS if net.version == address.version):
        return "is link-local (never allowed)"
    if address in _METADATA_ADDRESSES:
        return "is a cloud metadata address (never allowed)"
    if address.is_unspecified or address.is_multicast:
        return "is unspecified or multicast (never allowed)"
    if not any(address in net for net in allowed if net.version == address.version):
        return "is not in the allowed networks"
    return None


def check_addresses(host: str, addresses: Iterable[str], allowed: Sequence[IPNetwork]) -> None:
    """Check every address ``host`` resolved to against the policy.

    Raises:
        UrlPolicyError: no address, or any address is refused (the message names it).
    """
    try:
        resolved = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
    except ValueError as exc:
        raise UrlPolicyError(f"host {host!r} resolved to a malformed address: {exc}") from None
    if not resolved:
        raise UrlPolicyError(f"host {host!r} did not resolve to any address", param="url")
    for address in resolved:
        problem = _address_problem(address, allowed)
        if problem is not None:
            raise UrlPolicyError(
                f"host {host!r} resolves to {address}, which {problem}", param="url"
            )
