"""The simulator's HTTP/1.1 server: a raw ``asyncio.Protocol`` over httptools.

Asyncio only: the simulator is a standalone process, and a per-request framework
would cost more than the whole simulated engine (the target is >= 8,000
non-streaming requests/s on one core). Requests on one connection are answered in
order (pipelining-safe). Instant requests (no latency, free slot) are answered
synchronously inside ``data_received``; everything else runs in one task per
connection, which a client disconnect or a shutdown abort cancels.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any

import httptools
import msgspec

from sage.unified.agent.simulator._config import SimulatorConfig
from sage.unified.agent.simulator._engine import RuntimeSettings, Scheduler, SimStats
from sage.unified.agent.simulator._errors import (
    BadRequestError,
    InternalServerError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    ServiceUnavailableError,
)
from sage.unified.agent.simulator._http import (
    CHUNKED_END,
    CONTENT_METRICS,
    CONTENT_TEXT,
    chunk,
    response,
    stream_head,
)
from sage.unified.agent.simulator._metrics import EngineMetrics
from sage.unified.agent.simulator._requests import (
    GenerationRequest,
    ParsedEmbedding,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from sage.unified.agent.simulator._responses import (
    DONE_EVENT,
    GenerationPlan,
    StreamTemplates,
    chat_body,
    completion_body,
    embedding_body,
    error_body,
    error_event,
    error_of,
    models_body,
    plan_generation,
)

__all__ = ["MAX_BODY_BYTES", "Connection", "Simulator"]

MAX_BODY_BYTES = 16 * 1024 * 1024
_MAX_REQUEST_ID = 256
_VERSION = b'{"version":"0.18.0-sim"}'

Outcome = bytes | Coroutine[Any, Any, None]
Handler = Callable[["Connection", "_Request"], Outcome]


def _stream_step(tpl: StreamTemplates, plan: GenerationPlan, step: int, *, chat: bool) -> bytes:
    """The SSE chunks of one decoding step: one token per choice (step 0 adds the role)."""
    fr = plan.finish_reason if step == plan.steps - 1 else None
    parts: list[bytes] = []
    for i, tokens in enumerate(plan.choices):
        if step == 0 and chat:
            parts.append(chunk(tpl.role(i)))
        parts.append(chunk(tpl.token(i, tokens[step], fr)))
    return b"".join(parts)


def _stream_tail(tpl: StreamTemplates, plan: GenerationPlan, parsed: GenerationRequest) -> bytes:
    """Optional usage chunk, ``[DONE]`` and the end of the chunked body."""
    tail = chunk(DONE_EVENT) + CHUNKED_END
    if parsed.include_usage:
        tail = chunk(tpl.usage(parsed.prompt_tokens, plan.completion_tokens)) + tail
    return tail


class _Request:
    __slots__ = ("body", "body_len", "keep_alive", "method", "request_id", "too_large", "url")

    def __init__(self) -> None:
        self.url = b""
        self.method = b"GET"
        self.body: list[bytes] = []
        self.body_len = 0
        self.keep_alive = True
        self.request_id: bytes | None = None
        self.too_large = False


class Simulator:
    """Engine state and request handling; one per process.

    Args:
        config: the start-up configuration.
        on_crash: called for ``--crash-after`` and ``POST /sim/crash``; must not return
            (it ends the process with ``os._exit(1)``).
    """

    def __init__(self, config: SimulatorConfig, on_crash: Callable[[], None]) -> None:
        self.config = config
        self.settings = RuntimeSettings.from_config(config)
        self.scheduler = Scheduler(config.max_num_seqs)
        self.rng = self.scheduler.rng
        self.rng.seed(config.seed)
        self.metrics = EngineMetrics(config.served_name)
        self.stats = SimStats()
        self.connections: set[Connection] = set()
        self.inflight: set[asyncio.Task[None]] = set()
        self.draining = False
        self.aborting = False
        self._on_crash = on_crash
        self._served = config.served_name
        self._rid_prefix = os.urandom(8).hex()
        self._rid_counter = 0
        self._models = models_body(
            self._served, config.model, int(time.time()), config.max_model_len
        )
        llm = config.kind == "llm"
        routes: dict[bytes, dict[bytes, Handler]] = {
            b"/v1/chat/completions": {
                b"POST": self._chat if llm else self._unsupported("Chat Completions")
            },
            b"/v1/completions": {
                b"POST": self._completions if llm else self._unsupported("Completions")
            },
            b"/v1/embeddings": {
                b"POST": self._embeddings if not llm else self._unsupported("Embeddings")
            },
            b"/v1/models": {b"GET": self._get_models},
            b"/health": {b"GET": self._health},
            b"/ping": {b"GET": self._ping, b"POST": self._ping},
            b"/version": {b"GET": self._version},
            b"/load": {b"GET": self._load},
            b"/metrics": {b"GET": self._get_metrics},
        }
        if config.enable_control:
            routes[b"/sim/config"] = {b"GET": self._get_sim_config, b"POST": self._post_sim_config}
            routes[b"/sim/stats"] = {b"GET": self._sim_stats}
            routes[b"/sim/crash"] = {b"POST": self._sim_crash}
        self._routes = routes

    # -- dispatch ---------------------------------------------------------------

    def handle(self, conn: Connection, req: _Request) -> Outcome:
        """Answer ``req``: bytes to write now, or a coroutine that writes itself."""
        self.stats.total_requests += 1
        url = req.url
        path = url.partition(b"?")[0] if b"?" in url else url
        methods = self._routes.get(path)
        try:
            if methods is None:
                raise NotFoundError(f"Not Found: {path.decode('latin-1')[:200]}")
            handler = methods.get(req.method)
            if handler is None:
                raise MethodNotAllowedError(f"Method {req.method.decode('latin-1')} not allowed")
            if req.too_large:
                raise PayloadTooLargeError(f"Request body exceeds {MAX_BODY_BYTES} bytes")
            if self.draining and path not in (b"/metrics", b"/load"):
                self.stats.rejected_shutdown += 1
                raise ServiceUnavailableError("The server is shutting down.")
            return handler(conn, req)
        except RequestError as exc:
            keep_alive = req.keep_alive and not req.too_large and not self.draining
            return response(
                exc.status, error_of(exc), request_id=req.request_id, keep_alive=keep_alive
            )

    def _request_id(self, req: _Request) -> bytes:
        rid = req.request_id
        if rid is None or len(rid) > _MAX_REQUEST_ID:
            self._rid_counter += 1
            rid = b"%s%016x" % (self._rid_prefix.encode(), self._rid_counter)
            req.request_id = rid
        return rid

    # -- inference ----------------------------------------------------------------

    def _unsupported(self, api: str) -> Handler:
        def handler(conn: Connection, req: _Request) -> Outcome:
            self._count_inference(req)
            raise BadRequestError(f"The model does not support {api} API")

        return handler

    def _count_inference(self, req: _Request) -> None:
        stats = self.stats
        stats.inference_requests += 1
        path = req.url.decode("latin-1")
        stats.per_endpoint[path] = stats.per_endpoint.get(path, 0) + 1
        crash_after = self.settings.crash_after
        if crash_after is not None and stats.inference_requests > crash_after:
            self._on_crash()

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self._served:
            raise NotFoundError(f"The model `{model}` does not exist.", param="model")

    def _inject(self) -> bool:
        """Injected failure (raises) or hang (returns True)."""
        s = self.settings
        if s.failure_rate > 0 and self.rng.random() < s.failure_rate:
            self.stats.failed += 1
            raise InternalServerError("Injected failure (simulator --failure-rate).")
        if s.hang_rate > 0 and self.rng.random() < s.hang_rate:
            self.stats.hung += 1
            return True
        return False

    def _chat(self, conn: Connection, req: _Request) -> Outcome:
        self._count_inference(req)
        parsed = parse_chat(b"".join(req.body))
        return self._generate(conn, req, parsed, chat=True)

    def _completions(self, conn: Connection, req: _Request) -> Outcome:
        self._count_inference(req)
        parsed = parse_completion(b"".join(req.body))
        return self._generate(conn, req, parsed, chat=False)

    def _generate(
        self, conn: Connection, req: _Request, parsed: GenerationRequest, *, chat: bool
    ) -> Outcome:
        self._check_model(parsed.model)
        hang = self._inject()
        settings = self.settings
        rid_bytes = self._request_id(req)
        rid = ("chatcmpl-" if chat else "cmpl-") + rid_bytes.decode("latin-1")
        plan = plan_generation(parsed, settings.output_tokens, self.config.seed)
        created = int(time.time())
        if not hang and settings.instant and self.scheduler.try_acquire():
            try:
                if parsed.stream:
                    tpl = StreamTemplates(chat=chat, rid=rid, created=created, model=self._served)
                    out = b"".join(
                        (
                            stream_head(request_id=rid_bytes, keep_alive=req.keep_alive),
                            *(
                                _stream_step(tpl, plan, step, chat=chat)
                                for step in range(plan.steps)
                            ),
                            _stream_tail(tpl, plan, parsed),
                        )
                    )
                else:
                    build = chat_body if chat else completion_body
                    body = build(rid, created, self._served, plan, parsed.prompt_tokens)
                    out = response(200, body, request_id=rid_bytes, keep_alive=req.keep_alive)
            finally:
                self.scheduler.release()
            self.metrics.record_finished(
                prompt_tokens=parsed.prompt_tokens,
                generation_tokens=plan.completion_tokens,
                reason=plan.finish_reason,
                ttft_s=0.0,
                e2e_s=0.0,
            )
            return out
        return self._run_generation(conn, req, parsed, plan, rid, created, chat=chat, hang=hang)

    async def _run_generation(
        self,
        conn: Connection,
        req: _Request,
        parsed: GenerationRequest,
        plan: GenerationPlan,
        rid: str,
        created: int,
        *,
        chat: bool,
        hang: bool,
    ) -> None:
        start = time.monotonic()
        rid_bytes = req.request_id or b""
        keep_alive = req.keep_alive
        head_sent = False
        settings = self.settings
        try:
            await self.scheduler.acquire()
            try:
                if hang:
                    await asyncio.get_running_loop().create_future()
                ttft = settings.ttft_ms / 1000.0
                itl = settings.itl_ms / 1000.0
                steps = plan.steps
                if not parsed.stream:
                    delay = ttft + itl * max(0, steps - 1)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    build = chat_body if chat else completion_body
                    body = build(rid, created, self._served, plan, parsed.prompt_tokens)
                    first = time.monotonic()
                    conn.write(response(200, body, request_id=rid_bytes, keep_alive=keep_alive))
                else:
                    tpl = StreamTemplates(chat=chat, rid=rid, created=created, model=self._served)
                    if ttft > 0:
                        await asyncio.sleep(ttft)
                    head = stream_head(request_id=rid_bytes, keep_alive=keep_alive)
                    head_sent = True
                    first = time.monotonic()
                    conn.write(head + _stream_step(tpl, plan, 0, chat=chat))
                    for step in range(1, steps):
                        if itl > 0:
                            await asyncio.sleep(itl)
                        conn.write(_stream_step(tpl, plan, step, chat=chat))
                    conn.write(_stream_tail(tpl, plan, parsed))
            finally:
                self.scheduler.release()
        except asyncio.CancelledError:
            self.stats.aborted += 1
            self.metrics.success["abort"] += 1
            if self.aborting and not conn.closed:
                message = "Request aborted: the server is shutting down."
                if head_sent:
                    conn.write(
                        chunk(error_event(message, "InternalServerError", 500)) + CHUNKED_END
                    )
                else:
                    conn.write(
                        response(
                            500,
                            error_body(message, "InternalServerError", 500),
                            request_id=rid_bytes,
                            keep_alive=False,
                        )
                    )
                conn.close()
            raise
        end = time.monotonic()
        self.metrics.record_finished(
            prompt_tokens=parsed.prompt_tokens,
            generation_tokens=plan.completion_tokens,
            reason=plan.finish_reason,
            ttft_s=first - start,
            e2e_s=end - start,
        )

    def _embeddings(self, conn: Connection, req: _Request) -> Outcome:
        self._count_inference(req)
        parsed = parse_embedding(b"".join(req.body))
        self._check_model(parsed.model)
        hang = self._inject()
        rid = "embd-" + self._request_id(req).decode("latin-1")
        if not hang and self.settings.instant and self.scheduler.try_acquire():
            try:
                body = embedding_body(
                    rid, int(time.time()), self._served, parsed, self.config.embedding_dim
                )
            finally:
                self.scheduler.release()
            self._record_embedding(parsed, 0.0)
            return response(200, body, request_id=req.request_id, keep_alive=req.keep_alive)
        return self._run_embedding(conn, req, parsed, rid, hang=hang)

    def _record_embedding(self, parsed: ParsedEmbedding, latency: float) -> None:
        self.metrics.record_finished(
            prompt_tokens=parsed.prompt_tokens,
            generation_tokens=0,
            reason="stop",
            ttft_s=latency,
            e2e_s=latency,
        )

    async def _run_embedding(
        self, conn: Connection, req: _Request, parsed: ParsedEmbedding, rid: str, *, hang: bool
    ) -> None:
        start = time.monotonic()
        try:
            await self.scheduler.acquire()
            try:
                if hang:
                    await asyncio.get_running_loop().create_future()
                delay = self.settings.ttft_ms / 1000.0
                if delay > 0:
                    await asyncio.sleep(delay)
                body = embedding_body(
                    rid, int(time.time()), self._served, parsed, self.config.embedding_dim
                )
                conn.write(
                    response(200, body, request_id=req.request_id, keep_alive=req.keep_alive)
                )
            finally:
                self.scheduler.release()
        except asyncio.CancelledError:
            self.stats.aborted += 1
            self.metrics.success["abort"] += 1
            if self.aborting and not conn.closed:
                message = "Request aborted: the server is shutting down."
                conn.write(
                    response(
                        500,
                        error_body(message, "InternalServerError", 500),
                        request_id=req.request_id,
                        keep_alive=False,
                    )
                )
                conn.close()
            raise
        self._record_embedding(parsed, time.monotonic() - start)

    # -- plain endpoints -------------------------------------------------------------

    def _get_models(self, conn: Connection, req: _Request) -> Outcome:
        return response(
            200, self._models, request_id=self._request_id(req), keep_alive=req.keep_alive
        )

    def _health(self, conn: Connection, req: _Request) -> Outcome:
        status = 200 if self.settings.healthy else 503
        return response(status, b"", content_type=CONTENT_TEXT, keep_alive=req.keep_alive)

    def _ping(self, conn: Connection, req: _Request) -> Outcome:
        return response(200, b"", content_type=CONTENT_TEXT, keep_alive=req.keep_alive)

    def _version(self, conn: Connection, req: _Request) -> Outcome:
        return response(200, _VERSION, keep_alive=req.keep_alive)

    def _load(self, conn: Connection, req: _Request) -> Outcome:
        load = self.scheduler.running + self.scheduler.waiting
        return response(200, b'{"server_load":%d}' % load, keep_alive=req.keep_alive)

    def _get_metrics(self, conn: Connection, req: _Request) -> Outcome:
        sched = self.scheduler
        body = self.metrics.render(
            running=sched.running, waiting=sched.waiting, max_num_seqs=sched.max_num_seqs
        )
        return response(200, body, content_type=CONTENT_METRICS, keep_alive=req.keep_alive)

    # -- control (--enable-control) ----------------------------------------------------

    def _get_sim_config(self, conn: Connection, req: _Request) -> Outcome:
        return response(200, msgspec.json.encode(asdict(self.settings)), keep_alive=req.keep_alive)

    def _post_sim_config(self, conn: Connection, req: _Request) -> Outcome:
        try:
            changes = msgspec.json.decode(b"".join(req.body) or b"{}")
        except msgspec.DecodeError as exc:
            raise BadRequestError(f"Invalid JSON in request body: {exc}") from None
        if not isinstance(changes, dict):
            raise BadRequestError("expected a JSON object")
        self.settings.update(changes)
        return self._get_sim_config(conn, req)

    def _sim_stats(self, conn: Connection, req: _Request) -> Outcome:
        stats = asdict(self.stats)
        stats.update(
            running=self.scheduler.running,
            waiting=self.scheduler.waiting,
            connections=len(self.connections),
            draining=self.draining,
            settings=asdict(self.settings),
        )
        return response(200, msgspec.json.encode(stats), keep_alive=req.keep_alive)

    def _sim_crash(self, conn: Connection, req: _Request) -> Outcome:
        self._on_crash()
        raise InternalServerError("crash handler returned")  # pragma: no cover


class Connection(asyncio.Protocol):
    """One client connection: parses requests and writes answers in order."""

    __slots__ = (
        "_cur",
        "_parser",
        "_pending",
        "_sim",
        "closed",
        "last_active",
        "task",
        "transport",
    )

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._parser = httptools.HttpRequestParser(self)
        self._cur: _Request | None = None
        self._pending: deque[_Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.last_active = time.monotonic()
        self.transport: asyncio.Transport | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, only compatible.
        self.transport = transport  # type: ignore[assignment]
        self._sim.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._sim.connections.discard(self)
        self._pending.clear()
        if self.task is not None:
            # The client went away: stop generating and free the running slot now.
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "Protocol upgrades are not supported.")
        except httptools.HttpParserError as exc:
            self._fail(400, f"Malformed HTTP request: {exc}")

    def _fail(self, status: int, message: str) -> None:
        if self.task is None:
            self.write(
                response(status, error_body(message, "BadRequestError", status), keep_alive=False)
            )
        self.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._cur = _Request()

    def on_url(self, url: bytes) -> None:
        assert self._cur is not None
        self._cur.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        cur = self._cur
        assert cur is not None
        lname = name.lower()
        if lname == b"x-request-id":
            cur.request_id = value
        elif lname == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            cur.too_large = True

    def on_headers_complete(self) -> None:
        cur = self._cur
        assert cur is not None
        cur.method = self._parser.get_method()
        cur.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        cur = self._cur
        assert cur is not None
        if cur.too_large:
            return
        cur.body_len += len(body)
        if cur.body_len > MAX_BODY_BYTES:
            # Keep reading (so the 413 reaches the client) but drop the bytes.
            cur.too_large = True
            cur.body.clear()
        else:
            cur.body.append(body)

    def on_message_complete(self) -> None:
        req = self._cur
        assert req is not None
        self._cur = None
        if self.task is not None or self._pending:
            self._pending.append(req)
        else:
            self._dispatch(req)

    # answering

    def _dispatch(self, req: _Request) -> None:
        sim = self._sim
        out = sim.handle(self, req)
        if isinstance(out, bytes):
            self.write(out)
            if not req.keep_alive or out.startswith(b"HTTP/1.1 413") or sim.draining:
                self.close()
            return
        task = asyncio.get_running_loop().create_task(self._run(out, req.keep_alive))
        self.task = task
        sim.inflight.add(task)
        task.add_done_callback(sim.inflight.discard)

    async def _run(self, coro: Coroutine[Any, Any, None], keep_alive: bool) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            # Cancelled by us: the client left, or a shutdown abort already answered.
            self.close()
            return
        finally:
            self.task = None
            self.last_active = time.monotonic()
        if not keep_alive or self._sim.draining:
            self.close()
            return
        while self._pending and self.task is None and not self.closed:
            self._dispatch(self._pending.popleft())

    def write(self, data: bytes) -> None:
        """Write unless the connection is gone."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    @property
    def idle(self) -> bool:
        """No request being read or answered."""
        return self.task is None and self._cur is None and not self._pending
