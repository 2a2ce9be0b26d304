"""A real Prometheus (Debian's ``prometheus`` package) scraping real components.

The binary comes from apt (``make test-system`` installs it; see the Makefile). A test
starts its own server with its own configuration, storage under ``tmp_path`` and a free
loopback port, never the package's service or port 9090, and it is killed at teardown
with the test's other processes. The log level is ``debug``: Prometheus 2 reports a
``Content-Type`` it cannot parse only at that level (see ``test_prometheus_scrape.py``).
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

SCRAPE_INTERVAL_S = 1


@dataclass
class PrometheusServer:
    """A running Prometheus: its HTTP API and its log."""

    url: str
    read_log: Callable[[], str]

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data``; fails the test on an API error."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5, trust_env=False)
        body = response.json()
        assert response.status_code == 200, body
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result


def _scrape_job(name: str, target: str, bearer_token: str | None) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_name": name,
        "metrics_path": "/metrics",
        "static_configs": [{"targets": [target]}],
    }
    if bearer_token is not None:
        job["authorization"] = {"type": "Bearer", "credentials": bearer_token}
    return job


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def start_prometheus(  # type: ignore[no-untyped-def]
    processes, wait_http, tmp_path: Path
) -> Callable[..., PrometheusServer]:
    """``start_prometheus(targets, bearer_tokens={})``: Prometheus scraping ``/metrics`` of
    each ``{job name: "host:port"}`` every second (with the job's bearer token, if any), ready.
    """
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "prometheus is missing: `make test-system` installs Debian's prometheus package "
            "(or run `apt-get install --no-install-recommends prometheus` as root)",
            pytrace=False,
        )

    def start(
        targets: Mapping[str, str], *, bearer_tokens: Mapping[str, str] | None = None
    ) -> PrometheusServer:
        interval = f"{SCRAPE_INTERVAL_S}s"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [
                _scrape_job(name, target, (bearer_tokens or {}).get(name))
                for name, target in targets.items()
            ],
        }
        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
        port = _free_port()
        proc = processes.start(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=debug",
            ],
            name="prometheus",
        )
        server = PrometheusServer(f"http://127.0.0.1:{port}", lambda: processes.log_of(proc))
        wait_http(f"{server.url}/-/ready", timeout=30)
        return server

    return start
