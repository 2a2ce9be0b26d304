"""The simulator's other vLLM endpoints, per engine kind, on loopback."""

from __future__ import annotations

import io
import wave
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

NOT_FOUND = {"detail": "Not Found"}


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=10)


def test_tokenize_and_detokenize_match_what_the_engine_counts(
    start_simulator: Callable[..., Any],
) -> None:
    sim = start_simulator("m")
    messages = [{"role": "user", "content": "hello there, engine"}]
    tokenized = _post(sim.url, "/tokenize", {"messages": messages, "return_token_strs": True})
    assert tokenized.status_code == 200
    body = tokenized.json()
    assert body["max_model_len"] == 4096
    assert body["count"] == len(body["tokens"])
    assert "".join(body["token_strs"]) == "<|user|>\nhello there, engine\n<|assistant|>\n"
    chat = _post(sim.url, "/v1/chat/completions", {"messages": messages}).json()
    assert chat["usage"]["prompt_tokens"] == body["count"]
    text = _post(sim.url, "/detokenize", {"tokens": body["tokens"]}).json()
    assert text == {"prompt": "".join(body["token_strs"])}
    plain = _post(sim.url, "/tokenize", {"prompt": "a b"}).json()
    assert (plain["count"], plain["token_strs"]) == (2, None)
    assert _post(sim.url, "/detokenize", {"tokens": [7]}).status_code == 400
    wrong = _post(sim.url, "/tokenize", {"model": "other", "prompt": "x"})
    assert wrong.status_code == 404
    assert wrong.json()["error"]["type"] == "NotFoundError"


def test_embedding_engine_serves_pooling_score_and_rerank(
    start_simulator: Callable[..., Any],
) -> None:
    sim = start_simulator("emb", kind="embedding", embedding_dim=16)
    vector = _post(sim.url, "/v1/embeddings", {"input": "cat"}).json()["data"][0]["embedding"]
    pooled = _post(sim.url, "/pooling", {"input": ["cat", "dog"]}).json()
    assert pooled["object"] == "list"
    assert pooled["id"].startswith("pool-")
    assert [d["object"] for d in pooled["data"]] == ["pooling", "pooling"]
    assert pooled["data"][0]["data"] == pytest.approx(vector)
    for path in ("/score", "/v1/score"):
        scored = _post(sim.url, path, {"text_1": "cat", "text_2": ["cat", "dog"]}).json()
        assert [d["object"] for d in scored["data"]] == ["score", "score"]
        assert scored["data"][0]["score"] == pytest.approx(1.0)  # cosine of equal vectors
        assert scored["usage"]["prompt_tokens"] > 0
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        ranked = _post(sim.url, path, {"query": "cat", "documents": ["dog", "cat"], "top_n": 1})
        assert ranked.status_code == 200
        results = ranked.json()["results"]
        assert [(r["index"], r["document"]["text"]) for r in results] == [(1, "cat")]
    for path in ("/classify", "/v1/chat/completions", "/v1/responses"):
        missing = _post(sim.url, path, {"input": "x"})
        assert (missing.status_code, missing.json()) == (404, NOT_FOUND)


def test_rerank_engine_is_a_cross_encoder(start_simulator: Callable[..., Any]) -> None:
    sim = start_simulator("rr", kind="rerank")
    ranked = _post(
        sim.url,
        "/v1/rerank",
        {"query": "red apple", "documents": ["blue sky", "red apple pie", "apple tree"]},
    ).json()
    assert [r["index"] for r in ranked["results"]] == [1, 2, 0]
    assert all(0 < r["relevance_score"] < 1 for r in ranked["results"])
    assert ranked["id"].startswith("rerank-")
    classified = _post(sim.url, "/classify", {"input": ["a", "b"]}).json()
    assert classified["id"].startswith("classify-")
    assert [d["num_classes"] for d in classified["data"]] == [2, 2]
    assert _post(sim.url, "/v1/embeddings", {"input": "x"}).json() == NOT_FOUND


def test_classify_engine(start_simulator: Callable[..., Any]) -> None:
    sim = start_simulator("cls", kind="classify")
    item = _post(sim.url, "/classify", {"input": "nice"}).json()["data"][0]
    assert item["label"] in ("LABEL_0", "LABEL_1")
    assert sum(item["probs"]) == pytest.approx(1.0)
    pooled = _post(sim.url, "/pooling", {"input": "nice"}).json()["data"][0]["data"]
    assert pooled == pytest.approx(item["probs"])
    for path in ("/score", "/rerank", "/v1/embeddings"):
        assert _post(sim.url, path, {"input": "x"}).status_code == 404


def _wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\x00\x00" * int(seconds * 16000))
    return buffer.getvalue()


def test_transcription_engine(start_simulator: Callable[..., Any]) -> None:
    sim = start_simulator("whisper", kind="transcription", ttft_ms=20)
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    audio = _wav(2.5)
    heard = client.audio.transcriptions.create(model="whisper", file=("a.wav", audio))
    assert len(heard.text.split()) == 5  # two words per second
    raw = httpx.post(
        f"{sim.url}/v1/audio/transcriptions",
        files={"file": ("a.wav", audio, "audio/wav")},
        data={"model": "whisper"},
    ).json()
    assert raw == {"text": heard.text, "usage": {"type": "duration", "seconds": 3}}
    as_text = client.audio.transcriptions.create(
        model="whisper", file=("a.wav", audio), response_format="text"
    )
    assert str(as_text).strip() == heard.text
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(
            model="whisper", file=("a.wav", audio), response_format="srt"
        )
    bad = httpx.post(f"{sim.url}/v1/audio/transcriptions", json={"model": "whisper"})
    assert bad.status_code == 400
    # Whisper in vLLM is a generation model too.
    assert _post(sim.url, "/v1/completions", {"prompt": "x"}).status_code == 200
    assert _post(sim.url, "/v1/embeddings", {"input": "x"}).status_code == 404
