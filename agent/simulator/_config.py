"""Command-line configuration of the simulator (pure: argparse only)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SimulatorConfig", "build_parser", "parse_args"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorConfig:
    """Everything the simulator process is started with.

    Attributes mirror the command-line flags (``--ttft-ms`` -> ``ttft_ms``).
    ``served_model_name`` ``None`` means "same as ``model``".
    """

    model: str
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    kind: str = "llm"
    max_num_seqs: int = 256
    max_model_len: int = 4096
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    output_tokens: int = 16
    startup_delay_s: float = 0.0
    embedding_dim: int = 384
    shutdown_timeout: float = 0.0
    keep_alive_timeout: float = 5.0
    failure_rate: float = 0.0
    crash_after: int | None = None
    hang_rate: float = 0.0
    unhealthy: bool = False
    enable_control: bool = False
    ignore_sigterm: bool = False
    spawn_child: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("llm", "embedding"):
            raise ValueError(f"kind must be 'llm' or 'embedding', not {self.kind!r}")
        for name in ("max_num_seqs", "max_model_len", "output_tokens", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("ttft_ms", "itl_ms", "startup_delay_s", "shutdown_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.keep_alive_timeout <= 0:
            raise ValueError("keep_alive_timeout must be > 0")
        for name in ("failure_rate", "hang_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.crash_after is not None and self.crash_after < 0:
            raise ValueError("crash_after must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must lie in [0, 65535]")

    @property
    def served_name(self) -> str:
        """The model name clients must send (``served_model_name`` or ``model``)."""
        return self.served_model_name or self.model


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser behind :func:`parse_args` (flags as vLLM spells them)."""
    p = argparse.ArgumentParser(
        prog="python -m sage.unified.agent.simulator",
        description="A vLLM-compatible OpenAI server that simulates an inference engine.",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--kind", choices=("llm", "embedding"), default="llm")
    p.add_argument(
        "--max-num-seqs", type=int, default=256, help="running cap; the rest wait (FIFO)"
    )
    p.add_argument("--max-model-len", type=int, default=4096, help="reported by /v1/models")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    p.add_argument("--itl-ms", type=float, default=0.0, help="inter-token latency")
    p.add_argument(
        "--output-tokens", type=int, default=16, help="tokens per choice (max_tokens lowers it)"
    )
    p.add_argument("--startup-delay-s", type=float, default=0.0, help="port stays closed this long")
    p.add_argument("--embedding-dim", type=int, default=384)
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=0.0,
        help="on SIGTERM, let in-flight requests finish for up to this many seconds, then abort",
    )
    p.add_argument(
        "--keep-alive-timeout", type=float, default=5.0, help="idle keep-alive close (s)"
    )
    p.add_argument("--failure-rate", type=float, default=0.0, help="fraction answered with a 500")
    p.add_argument(
        "--crash-after", type=int, default=None, help="os._exit(1) after N inference requests"
    )
    p.add_argument("--hang-rate", type=float, default=0.0, help="fraction that never answer")
    p.add_argument("--unhealthy", action="store_true", help="/health answers 503, the API stays up")
    p.add_argument(
        "--enable-control", action="store_true", help="serve /sim/config, /sim/stats, /sim/crash"
    )
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument(
        "--spawn-child", action="store_true", help="spawn a sleeping child (like EngineCore)"
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_args(argv: Sequence[str] | None = None) -> SimulatorConfig:
    """Parse command-line flags into a :class:`SimulatorConfig`.

    Args:
        argv: the arguments without the program name; ``None`` reads ``sys.argv``.

    Raises:
        SystemExit: (from argparse) with status 2 on unknown or invalid flags,
            including values :class:`SimulatorConfig` rejects.
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return SimulatorConfig(**vars(ns))
    except ValueError as exc:
        parser.error(str(exc))
