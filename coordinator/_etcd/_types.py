"""What the etcd client takes and returns (pure): keys, compares, operations, results.

Keys and values are bytes; a ``str`` is accepted wherever a key or value goes in and is
encoded as UTF-8. Revisions, versions and lease ids are Python ints (etcd's int64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "Bytes",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteOp",
    "DeleteResult",
    "KeyValue",
    "Lease",
    "PutOp",
    "PutResult",
    "RangeOp",
    "RangeResult",
    "ResponseHeader",
    "SortOrder",
    "SortTarget",
    "TxnOp",
    "TxnResponse",
    "TxnResult",
    "WatchEvent",
    "as_bytes",
    "prefix_range_end",
]

Bytes: TypeAlias = bytes | str
"""A key or value: bytes, or text encoded as UTF-8."""

CompareTarget: TypeAlias = Literal["value", "version", "create_revision", "mod_revision", "lease"]
CompareOp: TypeAlias = Literal["==", "!=", "<", ">"]
SortTarget: TypeAlias = Literal["key", "version", "create_revision", "mod_revision", "value"]
SortOrder: TypeAlias = Literal["ascend", "descend"]


def as_bytes(data: Bytes) -> bytes:
    """``data`` as bytes (text is encoded as UTF-8)."""
    return data.encode() if isinstance(data, str) else data


def prefix_range_end(prefix: Bytes) -> bytes:
    """The ``range_end`` that makes ``[prefix, range_end)`` every key starting with ``prefix``.

    The last byte below 0xff is incremented and what follows it dropped; a prefix of only
    0xff bytes (or an empty one) has no upper bound, which etcd spells ``b"\\0"``.
    """
    raw = bytearray(as_bytes(prefix))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"
    raw[-1] += 1
    return bytes(raw)


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    """etcd's header on every answer: the store revision it reflects and who answered."""

    revision: int
    member_id: int = 0
    raft_term: int = 0


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored (``value`` is empty for a deleted key in a watch event)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: keys put with it are deleted when it expires or is revoked."""

    id: int
    ttl: int
    """Seconds, as granted by etcd (it may round the requested TTL up)."""


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: ``target(key) op operand``.

    Build with the class methods, e.g. ``Compare.create_revision(key, "==", 0)`` (the key
    does not exist) or ``Compare.mod_revision(key, "==", seen.mod_revision)`` (nobody
    changed it since we read it).
    """

    key: Bytes
    target: CompareTarget
    op: CompareOp
    operand: Bytes | int

    @classmethod
    def value(cls, key: Bytes, op: CompareOp, value: Bytes) -> Compare:
        return cls(key, "value", op, value)

    @classmethod
    def version(cls, key: Bytes, op: CompareOp, version: int) -> Compare:
        """``version`` counts puts since the key was created; 0 means it does not exist."""
        return cls(key, "version", op, version)

    @classmethod
    def create_revision(cls, key: Bytes, op: CompareOp, revision: int) -> Compare:
        return cls(key, "create_revision", op, revision)

    @classmethod
    def mod_revision(cls, key: Bytes, op: CompareOp, revision: int) -> Compare:
        return cls(key, "mod_revision", op, revision)

    @classmethod
    def lease(cls, key: Bytes, op: CompareOp, lease_id: int) -> Compare:
        return cls(key, "lease", op, lease_id)


@dataclass(frozen=True, slots=True)
class RangeOp:
    """Read one key, a prefix (``prefix=True``) or ``[key, range_end)``."""

    key: Bytes
    range_end: Bytes | None = None
    prefix: bool = False
    limit: int = 0
    """At most this many keys (0: all)."""
    revision: int = 0
    """Read the store as of this revision (0: the latest)."""
    keys_only: bool = False
    count_only: bool = False
    sort_target: SortTarget = "key"
    sort_order: SortOrder | None = None
    max_create_revision: int = 0
    """Only keys created at or before this revision (0: no bound)."""


@dataclass(frozen=True, slots=True)
class PutOp:
    key: Bytes
    value: Bytes
    lease: int = 0
    """Attach the key to this lease (0: none)."""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class DeleteOp:
    """Delete one key, a prefix (``prefix=True``) or ``[key, range_end)``."""

    key: Bytes
    range_end: Bytes | None = None
    prefix: bool = False
    prev_kv: bool = False


TxnOp: TypeAlias = RangeOp | PutOp | DeleteOp


@dataclass(frozen=True, slots=True)
class RangeResult:
    header: ResponseHeader
    kvs: tuple[KeyValue, ...]
    count: int
    """How many keys the range holds (more than ``len(kvs)`` under a limit)."""
    more: bool = False


@dataclass(frozen=True, slots=True)
class PutResult:
    header: ResponseHeader
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    header: ResponseHeader
    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()


TxnResponse: TypeAlias = RangeResult | PutResult | DeleteResult


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A transaction's outcome: which branch ran and one response per operation of it."""

    header: ResponseHeader
    succeeded: bool
    responses: tuple[TxnResponse, ...]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch. ``kv.mod_revision`` is the revision of the change."""

    type: Literal["put", "delete"]
    kv: KeyValue
    prev_kv: KeyValue | None = None
    """The key before the change, when the watch asked for it (``prev_kv=True``)."""
