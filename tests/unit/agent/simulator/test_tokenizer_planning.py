"""The simulator's tokenizer, chat template and output-length planning."""

from __future__ import annotations

import json
import zlib

import pytest

from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._planning import GenerationPlan, plan_generation
from sage.unified.agent.simulator._requests import parse_chat, parse_completion
from sage.unified.agent.simulator._text import generate_words, output_pieces
from sage.unified.agent.simulator._tokenizer import (
    Tokenizer,
    UnknownTokenError,
    piece_id,
    render_chat,
    split_pieces,
)


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("hi there\n", ["hi", " there", "\n"]),
        ("a  b", ["a", "  b"]),
        ("a\n\n b ", ["a", "\n", "\n", " b", " "]),
        ("\tx", ["\tx"]),
        ("", []),
    ],
)
def test_pieces_join_back_to_the_text(text: str, pieces: list[str]) -> None:
    assert split_pieces(text) == pieces
    assert "".join(split_pieces(text)) == text


def test_ids_are_crc32_of_the_piece_in_31_bits_and_decode_back() -> None:
    tok = Tokenizer()
    ids = tok.encode("héllo world\n")
    assert ids == [zlib.crc32(p.encode()) & 0x7FFFFFFF for p in ("héllo", " world", "\n")]
    assert all(0 <= i < 2**31 for i in ids)
    assert tok.decode(ids) == "héllo world\n"
    with pytest.raises(UnknownTokenError):
        Tokenizer().decode(ids)  # another tokenizer never saw these pieces
    registered = Tokenizer()
    registered.register(output_pieces())
    assert registered.decode([piece_id(" the"), piece_id("of")]) == " theof"


def test_the_reverse_table_is_bounded() -> None:
    tok = Tokenizer(remember=2)
    first = tok.encode("a b c")
    assert tok.decode(first[1:]) == " b c"
    with pytest.raises(UnknownTokenError):
        tok.decode(first[:1])


def test_many_new_pieces_keep_the_newest_decodable() -> None:
    # Prompts of new words (a replayed trace) pass ``remember`` over and over: the table
    # stays bounded, the newest pieces decode, the oldest are gone.
    tok = Tokenizer(remember=64)
    batches = [tok.encode("".join(f" w{i}x{j}" for j in range(50))) for i in range(40)]
    assert len(tok._recent) <= 64 + 64 // 8
    assert tok.decode(batches[-1]) == "".join(f" w39x{j}" for j in range(50))
    with pytest.raises(UnknownTokenError):
        tok.decode(batches[0][:1])


def test_answer_tokens_are_what_the_answer_text_tokenizes_to() -> None:
    # So the next turn of a conversation hits the blocks of this turn's answer.
    prompt = render_chat([("user", "hi")], add_generation_prompt=True, continue_final_message=False)
    words = generate_words(prompt, 0, 0, 20)
    tok = Tokenizer()
    assert tok.encode(prompt + "".join(words)) == tok.encode(prompt) + [piece_id(w) for w in words]


def test_chat_template() -> None:
    turns = [("system", "s"), ("user", "u")]
    assert render_chat(turns, add_generation_prompt=True, continue_final_message=False) == (
        "<|system|>\ns\n<|user|>\nu\n<|assistant|>\n"
    )
    assert render_chat(turns, add_generation_prompt=False, continue_final_message=False) == (
        "<|system|>\ns\n<|user|>\nu\n"
    )
    assert render_chat(
        [*turns, ("assistant", "part")], add_generation_prompt=False, continue_final_message=True
    ) == ("<|system|>\ns\n<|user|>\nu\n<|assistant|>\npart")


def _plan(body: dict[str, object], natural: int = 8, max_model_len: int = 100) -> GenerationPlan:
    req = parse_chat(json.dumps(body).encode())
    return plan_generation(
        req, Tokenizer(), natural_tokens=natural, max_model_len=max_model_len, seed=0
    )


def _chat(**fields: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "q"}], **fields}


def test_output_length_rules() -> None:
    plan = _plan(_chat())
    assert (plan.steps, plan.finish_reason) == (8, "stop")
    plan = _plan(_chat(max_tokens=3))
    assert (plan.steps, plan.finish_reason) == (3, "length")
    plan = _plan(_chat(max_tokens=30))
    assert (plan.steps, plan.finish_reason) == (8, "stop")
    plan = _plan(_chat(max_tokens=30, ignore_eos=True))
    assert (plan.steps, plan.finish_reason) == (30, "length")
    # ignore_eos without max_tokens runs to the end of the context.
    plan = _plan(_chat(ignore_eos=True), max_model_len=20)
    assert plan.steps == 20 - plan.prompt_tokens
    # A shorter answer is a prefix of the longer one.
    assert _plan(_chat(max_tokens=3)).choices[0] == _plan(_chat()).choices[0][:3]


def test_completions_default_to_16_tokens() -> None:
    req = parse_completion(b'{"prompt":"x"}')
    plan = plan_generation(req, Tokenizer(), natural_tokens=100, max_model_len=4096, seed=0)
    assert (plan.steps, plan.finish_reason) == (16, "length")


def test_a_continued_message_ends_where_the_whole_answer_would() -> None:
    full = _plan(_chat())
    words = full.choices[0]
    partial = "".join(words[:3])
    cont = _plan(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": partial},
            ],
            "continue_final_message": True,
            "add_generation_prompt": False,
        }
    )
    assert cont.finish_reason == "stop"
    assert partial + "".join(cont.choices[0]) == "".join(words)


def test_context_length_errors() -> None:
    with pytest.raises(BadRequestError) as info:
        _plan(_chat(max_tokens=99), max_model_len=100)
    assert "'max_tokens' or 'max_completion_tokens' is too large: 99" in info.value.message
    long_prompt = {"messages": [{"role": "user", "content": "w " * 200}]}
    with pytest.raises(BadRequestError) as info:
        _plan(long_prompt, max_model_len=100)
    assert "maximum context length is 100 tokens" in info.value.message


def test_plan_sequences_for_the_cache() -> None:
    plan = _plan(_chat(n=2, max_tokens=4))
    tokens = plan.prompt_tokens
    assert plan.kv_needs() == [(plan.prompt_ids[0], tokens + 8)]
    first = plan.choices[0]
    assert plan.sequence_tokens(2) == [
        plan.prompt_ids[0] + [piece_id(first[0]), piece_id(first[1])]
    ]
