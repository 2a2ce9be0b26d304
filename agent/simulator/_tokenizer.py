"""The simulator's tokenizer and chat template (pure).

Tokens
    A text is cut into pieces by the regular expression ``\\n|[^\\S\\n]*\\S+|[^\\S\\n]+``:
    every newline is a token of its own, every word is one token together with the
    spaces or tabs before it, and spaces at the very end form one last token. The
    pieces joined give the text back exactly. A token's id is the CRC-32 of the
    piece's UTF-8 bytes, low 31 bits (ids fit a signed 32-bit integer, as real
    vocabularies do). So ``"hi there\\n"`` is ``["hi", " there", "\\n"]``.

    Because newlines stand alone and generated words start with their space,
    ``encode(prompt + generated_text) == encode(prompt) + generated_ids`` whenever the
    prompt ends with a newline or a word: a conversation's next turn reuses the KV
    blocks of the previous turn's prompt *and* answer, as with a real tokenizer.

Chat template
    Each message renders as ``<|role|>\\n{content}\\n``; list contents join their text
    parts with ``\\n``. ``add_generation_prompt`` appends ``<|assistant|>\\n``.
    ``continue_final_message`` leaves the last message open (no ``\\n`` after its
    content), so the model continues it. The same conversation prefix therefore
    always gives the same leading tokens.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = [
    "Tokenizer",
    "UnknownTokenError",
    "piece_id",
    "piece_ids",
    "render_chat",
    "split_pieces",
]

_PIECES = re.compile(r"\n|[^\S\n]*\S+|[^\S\n]+")
_ID_MASK = 0x7FFFFFFF


class UnknownTokenError(ValueError):
    """A token id this tokenizer never produced (``/detokenize`` answers 400)."""

    def __init__(self, token_id: int) -> None:
        super().__init__(f"Token id {token_id} is out of vocabulary")
        self.token_id = token_id


def split_pieces(text: str) -> list[str]:
    """The token pieces of ``text`` (joined they give ``text`` back)."""
    return _PIECES.findall(text)


@lru_cache(maxsize=65536)
def piece_id(piece: str) -> int:
    """The token id of one piece: CRC-32 of its UTF-8 bytes, low 31 bits."""
    return zlib.crc32(piece.encode("utf-8", "surrogatepass")) & _ID_MASK


@lru_cache(maxsize=1024)
def piece_ids(pieces: tuple[str, ...]) -> tuple[int, ...]:
    """The token ids of a tuple of pieces (generated answers repeat: cached)."""
    return tuple(map(piece_id, pieces))


class Tokenizer:
    """Encodes text to token ids and back.

    Ids are a hash of the piece, so decoding needs the piece: the tokenizer remembers
    the pieces it encoded (about the ``remember`` first-seen distinct ones still in use;
    the oldest go first) plus the pieces registered with :meth:`register` (kept for
    good). A real vocabulary is finite;
    this one is not, so an id never seen decodes to :class:`UnknownTokenError`.

    Args:
        remember: how many distinct recently encoded pieces stay decodable.
    """

    def __init__(self, remember: int = 65536) -> None:
        self._remember = remember
        self._slack = remember // 8
        self._fixed: dict[int, str] = {}
        self._recent: dict[int, str] = {}

    def register(self, pieces: Iterable[str]) -> None:
        """Make ``pieces`` decodable for the life of the tokenizer (the output words)."""
        for piece in pieces:
            self._fixed[piece_id(piece)] = piece

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return self.encode_pieces(split_pieces(text))

    def encode_pieces(self, pieces: Sequence[str]) -> list[int]:
        """Token ids of already split ``pieces``."""
        ids = list(map(piece_id, pieces))
        recent = self._recent
        recent.update(zip(ids, pieces, strict=True))
        if len(recent) > self._remember + self._slack:
            # Trimmed in one pass every ``slack`` new pieces: deleting a dict's first key
            # one at a time (next(iter(d))) rescans the deleted slots before it, which
            # cost 100 ms per prompt of 1,000 new words once past ``remember``.
            self._recent = dict(
                itertools.islice(recent.items(), len(recent) - self._remember, None)
            )
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``.

        Raises:
            UnknownTokenError: an id this tokenizer cannot map back to a piece.
        """
        parts: list[str] = []
        for token_id in ids:
            piece = self._fixed.get(token_id)
            if piece is None:
                piece = self._recent.get(token_id)
            if piece is None:
                raise UnknownTokenError(token_id)
            parts.append(piece)
        return "".join(parts)

    def piece(self, token_id: int) -> str:
        """The piece of one id (for ``return_token_strs``).

        Raises:
            UnknownTokenError: as :meth:`decode`.
        """
        return self.decode((token_id,))


def render_chat(
    messages: Sequence[tuple[str, str]],
    *,
    add_generation_prompt: bool,
    continue_final_message: bool,
) -> str:
    """The prompt text of a conversation under the fixed template (module docstring).

    Args:
        messages: ``(role, content)`` pairs in order.
        add_generation_prompt: append the open assistant header.
        continue_final_message: leave the last message open for the model to continue.
    """
    parts: list[str] = []
    last = len(messages) - 1
    for index, (role, content) in enumerate(messages):
        if continue_final_message and index == last:
            parts.append(f"<|{role}|>\n{content}")
        else:
            parts.append(f"<|{role}|>\n{content}\n")
    if add_generation_prompt and not continue_final_message:
        parts.append("<|assistant|>\n")
    return "".join(parts)
