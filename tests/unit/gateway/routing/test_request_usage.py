"""What the gateway reads of a request (its rendered prompt, chunked) and of an answer (usage)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

from sage.unified.gateway.routing import (
    DEFAULT_CHUNK_BYTES,
    RoutingRequest,
    find_usage,
    prompt_text,
)

CHAT = b"/v1/chat/completions"
COMPLETIONS = b"/v1/completions"


def chat(*messages: tuple[str, object]) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages]}
    ).encode()


def test_a_chat_renders_with_the_simulators_template() -> None:
    body = chat(
        ("system", "be brief"),
        (
            "user",
            [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}],
        ),
        ("assistant", None),
    )
    assert prompt_text(CHAT, body) == (
        "<|system|>\nbe brief\n<|user|>\na\nb\n<|assistant|>\n\n<|assistant|>\n"
    )


def test_completions_prompts_are_read_and_anything_else_is_not() -> None:
    assert prompt_text(COMPLETIONS, b'{"model": "m", "prompt": "once upon"}') == "once upon"
    assert prompt_text(COMPLETIONS, b'{"prompt": ["only one"]}') == "only one"
    assert prompt_text(COMPLETIONS, b'{"prompt": ["two", "prompts"]}') is None
    assert prompt_text(COMPLETIONS, b'{"prompt": [1, 2, 3]}') is None  # token ids
    assert prompt_text(CHAT, b'{"messages": "not a list"}') is None
    assert prompt_text(CHAT, b'{"messages": []}') is None
    assert prompt_text(b"/v1/embeddings", b'{"input": "x"}') is None


def test_shared_prefixes_share_leading_chunk_keys() -> None:
    system = "You are a helpful assistant. " * 40
    one = RoutingRequest("m", CHAT, chat(("system", system), ("user", "first question " * 20)))
    two = RoutingRequest("m", CHAT, chat(("system", system), ("user", "another one " * 20)))
    a, b = one.chunk_hashes(), two.chunk_hashes()
    shared = len(f"<|system|>\n{system}\n<|user|>\n".encode()) // DEFAULT_CHUNK_BYTES
    assert a[:shared] == b[:shared]
    assert a[shared:] != b[shared:]
    assert one.prompt_units == len(prompt_text(CHAT, one.body).encode())  # type: ignore[union-attr]
    # A key stands for its whole prefix: the same chunk after a different prefix differs.
    moved = RoutingRequest("m", COMPLETIONS, json.dumps({"prompt": "x" + system}).encode())
    assert set(moved.chunk_hashes()).isdisjoint(a)


def test_a_prompt_shorter_than_a_chunk_counts_its_rendered_bytes() -> None:
    # Measured without rendering: it must still be the rendered prompt's UTF-8 size.
    bodies = [
        (CHAT, chat(("user", "héllo \ud83d\ude00 \n tab\t"))),
        (CHAT, chat(("rôle", [{"type": "text", "text": "a"}, {"type": "text", "text": "é"}]))),
        (CHAT, chat(("system", None), ("user", "x"))),
        (COMPLETIONS, json.dumps({"prompt": "naïve"}).encode()),
        (COMPLETIONS, b'{"prompt": ""}'),
    ]
    for path, body in bodies:
        text = prompt_text(path, body)
        assert text is not None
        request = RoutingRequest("m", path, body)
        assert request.chunk_hashes() == ()
        assert request.prompt_units == len(text.encode("utf-8", "surrogatepass")), body
    unreadable = RoutingRequest("m", CHAT, b'{"messages": []}')
    assert unreadable.chunk_hashes() == ()
    assert unreadable.prompt_units == 0


def test_chunk_keys_are_the_same_in_every_process() -> None:
    # Several gateways must agree (the tie-break hashes the first key): no salted hash().
    code = (
        "from sage.unified.gateway.routing import RoutingRequest\n"
        "r = RoutingRequest('m', b'/v1/completions', b'{\"prompt\": \"' + b'ab' * 200 + b'\"}')\n"
        "print(r.chunk_hashes())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2)
    }
    assert len(outs) == 1
    assert len(ast.literal_eval(outs.pop())) == 400 // DEFAULT_CHUNK_BYTES


def test_an_unreadable_prompt_has_no_chunks() -> None:
    request = RoutingRequest("m", CHAT, b'{"model": "m"}')
    assert request.chunk_hashes() == ()
    assert request.prompt_units == 0


def test_hold_is_released_once_at_the_first_byte() -> None:
    released: list[int] = []
    request = RoutingRequest("m", CHAT, chat(("user", "hi")))
    request.hold(lambda: released.append(1))
    request.hold(lambda: released.append(2))  # a retry's new hold releases the first
    request.first_byte(0.25)
    request.release()
    assert released == [1, 2]
    assert request.ttft_s == 0.25


# -- usage ----------------------------------------------------------------------------


def usage(prompt: int, cached: int | None) -> dict[str, object]:
    details = None if cached is None else {"cached_tokens": cached}
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + 4,
        "completion_tokens": 4,
        "prompt_tokens_details": details,
    }


def test_find_usage_in_a_whole_answer() -> None:
    body = {"id": "x", "choices": [{"message": {"content": '"prompt_tokens": 9'}}]}
    assert find_usage(json.dumps({**body, "usage": usage(812, 768)}).encode()) == (812, 768)
    assert find_usage(json.dumps({**body, "usage": usage(812, None)}).encode()) == (812, 0)
    # Keys in another order, with spaces.
    assert find_usage(
        b'{"usage": {"prompt_tokens_details": {"cached_tokens" : 3}, "prompt_tokens" : 5}}'
    ) == (5, 3)
    assert find_usage(json.dumps(body).encode()) is None  # the quoted text is not a key
    assert find_usage(b'{"usage": {"prompt_tokens": null}}') is None
