"""Tokenizer of the trace search filter grammar.

Token kinds:

* ``IDENT``: an identifier, as dot-separated segments. A segment is a bare word
  (``[A-Za-z0-9_$-]``, not starting with a digit or ``-`` for the first one) or a quoted name:
  ``` `backticks` ``` (``````` escapes a backtick), ``"double"`` or ``'single'`` quotes after a dot.
  ``metadata.mlflow.trace.user`` and ``metadata.`mlflow.trace.user``` both give the segments of
  an entity and a key; the parser splits on the first dot.
* ``STRING``: a ``'single'`` or ``"double"`` quoted literal. A doubled quote or a backslash before
  a quote or a backslash stands for that character; any other backslash is kept as written (so
  ``'\\d+'`` reaches RLIKE as ``\\d+`` and ``'100\\%'`` reaches LIKE as an escaped ``%``).
* ``NUMBER``: an integer or float literal, optionally signed.
* ``OP``: ``= != <> == < <= > >=``.
* ``KEYWORD``: ``AND OR NOT IN LIKE ILIKE RLIKE IS NULL`` (any case; ``text`` keeps the case).
* ``LPAREN``, ``RPAREN``, ``COMMA``, ``EOF``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from tracehouse.schemas.errors import InvalidFilterError

TokenKind = Literal["IDENT", "STRING", "NUMBER", "OP", "KEYWORD", "LPAREN", "RPAREN", "COMMA", "EOF"]

KEYWORDS: Final = frozenset({"AND", "OR", "NOT", "IN", "LIKE", "ILIKE", "RLIKE", "IS", "NULL"})
_OPERATORS: Final = ("!=", "<>", "==", "<=", ">=", "=", "<", ">")
_WORD_START: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_$")
_WORD_CHARS: Final = _WORD_START | frozenset("0123456789-")
_DIGITS: Final = frozenset("0123456789")
_QUOTES: Final = frozenset("'\"")


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its kind, the source text it covers, its position and its decoded value."""

    kind: TokenKind
    text: str
    position: int
    #: STRING: the unquoted value. NUMBER: the literal. KEYWORD: upper case. IDENT: unused.
    value: str = ""
    #: IDENT only: the decoded segments.
    segments: tuple[str, ...] = ()
    #: STRING only: the quote character used.
    quote: str = ""


def _error(message: str, source: str, position: int, token: str | None = None) -> InvalidFilterError:
    shown = token if token is not None else source[position : position + 1]
    return InvalidFilterError(f"{message} at position {position} in filter string '{source}'",
                              position=position, token=shown)


def _read_quoted(source: str, start: int) -> tuple[str, int]:
    """Read a quoted run starting at ``source[start]``; return (decoded content, end index)."""
    quote = source[start]
    out: list[str] = []
    i = start + 1
    n = len(source)
    while i < n:
        ch = source[i]
        if ch == "\\" and quote != "`" and i + 1 < n and source[i + 1] in (quote, "\\"):
            out.append(source[i + 1])
            i += 2
            continue
        if ch == quote:
            if i + 1 < n and source[i + 1] == quote:
                out.append(quote)
                i += 2
                continue
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    kind = "identifier" if quote == "`" else "string"
    raise _error(f"Unterminated quoted {kind} {quote}...{quote}", source, start, source[start:])


def _read_word(source: str, start: int) -> int:
    i = start
    while i < len(source) and source[i] in _WORD_CHARS:
        i += 1
    return i


def _read_segment(source: str, start: int) -> tuple[str, int]:
    """One identifier segment after a dot: a bare word (may start with a digit) or quoted."""
    if start < len(source):
        ch = source[start]
        if ch == "`" or ch in _QUOTES:
            return _read_quoted(source, start)
        if ch in _WORD_CHARS and ch != "-":
            end = _read_word(source, start)
            return source[start:end], end
    raise _error("Expected a key after '.'", source, start, source[start - 1 : start + 1])


def _continue_identifier(source: str, first: str, start: int, end: int) -> tuple[Token, int]:
    segments = [first]
    i = end
    while i < len(source) and source[i] == ".":
        segment, i = _read_segment(source, i + 1)
        segments.append(segment)
    return Token("IDENT", source[start:i], start, segments=tuple(segments)), i


def _number_end(source: str, start: int) -> int:
    """End of a numeric literal at ``start``, or ``start`` when there is none."""
    i = start
    n = len(source)
    if i < n and source[i] in "+-":
        i += 1
    digits_start = i
    while i < n and source[i] in _DIGITS:
        i += 1
    int_digits = i - digits_start
    frac_digits = 0
    if i < n and source[i] == ".":
        j = i + 1
        while j < n and source[j] in _DIGITS:
            j += 1
        frac_digits = j - i - 1
        if int_digits or frac_digits:
            i = j
    if not int_digits and not frac_digits:
        return start
    if i < n and source[i] in "eE":
        j = i + 1
        if j < n and source[j] in "+-":
            j += 1
        k = j
        while k < n and source[k] in _DIGITS:
            k += 1
        if k > j:
            i = k
    return i


def tokenize(source: str) -> list[Token]:
    """Split a filter string into tokens, ending with an ``EOF`` token."""
    tokens: list[Token] = []
    i = 0
    n = len(source)
    while i < n:
        ch = source[i]
        if ch.isspace():
            i += 1
            continue
        if ch == ";":
            raise InvalidFilterError(
                f"Search filter contained multiple expression '{source}'. Provide AND-ed expression list.",
                position=i, token=";",
            )
        if ch == "(":
            tokens.append(Token("LPAREN", ch, i))
            i += 1
            continue
        if ch == ")":
            tokens.append(Token("RPAREN", ch, i))
            i += 1
            continue
        if ch == ",":
            tokens.append(Token("COMMA", ch, i))
            i += 1
            continue
        op = next((o for o in _OPERATORS if source.startswith(o, i)), None)
        if op is not None:
            tokens.append(Token("OP", op, i, value=op))
            i += len(op)
            continue
        if ch == "`":
            content, end = _read_quoted(source, i)
            token, i = _continue_identifier(source, content, i, end)
            tokens.append(token)
            continue
        if ch in _QUOTES:
            content, end = _read_quoted(source, i)
            if end < n and source[end] == ".":
                token, i = _continue_identifier(source, content, i, end)
                tokens.append(token)
                continue
            tokens.append(Token("STRING", source[i:end], i, value=content, quote=ch))
            i = end
            continue
        num_end = _number_end(source, i)
        if num_end > i:
            tokens.append(Token("NUMBER", source[i:num_end], i, value=source[i:num_end]))
            i = num_end
            continue
        if ch in _WORD_START:
            end = _read_word(source, i)
            word = source[i:end]
            if (end >= n or source[end] != ".") and word.upper() in KEYWORDS:
                tokens.append(Token("KEYWORD", word, i, value=word.upper()))
                i = end
                continue
            token, i = _continue_identifier(source, word, i, end)
            tokens.append(token)
            continue
        raise _error(f"Unexpected character {ch!r}", source, i, ch)
    tokens.append(Token("EOF", "", n))
    return tokens
