"""Publishes the KV cache's events over a ZMQ PUB socket, framed as vLLM frames them.

The socket is only ever written from the event loop's thread, with ``NOBLOCK``: a
PUB socket never blocks, it drops messages for a subscriber past the high-water
mark (``hwm``), as vLLM's publisher does. A send that fails is logged and the
batch dropped; the simulator goes on. ``replay_endpoint`` is not served.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import zmq

from sage.unified.agent.simulator._kv_events import KVEventsConfig, encode_batch
from sage.unified.agent.simulator._kvcache import CacheEvent

__all__ = ["KVEventPublisher"]


def _log(message: str) -> None:
    print(f"[sage-simulator pid={os.getpid()}] {message}", file=sys.stderr, flush=True)


class KVEventPublisher:
    """A PUB socket bound or connected per vLLM's rule (:attr:`KVEventsConfig.binds`).

    Raises:
        zmq.ZMQError: the endpoint cannot be bound or is malformed.
    """

    def __init__(self, config: KVEventsConfig) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.set_hwm(config.hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            if config.binds:
                self._socket.bind(config.endpoint)
            else:
                self._socket.connect(config.endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self._topic = config.topic.encode("utf-8")
        self._seq = 0
        self.sent = 0
        self.dropped = 0
        if config.replay_endpoint is not None:
            _log("kv events: replay_endpoint is not served by the simulator; ignored")

    def publish(self, events: Sequence[CacheEvent]) -> None:
        """Send one batch (nothing when ``events`` is empty)."""
        if not events:
            return
        seq = self._seq
        self._seq += 1
        payload = encode_batch(time.time(), events)
        try:
            self._socket.send_multipart(
                (self._topic, seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK
            )
        except zmq.ZMQError as exc:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                _log(f"kv events: dropped batch {seq} ({exc}); {self.dropped} dropped so far")
            return
        self.sent += 1

    def close(self) -> None:
        """Close the socket and the context without waiting for unsent messages."""
        self._socket.close(linger=0)
        self._context.term()
