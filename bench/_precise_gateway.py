"""A gateway whose cache_aware index is fed by the engines' KV events ("precise" mode).

For ``bench/routing_quality.py`` only: precise mode is measured against the approximate
index before anything of it goes into the product (docs/routing.md has the verdict).
It is the real gateway (static mode, the real data plane, server and ledger) with one
difference, its policy:

* keys: the prompt rendered as the gateway renders it (the simulator's chat template),
  tokenized with the simulator's tokenizer, hashed into the engine's own chained block
  hashes: what a production router would need the model's tokenizer for;
* the index holds, per engine, exactly the blocks its KV events say it holds
  (``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared``), read from each engine's
  ZMQ publisher; with ``--route-inserts`` a routed prompt's blocks are also added at
  once (the events of a request arrive only once it is admitted).

Run: ``python bench/_precise_gateway.py --port P --backend URL --kv-endpoint EP ...``
(one ``--kv-endpoint`` per ``--backend``, in the same order).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path

import msgspec
import uvloop
import zmq
import zmq.asyncio

from sage.unified.agent.simulator._kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
)
from sage.unified.agent.simulator._kvcache import block_hashes
from sage.unified.agent.simulator._tokenizer import Tokenizer
from sage.unified.gateway.app import GatewayRuntime, create_gateway_app, fast_path
from sage.unified.gateway.main import _server_config
from sage.unified.gateway.routing import CacheAwarePolicy, PrefixIndex, RoutingRequest, prompt_text
from sage.unified.gateway.server import HttpServer
from sage.unified.gateway.settings import GatewaySettings

log = logging.getLogger("precise-gateway")
_batch = msgspec.msgpack.Decoder(KVEventBatch)


def block_keys(block_size: int) -> object:
    tokenizer = Tokenizer(remember=1024)

    def keys(request: RoutingRequest) -> tuple[Sequence[int], int]:
        text = prompt_text(request.path, request.body)
        if not text:
            return (), 0
        ids = tokenizer.encode(text)
        return block_hashes(ids, block_size), len(ids)

    return keys


async def follow_events(index: PrefixIndex, engine: str, endpoint: str) -> None:
    """Apply one engine's KV events to its slot until cancelled; a bad message is skipped."""
    context = zmq.asyncio.Context.instance()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    slot = index.slot(engine)
    try:
        while True:
            frames = await socket.recv_multipart()
            try:
                batch = _batch.decode(frames[-1])
            except msgspec.DecodeError as exc:
                log.warning("%s: undecodable event batch: %s", engine, exc)
                continue
            for event in batch.events:
                if isinstance(event, BlockStored):
                    index.insert(slot, event.block_hashes)
                elif isinstance(event, BlockRemoved):
                    index.discard(slot, event.block_hashes)
                elif isinstance(event, AllBlocksCleared):
                    index.clear(slot)
    finally:
        socket.close(linger=0)


async def serve(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="precise-gw-"))
    settings = GatewaySettings(
        port=args.port,
        backends=args.backend,
        routing_policy="cache_aware",
        sessions=False,
        studio=False,
        expose_backend_header=True,
        sage_home=home,
        log_level="error",
    )
    policy = CacheAwarePolicy(
        keys=block_keys(args.block_size),  # type: ignore[arg-type]
        unit=args.block_size,
        engine_cache_tokens=None,
        record_routes=args.route_inserts,
    )
    runtime = GatewayRuntime(settings, policy=policy)
    app = fast_path(create_gateway_app(runtime=runtime), runtime)
    gc.collect()
    gc.freeze()
    server = HttpServer(app, _server_config(settings, None))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    followers = [
        asyncio.create_task(follow_events(policy.index, f"static-{i}-llm", endpoint))
        for i, endpoint in enumerate(args.kv_endpoint)
    ]
    serving = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    for task in followers:
        task.cancel()
    await serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", action="append", required=True)
    parser.add_argument("--kv-endpoint", action="append", required=True)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--route-inserts", action="store_true")
    args = parser.parse_args()
    if len(args.backend) != len(args.kv_endpoint):
        parser.error("give one --kv-endpoint per --backend")
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
