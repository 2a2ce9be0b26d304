"""etcd's JSON gateway encoding (pure): bodies, answers with omitted defaults, errors."""

from __future__ import annotations

import base64

import pytest

from sage.unified.coordinator._etcd import (
    Compare,
    DeleteOp,
    EtcdAuthError,
    EtcdCompactedError,
    EtcdRequestError,
    EtcdTimeoutError,
    EtcdUnavailableError,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    ResponseHeader,
    prefix_range_end,
)
from sage.unified.coordinator._etcd._codec import (
    decode_error,
    decode_keepalive_ttl,
    decode_range,
    decode_txn,
    decode_watch_message,
    encode_range,
    encode_txn,
    encode_watch_create,
    is_token_rejected,
)


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"/a/", b"/a0"),
        (b"a\xff", b"b"),
        (b"\xff\xff", b"\0"),
        (b"", b"\0"),
        ("é", "é".encode()[:-1] + b"\xaa"),
    ],
)
def test_prefix_range_end(prefix: bytes | str, end: bytes) -> None:
    assert prefix_range_end(prefix) == end


def test_range_request_fields() -> None:
    assert encode_range(RangeOp("/k")) == {"key": b64("/k")}
    body = encode_range(
        RangeOp(
            "/p/",
            prefix=True,
            limit=1,
            revision=7,
            sort_target="create_revision",
            sort_order="descend",
            max_create_revision=41,
        )
    )
    assert body == {
        "key": b64("/p/"),
        "range_end": b64("/p0"),
        "limit": "1",
        "revision": "7",
        "sort_order": "DESCEND",
        "sort_target": "CREATE",
        "max_create_revision": "41",
    }


def test_txn_request() -> None:
    body = encode_txn(
        [
            Compare.create_revision("/k", "==", 0),
            Compare.value("/k", "!=", b"x"),
            Compare.mod_revision("/k", "<", 9),
            Compare.version("/k", ">", 2),
        ],
        [PutOp("/k", "v", lease=2**62, prev_kv=True)],
        [RangeOp("/k"), DeleteOp("/d/", prefix=True)],
    )
    assert body["compare"] == [
        {"key": b64("/k"), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
        {"key": b64("/k"), "target": "VALUE", "result": "NOT_EQUAL", "value": b64("x")},
        {"key": b64("/k"), "target": "MOD", "result": "LESS", "mod_revision": "9"},
        {"key": b64("/k"), "target": "VERSION", "result": "GREATER", "version": "2"},
    ]
    assert body["success"] == [
        {
            "request_put": {
                "key": b64("/k"),
                "value": b64("v"),
                "lease": str(2**62),
                "prev_kv": True,
            }
        }
    ]
    assert body["failure"] == [
        {"request_range": {"key": b64("/k")}},
        {"request_delete_range": {"key": b64("/d/"), "range_end": b64("/d0")}},
    ]
    with pytest.raises(TypeError):
        encode_txn([Compare("/k", "version", "==", b"1")], [], [])


def test_answers_leave_defaults_out() -> None:
    assert decode_range({"header": {"revision": "5"}}) == RangeResult(ResponseHeader(5), (), 0)
    result = decode_range(
        {
            "header": {"revision": "9", "member_id": "12", "raft_term": "3"},
            "kvs": [
                {"key": b64("/k"), "create_revision": "2", "mod_revision": "9", "version": "4"}
            ],
            "count": "1",
        }
    )
    assert result.header.revision == 9
    (kv,) = result.kvs
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        b"/k",
        b"",
        2,
        9,
        4,
        0,
    )
    txn = decode_txn(
        {
            "header": {"revision": "3"},
            "responses": [{"response_put": {"header": {"revision": "3"}}}, {"response_range": {}}],
        }
    )
    assert not txn.succeeded  # "succeeded": false is left out
    assert isinstance(txn.responses[0], PutResult)
    assert isinstance(txn.responses[1], RangeResult)
    assert decode_keepalive_ttl({"result": {"ID": "1"}}) == 0  # TTL 0: the lease is gone


def test_watch_messages() -> None:
    assert encode_watch_create("/p/", prefix=True, start_revision=3, prev_kv=True) == {
        "create_request": {
            "key": b64("/p/"),
            "range_end": b64("/p0"),
            "start_revision": "3",
            "prev_kv": True,
            "progress_notify": True,
        }
    }
    created = decode_watch_message({"result": {"header": {"revision": "4"}, "created": True}})
    assert created.created
    assert not created.is_progress
    events = decode_watch_message(
        {
            "result": {
                "header": {"revision": "6"},
                "events": [
                    {"kv": {"key": b64("/p/a"), "mod_revision": "5", "value": b64("1")}},
                    {"type": "DELETE", "kv": {"key": b64("/p/b"), "mod_revision": "6"}},
                ],
            }
        }
    ).events
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        ("put", b"/p/a", 5),
        ("delete", b"/p/b", 6),
    ]
    assert decode_watch_message({"result": {"header": {"revision": "9"}}}).is_progress
    compacted = decode_watch_message({"result": {"canceled": True, "compact_revision": "7"}})
    assert (compacted.canceled, compacted.compact_revision) == (True, 7)
    with pytest.raises(EtcdUnavailableError, match="no leader"):
        decode_watch_message(
            {"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader"}}
        )


@pytest.mark.parametrize(
    ("status", "body", "error", "maybe_applied"),
    [
        (503, {"code": 14, "message": "etcdserver: no leader"}, EtcdUnavailableError, False),
        (503, {"code": 14, "message": "etcdserver: request timed out"}, EtcdUnavailableError, True),
        (503, {"code": 14, "message": "etcdserver: leader changed"}, EtcdUnavailableError, True),
        (429, {"code": 8, "message": "etcdserver: too many requests"}, EtcdUnavailableError, False),
        (504, {"code": 4, "message": "context deadline exceeded"}, EtcdTimeoutError, True),
        (401, {"code": 16, "message": "etcdserver: invalid auth token"}, EtcdAuthError, False),
        (400, {"code": 3, "message": "etcdserver: user name is empty"}, EtcdAuthError, False),
        (403, {"code": 7, "message": "etcdserver: permission denied"}, EtcdAuthError, False),
        (
            400,
            {"code": 11, "message": "etcdserver: mvcc: required revision has been compacted"},
            EtcdCompactedError,
            False,
        ),
        (
            400,
            {"code": 11, "message": "etcdserver: mvcc: required revision is a future revision"},
            EtcdRequestError,
            False,
        ),
        (
            404,
            {"code": 5, "message": "etcdserver: requested lease not found"},
            EtcdRequestError,
            False,
        ),
        (502, "Bad Gateway", EtcdUnavailableError, True),
        (404, "404 page not found", EtcdRequestError, False),
    ],
)
def test_error_mapping(
    status: int, body: object, error: type[Exception], maybe_applied: bool
) -> None:
    mapped = decode_error(status, body, endpoint="h1:2379")
    assert type(mapped) is error
    assert mapped.maybe_applied is maybe_applied
    assert mapped.endpoint == "h1:2379"


def test_only_a_refused_token_is_worth_refreshing() -> None:
    assert is_token_rejected(
        decode_error(401, {"code": 16, "message": "etcdserver: invalid auth token"})
    )
    assert not is_token_rejected(
        decode_error(
            400,
            {
                "code": 3,
                "message": "etcdserver: authentication failed, invalid user ID or password",
            },
        )
    )
