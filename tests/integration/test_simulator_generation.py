"""Output length, stream continuation and the Responses API of the simulator on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

QUESTION = [{"role": "user", "content": "tell me a story"}]


def _stream_deltas(url: str, path: str, body: dict[str, Any]) -> list[str]:
    deltas: list[str] = []
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line.removeprefix("data: "))["choices"]:
                text = choice["delta"].get("content") if "delta" in choice else choice["text"]
                if text:
                    deltas.append(text)
    return deltas


def test_chat_stream_continues_exactly_where_it_was_cut(
    start_simulator: Callable[..., Any],
) -> None:
    sim = start_simulator("m", output_tokens=12)
    deltas = _stream_deltas(sim.url, "/v1/chat/completions", {"messages": QUESTION})
    assert len(deltas) == 12
    full = "".join(deltas)
    for k in (1, 5, 11):
        partial = "".join(deltas[:k])
        body = {
            "messages": [*QUESTION, {"role": "assistant", "content": partial}],
            "continue_final_message": True,
            "add_generation_prompt": False,
        }
        continuation = "".join(_stream_deltas(sim.url, "/v1/chat/completions", body))
        assert partial + continuation == full
        # Non-streaming, through the openai SDK, the same.
        client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
        answer = client.chat.completions.create(
            model="m",
            messages=body["messages"],  # type: ignore[arg-type]
            extra_body={"continue_final_message": True, "add_generation_prompt": False},
        )
        assert answer.choices[0].finish_reason == "stop"
        assert partial + (answer.choices[0].message.content or "") == full


def test_completions_continue_from_prompt_plus_partial_text(
    start_simulator: Callable[..., Any],
) -> None:
    sim = start_simulator("m")
    body = {"prompt": "Once upon a time", "max_tokens": 10}
    deltas = _stream_deltas(sim.url, "/v1/completions", body)
    full = "".join(deltas)
    partial = "".join(deltas[:4])
    rest = {"prompt": "Once upon a time" + partial, "max_tokens": 6}
    assert partial + "".join(_stream_deltas(sim.url, "/v1/completions", rest)) == full


def test_continue_with_generation_prompt_is_vllms_400(
    start_simulator: Callable[..., Any],
) -> None:
    sim = start_simulator("m")
    response = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={
            "messages": [*QUESTION, {"role": "assistant", "content": "x"}],
            "continue_final_message": True,
        },
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 400
    assert (
        "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
        in error["message"]
    )


def test_output_length_follows_max_tokens_and_ignore_eos(
    start_simulator: Callable[..., Any],
) -> None:
    sim = start_simulator("m", output_tokens=8)
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)

    def ask(**kwargs: Any) -> tuple[int, str | None]:
        answer = client.chat.completions.create(model="m", messages=QUESTION, **kwargs)  # type: ignore[arg-type]
        assert answer.usage is not None
        assert (
            len((answer.choices[0].message.content or "").split()) == answer.usage.completion_tokens
        )
        return answer.usage.completion_tokens, answer.choices[0].finish_reason

    assert ask() == (8, "stop")
    assert ask(max_tokens=40) == (8, "stop")
    assert ask(max_completion_tokens=3) == (3, "length")
    assert ask(max_tokens=40, extra_body={"ignore_eos": True}) == (40, "length")
    comp = client.completions.create(
        model="m", prompt="x", max_tokens=25, extra_body={"ignore_eos": True}
    )
    assert comp.usage is not None
    assert comp.usage.completion_tokens == 25
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=QUESTION, max_tokens=5000)
    assert "maximum context length is 4096" in str(info.value)


def test_responses_api(start_simulator: Callable[..., Any]) -> None:
    sim = start_simulator("m", output_tokens=6, itl_ms=5)
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    answer = client.responses.create(model="m", input="hello", instructions="be brief")
    assert answer.status == "completed"
    assert len(answer.output_text.split()) == 6
    assert answer.usage is not None
    assert answer.usage.output_tokens == 6
    assert answer.usage.input_tokens_details.cached_tokens == 0
    # The same conversation through chat gives the same text (same template, same walk).
    chat = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
        ],
    )
    assert chat.choices[0].message.content == answer.output_text

    kinds: list[str] = []
    deltas: list[str] = []
    final = None
    for event in client.responses.create(model="m", input="hello", stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            final = event.response
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final is not None
    assert "".join(deltas) == final.output_text

    cut = client.responses.create(model="m", input="hello", max_output_tokens=2)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="m", input="x", previous_response_id="resp_nope")
