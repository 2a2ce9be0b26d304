"""The simulated engine's KV cache with automatic prefix caching (pure; no I/O).

Modelled on vLLM v1's block pool:

* ``num_blocks`` blocks of ``block_size`` tokens. A running sequence holds (references)
  the blocks of its prompt and of its whole planned output from admission to finish.
* Only full blocks are cached. A block's hash chains its parent's:
  ``block_hash(parent, tokens)`` is the low 64 bits (big-endian) of the SHA-256 of the
  parent hash (8 bytes big-endian; 8 zero bytes for the first block) followed by the
  block's token ids (4 bytes big-endian each). Two sequences share a block only if
  they share every token before it, as in vLLM.
* A new request reuses the longest cached prefix of its prompt's full blocks, but
  always computes at least its last prompt token (vLLM does the same, to get logits),
  so a prompt that is entirely cached hits ``(len - 1) // block_size`` blocks.
* A block nobody references stays cached and evictable. Eviction takes the least
  recently freed first; a finished sequence frees its blocks last-to-first, so its
  tail goes before the prefix it shares with others (vLLM's order).
* Usage (``vllm:kv_cache_usage_perc``) is referenced blocks / all blocks: evictable
  cached blocks count as free, as in vLLM.
* Counters count tokens as vLLM's ``prefix_cache_queries`` / ``prefix_cache_hits`` do:
  every prompt token of every admitted sequence is queried; hits are the cached ones.

With ``record_events`` the cache keeps the KV events a real engine would publish
(:class:`StoredBlocks`, :class:`RemovedBlocks`, :class:`ClearedBlocks`) until
:meth:`PrefixCache.take_events` collects them.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = [
    "CacheEvent",
    "ClearedBlocks",
    "PrefixCache",
    "RemovedBlocks",
    "SequenceBlocks",
    "StoredBlocks",
    "block_hash",
    "block_hashes",
]

_U64 = (1 << 64) - 1


@lru_cache(maxsize=64)
def _packer(count: int) -> struct.Struct:
    return struct.Struct(f">Q{count}I")


def block_hash(parent: int | None, tokens: Sequence[int]) -> int:
    """The hash of one full block after ``parent`` (``None`` for the first block)."""
    return _block_hash(parent or 0, tuple(tokens))


# Repeated requests (benchmarks, shared system prompts) hash the same blocks again.
@lru_cache(maxsize=8192)
def _block_hash(parent: int, tokens: tuple[int, ...]) -> int:
    data = _packer(len(tokens)).pack(parent, *tokens)
    return int.from_bytes(hashlib.sha256(data).digest(), "big") & _U64


def block_hashes(
    tokens: Sequence[int], block_size: int, *, start: int = 0, parent: int | None = None
) -> list[int]:
    """Chained hashes of the full blocks of ``tokens`` from block index ``start``.

    Args:
        tokens: the whole token sequence.
        block_size: tokens per block.
        start: the first block to hash; ``parent`` must then be block ``start - 1``'s hash.
        parent: the hash before block ``start``.
    """
    out: list[int] = []
    for first in range(start * block_size, len(tokens) - block_size + 1, block_size):
        parent = block_hash(parent, tokens[first : first + block_size])
        out.append(parent)
    return out


@dataclass(frozen=True, slots=True)
class StoredBlocks:
    """Blocks became cached: consecutive hashes, their parent and their tokens."""

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int


@dataclass(frozen=True, slots=True)
class RemovedBlocks:
    """Cached blocks were evicted."""

    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ClearedBlocks:
    """The whole prefix cache was reset."""


CacheEvent = StoredBlocks | RemovedBlocks | ClearedBlocks


@dataclass(slots=True)
class SequenceBlocks:
    """The blocks one admitted sequence holds.

    Attributes:
        blocks: physical block ids, in sequence order.
        hashes: hashes of the sequence's full blocks computed so far (prefix of ``blocks``).
        cached_tokens: prompt tokens found in the cache at admission.
    """

    blocks: list[int]
    hashes: list[int]
    cached_tokens: int
    released: bool = field(default=False)


class PrefixCache:
    """A vLLM-like block pool with prefix caching (module docstring).

    Args:
        num_blocks: blocks in the cache (``--kv-blocks``).
        block_size: tokens per block (``--block-size``).
        record_events: keep KV events for :meth:`take_events`.
    """

    def __init__(self, num_blocks: int, block_size: int, *, record_events: bool = False) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.record_events = record_events
        self.queries = 0
        self.hits = 0
        self._refs = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        self._empty: list[int] = list(range(num_blocks - 1, -1, -1))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._events: list[CacheEvent] = []

    # -- state -----------------------------------------------------------------------

    @property
    def free_blocks(self) -> int:
        """Blocks nobody references (empty or cached-and-evictable)."""
        return len(self._empty) + len(self._evictable)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by running sequences (0..1)."""
        return 1.0 - self.free_blocks / self.num_blocks

    @property
    def cached_blocks(self) -> int:
        """Blocks holding a cached hash (referenced or not)."""
        return len(self._by_hash)

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold ``tokens`` tokens."""
        return -(-tokens // self.block_size)

    def take_events(self) -> list[CacheEvent]:
        """The events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # -- admission -------------------------------------------------------------------

    def lookup(self, prompt: Sequence[int]) -> tuple[list[int], list[int]]:
        """Blocks of ``prompt``'s longest cached prefix and their hashes (nothing referenced)."""
        limit = (len(prompt) - 1) // self.block_size
        found: list[int] = []
        hashes: list[int] = []
        parent: int | None = None
        size = self.block_size
        for index in range(limit):
            parent = block_hash(parent, prompt[index * size : (index + 1) * size])
            block = self._by_hash.get(parent)
            if block is None:
                break
            found.append(block)
            hashes.append(parent)
        return found, hashes

    def can_admit(self, needs: Sequence[tuple[Sequence[int], int]]) -> bool:
        """Whether sequences ``(prompt, total_tokens)`` all fit now (evicting as needed)."""
        size = self.block_size
        if len(needs) == 1:
            upper = -(-needs[0][1] // size)
        else:
            upper = sum(-(-total // size) for _, total in needs)
        if upper <= len(self._empty):
            return True  # fits in never-used blocks, whatever the hits
        new_blocks = 0
        pinned: set[int] = set()
        for prompt, total in needs:
            hits, _ = self.lookup(prompt)
            pinned.update(b for b in hits if self._refs[b] == 0)
            new_blocks += self.blocks_for(total) - len(hits)
        return new_blocks <= self.free_blocks - len(pinned)

    def admit(self, prompt: Sequence[int], total_tokens: int) -> SequenceBlocks:
        """Reference the cached prefix of ``prompt`` and take blocks for the rest.

        Call :meth:`can_admit` first: this raises when the blocks run out.

        Args:
            prompt: the sequence's prompt token ids.
            total_tokens: prompt plus every token it may generate.

        Raises:
            RuntimeError: not enough free blocks.
        """
        size = self.block_size
        length = len(prompt)
        if length > size:
            hits, hashes = self.lookup(prompt)
        else:
            hits, hashes = [], []
        needed = -(-max(total_tokens, length) // size) - len(hits)
        refs = self._refs
        if needed > self.free_blocks - len([b for b in hits if refs[b] == 0]):
            raise RuntimeError("not enough free KV blocks")
        for block in hits:
            self._ref(block)
        blocks = hits + [self._take() for _ in range(needed)]
        if length >= size:
            full = length // size
            parent = hashes[-1] if hashes else None
            hashes += block_hashes(prompt[: full * size], size, start=len(hits), parent=parent)
            self._store(blocks, hashes, prompt, len(hits))
        cached = len(hits) * size
        self.queries += length
        self.hits += cached
        return SequenceBlocks(blocks, hashes, cached)

    def release(self, seq: SequenceBlocks, tokens: Sequence[int]) -> None:
        """Cache the newly full blocks of ``tokens`` (prompt + generated) and free ``seq``.

        Idempotent: a second call does nothing.
        """
        if seq.released:
            return
        seq.released = True
        size = self.block_size
        usable = min(len(tokens) // size, len(seq.blocks))
        done = len(seq.hashes)
        if usable > done:
            parent = seq.hashes[-1] if seq.hashes else None
            seq.hashes += block_hashes(tokens[: usable * size], size, start=done, parent=parent)
            self._store(seq.blocks, seq.hashes, tokens, done)
        for block in reversed(seq.blocks):
            self._unref(block)

    def reset(self) -> bool:
        """Drop every cached block; refused (``False``) while any block is referenced."""
        if any(self._refs):
            return False
        for block in self._evictable:
            self._hash_of[block] = None
            self._empty.append(block)
        self._evictable.clear()
        self._by_hash.clear()
        if self.record_events:
            self._events.append(ClearedBlocks())
        return True

    # -- internals -------------------------------------------------------------------

    def _ref(self, block: int) -> None:
        if self._refs[block] == 0:
            del self._evictable[block]
        self._refs[block] += 1

    def _unref(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            if self._hash_of[block] is None:
                self._empty.append(block)
            else:
                self._evictable[block] = None

    def _take(self) -> int:
        if self._empty:
            block = self._empty.pop()
        else:
            block, _ = self._evictable.popitem(last=False)
            old = self._hash_of[block]
            self._hash_of[block] = None
            if old is not None:
                del self._by_hash[old]
                if self.record_events:
                    self._events.append(RemovedBlocks((old,)))
        self._refs[block] = 1
        return block

    def _store(
        self, blocks: Sequence[int], hashes: Sequence[int], tokens: Sequence[int], start: int
    ) -> None:
        """Give blocks ``start..len(hashes)`` their hashes; record runs of new ones."""
        run: list[int] = []
        run_start = start
        for index in range(start, len(hashes)):
            h = hashes[index]
            if h in self._by_hash:
                # Already cached in another block (e.g. the last prompt block recomputed):
                # this copy stays anonymous, as a duplicate would be dropped on eviction.
                self._flush(run, run_start, hashes, tokens)
                run, run_start = [], index + 1
                continue
            block = blocks[index]
            self._hash_of[block] = h
            self._by_hash[h] = block
            run.append(h)
        self._flush(run, run_start, hashes, tokens)

    def _flush(
        self, run: list[int], start: int, hashes: Sequence[int], tokens: Sequence[int]
    ) -> None:
        if not run or not self.record_events:
            return
        size = self.block_size
        parent = hashes[start - 1] if start else None
        self._events.append(
            StoredBlocks(
                tuple(run),
                parent,
                tuple(tokens[start * size : (start + len(run)) * size]),
                size,
            )
        )
