"""State and decisions shared by the sync and async clients (pure: no I/O).

The shells (``_sync_client``, ``_async_client``) do the HTTP and the waiting;
everything they decide — which URLs, which headers, which error to raise — is
here, so both behave the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from sage.unified.sdk.client._config import ClientConfig
from sage.unified.sdk.client._discovery import DiscoveryPolicy, TableCache
from sage.unified.sdk.client._errors import (
    PERMANENT_ERRORS,
    APIStatusError,
    AttemptRecord,
    NoBackendAvailableError,
)
from sage.unified.sdk.client._failover import AttemptPlan, RetryEvent, TargetHealth
from sage.unified.sdk.client._routing import START_HINT, RoundRobin, backends_for, resolve_model
from sage.unified.sdk.models import EngineKind, RoutingTable

__all__ = ["GATEWAY_HINT", "ClientCore", "describe_exception"]

logger = logging.getLogger("sage.unified.sdk.client")

GATEWAY_HINT = "is the gateway running? `sage gateway start`"
# A refresh on demand (model not in the table) at most this often.
_ON_DEMAND_REFRESH_S = 0.5


def describe_exception(exc: BaseException) -> str:
    """A short one-line reason: the exception's text, or its class name."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ClientCore:
    """Configuration plus the per-client memory: routing table, target health, rotation."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        on_retry: Callable[[RetryEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_wait_s: float = 30.0,
    ) -> None:
        self.config = config
        self.on_retry = on_retry
        self.clock = clock
        self.cache = TableCache(clock=clock)
        self.health = TargetHealth(clock=clock)
        self.rotation = RoundRobin()
        self.policy = DiscoveryPolicy(
            refresh_interval_s=config.refresh_interval_s or 30.0,
            watch=config.watch,
            max_wait_s=max_wait_s,
        )

    # ----------------------------------------------------------------- headers
    def _bearer(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def inference_headers(self) -> dict[str, str]:
        """Headers of an inference request (the engine's key in direct mode)."""
        if self.config.direct:
            return self._bearer(self.config.engine_api_key)
        return self._bearer(self.config.api_key)

    def management_headers(self) -> dict[str, str]:
        return self._bearer(self.config.api_key)

    # ------------------------------------------------------------------- table
    def table_is_fresh(self, background: bool) -> bool:
        """Whether the cached table can be used without reading it again."""
        age = self.cache.age()
        if age is None:
            return False
        return (
            background
            or self.config.refresh_interval_s == 0
            or age < self.config.refresh_interval_s
        )

    def may_refresh_on_demand(self) -> bool:
        age = self.cache.age()
        return age is None or age >= _ON_DEMAND_REFRESH_S

    def refreshed(self, table: RoutingTable, *, asked_wait: float | None, started: float) -> float:
        """Keep a table read in the background; seconds until the next read."""
        changed = self.cache.update(table)
        return self.policy.after_success(
            asked_wait=asked_wait, changed=changed, elapsed=self.clock() - started
        )

    def refresh_failed(self, exc: Exception) -> float:
        """Note a failed background read of the table; seconds until the next try."""
        self.cache.record_error(describe_exception(exc))
        logger.debug("routing table refresh failed: %s", describe_exception(exc))
        return self.policy.after_error(permanent=isinstance(exc, PERMANENT_ERRORS))

    def read_on_demand_failed(self, exc: Exception) -> RoutingTable | None:
        """The table to use after a read on demand failed: the cached one, if any.

        Raises:
            NoBackendAvailableError: direct mode and no table was ever read.
        """
        self.cache.record_error(describe_exception(exc))
        if self.config.direct and self.cache.table is None:
            attempt = AttemptRecord(
                url=self.config.control_plane_url or "", error=describe_exception(exc)
            )
            raise self.table_unavailable([attempt]) from exc
        return self.cache.table

    def management_unreachable(self, exc: Exception) -> NoBackendAvailableError:
        """The error of :meth:`backends` when no management URL answered."""
        attempt = AttemptRecord(
            url=", ".join(self.config.management_urls), error=describe_exception(exc)
        )
        return self.table_unavailable([attempt])

    def management_targets(self) -> list[str]:
        return self.health.order(self.config.management_urls)

    def table_unavailable(self, attempts: Sequence[AttemptRecord]) -> NoBackendAvailableError:
        hint = (
            GATEWAY_HINT
            if not self.config.direct
            else "is the control plane running? `sage gateway start`"
        )
        return NoBackendAvailableError(f"cannot read the routing table; {hint}", attempts)

    # ------------------------------------------------------------------ models
    def default_model(self, kind: EngineKind) -> str | None:
        if kind is EngineKind.EMBEDDING:
            return self.config.default_embedding_model
        return self.config.default_llm_model

    def resolve_from(self, kind: EngineKind, served: Sequence[str], source: str) -> str:
        return resolve_model(None, None, kind, served, source=source)

    def source_name(self) -> str:
        if self.config.direct:
            return f"the control plane at {self.config.control_plane_url}"
        return f"the gateway at {', '.join(self.config.gateway_urls)}"

    # ----------------------------------------------------------------- targets
    def inference_targets(
        self, table: RoutingTable | None, model: str, kind: EngineKind
    ) -> list[str]:
        """Base URLs to try for one call.

        Raises:
            NoBackendAvailableError: direct mode and no backend of the model.
        """
        if not self.config.direct:
            return self.health.order(self.config.gateway_urls)
        if table is None:
            raise self.table_unavailable(())
        return self.health.order(self.rotation.order(backends_for(table, model, kind)))

    def new_plan(self, targets: Sequence[str]) -> AttemptPlan:
        return AttemptPlan(
            targets,
            max_attempts=self.config.max_attempts,
            deadline=self.clock() + self.config.timeout,
            clock=self.clock,
        )

    def report_retry(self, plan: AttemptPlan, delay: float) -> None:
        if self.on_retry is not None:
            failure = plan.failures[-1]
            self.on_retry(RetryEvent(plan.attempts_made, failure.url, failure.error, delay))

    def attempt_failed(
        self,
        plan: AttemptPlan,
        url: str,
        error: str,
        *,
        retry_after: float | None,
        last_status: APIStatusError | None,
    ) -> float:
        """Record a failed attempt; seconds to wait before the next one.

        Raises:
            NoBackendAvailableError, APIStatusError: no attempt is left (:meth:`exhausted`).
        """
        self.health.record_failure(url)
        delay = plan.record_failure(url, error, retry_after)
        if delay is None:
            raise self.exhausted(plan, last_status)
        self.report_retry(plan, delay)
        return delay

    def exhausted(self, plan: AttemptPlan, last_status: APIStatusError | None) -> Exception:
        """The error after the last attempt failed."""
        if last_status is not None and plan.failures and plan.failures[-1].url == last_status.url:
            return type(last_status)(
                last_status.message,
                status_code=last_status.status_code,
                body=last_status.body,
                error_type=last_status.error_type,
                error_code=last_status.error_code,
                url=last_status.url,
                attempts=plan.failures[:-1],
            )
        hint = f"the engines may have stopped; {START_HINT}" if self.config.direct else GATEWAY_HINT
        return NoBackendAvailableError(
            f"no attempt reached a server ({plan.attempts_made} attempts); {hint}", plan.failures
        )
