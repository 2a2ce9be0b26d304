"""etcd for the highly available control plane: a thin async client and leader election.

:class:`EtcdClient` talks to etcd's v3 JSON gateway over httpx (asyncio and trio), with
failover between the endpoints of one URL (``etcd://h1:2379,h2:2379,h3:2379``,
``etcds://`` for TLS), per-call deadlines, TLS and etcd authentication.
:class:`Election` elects one leader with leases. Errors: :mod:`._errors` (a tree).
Pure parts (URL parsing, types, wire encoding) import neither httpx nor anyio.
"""

from __future__ import annotations

from sage.unified.coordinator._etcd._client import EtcdClient, MemberStatus
from sage.unified.coordinator._etcd._election import Election, LeaderObserver, Leadership
from sage.unified.coordinator._etcd._endpoints import EtcdEndpoint, EtcdTarget, parse_etcd_url
from sage.unified.coordinator._etcd._errors import (
    EtcdAuthError,
    EtcdCompactedError,
    EtcdConfigError,
    EtcdError,
    EtcdLeaseExpiredError,
    EtcdNotLeaderError,
    EtcdRequestError,
    EtcdTimeoutError,
    EtcdTxnFailedError,
    EtcdUnavailableError,
)
from sage.unified.coordinator._etcd._transport import EtcdTls
from sage.unified.coordinator._etcd._types import (
    Compare,
    DeleteOp,
    DeleteResult,
    KeyValue,
    Lease,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    ResponseHeader,
    TxnResult,
    WatchEvent,
    prefix_range_end,
)
from sage.unified.coordinator._etcd._watch import Watch

__all__ = [
    "Compare",
    "DeleteOp",
    "DeleteResult",
    "Election",
    "EtcdAuthError",
    "EtcdClient",
    "EtcdCompactedError",
    "EtcdConfigError",
    "EtcdEndpoint",
    "EtcdError",
    "EtcdLeaseExpiredError",
    "EtcdNotLeaderError",
    "EtcdRequestError",
    "EtcdTarget",
    "EtcdTimeoutError",
    "EtcdTls",
    "EtcdTxnFailedError",
    "EtcdUnavailableError",
    "KeyValue",
    "LeaderObserver",
    "Leadership",
    "Lease",
    "MemberStatus",
    "PutOp",
    "PutResult",
    "RangeOp",
    "RangeResult",
    "ResponseHeader",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "parse_etcd_url",
    "prefix_range_end",
]
