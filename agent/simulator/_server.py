"""The simulated engine's request handling: state, routes, shared answer paths.

Asyncio only: the simulator is a standalone process, and a per-request framework
would cost more than the whole simulated engine (the target is >= 8,000
non-streaming requests/s on one core). Instant requests (no latency, free slot
and blocks) are answered synchronously inside ``data_received``; everything else
runs in one task per connection (:mod:`._connection`).

Routes depend on ``--kind`` as vLLM's depend on the model's tasks (:mod:`._config`);
a path this engine does not serve answers vLLM's 404 ``{"detail": "Not Found"}``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial

import msgspec

from sage.unified.agent.simulator import _generate, _pooling, _utility
from sage.unified.agent.simulator._config import SimulatorConfig
from sage.unified.agent.simulator._connection import (
    MAX_BODY_BYTES,
    Connection,
    Handler,
    Outcome,
    Request,
)
from sage.unified.agent.simulator._engine import (
    RuntimeSettings,
    Scheduler,
    SimStats,
    sleep_until,
)
from sage.unified.agent.simulator._errors import (
    BadRequestError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    ServiceUnavailableError,
)
from sage.unified.agent.simulator._http import (
    CHUNKED_END,
    CONTENT_JSON,
    CONTENT_METRICS,
    CONTENT_TEXT,
    chunk,
    response,
)
from sage.unified.agent.simulator._kv_publisher import KVEventPublisher
from sage.unified.agent.simulator._kvcache import PrefixCache, SequenceBlocks
from sage.unified.agent.simulator._metrics import EngineMetrics
from sage.unified.agent.simulator._responses import error_body, error_event, error_of, models_body
from sage.unified.agent.simulator._text import output_pieces
from sage.unified.agent.simulator._timing import PrefillQueue
from sage.unified.agent.simulator._tokenizer import Tokenizer

__all__ = ["MAX_BODY_BYTES", "Connection", "Simulator"]

_MAX_REQUEST_ID = 256
_VERSION = b'{"version":"0.18.0-sim"}'
_NOT_FOUND = b'{"detail":"Not Found"}'
_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'
_ABORT_MESSAGE = "Request aborted: the server is shutting down."

Endpoint = Callable[["Simulator", Connection, Request], Outcome]
Routes = dict[bytes, dict[bytes, Endpoint]]


def _post(endpoint: Endpoint, *paths: bytes) -> Routes:
    return {path: {b"POST": endpoint} for path in paths}


_GENERATE: Routes = {
    **_post(_generate.chat, b"/v1/chat/completions"),
    **_post(_generate.completions, b"/v1/completions"),
    **_post(_generate.responses, b"/v1/responses"),
}
_SCORE: Routes = {
    **_post(_pooling.score, b"/score", b"/v1/score"),
    **_post(_pooling.rerank, b"/rerank", b"/v1/rerank", b"/v2/rerank"),
}
_CLASSIFY: Routes = {
    **_post(_pooling.classify, b"/classify"),
    **_post(_pooling.pooling, b"/pooling"),
}
_KIND_ROUTES: dict[str, Routes] = {
    "llm": _GENERATE,
    "transcription": {
        **_GENERATE,
        **_post(_utility.transcriptions, b"/v1/audio/transcriptions"),
    },
    "embedding": {
        **_post(_pooling.embeddings, b"/v1/embeddings"),
        **_post(_pooling.pooling, b"/pooling"),
        **_SCORE,
    },
    "classify": _CLASSIFY,
    "rerank": {**_CLASSIFY, **_SCORE},
}


class Simulator:
    """Engine state and request handling; one per process.

    Args:
        config: the start-up configuration.
        on_crash: called for ``--crash-after`` and ``POST /sim/crash``; must not return
            (it ends the process with ``os._exit(1)``).
        publisher: where KV cache events go (``--kv-events-config``), if anywhere.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        on_crash: Callable[[], None],
        publisher: KVEventPublisher | None = None,
    ) -> None:
        self.config = config
        self.settings = RuntimeSettings.from_config(config)
        self.rng = random.Random(config.seed)
        self.tokenizer = Tokenizer()
        self.tokenizer.register(output_pieces())
        self.cache = PrefixCache(
            config.kv_blocks, config.block_size, record_events=publisher is not None
        )
        self.scheduler = Scheduler(config.max_num_seqs, self.cache)
        self.prefill = PrefillQueue()
        self.metrics = EngineMetrics(config.served_name)
        self.stats = SimStats()
        self.connections: set[Connection] = set()
        self.inflight: set[asyncio.Task[None]] = set()
        self.draining = False
        self.aborting = False
        self.served = config.served_name
        self._publisher = publisher
        self._on_crash = on_crash
        self._rid_prefix = os.urandom(8).hex()
        self._rid_counter = 0
        self._models = models_body(
            self.served, config.model, int(time.time()), config.max_model_len
        )
        routes: Routes = {
            b"/v1/models": {b"GET": Simulator._get_models},
            b"/health": {b"GET": Simulator._health},
            b"/ping": {b"GET": Simulator._ping, b"POST": Simulator._ping},
            b"/version": {b"GET": Simulator._version},
            b"/load": {b"GET": Simulator._load},
            b"/metrics": {b"GET": Simulator._get_metrics},
            b"/tokenize": {b"POST": _utility.tokenize},
            b"/detokenize": {b"POST": _utility.detokenize},
            **_KIND_ROUTES[config.kind],
        }
        if config.enable_control:
            routes[b"/sim/config"] = {
                b"GET": Simulator._get_sim_config,
                b"POST": Simulator._post_sim_config,
            }
            routes[b"/sim/stats"] = {b"GET": Simulator._sim_stats}
            routes[b"/sim/crash"] = {b"POST": Simulator._sim_crash}
            routes[b"/reset_prefix_cache"] = {b"POST": Simulator._reset_prefix_cache}
        self._routes: dict[bytes, dict[bytes, Handler]] = {
            path: {method: partial(fn, self) for method, fn in methods.items()}
            for path, methods in routes.items()
        }

    # -- dispatch ---------------------------------------------------------------------

    def handle(self, conn: Connection, req: Request) -> Outcome:
        """Answer ``req``: bytes to write now, or a coroutine that writes itself."""
        self.stats.total_requests += 1
        url = req.url
        path = url.partition(b"?")[0] if b"?" in url else url
        methods = self._routes.get(path)
        keep_alive = req.keep_alive and not req.too_large and not self.draining
        if methods is None:
            return response(404, _NOT_FOUND, keep_alive=keep_alive)
        handler = methods.get(req.method)
        if handler is None:
            return response(405, _NOT_ALLOWED, keep_alive=keep_alive)
        try:
            if req.too_large:
                raise PayloadTooLargeError(f"Request body exceeds {MAX_BODY_BYTES} bytes")
            if self.draining and path not in (b"/metrics", b"/load"):
                self.stats.rejected_shutdown += 1
                raise ServiceUnavailableError("The server is shutting down.")
            return handler(conn, req)
        except RequestError as exc:
            return response(
                exc.status, error_of(exc), request_id=req.request_id, keep_alive=keep_alive
            )

    # -- helpers for the endpoint modules ---------------------------------------------

    def request_id(self, req: Request) -> bytes:
        """The request's ``X-Request-Id``, or a fresh one (also set on ``req``)."""
        rid = req.request_id
        if rid is None or len(rid) > _MAX_REQUEST_ID:
            self._rid_counter += 1
            rid = b"%s%016x" % (self._rid_prefix.encode(), self._rid_counter)
            req.request_id = rid
        return rid

    def count_inference(self, req: Request) -> None:
        """Count an inference request (and crash on ``--crash-after``)."""
        stats = self.stats
        stats.inference_requests += 1
        path = req.url.decode("latin-1")
        stats.per_endpoint[path] = stats.per_endpoint.get(path, 0) + 1
        crash_after = self.settings.crash_after
        if crash_after is not None and stats.inference_requests > crash_after:
            self._on_crash()

    def check_model(self, model: str | None) -> None:
        """Raise vLLM's 404 for a model this engine does not serve."""
        if model is not None and model != self.served:
            raise NotFoundError(f"The model `{model}` does not exist.", param="model")

    def inject(self) -> bool:
        """Injected failure (raises) or hang (returns True)."""
        s = self.settings
        if s.failure_rate > 0 and self.rng.random() < s.failure_rate:
            self.stats.failed += 1
            raise InternalServerError("Injected failure (simulator --failure-rate).")
        if s.hang_rate > 0 and self.rng.random() < s.hang_rate:
            self.stats.hung += 1
            return True
        return False

    def publish_events(self) -> None:
        """Send the KV cache's pending events, if a publisher is configured."""
        if self._publisher is not None:
            self._publisher.publish(self.cache.take_events())

    def finish(self, seqs: list[SequenceBlocks], tokens: Sequence[Sequence[int]] | None) -> None:
        """End a running request (see :meth:`Scheduler.finish`) and publish the events."""
        self.scheduler.finish(seqs, tokens)
        self.publish_events()

    def aborted(self, conn: Connection, request_id: bytes | None, *, head_sent: bool) -> None:
        """Count a cancelled request; at a shutdown abort, tell the client and close."""
        self.stats.aborted += 1
        self.metrics.success["abort"] += 1
        if not self.aborting or conn.closed:
            return
        if head_sent:
            conn.write(chunk(error_event(_ABORT_MESSAGE, "InternalServerError", 500)) + CHUNKED_END)
        else:
            body = error_body(_ABORT_MESSAGE, "InternalServerError", 500)
            conn.write(response(500, body, request_id=request_id, keep_alive=False))
        conn.close()

    def answer_once(
        self,
        conn: Connection,
        req: Request,
        build: Callable[[], bytes],
        *,
        prompt_tokens: int,
        hang: bool,
        content_type: bytes = CONTENT_JSON,
    ) -> Outcome:
        """Answer a one-shot inference request (pooling, scoring, transcription).

        It takes a running slot (no KV blocks), waits for its prefill of
        ``prompt_tokens`` and ``--ttft-ms``, then answers ``build()``.
        """
        if not hang and self.settings.instant:
            seqs = self.scheduler.try_admit(())
            if seqs is not None:
                try:
                    body = build()
                finally:
                    self.scheduler.finish(seqs, None)
                self._record_once(prompt_tokens, 0.0)
                return response(
                    200,
                    body,
                    content_type=content_type,
                    request_id=req.request_id,
                    keep_alive=req.keep_alive,
                )
        return self._answer_later(conn, req, build, prompt_tokens, hang, content_type)

    async def _answer_later(
        self,
        conn: Connection,
        req: Request,
        build: Callable[[], bytes],
        prompt_tokens: int,
        hang: bool,
        content_type: bytes,
    ) -> None:
        start = time.monotonic()
        try:
            seqs = await self.scheduler.admit(())
            try:
                if hang:
                    await asyncio.get_running_loop().create_future()
                settings = self.settings
                done = self.prefill.schedule(
                    time.monotonic(), prompt_tokens, settings.prefill_tokens_per_s
                )
                await sleep_until(done + settings.ttft_ms / 1000.0)
                conn.write(
                    response(
                        200,
                        build(),
                        content_type=content_type,
                        request_id=req.request_id,
                        keep_alive=req.keep_alive,
                    )
                )
            finally:
                self.scheduler.finish(seqs, None)
        except asyncio.CancelledError:
            self.aborted(conn, req.request_id, head_sent=False)
            raise
        self._record_once(prompt_tokens, time.monotonic() - start)

    def _record_once(self, prompt_tokens: int, latency: float) -> None:
        self.metrics.record_finished(
            prompt_tokens=prompt_tokens,
            generation_tokens=0,
            reason="stop",
            ttft_s=latency,
            e2e_s=latency,
        )

    # -- plain endpoints ----------------------------------------------------------------

    def _get_models(self, conn: Connection, req: Request) -> Outcome:
        return response(
            200, self._models, request_id=self.request_id(req), keep_alive=req.keep_alive
        )

    def _health(self, conn: Connection, req: Request) -> Outcome:
        status = 200 if self.settings.healthy else 503
        return response(status, b"", content_type=CONTENT_TEXT, keep_alive=req.keep_alive)

    def _ping(self, conn: Connection, req: Request) -> Outcome:
        return response(200, b"", content_type=CONTENT_TEXT, keep_alive=req.keep_alive)

    def _version(self, conn: Connection, req: Request) -> Outcome:
        return response(200, _VERSION, keep_alive=req.keep_alive)

    def _load(self, conn: Connection, req: Request) -> Outcome:
        load = self.scheduler.running + self.scheduler.waiting
        return response(200, b'{"server_load":%d}' % load, keep_alive=req.keep_alive)

    def _get_metrics(self, conn: Connection, req: Request) -> Outcome:
        sched = self.scheduler
        cache = self.cache
        body = self.metrics.render(
            running=sched.running,
            waiting=sched.waiting,
            kv_cache_usage=cache.usage,
            prefix_cache_queries=cache.queries,
            prefix_cache_hits=cache.hits,
            num_gpu_blocks=cache.num_blocks,
            block_size=cache.block_size,
        )
        return response(200, body, content_type=CONTENT_METRICS, keep_alive=req.keep_alive)

    # -- control (--enable-control) ------------------------------------------------------

    def _get_sim_config(self, conn: Connection, req: Request) -> Outcome:
        return response(200, msgspec.json.encode(asdict(self.settings)), keep_alive=req.keep_alive)

    def _post_sim_config(self, conn: Connection, req: Request) -> Outcome:
        try:
            changes = msgspec.json.decode(req.payload() or b"{}")
        except msgspec.DecodeError as exc:
            raise BadRequestError(f"Invalid JSON in request body: {exc}") from None
        if not isinstance(changes, dict):
            raise BadRequestError("expected a JSON object")
        self.settings.update(changes)
        return self._get_sim_config(conn, req)

    def _sim_stats(self, conn: Connection, req: Request) -> Outcome:
        cache = self.cache
        stats = asdict(self.stats)
        stats.update(
            running=self.scheduler.running,
            waiting=self.scheduler.waiting,
            connections=len(self.connections),
            draining=self.draining,
            settings=asdict(self.settings),
            kv_cache={
                "num_blocks": cache.num_blocks,
                "block_size": cache.block_size,
                "free_blocks": cache.free_blocks,
                "cached_blocks": cache.cached_blocks,
                "prefix_cache_queries": cache.queries,
                "prefix_cache_hits": cache.hits,
            },
        )
        return response(200, msgspec.json.encode(stats), keep_alive=req.keep_alive)

    def _sim_crash(self, conn: Connection, req: Request) -> Outcome:
        self._on_crash()
        raise InternalServerError("crash handler returned")  # pragma: no cover

    def _reset_prefix_cache(self, conn: Connection, req: Request) -> Outcome:
        # vLLM's dev-mode route; it cannot reset while requests hold blocks.
        if not self.cache.reset():
            raise BadRequestError("Cannot reset the prefix cache while requests are running.")
        self.publish_events()
        return response(200, b"", content_type=CONTENT_TEXT, keep_alive=req.keep_alive)
