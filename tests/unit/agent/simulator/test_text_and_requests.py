"""Pure parts of the simulator: generated text, embeddings, request parsing, responses."""

from __future__ import annotations

import base64
import json
import math
import struct

import pytest

from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._requests import parse_chat, parse_completion, parse_embedding
from sage.unified.agent.simulator._responses import (
    StreamTemplates,
    chat_body,
    error_body,
    models_body,
    plan_generation,
)
from sage.unified.agent.simulator._text import (
    VOCABULARY,
    embed,
    embedding_base64,
    generate_tokens,
    prompt_key,
)


def test_generated_tokens_are_deterministic_words() -> None:
    key = prompt_key("hello", 0)
    tokens = generate_tokens(key, 12)
    assert len(tokens) == 12
    assert tokens == generate_tokens(prompt_key("hello", 0), 12)
    assert not tokens[0].startswith(" ")
    assert all(t.startswith(" ") for t in tokens[1:])
    assert all(t.strip() in VOCABULARY for t in tokens)
    assert generate_tokens(prompt_key("hello", 1), 12) != tokens  # the seed matters
    assert generate_tokens(prompt_key("other", 0), 12) != tokens  # the prompt matters


def test_embeddings_are_deterministic_unit_vectors() -> None:
    v = embed("alpha", 64)
    assert len(v) == 64
    assert math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-9)
    assert embed("alpha", 64) == v
    assert embed("beta", 64) != v
    decoded = struct.unpack("<64f", base64.b64decode(embedding_base64(v)))
    assert decoded == pytest.approx(v, abs=1e-6)


def test_parse_chat_fields() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "max_completion_tokens": 5,
        "n": 2,
        "temperature": 0.3,
    }
    req = parse_chat(json.dumps(body).encode())
    assert req.model == "m"
    assert req.stream
    assert req.include_usage
    assert req.n == 2
    assert req.max_tokens == 5  # max_completion_tokens wins, as in vLLM
    assert req.prompts == ["be brief\nhi"]
    assert req.prompt_tokens > 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{nope",
        b"[]",
        b'{"model":"m"}',
        b'{"messages":[]}',
        b'{"messages":[{"role":"user"}],"max_tokens":0}',
    ],
)
def test_parse_chat_rejects(body: bytes) -> None:
    with pytest.raises(BadRequestError) as info:
        parse_chat(body)
    assert info.value.status == 400


def test_parse_completion_prompt_forms() -> None:
    assert parse_completion(b'{"prompt":"a b"}').prompts == ["a b"]
    assert len(parse_completion(b'{"prompt":["a","b"]}').prompts) == 2
    ids = parse_completion(b'{"prompt":[1,2,3]}')
    assert len(ids.prompts) == 1
    assert ids.prompt_tokens == 3
    assert len(parse_completion(b'{"prompt":[[1,2],[3]]}').prompts) == 2
    with pytest.raises(BadRequestError):
        parse_completion(b'{"prompt":[]}')


def test_parse_embedding() -> None:
    req = parse_embedding(b'{"input":["x","y"],"encoding_format":"base64"}')
    assert req.inputs == ["x", "y"]
    assert req.base64
    with pytest.raises(BadRequestError):
        parse_embedding(b'{"input":"x","encoding_format":"hex"}')


def test_plan_honours_max_tokens_and_n() -> None:
    req = parse_chat(b'{"messages":[{"role":"user","content":"q"}],"max_tokens":3,"n":2}')
    plan = plan_generation(req, 16, 0)
    assert plan.finish_reason == "length"
    assert plan.steps == 3
    assert len(plan.choices) == 2
    assert plan.completion_tokens == 6
    full = plan_generation(parse_chat(b'{"messages":[{"role":"user","content":"q"}]}'), 16, 0)
    assert full.finish_reason == "stop"
    assert full.steps == 16
    assert full.choices[0][:3] == plan.choices[0]  # a shorter answer is a prefix


def test_chat_body_shape() -> None:
    req = parse_chat(b'{"messages":[{"role":"user","content":"q"}]}')
    plan = plan_generation(req, 4, 0)
    obj = json.loads(chat_body("chatcmpl-1", 7, "m", plan, req.prompt_tokens))
    assert obj["object"] == "chat.completion"
    assert obj["model"] == "m"
    assert obj["created"] == 7
    assert obj["choices"][0]["message"]["content"] == "".join(plan.choices[0])
    assert obj["usage"]["total_tokens"] == req.prompt_tokens + 4


def test_stream_templates_are_valid_sse_json() -> None:
    tpl = StreamTemplates(chat=True, rid='id"1', created=5, model="m")
    role = json.loads(tpl.role(0).removeprefix(b"data: "))
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tok = json.loads(tpl.token(1, ' "quoted"', "stop").removeprefix(b"data: "))
    assert tok["id"] == 'id"1'
    assert tok["choices"][0]["index"] == 1
    assert tok["choices"][0]["delta"]["content"] == ' "quoted"'
    assert tok["choices"][0]["finish_reason"] == "stop"
    usage = json.loads(tpl.usage(3, 4).removeprefix(b"data: "))
    assert usage["choices"] == []
    assert usage["usage"]["total_tokens"] == 7
    text = StreamTemplates(chat=False, rid="c", created=5, model="m").token(0, "w", None)
    assert json.loads(text.removeprefix(b"data: "))["choices"][0]["text"] == "w"


def test_error_and_models_shapes() -> None:
    err = json.loads(error_body("The model `x` does not exist.", "NotFoundError", 404, "model"))
    assert err == {
        "error": {
            "message": "The model `x` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    models = json.loads(models_body("served", "path/model", 1, 4096))
    card = models["data"][0]
    assert models["object"] == "list"
    assert (card["id"], card["root"], card["owned_by"], card["parent"]) == (
        "served",
        "path/model",
        "vllm",
        None,
    )
