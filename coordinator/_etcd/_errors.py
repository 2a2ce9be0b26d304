"""The etcd client's error hierarchy (pure).

Every failure of :class:`~._client.EtcdClient` is an :class:`EtcdError`; no ``httpx``
exception escapes it. Whether a failed write may still have been applied is said by
:attr:`EtcdError.maybe_applied`.

::

    EtcdError                       base; .endpoint, .grpc_code, .maybe_applied
    ├── EtcdConfigError             bad etcd URL, TLS files or credentials (raised at construction)
    ├── EtcdUnavailableError        no endpoint could serve the call (refused, reset, no leader)
    │   └── EtcdTimeoutError        the call's deadline passed first
    ├── EtcdAuthError               wrong user/password, token refused twice, permission denied
    ├── EtcdRequestError            etcd refused the request itself (bad argument, future revision,
    │                               request too large, lease not found)
    ├── EtcdCompactedError          a read or watch asked for a compacted revision; .compact_revision
    ├── EtcdLeaseExpiredError       a lease is gone (expired, revoked, or not renewed within its TTL)
    ├── EtcdTxnFailedError          a required transaction's compares failed; .result
    └── EtcdNotLeaderError          an election call found that we no longer hold leadership
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EtcdAuthError",
    "EtcdCompactedError",
    "EtcdConfigError",
    "EtcdError",
    "EtcdLeaseExpiredError",
    "EtcdNotLeaderError",
    "EtcdRequestError",
    "EtcdTimeoutError",
    "EtcdTxnFailedError",
    "EtcdUnavailableError",
]


class EtcdError(Exception):
    """Base of every etcd client error.

    Attributes:
        message: What went wrong, for people (never contains a password or token).
        endpoint: The endpoint that answered last (``host:port``), if any.
        grpc_code: etcd's gRPC status code when etcd answered with an error.
        maybe_applied: True when a write may have been applied although it failed
            (the connection broke after the request was sent, or etcd timed out on it).
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        grpc_code: int | None = None,
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.grpc_code = grpc_code
        self.maybe_applied = maybe_applied


class EtcdConfigError(EtcdError):
    """Raised when the etcd URL, TLS files or credentials are invalid (before any I/O)."""


class EtcdUnavailableError(EtcdError):
    """Raised when no endpoint could serve the call: connection refused or reset, or every
    member answered that it has no leader. Check :attr:`maybe_applied` after a write."""


class EtcdTimeoutError(EtcdUnavailableError):
    """Raised when the call's deadline passed before an endpoint answered."""


class EtcdAuthError(EtcdError):
    """Raised when authentication fails (wrong user or password, a fresh token refused) or
    the user lacks permission for the key."""


class EtcdRequestError(EtcdError):
    """Raised when etcd refuses the request itself; retrying the same request cannot help."""


class EtcdCompactedError(EtcdError):
    """Raised when a read or watch asks for a revision older than etcd's compaction point.

    The caller must read the current state again (a range) and watch from its revision.
    """

    def __init__(self, message: str, *, compact_revision: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.compact_revision = compact_revision
        """The oldest revision etcd still has (0 when etcd did not say)."""


class EtcdLeaseExpiredError(EtcdError):
    """Raised when a lease no longer exists, or was not renewed within its TTL (its keys
    are gone or about to be: whoever held leadership through it must stop acting)."""

    def __init__(self, message: str, *, lease_id: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.lease_id = lease_id


class EtcdTxnFailedError(EtcdError):
    """Raised by ``txn(..., required=True)`` when the compares fail; ``.result`` holds the
    failure branch's responses."""

    def __init__(self, message: str, *, result: object, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.result = result


class EtcdNotLeaderError(EtcdError):
    """Raised by an election call when our leadership key is gone or belongs to someone
    else (our lease expired, or we resigned)."""
