"""The Python client of the SAGE Unified Gateway.

``UnifiedInferenceClient`` (sync) and ``AsyncUnifiedInferenceClient`` (anyio) send
OpenAI requests to the gateways (``SAGE_GATEWAY_URL``) with failover, or route
to engines directly from a control plane's routing table. The management and
agent clients are typed wrappers of the control APIs used by the CLI.
"""

from __future__ import annotations

from sage.unified.sdk.client._async_client import AsyncUnifiedInferenceClient
from sage.unified.sdk.client._async_stream import AsyncChatStream
from sage.unified.sdk.client._config import ClientConfig
from sage.unified.sdk.client._engine import AsyncEngineClient, EngineAnswer
from sage.unified.sdk.client._errors import (
    APIStatusError,
    AttemptRecord,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    GatewayUnreachableError,
    InvalidResponseError,
    ModelNotSpecifiedError,
    NoBackendAvailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SageClientError,
    ServerError,
    StreamInterruptedError,
    UnprocessableEntityError,
    status_error,
)
from sage.unified.sdk.client._executor import (
    AsyncCaller,
    ErrorTranslator,
    RawReply,
    SyncCaller,
    async_http_pool,
    sync_http_pool,
)
from sage.unified.sdk.client._failover import RetryEvent, is_testing, set_testing
from sage.unified.sdk.client._management import (
    AgentClient,
    AsyncAgentClient,
    AsyncGatewayManagementClient,
    GatewayManagementClient,
    HostGpus,
)
from sage.unified.sdk.client._results import ChatResult, CompletionResult, EmbeddingResult, Usage
from sage.unified.sdk.client._sync_client import UnifiedInferenceClient
from sage.unified.sdk.client._sync_stream import ChatStream

__all__ = [
    "APIStatusError",
    "AgentClient",
    "AsyncAgentClient",
    "AsyncCaller",
    "AsyncChatStream",
    "AsyncEngineClient",
    "AsyncGatewayManagementClient",
    "AsyncUnifiedInferenceClient",
    "AttemptRecord",
    "AuthenticationError",
    "BadRequestError",
    "ChatResult",
    "ChatStream",
    "ClientConfig",
    "CompletionResult",
    "ConfigurationError",
    "ConflictError",
    "EmbeddingResult",
    "EngineAnswer",
    "ErrorTranslator",
    "GatewayManagementClient",
    "GatewayUnreachableError",
    "HostGpus",
    "InvalidResponseError",
    "ModelNotSpecifiedError",
    "NoBackendAvailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RawReply",
    "RetryEvent",
    "SageClientError",
    "ServerError",
    "StreamInterruptedError",
    "SyncCaller",
    "UnifiedInferenceClient",
    "UnprocessableEntityError",
    "Usage",
    "async_http_pool",
    "is_testing",
    "set_testing",
    "status_error",
    "sync_http_pool",
]
