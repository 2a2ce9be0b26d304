"""Pure parts of the simulator: generated text, embeddings, request parsing, responses."""

from __future__ import annotations

import base64
import itertools
import json
import math
import struct

import pytest

from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._planning import Usage, plan_generation
from sage.unified.agent.simulator._requests import (
    parse_chat,
    parse_completion,
    parse_responses,
)
from sage.unified.agent.simulator._requests_pooling import parse_pooling
from sage.unified.agent.simulator._responses import CompletionsFormat, error_body, models_body
from sage.unified.agent.simulator._text import (
    VOCABULARY,
    embed,
    embedding_base64,
    generate_words,
    successor,
)
from sage.unified.agent.simulator._tokenizer import Tokenizer


def test_generated_words_are_deterministic_and_depend_on_prompt_seed_and_choice() -> None:
    words = generate_words("<|user|>\nhello\n<|assistant|>\n", 0, 0, 12)
    assert len(words) == 12
    assert words == generate_words("<|user|>\nhello\n<|assistant|>\n", 0, 0, 12)
    assert not words[0].startswith(" ")  # after a newline: no leading space
    assert all(w.startswith(" ") for w in words[1:])
    assert all(w.strip() in VOCABULARY for w in words)
    assert generate_words("<|user|>\nhello\n<|assistant|>\n", 1, 0, 12) != words  # seed
    assert generate_words("<|user|>\nhello\n<|assistant|>\n", 0, 1, 12) != words  # choice
    assert generate_words("<|user|>\nother\n<|assistant|>\n", 0, 0, 12) != words  # prompt


def test_next_word_depends_only_on_the_previous_word() -> None:
    words = generate_words("a prompt\n", 3, 0, 30)
    for before, after in itertools.pairwise(words):
        assert after.strip() == successor(before.strip())
    # Every word has a successor: the walk is one cycle over the whole vocabulary.
    assert {successor(w) for w in VOCABULARY} == set(VOCABULARY)


def test_continuing_a_partial_answer_gives_the_rest_of_the_answer() -> None:
    prompt = "<|user|>\nq\n<|assistant|>\n"
    full = generate_words(prompt, 0, 0, 10)
    for k in (1, 4, 9):
        partial = "".join(full[:k])
        rest = generate_words(prompt + partial, 0, 0, 10 - k)
        assert partial + "".join(rest) == "".join(full)
    # A completions prompt that ends with a word: the answer starts with a space.
    assert generate_words("once upon", 0, 0, 3)[0].startswith(" ")


def test_embeddings_are_deterministic_unit_vectors() -> None:
    v = embed("alpha", 64)
    assert len(v) == 64
    assert math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-9)
    assert embed("alpha", 64) == v
    assert embed("beta", 64) != v
    decoded = struct.unpack("<64f", base64.b64decode(embedding_base64(v)))
    assert decoded == pytest.approx(v, abs=1e-6)


def test_parse_chat_fields_and_template() -> None:
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
        "ignore_eos": True,
    }
    req = parse_chat(json.dumps(body).encode())
    assert req.model == "m"
    assert req.stream
    assert req.include_usage
    assert req.n == 2
    assert req.ignore_eos
    assert req.max_tokens == 5  # max_completion_tokens wins, as in vLLM
    assert req.prompts == ["<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"]


def test_parse_chat_continue_final_message() -> None:
    body = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "w1 w2"}],
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    req = parse_chat(json.dumps(body).encode())
    assert req.prompts == ["<|user|>\nq\n<|assistant|>\nw1 w2"]
    assert req.continued_words == 2
    # vLLM's 400: add_generation_prompt defaults to true, so continuing alone conflicts.
    del body["add_generation_prompt"]
    with pytest.raises(BadRequestError) as info:
        parse_chat(json.dumps(body).encode())
    assert "Cannot set both `continue_final_message` and `add_generation_prompt`" in str(info.value)


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


def test_parse_completion_prompt_forms_and_default_max_tokens() -> None:
    text = parse_completion(b'{"prompt":"a b"}')
    assert text.prompts == ["a b"]
    assert text.prompt_ids is None
    assert text.max_tokens == 16  # vLLM's (and OpenAI's) default for completions
    assert parse_completion(b'{"prompt":"a","max_tokens":null}').max_tokens is None
    assert len(parse_completion(b'{"prompt":["a","b"]}').prompts) == 2
    ids = parse_completion(b'{"prompt":[1,2,3]}')
    assert ids.prompt_ids == [[1, 2, 3]]
    assert parse_completion(b'{"prompt":[[1,2],[3]]}').prompt_ids == [[1, 2], [3]]
    for bad in (b'{"prompt":[]}', b'{"prompt":[1,"a"]}', b'{"prompt":[[]]}'):
        with pytest.raises(BadRequestError):
            parse_completion(bad)


def test_parse_responses_input_forms() -> None:
    plain = parse_responses(b'{"input":"hi","instructions":"be brief","max_output_tokens":4}')
    assert plain.prompts == ["<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"]
    assert plain.max_tokens == 4
    msgs = parse_responses(
        b'{"input":[{"role":"user","content":[{"type":"input_text","text":"a"}]}]}'
    )
    assert msgs.prompts == ["<|user|>\na\n<|assistant|>\n"]
    for bad in (b'{"input":[]}', b'{"input":[{"type":"function_call"}]}', b"{}"):
        with pytest.raises(BadRequestError):
            parse_responses(bad)


def test_parse_pooling_inputs() -> None:
    req = parse_pooling(b'{"input":["x",[1,2]],"encoding_format":"base64"}')
    assert req.texts == ["x", "1 2"]
    assert req.ids == [None, [1, 2]]
    assert req.base64
    assert parse_pooling(b'{"input":[5,6]}').ids == [[5, 6]]
    for bad in (b'{"input":"x","encoding_format":"hex"}', b'{"input":[]}', b'{"input":["a",1]}'):
        with pytest.raises(BadRequestError):
            parse_pooling(bad)


def test_chat_body_shape_and_cached_tokens_details() -> None:
    req = parse_chat(b'{"messages":[{"role":"user","content":"q"}]}')
    plan = plan_generation(req, Tokenizer(), natural_tokens=4, max_model_len=100, seed=0)
    usage = Usage(plan.prompt_tokens, plan.completion_tokens, cached_tokens=16)

    def body(details: bool, cached: int) -> dict[str, object]:
        fmt = CompletionsFormat(
            chat=True,
            rid="chatcmpl-1",
            created=7,
            model="m",
            plan=plan,
            include_usage=False,
            prompt_details=details,
        )
        out: dict[str, object] = json.loads(
            fmt.body(Usage(usage.prompt_tokens, usage.completion_tokens, cached))
        )
        return out

    obj = body(True, 16)
    assert obj["object"] == "chat.completion"
    assert obj["choices"][0]["message"]["content"] == "".join(plan.choices[0])  # type: ignore[index]
    assert obj["usage"] == {
        "prompt_tokens": plan.prompt_tokens,
        "total_tokens": plan.prompt_tokens + 4,
        "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 16},
    }
    # As vLLM: no details without the flag, and none when nothing was cached.
    assert body(False, 16)["usage"]["prompt_tokens_details"] is None  # type: ignore[index]
    assert body(True, 0)["usage"]["prompt_tokens_details"] is None  # type: ignore[index]


def test_stream_events_are_valid_sse_json() -> None:
    req = parse_chat(b'{"messages":[{"role":"user","content":"q"}],"n":2}')
    plan = plan_generation(req, Tokenizer(), natural_tokens=2, max_model_len=100, seed=0)
    fmt = CompletionsFormat(
        chat=True,
        rid='id"1',
        created=5,
        model="m",
        plan=plan,
        include_usage=True,
        prompt_details=True,
    )
    events = [e for e in (fmt.step(0) + fmt.step(1)).split(b"\n\n") if e]
    decoded = [json.loads(e.removeprefix(b"data: ")) for e in events]
    assert decoded[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert decoded[0]["id"] == 'id"1'
    assert [d["choices"][0]["index"] for d in decoded] == [0, 0, 1, 1, 0, 1]
    assert decoded[-1]["choices"][0]["finish_reason"] == "stop"
    tail = fmt.tail(Usage(3, 4, 0)).split(b"\n\n")
    assert json.loads(tail[0].removeprefix(b"data: "))["usage"]["total_tokens"] == 7
    assert tail[1] == b"data: [DONE]"


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
