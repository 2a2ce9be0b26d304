"""The simulator's prefix cache: hits, misses, chained hashes, eviction, events."""

from __future__ import annotations

import hashlib
import struct

import pytest

from sage.unified.agent.simulator._kvcache import (
    ClearedBlocks,
    PrefixCache,
    RemovedBlocks,
    StoredBlocks,
    block_hash,
    block_hashes,
)

B = 4


def _tokens(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


def test_block_hash_is_sha256_of_parent_and_tokens_low_64_bits() -> None:
    digest = hashlib.sha256(bytes(8) + struct.pack(">3I", 1, 2, 3)).digest()
    assert block_hash(None, [1, 2, 3]) == int.from_bytes(digest, "big") & (2**64 - 1)
    first = block_hash(None, [1, 2, 3, 4])
    digest = hashlib.sha256(first.to_bytes(8, "big") + struct.pack(">4I", 5, 6, 7, 8)).digest()
    assert block_hash(first, [5, 6, 7, 8]) == int.from_bytes(digest, "big") & (2**64 - 1)


def test_hashes_chain_so_a_block_depends_on_everything_before_it() -> None:
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], B)
    assert len(a) == 2  # only full blocks
    b = block_hashes([0, 2, 3, 4, 5, 6, 7, 8], B)
    assert a[0] != b[0]
    assert a[1] != b[1]  # same tokens in block 2, different history
    assert block_hashes([1, 2, 3, 4, 5, 6, 7, 8], B, start=1, parent=a[0]) == a[1:]


def test_miss_then_hit_on_the_same_prompt_counting_tokens_as_vllm() -> None:
    cache = PrefixCache(16, B)
    prompt = _tokens(0, 10)  # 2 full blocks + 2 tokens
    first = cache.admit(prompt, 14)
    assert first.cached_tokens == 0
    cache.release(first, [*prompt, 100, 101, 102, 103])
    second = cache.admit(prompt, 14)
    assert second.cached_tokens == 8
    assert (cache.queries, cache.hits) == (20, 8)


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    cache = PrefixCache(16, B)
    prompt = _tokens(0, 8)  # exactly 2 blocks
    cache.release(cache.admit(prompt, 8), prompt)
    again = cache.admit(prompt, 9)
    assert again.cached_tokens == 4  # (8 - 1) // 4 blocks


def test_shared_prefix_hits_only_the_common_blocks() -> None:
    cache = PrefixCache(32, B)
    system = _tokens(0, 8)
    cache.release(cache.admit([*system, 50, 51, 52, 53, 54], 20), system)
    other = cache.admit([*system, 60, 61, 62, 63, 64], 20)
    assert other.cached_tokens == 8
    # The first user's own third block was stored too, so a third request sharing
    # it hits three blocks.
    third = cache.admit([*system, 50, 51, 52, 53, 99], 20)
    assert third.cached_tokens == 12


def test_generated_tokens_are_cached_for_the_next_turn() -> None:
    cache = PrefixCache(32, B)
    prompt = _tokens(0, 6)
    answer = [70, 71, 72, 73, 74, 75]
    cache.release(cache.admit(prompt, 12), prompt + answer)
    next_turn = prompt + answer + [80, 81, 82, 83, 84]
    assert cache.admit(next_turn, 20).cached_tokens == 12


def test_usage_counts_referenced_blocks_and_release_is_idempotent() -> None:
    cache = PrefixCache(10, B)
    seq = cache.admit(_tokens(0, 5), 12)  # 3 blocks
    assert cache.usage == pytest.approx(0.3)
    cache.release(seq, _tokens(0, 5))
    cache.release(seq, _tokens(0, 5))
    assert cache.usage == 0.0
    assert cache.free_blocks == 10
    assert cache.cached_blocks == 1  # the one full prompt block stays cached


def test_lru_eviction_of_unreferenced_blocks_with_events() -> None:
    cache = PrefixCache(4, B, record_events=True)
    old = _tokens(0, 8)
    cache.release(cache.admit(old, 8), old)
    stored = cache.take_events()
    assert stored == [StoredBlocks(tuple(block_hashes(old, B)), None, tuple(old), B)]
    newer = _tokens(100, 8)
    cache.release(cache.admit(newer, 8), newer)
    assert cache.cached_blocks == 4
    cache.take_events()
    # Two new blocks: the least recently freed go first; a sequence frees tail first.
    fresh = _tokens(200, 5)
    cache.admit(fresh, 8)
    old_hashes = block_hashes(old, B)
    assert cache.take_events() == [
        RemovedBlocks((old_hashes[1],)),
        RemovedBlocks((old_hashes[0],)),
        StoredBlocks((block_hashes(fresh, B)[0],), None, tuple(fresh[:4]), B),
    ]
    assert cache.lookup(old) == ([], [])  # gone
    assert len(cache.lookup(newer)[0]) == 1  # still there


def test_a_hit_refreshes_a_block_so_it_is_evicted_last() -> None:
    cache = PrefixCache(3, B)
    a, b = _tokens(0, 4), _tokens(10, 4)
    cache.release(cache.admit(a, 4), a)
    cache.release(cache.admit(b, 4), b)
    hit = cache.admit([*a, 1], 5)  # reuses a's block: a becomes the most recent
    assert hit.cached_tokens == 4
    cache.release(hit, [*a, 1])
    cache.admit(_tokens(50, 4), 8)  # needs two blocks: the empty one, then b's
    assert len(cache.lookup([*a, 1])[0]) == 1
    assert cache.lookup([*b, 1]) == ([], [])


def test_can_admit_and_admit_refuse_what_does_not_fit() -> None:
    cache = PrefixCache(4, B)
    held = cache.admit(_tokens(0, 4), 12)  # 3 blocks held
    assert cache.can_admit([(_tokens(20, 2), 4)])
    assert not cache.can_admit([(_tokens(20, 2), 8)])
    with pytest.raises(RuntimeError):
        cache.admit(_tokens(20, 2), 8)
    cache.release(held, _tokens(0, 4))
    assert cache.can_admit([(_tokens(20, 2), 16)])


def test_parent_of_stored_blocks_and_duplicates_stay_anonymous() -> None:
    cache = PrefixCache(16, B, record_events=True)
    prompt = _tokens(0, 8)
    first = cache.admit(prompt, 8)
    cache.release(first, prompt)
    cache.take_events()
    # The same 8 tokens again: block 1 hits, block 2 is recomputed and already cached.
    again = cache.admit(prompt, 8)
    assert again.cached_tokens == 4
    assert cache.take_events() == []
    longer = prompt + _tokens(8, 4)
    seq = cache.admit(longer, 12)
    hashes = block_hashes(longer, B)
    assert cache.take_events() == [StoredBlocks((hashes[2],), hashes[1], tuple(longer[8:]), B)]
    cache.release(seq, longer)
    cache.release(again, prompt)
    assert cache.cached_blocks == 3


def test_reset_needs_an_idle_cache() -> None:
    cache = PrefixCache(8, B, record_events=True)
    seq = cache.admit(_tokens(0, 8), 8)
    assert not cache.reset()
    cache.release(seq, _tokens(0, 8))
    cache.take_events()
    assert cache.reset()
    assert cache.take_events() == [ClearedBlocks()]
    assert cache.cached_blocks == 0
    assert cache.admit(_tokens(0, 8), 8).cached_tokens == 0


def test_no_events_are_kept_unless_asked() -> None:
    cache = PrefixCache(8, B)
    cache.release(cache.admit(_tokens(0, 8), 8), _tokens(0, 8))
    assert cache.take_events() == []
