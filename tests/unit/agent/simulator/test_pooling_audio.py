"""Pooling, scoring and tokenize requests and bodies; the transcription form."""

from __future__ import annotations

import io
import json
import wave

import pytest

from sage.unified.agent.simulator._audio import audio_seconds, parse_transcription, transcript
from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._pooling_bodies import (
    class_probs,
    classify_body,
    relevance,
    rerank_body,
    score_body,
)
from sage.unified.agent.simulator._requests_pooling import (
    parse_detokenize,
    parse_pooling,
    parse_rerank,
    parse_score,
    parse_tokenize,
)


def test_score_pairs_as_vllm_accepts_them() -> None:
    assert parse_score(b'{"text_1":"q","text_2":["a","b"]}').pairs == [("q", "a"), ("q", "b")]
    assert parse_score(b'{"queries":["x","y"],"documents":["a","b"]}').pairs == [
        ("x", "a"),
        ("y", "b"),
    ]
    assert parse_score(b'{"data_1":"x","data_2":"y"}').pairs == [("x", "y")]
    for bad in (b'{"text_1":["a","b"],"text_2":["c","d","e"]}', b'{"text_1":"a"}', b"{}"):
        with pytest.raises(BadRequestError):
            parse_score(bad)


def test_rerank_orders_by_relevance_and_cuts_top_n() -> None:
    req = parse_rerank(b'{"query":"red apple","documents":["blue sky","red apple pie","apple"]}')
    scores = [relevance(req.query, d, cross_encoder=True, dim=8) for d in req.documents]
    body = json.loads(rerank_body("rerank-1", "m", req.documents, scores, 2, 12))
    assert [r["index"] for r in body["results"]] == [1, 2]
    assert body["results"][0]["document"] == {"text": "red apple pie", "multi_modal": None}
    assert 0 < body["results"][1]["relevance_score"] < body["results"][0]["relevance_score"] < 1
    assert body["usage"] == {"prompt_tokens": 12, "total_tokens": 12}
    with pytest.raises(BadRequestError):
        parse_rerank(b'{"query":"q","documents":["a"],"top_n":-1}')


def test_bi_encoder_score_is_the_cosine_of_the_embeddings() -> None:
    assert relevance("same", "same", cross_encoder=False, dim=32) == pytest.approx(1.0)
    assert -1.0 <= relevance("a", "b", cross_encoder=False, dim=32) < 1.0
    body = json.loads(score_body("score-1", 3, "m", [0.25, 0.5], 4))
    assert body["data"] == [
        {"index": 0, "object": "score", "score": 0.25},
        {"index": 1, "object": "score", "score": 0.5},
    ]


def test_classify_body_shape() -> None:
    probs = class_probs("text")
    assert sum(probs) == pytest.approx(1.0)
    assert class_probs("text") == probs
    body = json.loads(classify_body("classify-1", 3, "m", parse_pooling(b'{"input":"text"}'), 1))
    item = body["data"][0]
    assert (item["index"], item["num_classes"], item["probs"]) == (0, 2, probs)
    assert item["label"] == ("LABEL_0" if probs[0] >= probs[1] else "LABEL_1")


def test_tokenize_inputs() -> None:
    assert parse_tokenize(b'{"prompt":"a b"}').text == "a b"
    chat = parse_tokenize(b'{"messages":[{"role":"user","content":"hi"}],"return_token_strs":true}')
    assert chat.text == "<|user|>\nhi\n<|assistant|>\n"
    assert chat.return_token_strs
    for bad in (
        b"{}",
        b'{"messages":[{"role":"user","content":"x"}],"continue_final_message":true}',
    ):
        with pytest.raises(BadRequestError):
            parse_tokenize(bad)
    assert parse_detokenize(b'{"tokens":[1,2]}') == (None, [1, 2])


def _wav(seconds: float, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(seconds * rate))
    return buffer.getvalue()


def _form(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, bytes]:
    boundary = "sim-boundary-1"
    out = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}".encode(), out


def test_transcription_form_and_transcript() -> None:
    audio = _wav(3.2)
    content_type, body = _form([("file", audio, "a.wav"), ("model", b"whisper", None)])
    req = parse_transcription(content_type, body)
    assert (req.model, req.audio, req.response_format) == ("whisper", audio, "json")
    assert audio_seconds(audio) == pytest.approx(3.2)
    assert audio_seconds(b"x" * 32_000) == pytest.approx(2.0)  # not WAV: estimated
    text, seconds = transcript(audio, seed=0, max_words=100)
    assert (len(text.split()), seconds) == (6, 4)
    assert transcript(audio, seed=0, max_words=100) == (text, seconds)
    assert len(transcript(audio, seed=0, max_words=2)[0].split()) == 2


@pytest.mark.parametrize(
    ("content_type", "parts"),
    [
        (b"application/json", None),
        (None, [("model", b"m", None)]),
        (None, [("file", b"x", "a.wav"), ("response_format", b"srt", None)]),
    ],
)
def test_transcription_form_errors(
    content_type: bytes | None, parts: list[tuple[str, bytes, str | None]] | None
) -> None:
    ct, body = _form(parts or [("file", b"x", "a.wav")])
    with pytest.raises(BadRequestError):
        parse_transcription(content_type or ct, body)
    with pytest.raises(BadRequestError):
        parse_transcription(ct, body[: len(body) // 2] + b"--garbage")
