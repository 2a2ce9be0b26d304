"""``sage llm routing``: the gateway's cache-capture ledger, per model and engine."""

from __future__ import annotations

from typing import Any

from sage.unified.cli._common import (
    AdminTokenOpt,
    GatewayUrlOpt,
    VerboseOpt,
    admin_token,
    client_errors,
    gateway_url,
    make_console,
    print_json,
)

__all__ = ["routing"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _reasons(reasons: dict[str, int]) -> str:
    total = sum(reasons.values())
    if not total:
        return "-"
    ranked = sorted(reasons.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {count / total:.0%}" for name, count in ranked)


def _row(name: str, counts: Any) -> list[str]:
    return [
        name,
        str(counts.requests),
        _pct(counts.hit_rate),
        _pct(counts.capture_ratio),
        _pct(counts.delivery_ratio),
        f"{counts.delivered_tokens:,}",
        _reasons(counts.reasons),
    ]


def routing(
    *,
    model: str | None = None,
    engine: str | None = None,
    decisions: int = 0,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    json: bool = False,
    verbose: VerboseOpt = False,
) -> int:
    """Show how well routing captures the prefix cache: per model and engine, the hit rate
    engines delivered, the share of available reuse the picks captured, and why engines
    were chosen.

    The figures are this gateway's (each gateway keeps its own ledger). hit = cached /
    prompt tokens as engines reported them; capture = captured / available (cache_aware
    only); delivery = delivered / captured.

    Parameters
    ----------
    model
        Only this model.
    engine
        Only this engine (with --decisions).
    decisions
        Also list the N most recent decisions.
    json
        Print JSON for scripts.
    """
    from sage.unified.sdk.client import GatewayManagementClient

    base = gateway_url(url, verbose=verbose)
    with (
        client_errors(base),
        GatewayManagementClient(base, admin_token(token), timeout=30.0) as client,
    ):
        stats = client.routing_stats()
        recent = (
            client.routing_decisions(model=model, engine=engine, limit=decisions)
            if decisions
            else []
        )
    models = [m for m in stats.models if model is None or m.model == model]
    if json:
        import msgspec

        print_json({"stats": msgspec.structs.replace(stats, models=models), "decisions": recent})
        return 0
    _print_tables(stats, models, recent, base)
    return 0


def _print_tables(stats: Any, models: list[Any], recent: list[Any], base: str) -> None:
    from rich.table import Table

    console = make_console()
    index = (
        f", index: {stats.index_keys:,} chunks on {stats.index_engines} engines"
        if stats.index_keys is not None
        else ""
    )
    console.print(f"Routing at {base}: policy {stats.policy}{index}")
    if not models:
        print("No routed requests recorded yet.")
    for entry in models:
        table = Table(
            title=f"{entry.model} (last {stats.window} decisions: hit "
            f"{_pct(entry.recent.hit_rate)}, capture {_pct(entry.recent.capture_ratio)})"
        )
        for column in ("ENGINE", "REQUESTS", "HIT", "CAPTURE", "DELIVERY", "CACHED TOKENS", "WHY"):
            table.add_column(column)
        for name, counts in entry.engines.items():
            table.add_row(*_row(name, counts))
        table.add_row(*_row("all", entry.total), style="bold")
        console.print(table)
        for signal in entry.signals:
            console.print(
                f"[yellow]warning[/yellow] {entry.model}: {signal}: "
                f"{stats.signal_help.get(signal, '')}"
            )
    if recent:
        import time

        table = Table(title="Recent decisions (newest first)")
        for column in (
            "AGE",
            "MODEL",
            "ENGINE",
            "REASON",
            "STATUS",
            "PROMPT",
            "AVAIL",
            "CAPT",
            "DELIV",
            "TTFT",
        ):
            table.add_column(column)
        now = time.time()
        for d in recent:
            table.add_row(
                f"{now - d.at:.0f}s",
                d.model,
                d.engine_id,
                d.reason + (" (retried)" if d.retried else ""),
                str(d.status),
                _num(d.prompt_tokens),
                _num(d.available_tokens),
                _num(d.captured_tokens),
                _num(d.delivered_tokens),
                "-" if d.ttft_s is None else f"{d.ttft_s * 1000:.0f} ms",
            )
        console.print(table)


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)
