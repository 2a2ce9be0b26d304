"""The Python client of the SAGE Unified Gateway.

``UnifiedInferenceClient`` (sync) and ``AsyncUnifiedInferenceClient`` (anyio) send
OpenAI requests to the gateways (``SAGE_GATEWAY_URL``) with failover, or route
to engines directly from a control plane's routing table. The management and
agent clients are typed wrappers of the control APIs used by the CLI.
"""

from __future__ import annotations

from sage.unified.sdk.client._async_client import AsyncChatStream, AsyncUnifiedInferenceClient
from sage.unified.sdk.client._config import ClientConfig
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
from sage.unified.sdk.client._sync_client import ChatStream, UnifiedInferenceClient

__all__ = [
    "APIStatusError",
    "AgentClient",
    "AsyncAgentClient",
    "AsyncChatStream",
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
    "GatewayManagementClient",
    "GatewayUnreachableError",
    "HostGpus",
    "InvalidResponseError",
    "ModelNotSpecifiedError",
    "NoBackendAvailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryEvent",
    "SageClientError",
    "ServerError",
    "StreamInterruptedError",
    "UnifiedInferenceClient",
    "UnprocessableEntityError",
    "Usage",
    "is_testing",
    "set_testing",
]
