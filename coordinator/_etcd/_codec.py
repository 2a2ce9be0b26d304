"""etcd's v3 JSON gateway on the wire (pure): request bodies, answers, errors.

The gateway speaks protobuf's JSON mapping of etcd's ``rpc.proto``: bytes fields are
base64, int64 fields are decimal strings, enums are their names, and fields holding their
default value (0, false, empty, the first enum value such as ``PUT``) are left out.
Errors come back as ``{"error": msg, "code": grpc_code, "message": msg}`` with an HTTP
status mapped from the gRPC code, or inside a stream as
``{"error": {"grpc_code": .., "http_code": .., "message": ..}}``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from sage.unified.coordinator._etcd._errors import (
    EtcdAuthError,
    EtcdCompactedError,
    EtcdError,
    EtcdRequestError,
    EtcdTimeoutError,
    EtcdUnavailableError,
)
from sage.unified.coordinator._etcd._types import (
    Bytes,
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
    TxnOp,
    TxnResponse,
    TxnResult,
    WatchEvent,
    as_bytes,
    prefix_range_end,
)

__all__ = [
    "WatchMessage",
    "b64",
    "decode_delete",
    "decode_error",
    "decode_header",
    "decode_keepalive_ttl",
    "decode_kv",
    "decode_lease",
    "decode_put",
    "decode_range",
    "decode_txn",
    "decode_watch_message",
    "encode_delete",
    "encode_put",
    "encode_range",
    "encode_txn",
    "encode_watch_create",
    "is_token_rejected",
]

JsonObject = dict[str, Any]

_TARGETS = {
    "value": "VALUE",
    "version": "VERSION",
    "create_revision": "CREATE",
    "mod_revision": "MOD",
    "lease": "LEASE",
}
_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}
_SORT_TARGETS = {
    "key": "KEY",
    "version": "VERSION",
    "create_revision": "CREATE",
    "mod_revision": "MOD",
    "value": "VALUE",
}

# gRPC status codes etcd uses (google.golang.org/grpc/codes).
_DEADLINE_EXCEEDED, _PERMISSION_DENIED = 4, 7
_RESOURCE_EXHAUSTED, _OUT_OF_RANGE, _UNAVAILABLE, _UNAUTHENTICATED = 8, 11, 14, 16

# Answers given before the request was proposed to raft: nothing was applied, so any
# request may go to another member. Other "unavailable" answers ("request timed out",
# "leader changed", "server stopped") may follow a proposal that still commits.
_NOT_PROPOSED = (
    "etcdserver: no leader",
    "etcdserver: not leader",
    "etcdserver: not capable",
    "etcdserver: unhealthy cluster",
    "etcdserver: too many requests",
)
_AUTH_MESSAGES = (
    "etcdserver: authentication failed",
    "etcdserver: user name is empty",
    "etcdserver: invalid auth token",
    "etcdserver: permission denied",
)


def b64(data: Bytes) -> str:
    return base64.b64encode(as_bytes(data)).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _int(value: Any) -> int:
    return int(value) if value else 0


def _range_end(key: Bytes, range_end: Bytes | None, prefix: bool) -> str | None:
    if prefix:
        return b64(prefix_range_end(key))
    return None if range_end is None else b64(range_end)


def encode_range(op: RangeOp) -> JsonObject:
    body: JsonObject = {"key": b64(op.key)}
    range_end = _range_end(op.key, op.range_end, op.prefix)
    if range_end is not None:
        body["range_end"] = range_end
    if op.limit:
        body["limit"] = str(op.limit)
    if op.revision:
        body["revision"] = str(op.revision)
    if op.keys_only:
        body["keys_only"] = True
    if op.count_only:
        body["count_only"] = True
    if op.sort_order is not None:
        body["sort_order"] = op.sort_order.upper()
        body["sort_target"] = _SORT_TARGETS[op.sort_target]
    if op.max_create_revision:
        body["max_create_revision"] = str(op.max_create_revision)
    return body


def encode_put(op: PutOp) -> JsonObject:
    body: JsonObject = {"key": b64(op.key), "value": b64(op.value)}
    if op.lease:
        body["lease"] = str(op.lease)
    if op.prev_kv:
        body["prev_kv"] = True
    return body


def encode_delete(op: DeleteOp) -> JsonObject:
    body: JsonObject = {"key": b64(op.key)}
    range_end = _range_end(op.key, op.range_end, op.prefix)
    if range_end is not None:
        body["range_end"] = range_end
    if op.prev_kv:
        body["prev_kv"] = True
    return body


def _encode_compare(compare: Compare) -> JsonObject:
    body: JsonObject = {
        "key": b64(compare.key),
        "target": _TARGETS[compare.target],
        "result": _RESULTS[compare.op],
    }
    if compare.target == "value":
        if isinstance(compare.operand, int):
            raise TypeError("a value compare takes bytes or str")
        body["value"] = b64(compare.operand)
    else:
        if not isinstance(compare.operand, int):
            raise TypeError(f"a {compare.target} compare takes an int")
        body[compare.target] = str(compare.operand)
    return body


def _encode_op(op: TxnOp) -> JsonObject:
    if isinstance(op, RangeOp):
        return {"request_range": encode_range(op)}
    if isinstance(op, PutOp):
        return {"request_put": encode_put(op)}
    return {"request_delete_range": encode_delete(op)}


def encode_txn(
    compares: list[Compare] | tuple[Compare, ...],
    success: list[TxnOp] | tuple[TxnOp, ...],
    failure: list[TxnOp] | tuple[TxnOp, ...],
) -> JsonObject:
    return {
        "compare": [_encode_compare(compare) for compare in compares],
        "success": [_encode_op(op) for op in success],
        "failure": [_encode_op(op) for op in failure],
    }


def encode_watch_create(
    key: Bytes,
    *,
    range_end: Bytes | None = None,
    prefix: bool = False,
    start_revision: int = 0,
    prev_kv: bool = False,
) -> JsonObject:
    """A watch's create request; progress notifications are always asked for."""
    request: JsonObject = {"key": b64(key), "progress_notify": True}
    end = _range_end(key, range_end, prefix)
    if end is not None:
        request["range_end"] = end
    if start_revision:
        request["start_revision"] = str(start_revision)
    if prev_kv:
        request["prev_kv"] = True
    return {"create_request": request}


def decode_header(body: JsonObject) -> ResponseHeader:
    header = body.get("header") or {}
    return ResponseHeader(
        revision=_int(header.get("revision")),
        member_id=_int(header.get("member_id")),
        raft_term=_int(header.get("raft_term")),
    )


def decode_kv(kv: JsonObject) -> KeyValue:
    return KeyValue(
        key=_unb64(kv.get("key")),
        value=_unb64(kv.get("value")),
        create_revision=_int(kv.get("create_revision")),
        mod_revision=_int(kv.get("mod_revision")),
        version=_int(kv.get("version")),
        lease=_int(kv.get("lease")),
    )


def decode_range(body: JsonObject) -> RangeResult:
    return RangeResult(
        header=decode_header(body),
        kvs=tuple(decode_kv(kv) for kv in body.get("kvs") or ()),
        count=_int(body.get("count")),
        more=bool(body.get("more")),
    )


def decode_put(body: JsonObject) -> PutResult:
    prev = body.get("prev_kv")
    return PutResult(decode_header(body), decode_kv(prev) if prev else None)


def decode_delete(body: JsonObject) -> DeleteResult:
    return DeleteResult(
        header=decode_header(body),
        deleted=_int(body.get("deleted")),
        prev_kvs=tuple(decode_kv(kv) for kv in body.get("prev_kvs") or ()),
    )


def _decode_op_response(item: JsonObject) -> TxnResponse:
    if "response_range" in item:
        return decode_range(item["response_range"])
    if "response_put" in item:
        return decode_put(item["response_put"])
    if "response_delete_range" in item:
        return decode_delete(item["response_delete_range"])
    raise ValueError(f"unexpected transaction response {sorted(item)}")


def decode_txn(body: JsonObject) -> TxnResult:
    return TxnResult(
        header=decode_header(body),
        succeeded=bool(body.get("succeeded")),
        responses=tuple(_decode_op_response(item) for item in body.get("responses") or ()),
    )


def decode_lease(body: JsonObject) -> Lease:
    return Lease(id=_int(body.get("ID")), ttl=_int(body.get("TTL")))


def decode_keepalive_ttl(body: JsonObject) -> int:
    """The TTL a keepalive renewed the lease for; 0 when the lease no longer exists."""
    return _int((body.get("result") or {}).get("TTL"))


@dataclass(frozen=True, slots=True)
class WatchMessage:
    """One message of a watch stream."""

    header_revision: int
    events: tuple[WatchEvent, ...] = ()
    created: bool = False
    canceled: bool = False
    cancel_reason: str = ""
    compact_revision: int = 0

    @property
    def is_progress(self) -> bool:
        """A progress notification: every event up to ``header_revision`` was sent."""
        return not (self.events or self.created or self.canceled)


def _decode_event(event: JsonObject) -> WatchEvent:
    prev = event.get("prev_kv")
    return WatchEvent(
        type="delete" if event.get("type") == "DELETE" else "put",
        kv=decode_kv(event.get("kv") or {}),
        prev_kv=decode_kv(prev) if prev else None,
    )


def decode_watch_message(message: JsonObject, *, endpoint: str | None = None) -> WatchMessage:
    """Decode one line of a watch stream.

    Raises:
        EtcdError: The line is an error (``{"error": {...}}``), mapped as :func:`decode_error`.
    """
    if "error" in message:
        error = message["error"]
        if not isinstance(error, dict):
            error = {"message": str(error)}
        return_code = _int(error.get("grpc_code"))
        raise decode_error(
            _int(error.get("http_code")) or 500,
            {"code": return_code, "message": error.get("message", "")},
            endpoint=endpoint,
        )
    result = message.get("result") or {}
    return WatchMessage(
        header_revision=decode_header(result).revision,
        events=tuple(_decode_event(event) for event in result.get("events") or ()),
        created=bool(result.get("created")),
        canceled=bool(result.get("canceled")),
        cancel_reason=str(result.get("cancel_reason") or ""),
        compact_revision=_int(result.get("compact_revision")),
    )


def decode_error(status: int, body: Any, *, endpoint: str | None = None) -> EtcdError:
    """The :class:`EtcdError` for an error answer of the gateway (HTTP ``status``, JSON
    ``body`` or anything else)."""
    code, message = None, ""
    if isinstance(body, dict):
        code = body.get("code")
        message = str(body.get("message") or body.get("error") or "")
    code = (
        int(code)
        if isinstance(code, int | str) and str(code).isascii() and str(code).isdigit()
        else None
    )
    message = message or f"etcd answered HTTP {status}"
    if code == _UNAVAILABLE or (code is None and status in (502, 503, 504)):
        applied = not message.startswith(_NOT_PROPOSED)
        return EtcdUnavailableError(
            message, endpoint=endpoint, grpc_code=code, maybe_applied=applied
        )
    if code == _RESOURCE_EXHAUSTED and message.startswith(_NOT_PROPOSED):
        return EtcdUnavailableError(message, endpoint=endpoint, grpc_code=code)
    if code == _DEADLINE_EXCEEDED:
        return EtcdTimeoutError(message, endpoint=endpoint, grpc_code=code, maybe_applied=True)
    if code in (_UNAUTHENTICATED, _PERMISSION_DENIED) or message.startswith(_AUTH_MESSAGES):
        return EtcdAuthError(message, endpoint=endpoint, grpc_code=code)
    if code == _OUT_OF_RANGE and "compacted" in message:
        return EtcdCompactedError(message, compact_revision=0, endpoint=endpoint, grpc_code=code)
    if code is None and status >= 500:
        return EtcdUnavailableError(message, endpoint=endpoint, grpc_code=code, maybe_applied=True)
    return EtcdRequestError(message, endpoint=endpoint, grpc_code=code)


def is_token_rejected(error: EtcdError) -> bool:
    """Whether etcd refused our auth token (expired or from before a restart): a fresh
    token may work."""
    return isinstance(error, EtcdAuthError) and (
        error.grpc_code == _UNAUTHENTICATED or "invalid auth token" in error.message
    )
