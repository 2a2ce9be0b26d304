"""Deterministic "model output": generated words, token counts and embeddings (pure).

Same prompt + same seed gives the same words; same text gives the same unit vector.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import zlib
from functools import lru_cache

__all__ = [
    "VOCABULARY",
    "count_tokens",
    "embed",
    "embedding_base64",
    "generate_tokens",
    "prompt_key",
]

_WORDS = (
    "the of and to in is was that for on with as by at from it an be this are or his "
    "which but not had have one were all their they new more been also has first two "
    "time other after when there into some would its can over about up out only most "
    "years may such these many then city made her she world like between through state "
    "used both where under during them while well each known later number called part"
)
VOCABULARY: tuple[str, ...] = tuple(_WORDS.split(" "))
_V = len(VOCABULARY)


def prompt_key(text: str, seed: int) -> int:
    """A 32-bit key for ``text`` under ``seed``; the input of :func:`generate_tokens`."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass"), seed & 0xFFFFFFFF)


@lru_cache(maxsize=4096)
def generate_tokens(key: int, count: int) -> tuple[str, ...]:
    """``count`` deterministic tokens for ``key``; joined they read "w1 w2 w3".

    Each token after the first starts with a space, so ``"".join(tokens)`` is the text
    and every streamed delta is one token, as with a real tokenizer.
    """
    out: list[str] = []
    state = key or 1
    for i in range(count):
        # 64-bit LCG (Knuth's MMIX constants): cheap and well spread over the vocabulary.
        state = (state * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        word = VOCABULARY[(state >> 33) % _V]
        out.append(word if i == 0 else " " + word)
    return tuple(out)


def count_tokens(text: str) -> int:
    """Approximate token count of ``text`` (about 4 characters per token, at least 1)."""
    return max(1, (len(text) + 3) // 4)


@lru_cache(maxsize=1024)
def embed(text: str, dim: int) -> tuple[float, ...]:
    """A deterministic unit vector of ``dim`` floats for ``text`` (L2 norm 1)."""
    raw = hashlib.shake_256(text.encode("utf-8", "surrogatepass")).digest(2 * dim)
    values = [v - 32767.5 for v in struct.unpack(f"<{dim}H", raw)]
    norm = math.sqrt(math.fsum(v * v for v in values))
    return tuple(v / norm for v in values)


def embedding_base64(vector: tuple[float, ...]) -> str:
    """``vector`` as little-endian float32 bytes in base64 (OpenAI ``encoding_format=base64``)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
