"""Wire models shared by the agent, coordinator, gateway, SDK and CLI.

All are :class:`msgspec.Struct` types encoded as JSON. Readers ignore fields they
do not know, so a newer peer can add fields without breaking an older one. The
launch spec (:class:`EngineSpec`) is the one exception: it is a security boundary
(a typed spec mapped to a fixed argv), so unknown fields are rejected.

Times are Unix epoch seconds (float, UTC) unless a name says otherwise. Sizes are
bytes.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, Struct

from sage.unified.sdk.states import EngineState, is_routable

__all__ = [
    "LABEL_PATTERN",
    "AgentReport",
    "AgentReportReply",
    "AgentSummary",
    "Backend",
    "DeploymentName",
    "EngineInfo",
    "EngineKind",
    "EngineLoad",
    "EngineSpec",
    "EngineSpecView",
    "EngineStartRequest",
    "EngineStopRequest",
    "ErrorBody",
    "ErrorDetail",
    "GpuInfo",
    "GpuProcess",
    "HostMetrics",
    "Label",
    "RegisterEngineRequest",
    "RoutingTable",
    "Runtime",
    "SimulatorOptions",
    "decode",
    "encode",
    "error_body",
]

T = TypeVar("T")

MODEL_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@/+\-]{0,255}$"
_MODEL_RE = re.compile(MODEL_NAME_PATTERN)

NonNegInt = Annotated[int, Meta(ge=0)]
Port = Annotated[int, Meta(ge=1, le=65535)]
Fraction = Annotated[float, Meta(gt=0.0, le=1.0)]
Seconds = Annotated[float, Meta(gt=0.0, le=86400.0)]
ModelName = Annotated[str, Meta(pattern=MODEL_NAME_PATTERN, max_length=256)]
MODEL_PATH_PATTERN = r"^/?[A-Za-z0-9_][A-Za-z0-9_.:@/+\-]{0,255}$"
ModelPath = Annotated[str, Meta(pattern=MODEL_PATH_PATTERN, max_length=257)]
"""A model id, or an absolute path to a local model directory (the agent's allowlist
decides which paths may be used)."""
EngineId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")]
DEPLOYMENT_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
DeploymentName = Annotated[str, Meta(pattern=DEPLOYMENT_NAME_PATTERN)]
"""A deployment's name: a DNS label (lower-case letters, digits and ``-``, 63 at most)."""
LABEL_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.\-/]{0,61}[A-Za-z0-9])?$"
Label = Annotated[str, Meta(pattern=LABEL_PATTERN)]
"""A host label's key or value (``gpu``, ``h100``, ``zone``, ``eu-west-1a``)."""


class EngineKind(enum.StrEnum):
    """What an engine serves."""

    LLM = "llm"
    EMBEDDING = "embedding"


class Runtime(enum.StrEnum):
    """Which program runs an engine."""

    VLLM = "vllm"
    SGLANG = "sglang"
    SIMULATED = "simulated"


class EngineLoad(Struct, kw_only=True):
    """Load scraped from an engine's ``/metrics``; ``None`` means unknown."""

    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None
    updated_at: float | None = None


class SimulatorOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    """Behaviour of a ``simulated`` engine (the built-in vLLM stand-in)."""

    ttft_ms: Annotated[float, Meta(ge=0, le=600_000)] = 20.0
    itl_ms: Annotated[float, Meta(ge=0, le=60_000)] = 5.0
    output_tokens: Annotated[int, Meta(ge=1, le=100_000)] = 16
    startup_delay_s: Annotated[float, Meta(ge=0, le=3600)] = 0.0
    embedding_dim: Annotated[int, Meta(ge=1, le=65536)] = 384
    max_num_seqs: Annotated[int, Meta(ge=1, le=100_000)] = 256


class EngineSpecView(Struct, kw_only=True):
    """The fields of an engine spec, as reported back (``EngineInfo.spec``).

    Tolerant of fields a newer agent adds; launch requests use :class:`EngineSpec`,
    which rejects them.
    """

    model: ModelPath
    """Model id or absolute path, checked against the agent's allowlist."""
    served_model_name: ModelName | None = None
    """Name clients use in ``model``; defaults to ``model``."""
    runtime: Runtime = Runtime.VLLM
    kind: EngineKind = EngineKind.LLM
    tensor_parallel_size: Annotated[int, Meta(ge=1, le=64)] = 1
    gpu_ids: list[Annotated[int, Meta(ge=0, le=1023)]] | None = None
    """Explicit GPU indices; chosen by the agent when omitted."""
    gpu_memory_utilization: Fraction | None = None
    """Fraction of each GPU's memory the engine may take; engines may share a GPU
    only when their fractions fit together."""
    max_model_len: Annotated[int, Meta(ge=16, le=10_000_000)] | None = None
    max_num_seqs: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    dtype: str | None = None
    port: Port | None = None
    """Explicit engine port; must lie in the agent's range. Chosen when omitted."""
    startup_timeout_s: Seconds = 900.0
    drain_timeout_s: Seconds = 300.0
    simulator: SimulatorOptions | None = None
    deployment: DeploymentName | None = None
    """The deployment this engine is a replica of (set by the control plane's reconciler;
    the agent passes it through untouched)."""
    deployment_revision: Annotated[int, Meta(ge=1)] | None = None
    """The deployment revision the replica was started from."""
    replica: Annotated[str, Meta(pattern=r"^[a-z0-9]{1,32}$")] | None = None
    """The replica's id within its deployment (chosen by the reconciler)."""

    def __post_init__(self) -> None:
        for name in (self.model, self.served_model_name):
            if name is not None and (".." in name.split("/") or name.startswith("-")):
                raise ValueError(f"model name {name!r} is not allowed (no '..' or leading '-')")
        if self.dtype is not None and self.dtype not in {
            "auto",
            "half",
            "float16",
            "bfloat16",
            "float",
            "float32",
        }:
            raise ValueError(
                f"dtype {self.dtype!r} is not one of auto, half, float16, bfloat16, float, float32"
            )
        if self.gpu_ids is not None and len(set(self.gpu_ids)) != len(self.gpu_ids):
            raise ValueError("gpu_ids must not repeat")

    @property
    def name(self) -> str:
        """The model name clients send."""
        return self.served_model_name or self.model


class EngineSpec(EngineSpecView, kw_only=True, forbid_unknown_fields=True):
    """A typed launch request. The agent maps it to a fixed argv per runtime.

    There is deliberately no field for a command, extra arguments or environment, and
    unknown fields are rejected: the launch API is a security boundary.
    """


class EngineInfo(Struct, kw_only=True):
    """One engine as its agent (or the coordinator, for registered engines) sees it."""

    id: str
    model: str
    """Served model name (what clients put in ``model``)."""
    kind: EngineKind = EngineKind.LLM
    runtime: Runtime = Runtime.VLLM
    host: str = "127.0.0.1"
    port: int = 0
    url: str = ""
    """Base URL without ``/v1``, e.g. ``http://10.0.0.5:8900``."""
    state: EngineState = EngineState.STARTING
    reason: str = ""
    incarnation: int = 0
    created_at: float = 0.0
    state_changed_at: float = 0.0
    last_heartbeat: float | None = None
    gpu_ids: list[int] = msgspec.field(default_factory=list)
    pid: int | None = None
    load: EngineLoad = msgspec.field(default_factory=EngineLoad)
    agent_id: str | None = None
    restarts: int = 0
    spec: EngineSpecView | None = None

    @property
    def routable(self) -> bool:
        return is_routable(self.state)


class GpuProcess(Struct, kw_only=True):
    pid: int
    used_memory_bytes: int | None = None


class GpuInfo(Struct, kw_only=True):
    """One GPU as NVML reports it; a field NVML cannot read is ``None``."""

    index: int
    uuid: str | None = None
    name: str | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_reserved_bytes: int | None = None
    """Held by the driver; not in ``memory_used_bytes`` (as ``nvidia-smi`` counts)."""
    utilization_percent: float | None = None
    memory_utilization_percent: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    processes: list[GpuProcess] = msgspec.field(default_factory=list)
    healthy: bool = True
    """``False`` while the agent holds the GPU in quarantine after a fault (critical XID,
    uncorrectable ECC errors, pending row remapping or page retirement): no engine is
    placed or restarted on it until an operator clears it. Older agents omit it."""
    fault: str | None = None
    """Why the GPU is quarantined (``None`` when healthy)."""


class HostMetrics(Struct, kw_only=True):
    cpu_count: int | None = None
    cpu_percent: float | None = None
    load_average_1m: float | None = None
    memory_total_bytes: int | None = None
    memory_available_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_free_bytes: int | None = None
    """Of the filesystem holding ``SAGE_HOME``."""


class AgentReport(Struct, kw_only=True):
    """The agent's full snapshot, pushed with ``PUT /v1/agents/{agent_id}``.

    Idempotent: the coordinator replaces what it knew about this agent with it.
    """

    agent_id: str
    host: str
    """Address engines are reachable at from the gateway."""
    url: str
    """Base URL of the agent's own API."""
    version: str = ""
    incarnation: int = 0
    """Agent boot epoch; a report with a lower value than the last accepted one is stale."""
    sent_at: float = 0.0
    port_range: tuple[int, int] = (8900, 8999)
    gpus: list[GpuInfo] = msgspec.field(default_factory=list)
    gpu_error: str | None = None
    host_metrics: HostMetrics | None = None
    engines: list[EngineInfo] = msgspec.field(default_factory=list)
    gpu_free_runtimes: list[Runtime] = msgspec.field(default_factory=list)
    """Runtimes this agent runs without GPUs (``simulated`` always; ``vllm`` with a CPU
    build), so placement does not require GPUs for them here."""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    """The host's labels (``SAGE_AGENT_LABELS=gpu=h100,zone=a``), for deployments'
    placement constraints."""


class AgentReportReply(Struct, kw_only=True):
    """The coordinator's answer to a report: the lease it granted."""

    lease_ttl_s: float
    heartbeat_interval_s: float
    revision: int


class AgentSummary(Struct, kw_only=True):
    """An agent as the coordinator tracks it (``GET /v1/management/agents``)."""

    agent_id: str
    host: str
    url: str
    version: str = ""
    incarnation: int = 0
    lost: bool = False
    lease_expires_in_s: float = 0.0
    last_report_at: float | None = None
    engines: int = 0
    gpus: list[GpuInfo] = msgspec.field(default_factory=list)
    gpu_error: str | None = None
    host_metrics: HostMetrics | None = None
    gpu_free_runtimes: list[Runtime] = msgspec.field(default_factory=list)
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    cordoned: bool = False
    """No new engine is placed on this host (``sage agent cordon``)."""
    draining: bool = False
    """Cordoned, and its deployment replicas are being moved elsewhere (``sage agent drain``)."""


class Backend(Struct, kw_only=True):
    """A routing-table row: one READY engine."""

    id: str
    model: str
    kind: EngineKind
    url: str
    state: EngineState = EngineState.READY
    load: EngineLoad = msgspec.field(default_factory=EngineLoad)
    incarnation: int = 0
    agent_id: str | None = None

    @property
    def base_url(self) -> str:
        """OpenAI base URL (with ``/v1``)."""
        return f"{self.url.rstrip('/')}/v1"


class RoutingTable(Struct, kw_only=True):
    """The routable engines at a revision (``GET /v1/management/backends``)."""

    revision: int
    backends: list[Backend] = msgspec.field(default_factory=list)
    generated_at: float = 0.0
    unavailable_models: list[str] = msgspec.field(default_factory=list)
    """Models that have engines, none of them READY (starting, draining, failed, host
    lost). The gateway answers 503 + ``Retry-After`` for these and 404 for the rest."""

    @property
    def llm_backends(self) -> list[Backend]:
        return [b for b in self.backends if b.kind is EngineKind.LLM]

    @property
    def embedding_backends(self) -> list[Backend]:
        return [b for b in self.backends if b.kind is EngineKind.EMBEDDING]

    def models(self, kind: EngineKind | None = None) -> list[str]:
        """Sorted distinct model names, optionally of one kind."""
        return sorted({b.model for b in self.backends if kind is None or b.kind is kind})


class EngineStartRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/management/engines/start``: a spec and, optionally, the host to use."""

    spec: EngineSpec
    host: str | None = None
    """Agent id or host address; placed automatically when omitted."""


class EngineStopRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/management/engines/stop``."""

    engine_id: str
    drain: bool = True
    timeout_s: Seconds | None = None


class RegisterEngineRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/management/engines/register``: an engine no agent manages."""

    model: ModelName
    url: Annotated[str, Meta(max_length=2048)]
    kind: EngineKind = EngineKind.LLM
    id: EngineId | None = None


class ErrorDetail(Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorBody(Struct, kw_only=True):
    """The OpenAI error shape every component answers with."""

    error: ErrorDetail


def error_body(
    message: str, type_: str, code: str | int | None = None, param: str | None = None
) -> ErrorBody:
    """Build an OpenAI-shaped error body."""
    return ErrorBody(error=ErrorDetail(message=message, type=type_, code=code, param=param))


_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    """Encode a wire model (or plain data) as JSON bytes."""
    return _encoder.encode(obj)


def decode(data: bytes | str, type_: type[T]) -> T:
    """Decode JSON into ``type_``; raises :class:`msgspec.ValidationError` on bad input."""
    return msgspec.json.decode(data, type=type_)


def is_valid_model_name(name: str) -> bool:
    """Whether ``name`` may be used as a model name (same rule as :class:`EngineSpec`)."""
    return bool(_MODEL_RE.match(name)) and ".." not in name.split("/")
