"""The etcd client's failover and retry rules, with a fake transport (no etcd)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable

import anyio
import httpx
import pytest

from sage.unified.coordinator._etcd import (
    EtcdAuthError,
    EtcdClient,
    EtcdConfigError,
    EtcdTimeoutError,
    EtcdTls,
    EtcdUnavailableError,
)

pytestmark = pytest.mark.anyio

OK_PUT = {"header": {"revision": "2"}}
Handler = Callable[[httpx.Request], httpx.Response]


class FakeCluster:
    """Answers by host; records every request as (host, path)."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.url.host, request.url.path))
        return self.handlers[request.url.host](request)

    def client(self, hosts: str, **options: object) -> EtcdClient:
        return EtcdClient(f"etcd://{hosts}", transport=httpx.MockTransport(self), **options)  # type: ignore[arg-type]


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def broken_after_send(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection reset", request=request)


def answer(status: int, body: object) -> Handler:
    return lambda request: httpx.Response(status, json=body)


def etcd_error(message: str, code: int = 14) -> Handler:
    return answer(503, {"error": message, "code": code, "message": message})


async def test_refused_endpoint_is_skipped_and_demoted() -> None:
    cluster = FakeCluster({"a": refused, "b": answer(200, OK_PUT)})
    async with cluster.client("a,b") as etcd:
        assert (await etcd.put("/k", "v")).header.revision == 2
        await etcd.put("/k", "v")
    assert cluster.calls == [("a", "/v3/kv/put"), ("b", "/v3/kv/put"), ("b", "/v3/kv/put")]


async def test_no_leader_moves_even_a_write() -> None:
    cluster = FakeCluster({"a": etcd_error("etcdserver: no leader"), "b": answer(200, OK_PUT)})
    async with cluster.client("a,b") as etcd:
        await etcd.put("/k", "v")
    assert [host for host, _ in cluster.calls] == ["a", "b"]


@pytest.mark.parametrize(
    "ambiguous",
    [etcd_error("etcdserver: request timed out"), broken_after_send],
    ids=["etcd-timed-out", "connection-broke"],
)
async def test_an_ambiguous_write_is_not_repeated_but_a_read_is(ambiguous: Handler) -> None:
    ok_range = answer(200, {"header": {"revision": "2"}})
    cluster = FakeCluster({"a": ambiguous, "b": ok_range})
    async with cluster.client("a,b") as etcd:
        with pytest.raises(EtcdUnavailableError) as failed:
            await etcd.put("/k", "v")
        assert failed.value.maybe_applied
        assert failed.value.endpoint == "a:2379"
        assert cluster.calls == [("a", "/v3/kv/put")]
        etcd._transport.preferred = 0
        assert await etcd.get("/k") is None
    assert cluster.calls[1:] == [("a", "/v3/kv/range"), ("b", "/v3/kv/range")]


async def test_a_write_declared_idempotent_is_sent_again_after_an_ambiguous_failure() -> None:
    cluster = FakeCluster({"a": broken_after_send, "b": answer(200, OK_PUT)})
    async with cluster.client("a,b") as etcd:
        await etcd.put("/k", "v", idempotent=True)
        await etcd.delete("/k", idempotent=True)
    assert [host for host, _ in cluster.calls] == ["a", "b", "b"]


async def test_deadline_names_the_last_failure() -> None:
    cluster = FakeCluster({"a": refused, "b": etcd_error("etcdserver: no leader")})
    async with cluster.client("a,b", timeout_s=0.3) as etcd:
        with anyio.fail_after(5), pytest.raises(EtcdTimeoutError, match="no leader") as timed_out:
            await etcd.put("/k", "v")
    assert not timed_out.value.maybe_applied  # refused, or "no leader": never applied
    assert {host for host, _ in cluster.calls} == {"a", "b"}
    assert len(cluster.calls) < 40  # backs off between rounds


async def test_every_request_requires_a_leader() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OK_PUT)

    async with FakeCluster({"a": record}).client("a") as etcd:
        await etcd.put("/k", "v")
    assert seen[0].headers["grpc-metadata-hasleader"] == "true"
    assert json.loads(seen[0].content) == {"key": "L2s=", "value": "dg=="}


async def test_a_refused_token_is_refreshed_once() -> None:
    tokens = iter(["t1", "t2", "t3"])
    puts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v3/auth/authenticate":
            assert json.loads(request.content) == {"name": "root", "password": "pw"}
            return httpx.Response(200, json={"token": next(tokens)})
        puts.append(request.headers["authorization"])
        if request.headers["authorization"] == "t1":
            return etcd_error("etcdserver: invalid auth token", code=16)(request)
        return httpx.Response(200, json=OK_PUT)

    async with FakeCluster({"a": handler}).client("root:pw@a") as etcd:
        await etcd.put("/k", "v")
        await etcd.put("/k", "v")
    assert puts == ["t1", "t2", "t2"]


async def test_a_tls_alert_that_escapes_httpx_is_an_auth_error() -> None:
    def bad_certificate(request: httpx.Request) -> httpx.Response:
        error = ssl.SSLError(1, "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate")
        error.reason = "SSLV3_ALERT_BAD_CERTIFICATE"
        raise error  # as anyio's TLS stream lets it through a read

    cluster = FakeCluster({"a": bad_certificate, "b": answer(200, OK_PUT)})
    async with cluster.client("a,b") as etcd:
        with pytest.raises(EtcdAuthError, match="TLS"):
            await etcd.put("/k", "v")
    assert [host for host, _ in cluster.calls] == ["a"]  # the next would refuse us too


def test_settings_errors() -> None:
    with pytest.raises(EtcdConfigError, match="etcds://"):
        EtcdClient("etcd://a", tls=EtcdTls())
    with pytest.raises(EtcdConfigError, match="user and a password"):
        EtcdClient("etcd://a", username="root")
    with pytest.raises(EtcdConfigError, match="certificate and its key"):
        EtcdClient("etcds://a", tls=EtcdTls(cert_file="c.pem"))
    with pytest.raises(EtcdConfigError, match="cannot load"):
        EtcdClient("etcds://a", tls=EtcdTls(ca_file="/nonexistent/ca.pem"))
