"""KV events: vLLM's configuration JSON and the msgpack wire format."""

from __future__ import annotations

import msgpack
import pytest

from sage.unified.agent.simulator._kv_events import encode_batch, parse_kv_events_config
from sage.unified.agent.simulator._kvcache import ClearedBlocks, RemovedBlocks, StoredBlocks


def test_kv_events_config_as_vllm_takes_it() -> None:
    cfg = parse_kv_events_config('{"enable_kv_cache_events": true, "topic": "kv-events"}')
    assert (cfg.publishes, cfg.endpoint, cfg.binds, cfg.hwm) == (
        True,
        "tcp://*:5557",
        True,
        100_000,
    )
    assert not parse_kv_events_config('{"enable_kv_cache_events": false}').publishes
    assert not parse_kv_events_config(
        '{"enable_kv_cache_events": true, "publisher": "null"}'
    ).publishes
    assert not parse_kv_events_config('{"endpoint": "tcp://10.0.0.1:5557"}').binds
    assert parse_kv_events_config('{"endpoint": "ipc:///tmp/kv"}').binds
    for bad in ('{"publisher": "kafka"}', '{"nope": 1}', "[]", "{"):
        with pytest.raises(ValueError, match="kv-events-config"):
            parse_kv_events_config(bad)


def test_batch_wire_format_decoded_by_msgpack() -> None:
    payload = encode_batch(
        12.5,
        [
            StoredBlocks((11, 12), None, (1, 2, 3, 4), 2),
            StoredBlocks((13,), 12, (5, 6), 2),
            RemovedBlocks((2**64 - 1,)),
            ClearedBlocks(),
        ],
    )
    ts, events, rank = msgpack.unpackb(payload)
    assert (ts, rank) == (12.5, 0)
    assert events[0] == {
        "type": "BlockStored",
        "block_hashes": [11, 12],
        "parent_block_hash": None,
        "token_ids": [1, 2, 3, 4],
        "block_size": 2,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
        "extra_keys": [None, None],
        "group_idx": 0,
        "kv_cache_spec_kind": "full_attention",
    }
    assert events[1]["parent_block_hash"] == 12
    assert events[2] == {
        "type": "BlockRemoved",
        "block_hashes": [2**64 - 1],
        "medium": "GPU",
        "group_idx": 0,
    }
    assert events[3] == {"type": "AllBlocksCleared"}
