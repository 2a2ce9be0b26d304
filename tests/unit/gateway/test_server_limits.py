"""Limits of the gateway's HTTP server that need no socket: the slow-body rule, the
connection cap and the open-file limit, their settings and their metric."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from sage.unified.gateway._metrics import GatewayMetrics
from sage.unified.gateway.main import _server_config
from sage.unified.gateway.routing import RoutingState
from sage.unified.gateway.server import connection_cap
from sage.unified.gateway.server._limits import FD_RESERVE, body_too_slow
from sage.unified.gateway.settings import GatewaySettings
from sage.unified.sdk.models import RoutingTable


@pytest.mark.parametrize(
    ("received", "elapsed", "too_slow"),
    [
        (0, 4.9, False),  # within the grace, any rate
        (5_119, 5.0, True),  # 1,023.8 B/s after the grace
        (5_120, 5.0, False),  # exactly the minimum
        (10_000_000, 600.0, False),  # a big upload, slowly but steadily
        (100, 60.0, True),
    ],
)
def test_body_rate_rule(received: int, elapsed: float, too_slow: bool) -> None:
    assert body_too_slow(received, elapsed, 1024.0, 5.0) is too_slow


def test_body_rate_rule_is_off_at_zero() -> None:
    assert not body_too_slow(0, 3600.0, 0.0, 5.0)


@pytest.mark.parametrize(
    ("requested", "open_files", "cap"),
    [
        (4096, None, 4096),
        (4096, 1_048_576, 4096),
        (4096, 1024, (1024 - FD_RESERVE) // 2),
        (100, 1024, 100),
        (4096, 100, 1),  # never 0: one connection is better than none
    ],
)
def test_connection_cap_leaves_room_for_upstream_connections_and_files(
    requested: int, open_files: int | None, cap: int
) -> None:
    assert connection_cap(requested, open_files) == cap


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    # In a child process: the test process's own limit is not ours to change.
    code = """
import json, resource
from sage.unified.gateway.server import raise_open_file_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
print(json.dumps([raise_open_file_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE)]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    returned, soft, hard = json.loads(result.stdout)
    assert returned == soft
    assert soft == hard or hard == -1, "soft limit left below the hard one"


def test_server_config_takes_the_settings_and_caps_connections_by_open_files(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = GatewaySettings(head_timeout_s=3, min_body_rate_bytes_s=500, max_connections=9000)
    with caplog.at_level(logging.INFO, logger="sage.unified.gateway"):
        config = _server_config(settings, open_files=4096)
    assert config.head_timeout_s == 3
    assert config.min_body_rate_bytes_s == 500
    assert config.max_connections == (4096 - FD_RESERVE) // 2
    [record] = [r for r in caplog.records if "max_connections" in r.getMessage()]
    assert record.levelno == logging.WARNING  # asked for explicitly, so said loudly
    assert _server_config(settings, open_files=None).max_connections == 9000


def test_server_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = GatewaySettings()
    assert (defaults.head_timeout_s, defaults.min_body_rate_bytes_s) == (10.0, 1024.0)
    assert defaults.max_connections == 4096
    monkeypatch.setenv("SAGE_GATEWAY_HEAD_TIMEOUT_S", "4")
    monkeypatch.setenv("SAGE_GATEWAY_MIN_BODY_RATE_BYTES_S", "0")
    monkeypatch.setenv("SAGE_GATEWAY_MAX_CONNECTIONS", "123")
    settings = GatewaySettings()
    assert (settings.head_timeout_s, settings.min_body_rate_bytes_s) == (4.0, 0.0)
    assert settings.max_connections == 123


def test_refused_connections_are_a_counter_metric() -> None:
    metrics = GatewayMetrics(RoutingState(RoutingTable(revision=1, backends=[])), {})
    metrics.connections_refused = lambda: 7
    text = metrics.render().decode()
    assert "# TYPE sage_gateway_connections_refused_total counter" in text
    assert "sage_gateway_connections_refused_total 7.0" in text
