"""Header hygiene of the proxy (pure)."""

from __future__ import annotations

from sage.unified.gateway._headers import downstream_headers, scan_request_headers, upstream_headers

CLIENT = [
    (b"host", b"gw.example:8000"),
    (b"authorization", b"Bearer client-key"),
    (b"connection", b"keep-alive, x-secret-hop"),
    (b"x-secret-hop", b"1"),
    (b"keep-alive", b"timeout=5"),
    (b"transfer-encoding", b"chunked"),
    (b"te", b"trailers"),
    (b"upgrade", b"h2c"),
    (b"proxy-authorization", b"Basic abc"),
    (b"x-forwarded-for", b"6.6.6.6"),
    (b"forwarded", b"for=6.6.6.6"),
    (b"content-length", b"17"),
    (b"content-type", b"application/json"),
    (b"x-session-id", b"s-1"),
    (b"x-request-id", b"r-1"),
    (b"user-agent", b"test"),
]


def test_scan_reads_what_the_proxy_acts_on() -> None:
    info = scan_request_headers(CLIENT)
    assert info.authorization == b"Bearer client-key"
    assert info.content_length == 17
    assert info.session_id == b"s-1"
    assert info.request_id == b"r-1"
    assert info.host == b"gw.example:8000"
    assert info.connection_tokens == {b"keep-alive", b"x-secret-hop"}
    assert info.count == len(CLIENT)


def test_scan_rejects_a_silly_request_id_and_bad_length() -> None:
    info = scan_request_headers([(b"x-request-id", b"x" * 500), (b"content-length", b"abc")])
    assert info.request_id is None
    assert info.content_length == -1


def test_upstream_gets_no_hop_by_hop_no_client_auth_and_our_forwarding_headers() -> None:
    info = scan_request_headers(CLIENT)
    out = dict(
        upstream_headers(
            CLIENT,
            info,
            request_id=b"r-1",
            client_host="10.1.2.3",
            scheme="http",
            engine_authorization=b"Bearer engine-key",
        )
    )
    for dropped in (
        b"connection",
        b"x-secret-hop",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"proxy-authorization",
        b"forwarded",
        b"host",
        b"content-length",
    ):
        assert dropped not in out, dropped
    assert out[b"authorization"] == b"Bearer engine-key"
    assert out[b"x-forwarded-for"] == b"10.1.2.3"
    assert out[b"x-forwarded-proto"] == b"http"
    assert out[b"x-forwarded-host"] == b"gw.example:8000"
    assert out[b"x-request-id"] == b"r-1"
    assert out[b"content-type"] == b"application/json"
    assert out[b"user-agent"] == b"test"


def test_without_an_engine_key_no_authorization_goes_upstream() -> None:
    info = scan_request_headers(CLIENT)
    names = [
        n
        for n, _ in upstream_headers(
            CLIENT,
            info,
            request_id=b"r",
            client_host=None,
            scheme="http",
            engine_authorization=None,
        )
    ]
    assert b"authorization" not in names
    assert b"x-forwarded-for" not in names


def test_downstream_drops_hop_by_hop_server_and_connection_named_headers() -> None:
    engine = [
        (b"content-type", b"text/event-stream"),
        (b"connection", b"close, x-internal"),
        (b"x-internal", b"secret"),
        (b"transfer-encoding", b"chunked"),
        (b"server", b"uvicorn"),
        (b"content-length", b"99"),
        (b"x-request-id", b"engine-made"),
        (b"x-kept", b"1"),
    ]
    out = downstream_headers(engine, request_id=b"r-1", backend_id=None)
    assert out == [
        (b"content-type", b"text/event-stream"),
        (b"x-kept", b"1"),
        (b"x-request-id", b"r-1"),
    ]
    with_backend = dict(downstream_headers(engine, request_id=b"r-1", backend_id="e-1"))
    assert with_backend[b"x-sage-backend"] == b"e-1"
