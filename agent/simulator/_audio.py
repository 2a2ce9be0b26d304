"""``/v1/audio/transcriptions``: the multipart form and the simulated transcript (pure).

The body is ``multipart/form-data`` with a ``file`` part and text fields (``model``,
``language``, ``prompt``, ``response_format``, ``temperature``), parsed with the
``multipart`` library. The audio's length comes from its header when it is a WAV
file (stdlib :mod:`wave`), otherwise it is estimated at 16 kB per second (a
128 kbit/s compressed stream). The transcript is two words per second of audio, at
least one, at most ``--output-tokens``, drawn from the generated-text walk of
:mod:`._text` keyed by the audio's bytes: the same file always gives the same text.
"""

from __future__ import annotations

import hashlib
import io
import math
import wave
from dataclasses import dataclass

from multipart import (  # type: ignore[import-untyped]
    MultipartError,
    MultipartSegment,
    PushMultipartParser,
    parse_options_header,
)

from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._text import generate_words

__all__ = ["TranscriptionInput", "audio_seconds", "parse_transcription", "transcript"]

_FORMATS = ("json", "text")
_COMPRESSED_BYTES_PER_S = 16_000
_MAX_FIELD_BYTES = 64 * 1024


@dataclass(slots=True)
class TranscriptionInput:
    """A validated transcription form."""

    model: str | None
    audio: bytes
    response_format: str


def _form(content_type: bytes, body: bytes) -> tuple[dict[str, str], bytes | None]:
    """Text fields and the ``file`` part's bytes of a multipart body."""
    kind, options = parse_options_header(content_type.decode("latin-1"))
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        raise BadRequestError("Expected a multipart/form-data body with a boundary.")
    fields: dict[str, str] = {}
    audio: bytes | None = None
    current: MultipartSegment | None = None
    parts: list[bytes] = []
    try:
        with PushMultipartParser(boundary, max_segment_count=32) as parser:
            for event in parser.parse(body):
                if isinstance(event, MultipartSegment):
                    current, parts = event, []
                elif event is not None:
                    parts.append(event)
                elif current is not None:
                    data = b"".join(parts)
                    if current.name == "file":
                        audio = data
                    elif current.name and len(data) <= _MAX_FIELD_BYTES:
                        fields[current.name] = data.decode("utf-8", "replace")
    except MultipartError as exc:
        raise BadRequestError(f"Malformed multipart body: {exc}") from None
    return fields, audio


def parse_transcription(content_type: bytes, body: bytes) -> TranscriptionInput:
    """Validate a transcription form.

    Raises:
        BadRequestError: not multipart, malformed, no ``file`` part, or a
            ``response_format`` other than ``json`` and ``text``.
    """
    fields, audio = _form(content_type, body)
    if audio is None:
        raise BadRequestError("Field required: `file`.", param="file")
    response_format = fields.get("response_format", "json")
    if response_format not in _FORMATS:
        raise BadRequestError(
            f"response_format {response_format!r} is not supported by the simulator "
            f"(use one of {', '.join(_FORMATS)})",
            param="response_format",
        )
    return TranscriptionInput(fields.get("model"), audio, response_format)


def audio_seconds(audio: bytes) -> float:
    """The audio's duration: from a WAV header, else estimated from its size."""
    if audio[:4] == b"RIFF" and audio[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(audio)) as wav:
                frames, rate = int(wav.getnframes()), int(wav.getframerate())
        except (wave.Error, EOFError):
            frames, rate = 0, 0  # an unreadable header: estimate from the size instead
        if rate > 0:
            return frames / rate
    return len(audio) / _COMPRESSED_BYTES_PER_S


def transcript(audio: bytes, *, seed: int, max_words: int) -> tuple[str, int]:
    """The text heard in ``audio`` and its whole seconds (``usage.seconds``)."""
    seconds = audio_seconds(audio)
    words = min(max_words, max(1, round(seconds * 2)))
    key = hashlib.sha256(audio).hexdigest() + "\n"  # a fresh start: no leading space
    return "".join(generate_words(key, seed, 0, words)), math.ceil(seconds)
