"""The public names of ``sage.unified.sdk.client`` (changing them breaks users)."""

from __future__ import annotations

import sage.unified.sdk.client as client_pkg
from sage.unified.sdk.client import (
    APIStatusError,
    NoBackendAvailableError,
    NotFoundError,
    SageClientError,
    ServerError,
    StreamInterruptedError,
)


def test_public_names() -> None:
    assert set(client_pkg.__all__) == {
        "APIStatusError", "AgentClient", "AsyncAgentClient", "AsyncChatStream",
        "AsyncGatewayManagementClient", "AsyncUnifiedInferenceClient", "AttemptRecord",
        "AuthenticationError", "BadRequestError", "ChatResult", "ChatStream", "ClientConfig",
        "CompletionResult", "ConfigurationError", "ConflictError", "EmbeddingResult",
        "GatewayManagementClient", "GatewayUnreachableError", "HostGpus", "InvalidResponseError",
        "ModelNotSpecifiedError", "NoBackendAvailableError", "NotFoundError", "PermissionDeniedError",
        "RateLimitError", "RetryEvent", "SageClientError", "ServerError", "StreamInterruptedError",
        "UnifiedInferenceClient", "UnprocessableEntityError", "Usage", "is_testing", "set_testing",
        # The protocol's executors and what components share with them.
        "AsyncCaller", "SyncCaller", "RawReply", "ErrorTranslator", "AsyncEngineClient",
        "EngineAnswer", "async_http_pool", "sync_http_pool", "status_error",
    }  # fmt: skip
    for name in client_pkg.__all__:
        assert getattr(client_pkg, name) is not None


def test_one_error_hierarchy() -> None:
    for name in client_pkg.__all__:
        obj = getattr(client_pkg, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, SageClientError), name
    assert issubclass(NotFoundError, APIStatusError)
    assert issubclass(ServerError, APIStatusError)
    assert not issubclass(NoBackendAvailableError, APIStatusError)
    assert not issubclass(StreamInterruptedError, APIStatusError)
