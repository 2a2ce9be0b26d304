"""``sage studio start|stop|status``: the web console, on a gateway it starts or reuses.

``start`` reuses the gateway that ``sage gateway start`` recorded, or one answering at
the address asked for; otherwise it starts one exactly as ``sage gateway start`` does
(control plane and local agent included). It records in ``<SAGE_HOME>/studio/studio.json``
which gateway it used and whether it started it, so ``stop`` stops only a gateway that
Studio started.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
from cyclopts import Parameter

from sage.unified.cli import gateway
from sage.unified.cli._daemon import running_record, sage_home
from sage.unified.cli.errors import CliError, UsageError

__all__ = ["start", "status", "stop"]


@dataclass(frozen=True)
class StudioRecord:
    """Which gateway Studio uses, and whether Studio started it."""

    url: str
    started_gateway: bool
    gateway_pid: int | None = None
    gateway_create_time: float | None = None


def _record_path() -> Path:
    return sage_home() / "studio" / "studio.json"


def _read_record() -> StudioRecord | None:
    try:
        return StudioRecord(**json.loads(_record_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_record(record: StudioRecord) -> None:
    path = _record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def _console_url(url: str) -> str:
    return f"{url.rstrip('/')}/studio/"


def _probe(url: str) -> tuple[int | None, str]:
    """The console's status code and, for a refusal, its reason (``None``: no answer)."""
    try:
        response = httpx.get(_console_url(url), timeout=3.0, trust_env=False)
    except httpx.HTTPError:
        return None, ""
    match = re.search(r"<p>(.*?)</p>", response.text, re.S)
    return response.status_code, (match.group(1) if match else response.text[:200]).strip()


def _gateway_answers(url: str) -> bool:
    """Whether a SAGE gateway (ready or not) answers at ``url``."""
    from sage.unified.sdk.client import GatewayManagementClient, SageClientError

    try:
        with GatewayManagementClient(url, timeout=2.0, connect_timeout=2.0) as client:
            _, body = client.readiness()
    except SageClientError:
        return False
    return "mode" in body


def _can_open_browser() -> bool:
    if os.environ.get("CI") or not sys.stdout.isatty():
        return False
    return sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def _check_console(url: str) -> None:
    code, reason = _probe(url)
    if code == 200:
        return
    if code == 403:
        raise CliError(f"the gateway at {url} refuses to serve Studio: {reason}")
    if code == 404:
        raise CliError(
            f"the gateway at {url} does not serve Studio (it is older than Studio); "
            "upgrade it and run `sage gateway restart`"
        )
    raise CliError(f"the console at {_console_url(url)} did not answer (status {code})")


def _target_url(options: gateway.GatewayOptions) -> str:
    settings = gateway._settings(options.settings_kwargs())
    if settings.studio_refusal() is not None and settings.studio:
        raise UsageError(str(settings.studio_refusal()))
    env_url = os.environ.get("SAGE_GATEWAY_URL", "").split(",")[0].strip()
    if options.host is None and options.port is None and env_url:
        return env_url.rstrip("/")
    return str(settings.url)


def start(
    *,
    host: str | None = None,
    port: int | None = None,
    no_browser: Annotated[bool, Parameter(negative="")] = False,
    timeout: float = 60.0,
) -> int:
    """Open the web console: start the gateway (or reuse a running one) and print its URL.

    Parameters
    ----------
    host
        Address the gateway listens on (default 127.0.0.1). Any other address needs an
        admin token (SAGE_ADMIN_TOKEN): the console never controls engines anonymously.
    port
        Port of the gateway (default 8000).
    no_browser
        Do not open a browser (none is opened anyway without a display).
    timeout
        Seconds to wait for a gateway Studio starts to become ready.
    """
    previous = _read_record()
    if previous is not None and _gateway_answers(previous.url):
        _check_console(previous.url)
        return _announce(previous.url, previous.started_gateway, no_browser)
    options = gateway.GatewayOptions(host=host, port=port)
    url = _target_url(options)
    recorded = running_record(gateway.FILES)
    if recorded is not None:
        url = recorded.url
        if (host or port) and _target_url(options) != url:
            print(f"Using the gateway already running at {url} (not {_target_url(options)}).")
        _write_record(StudioRecord(url, False))
    elif _gateway_answers(url):
        _write_record(StudioRecord(url, False))
    else:
        # The console is on by default; a gateway Studio starts must serve it even if
        # the environment or a TOML file turned it off for other gateways.
        os.environ["SAGE_GATEWAY_STUDIO"] = "true"
        gateway.start(options, timeout=timeout)
        started = running_record(gateway.FILES)
        if started is None:
            raise CliError("the gateway exited right after start-up; see `sage gateway logs`")
        url = started.url
        _write_record(StudioRecord(url, True, started.pid, started.create_time))
    _check_console(url)
    record = _read_record()
    return _announce(url, bool(record and record.started_gateway), no_browser)


def _announce(url: str, started_gateway: bool, no_browser: bool) -> int:
    console = _console_url(url)
    print(f"Studio: {console}")
    if not started_gateway:
        print("(on a gateway Studio did not start: `sage studio stop` will leave it running)")
    if no_browser or not _can_open_browser():
        print("Open that address in a browser on this machine.")
        return 0
    import webbrowser

    if not webbrowser.open(console):
        print("Open that address in a browser on this machine.")
    return 0


def stop(*, timeout: float = 90.0) -> int:
    """Stop what `sage studio start` started (a gateway it only reused keeps running).

    Parameters
    ----------
    timeout
        Seconds to wait before the gateway is killed.
    """
    record = _read_record()
    if record is None:
        print("Studio is not running (nothing recorded).")
        return 0
    _record_path().unlink(missing_ok=True)
    if not record.started_gateway:
        print(f"Studio used the gateway at {record.url}, which it did not start: left running.")
        return 0
    running = running_record(gateway.FILES)
    same = (
        running is not None
        and running.pid == record.gateway_pid
        and abs(running.create_time - (record.gateway_create_time or 0.0)) < 0.5
    )
    if not same:
        print(f"The gateway Studio started at {record.url} is no longer running.")
        return 0
    return gateway.stop(timeout=timeout)


def status(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """Show the console's URL, whether it answers, and whether Studio started its gateway.

    Parameters
    ----------
    json_output
        Print JSON for scripts.
    """
    record = _read_record()
    if record is None:
        raise UsageError("Studio is not running — start it with `sage studio start`.")
    code, reason = _probe(record.url)
    summary: dict[str, Any] = {
        "url": _console_url(record.url),
        "console": "ok" if code == 200 else ("unreachable" if code is None else f"HTTP {code}"),
        "started_gateway": record.started_gateway,
        "checked_at": time.time(),
    }
    if code not in (200, None):
        summary["reason"] = reason
    if json_output:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        owner = "started by Studio" if record.started_gateway else "not started by Studio"
        print(f"Studio: {summary['url']}  console: {summary['console']}  gateway: {owner}")
        if "reason" in summary:
            print(f"Reason: {reason}")
    if code is None:
        raise UsageError(
            f"The gateway at {record.url} is not answering — start Studio again with `sage studio start`."
        )
    return 0
