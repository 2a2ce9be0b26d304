"""``safe_log_value``: client-controlled values cannot forge log lines or flood a log."""

from __future__ import annotations

import pytest

from sage.unified.sdk.logsafe import safe_log_value


@pytest.mark.parametrize(
    "value", ["/v1/chat/completions", "GET", "/caf\u00e9?q=1", "", b"/v1/models", b"POST"]
)
def test_a_short_printable_value_is_kept_as_it_is(value: str | bytes) -> None:
    expected = value.decode() if isinstance(value, bytes) else value
    assert safe_log_value(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/a\r\nFAKE 200 OK", "/a\\x0d\\x0aFAKE 200 OK"),
        (b"/a\r\nFAKE 200 OK", "/a\\x0d\\x0aFAKE 200 OK"),
        ("\x1b[2J\x1b]0;owned\x07", "\\x1b[2J\\x1b]0;owned\\x07"),
        ("del\x7f tab\t nul\x00", "del\\x7f tab\\x09 nul\\x00"),
        ("bidi \u202e override", "bidi \\u202e override"),
        ("line\u2028sep", "line\\u2028sep"),
        ("surrogate \udcff", "surrogate \\udcff"),
        (b"\xff\xfe latin-1", "\\xff\\xfe latin-1"),
        ("a\\x0a is not an escape", "a\\\\x0a is not an escape"),
        (b"back\\slash", "back\\\\slash"),
    ],
)
def test_control_and_non_printable_characters_are_escaped(
    value: str | bytes, expected: str
) -> None:
    escaped = safe_log_value(value)
    assert escaped == expected
    assert escaped.isprintable()


def test_a_long_value_is_cut_and_says_how_much_was_left_out() -> None:
    assert safe_log_value("x" * 7000) == "x" * 256 + "…(+6744 chars)"
    assert safe_log_value(b"y" * 7000, limit=10) == "y" * 10 + "…(+6990 bytes)"


def test_escapes_count_at_their_written_length_and_are_never_split() -> None:
    # Each LF is written as 4 characters: 2 fit in 10, the third would cross the limit.
    assert safe_log_value("\n" * 5, limit=10) == "\\x0a\\x0a…(+3 chars)"
    assert safe_log_value(b"ab\n", limit=4) == "ab…(+1 bytes)"
    assert safe_log_value("abc", limit=0) == "…(+3 chars)"


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        safe_log_value("x", limit=-1)
