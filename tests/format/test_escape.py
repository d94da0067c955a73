"""The text cleaner: whatever goes in, one inert line (or a marked block) comes out."""

from __future__ import annotations

import json
import logging
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from safehub._format.escape import (
    Block,
    LogFormatter,
    escape_block,
    escape_line,
    inert_json,
    json_clean,
    json_text,
    raw_bytes_b64,
)

UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}
# Every character str.splitlines() breaks on, plus the bidi and format characters.
DANGEROUS = ("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x1b\x00\x7f\x9b"
             "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
             "\ufeff\u200b\udc80\ud800")


def _inert(text: str) -> bool:
    return not any(unicodedata.category(c) in UNSAFE for c in text)


@given(st.text())
def test_escape_line_is_one_inert_line(text: str) -> None:
    out = escape_line(text)
    assert _inert(out)
    assert len(out.splitlines()) <= 1


@given(st.text(alphabet=st.sampled_from(list(DANGEROUS) + list("ab\\ "))))
def test_escape_line_on_the_dangerous_alphabet(text: str) -> None:
    out = escape_line(text)
    assert _inert(out) and len(out.splitlines()) <= 1


def test_each_dangerous_character_is_escaped_visibly() -> None:
    for ch in DANGEROUS:
        out = escape_line(f"a{ch}b")
        assert out.startswith("a\\") and out.endswith("b"), (ch, out)
    assert escape_line("x\udcffy") == "x\\xffy"  # an undecodable file-name byte
    assert escape_line("plain text: ok") == "plain text: ok"


@given(st.text())
def test_escape_block_marks_every_line(text: str) -> None:
    for line in escape_block(text):
        assert line.startswith("    | ")
        assert _inert(line) and len(line.splitlines()) == 1


@given(st.text())
def test_json_text_and_inert_json_keep_values(text: str) -> None:
    cleaned = json_text(text)
    cleaned.encode("utf-8")
    doc = inert_json(json.dumps({"k": cleaned}, ensure_ascii=False, indent=2))
    assert json.loads(doc) == {"k": cleaned}
    assert all(line == "" or _inert(line) for line in doc.split("\n"))
    if cleaned == text:
        assert raw_bytes_b64(text) is None


def test_json_clean_walks_keys_and_values() -> None:
    assert json_clean({"a\udcff": ["b\udcfe", 1, None]}) == {"a\\xff": ["b\\xfe", 1, None]}


def test_log_formatter_escapes_arguments_but_keeps_blocks() -> None:
    fmt = LogFormatter()
    record = logging.LogRecord("safehub", logging.ERROR, __file__, 1, "%s: %d written to %s",
                               ("tiny\nsafehub: forged", 2, "x\u2028y"), None)
    assert fmt.format(record) == "safehub: tiny\\nsafehub: forged: 2 written to x\\u2028y"
    block = Block("first\n  second\nunindented")
    record = logging.LogRecord("safehub", logging.ERROR, __file__, 1, "%s", (block,), None)
    assert fmt.format(record).split("\n") == ["safehub: first", "  second", "  unindented"]
