"""TLS (etcds://, client certificates) and etcd authentication against a real etcd."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
import trustme

from sage.unified.coordinator._etcd import EtcdAuthError, EtcdClient, EtcdTls

pytestmark = pytest.mark.anyio


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("sage-coordinator")
    files = TlsFiles(*(root / name for name in ("ca", "srv", "srv.key", "cli", "cli.key", "ca2")))
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    trustme.CA().cert_pem.write_to_path(str(files.other_ca))
    return files


@pytest.fixture
def tls_etcd(etcd_cluster, tls_files: TlsFiles):  # type: ignore[no-untyped-def]
    """A member that serves only TLS and wants a client certificate signed by our CA."""
    member = etcd_cluster.start(
        1,
        scheme="https",
        wait=False,
        extra_args=[
            "--heartbeat-interval=25",
            "--election-timeout=250",
            f"--cert-file={tls_files.server_cert}",
            f"--key-file={tls_files.server_key}",
            f"--trusted-ca-file={tls_files.ca}",
            "--client-cert-auth",
        ],
    )[0]
    tls = EtcdTls(tls_files.ca, tls_files.client_cert, tls_files.client_key)
    member.wait_ready(verify=tls.ssl_context())
    return member


async def test_tls_with_a_client_certificate(tls_etcd, tls_files: TlsFiles) -> None:  # type: ignore[no-untyped-def]
    tls = EtcdTls(tls_files.ca, tls_files.client_cert, tls_files.client_key)
    async with EtcdClient(tls_etcd.etcd_url, tls=tls) as etcd:
        put = await etcd.put("/tls/k", "v")
        async with etcd.watch("/tls/k", start_revision=put.header.revision) as watch:
            with anyio.fail_after(10):
                event = await watch.__anext__()
        assert event.kv.value == b"v"


@pytest.mark.parametrize(
    ("ca", "with_client_cert"),
    [pytest.param("ca", False, id="no-client-cert"), pytest.param("other_ca", True, id="wrong-ca")],
)
async def test_tls_refusals_fail_fast_as_auth_errors(  # type: ignore[no-untyped-def]
    tls_etcd, tls_files: TlsFiles, ca: str, with_client_cert: bool
) -> None:
    cert = (tls_files.client_cert, tls_files.client_key) if with_client_cert else (None, None)
    tls = EtcdTls(getattr(tls_files, ca), *cert)
    async with EtcdClient(tls_etcd.etcd_url, tls=tls, timeout_s=20) as etcd:
        with anyio.fail_after(5), pytest.raises(EtcdAuthError, match="TLS"):
            await etcd.get("/tls/k")


def _enable_auth(url: str, password: str) -> None:
    with httpx.Client(base_url=url, timeout=5, trust_env=False) as http:
        for path, body in [
            ("/v3/auth/user/add", {"name": "root", "password": password}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/enable", {}),
        ]:
            http.post(path, json=body).raise_for_status()


async def test_user_and_password(etcd_cluster) -> None:  # type: ignore[no-untyped-def]
    timers = ["--heartbeat-interval=25", "--election-timeout=250"]
    (etcd,) = etcd_cluster.start(1, extra_args=[*timers, "--auth-token-ttl=1"])
    _enable_auth(etcd.client_url, "s3cret")
    async with EtcdClient(etcd.etcd_url) as anonymous:
        with pytest.raises(EtcdAuthError):
            await anonymous.put("/auth/k", "v")
    async with EtcdClient(etcd.etcd_url, username="root", password="wrong") as wrong:
        with pytest.raises(EtcdAuthError, match="authentication failed") as failed:
            await wrong.put("/auth/k", "v")
        assert "wrong" not in str(failed.value)
    url = f"etcd://root:s3cret@{etcd.endpoint}"
    async with EtcdClient(url, timeout_s=20) as etcd_client:
        await etcd_client.put("/auth/k", "v")
        token = etcd_client._transport.token
        await anyio.sleep(2.5)  # etcd drops a token unused for --auth-token-ttl (checked each 1 s)
        assert (await etcd_client.get("/auth/k")).value == b"v"  # type: ignore[union-attr]
        assert etcd_client._transport.token not in (None, token)  # refreshed, not failed
