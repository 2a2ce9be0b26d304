"""Deterministic "model output": generated words and embeddings (pure).

Generated text is a walk on one fixed cycle through :data:`VOCABULARY`: the next
word is a function of the previous word only (:func:`successor`). Where a walk
starts depends on the prompt:

* the prompt ends with a vocabulary word (no whitespace after it): the model
  continues it, so the first new word is that word's successor. Continuing from
  "prompt + the first k generated words" therefore yields exactly the words the
  uninterrupted answer had after them;
* otherwise the first word is picked by a hash of (prompt, seed, choice index), so
  different prompts and different choices (``n``) give different answers.

A word after a non-whitespace character carries a leading space (``" word"``), so
every streamed delta is one token of :mod:`._tokenizer` and the answer's text
re-tokenizes to the very tokens generated.

Same text gives the same unit vector (:func:`embed`).
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
    "embed",
    "embedding_base64",
    "generate_words",
    "output_pieces",
    "successor",
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
_SPACED: tuple[str, ...] = tuple(" " + w for w in VOCABULARY)
_INDEX = {word: i for i, word in enumerate(VOCABULARY)}
# One cycle through every word, in an order fixed by a hash of the word (stable across
# Python versions and processes, unlike hash() or random.shuffle).
_CYCLE = sorted(range(_V), key=lambda i: hashlib.sha256(VOCABULARY[i].encode()).digest())
_NEXT = [0] * _V
for _pos, _word_index in enumerate(_CYCLE):
    _NEXT[_word_index] = _CYCLE[(_pos + 1) % _V]


def successor(word: str) -> str:
    """The word generated after ``word`` (a vocabulary word)."""
    return VOCABULARY[_NEXT[_INDEX[word]]]


def output_pieces() -> list[str]:
    """Every piece generation can emit: each word with and without its leading space."""
    return [*VOCABULARY, *_SPACED]


def _start(prompt: str, seed: int, choice: int) -> tuple[int, bool]:
    """(index of the first word, whether it carries a leading space)."""
    ends_with_word = bool(prompt) and not prompt[-1].isspace()
    if ends_with_word:
        last = prompt.rsplit(None, 1)[-1]
        index = _INDEX.get(last)
        if index is not None:
            return _NEXT[index], True
    key = zlib.crc32(prompt.encode("utf-8", "surrogatepass"), (seed + choice) & 0xFFFFFFFF)
    return key % _V, ends_with_word


@lru_cache(maxsize=1024)
def _walk(first: int, leading_space: bool, count: int) -> tuple[str, ...]:
    out: list[str] = []
    index = first
    for i in range(count):
        out.append(_SPACED[index] if i or leading_space else VOCABULARY[index])
        index = _NEXT[index]
    return tuple(out)


def generate_words(prompt: str, seed: int, choice: int, count: int) -> tuple[str, ...]:
    """``count`` generated tokens (words) answering ``prompt``; joined they are the text.

    Args:
        prompt: the full prompt text (a chat's rendered template).
        seed: the simulator's ``--seed``.
        choice: the choice index within the prompt (``n``).
        count: how many tokens to generate.
    """
    first, leading_space = _start(prompt, seed, choice)
    return _walk(first, leading_space, count)


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
