"""KV cache events in vLLM's wire format (pure: configuration and msgpack encoding).

``--kv-events-config`` takes the JSON object vLLM's flag of the same name takes
(``enable_kv_cache_events``, ``publisher``, ``endpoint``, ``replay_endpoint``,
``buffer_steps``, ``hwm``, ``max_queue_size``, ``topic``). With events enabled, each
change of the prefix cache is published as one ZMQ multipart message of three frames,
as vLLM's ``ZmqEventPublisher`` sends them:

1. the topic (UTF-8 bytes, may be empty);
2. a sequence number: 8 bytes, big-endian, starting at 0 and growing by one;
3. the payload: a msgpack-encoded ``KVEventBatch``.

The batch is positional, ``[ts, events, data_parallel_rank]`` (``ts`` a float of
seconds since the epoch, the rank 0). Each event is a msgpack map tagged by its
``"type"`` (vLLM encodes events as maps since vllm-project/vllm#42892):

* ``{"type": "BlockStored", "block_hashes": [...], "parent_block_hash": int|None,
  "token_ids": [...], "block_size": B, "lora_id": None, "medium": "GPU",
  "lora_name": None, "extra_keys": [None, ...], "group_idx": 0,
  "kv_cache_spec_kind": "full_attention"}``
* ``{"type": "BlockRemoved", "block_hashes": [...], "medium": "GPU", "group_idx": 0}``
* ``{"type": "AllBlocksCleared"}``

Block hashes are unsigned 64-bit integers (vLLM's default
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``); how they are computed is in
:mod:`._kvcache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from sage.unified.agent.simulator._kvcache import (
    CacheEvent,
    ClearedBlocks,
    RemovedBlocks,
    StoredBlocks,
)

__all__ = [
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "KVEventBatch",
    "KVEventsConfig",
    "encode_batch",
    "parse_kv_events_config",
]

_MEDIUM = "GPU"


class KVEventsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """vLLM's ``KVEventsConfig`` fields (the simulator serves no replay endpoint)."""

    enable_kv_cache_events: bool = False
    publisher: Literal["null", "zmq"] | None = None
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @property
    def publishes(self) -> bool:
        """Whether events go out over ZMQ (vLLM's default publisher when enabled)."""
        publisher = self.publisher or ("zmq" if self.enable_kv_cache_events else "null")
        return self.enable_kv_cache_events and publisher == "zmq"

    @property
    def binds(self) -> bool:
        """vLLM's rule: bind wildcard, ``::``, ``ipc://`` and ``inproc://``; else connect."""
        ep = self.endpoint
        return "*" in ep or "::" in ep or ep.startswith(("ipc://", "inproc://"))


def parse_kv_events_config(text: str) -> KVEventsConfig:
    """Parse the ``--kv-events-config`` JSON.

    Raises:
        ValueError: not JSON, not an object, an unknown key or a wrong type.
    """
    try:
        return msgspec.json.decode(text.encode(), type=KVEventsConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"invalid --kv-events-config: {exc}") from None


class BlockStored(msgspec.Struct, tag=True, omit_defaults=True):
    """Blocks became cached (``tag`` puts ``"type": "BlockStored"`` in the map)."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None


class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True):
    """Cached blocks were evicted."""

    block_hashes: list[int]
    medium: str | None
    group_idx: int | None = None


class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True):
    """The prefix cache was reset."""


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    """One published message's payload: ``[ts, events, data_parallel_rank]``."""

    ts: float
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]
    data_parallel_rank: int | None = None


_encoder = msgspec.msgpack.Encoder()


def _wire(event: CacheEvent) -> BlockStored | BlockRemoved | AllBlocksCleared:
    if isinstance(event, StoredBlocks):
        return BlockStored(
            block_hashes=list(event.block_hashes),
            parent_block_hash=event.parent_block_hash,
            token_ids=list(event.token_ids),
            block_size=event.block_size,
            lora_id=None,
            medium=_MEDIUM,
            lora_name=None,
            extra_keys=[None] * len(event.block_hashes),
            group_idx=0,
            kv_cache_spec_kind="full_attention",
        )
    if isinstance(event, RemovedBlocks):
        return BlockRemoved(block_hashes=list(event.block_hashes), medium=_MEDIUM, group_idx=0)
    assert isinstance(event, ClearedBlocks)
    return AllBlocksCleared()


def encode_batch(ts: float, events: Sequence[CacheEvent], data_parallel_rank: int = 0) -> bytes:
    """The msgpack payload of one batch of cache events."""
    batch = KVEventBatch(ts, [_wire(e) for e in events], data_parallel_rank)
    return _encoder.encode(batch)
