"""Parse a trace search filter string into validated, canonical comparisons.

``parse_filter("metadata.`mlflow.trace.user` = 'u1' and status in ('OK')")`` returns one
:class:`Comparison` per clause, with aliases resolved (``trace.``/``attributes.`` → attribute,
``tags.`` → tag, ``metadata.`` → request_metadata), attribute keys rewritten the way MLflow does
(``name`` → tag ``mlflow.traceName``, ``run_id`` → metadata ``mlflow.sourceRun``, ``text`` →
``span.content``, ``timestamp`` → ``timestamp_ms`` ...) and comparators upper-cased. Anything the
grammar does not allow raises :class:`~tracehouse.query.InvalidFilterError` with MLflow's message,
the offending ``token`` and its ``position``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tracehouse.schemas.errors import InvalidFilterError

from ._grammar import (
    ASSESSMENT_COMPARATORS,
    ASSESSMENT_NUMERIC_COMPARATORS,
    ATTRIBUTE_ALIASES,
    ENTITY_ALIASES,
    FILTER_ATTRIBUTES,
    ISSUE_COMPARATORS,
    KEY_VALUE_COMPARATORS,
    LIST_ATTRIBUTES,
    NUMERIC_ATTRIBUTES,
    NUMERIC_COMPARATORS,
    SOURCE_RUN_KEY,
    SPAN_CONTENT_COMPARATORS,
    SPAN_FIELD_COMPARATORS,
    SPAN_FIELDS,
    STRING_ATTRIBUTE_COMPARATORS,
    TRACE_NAME_KEY,
    VALID_ENTITIES_TEXT,
    Entity,
    py_set,
)
from ._lexer import Token, tokenize

#: The value of a comparison: a string, a number, a list of strings (IN / NOT IN) or None (IS NULL).
Value = str | int | float | tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Comparison:
    """One validated clause of a filter.

    ``key`` is canonical: for attributes one of ``timestamp_ms``, ``execution_time_ms``,
    ``end_time_ms``, ``status``, ``request_id``, ``client_request_id`` or ``prompt`` (a linked prompt
    ``"name/version"``); for tags and
    metadata the key; for spans ``name``, ``type``, ``status``, ``content`` or ``attributes`` (then
    ``span_attribute`` names the attribute); for feedback and expectations the assessment name; for
    issues ``id``.
    """

    entity: Entity
    key: str
    comparator: str
    value: Value
    position: int = 0
    span_attribute: str | None = None


@dataclass(frozen=True, slots=True)
class _RawValue:
    kind: Literal["string", "number", "list", "none"]
    token: Token | None
    text: str
    string: str = ""
    items: tuple[str, ...] = ()


def parse_filter(filter_string: str | None) -> tuple[Comparison, ...]:
    """Parse and validate ``filter_string``; an empty or ``None`` filter gives ``()``."""
    if filter_string is None or not filter_string.strip():
        return ()
    tokens = tokenize(filter_string)
    _reject_invalid_clauses(filter_string, tokens)
    return _Parser(filter_string, tokens).parse()


def _reject_invalid_clauses(source: str, tokens: list[Token]) -> None:
    """MLflow accepts only comparisons joined by AND: report every OR, NOT and bracketed clause."""
    invalid: list[Token] = []
    texts: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        prev = tokens[i - 1] if i else None
        if token.kind == "KEYWORD" and token.value == "OR":
            invalid.append(token)
            texts.append(token.text)
        elif token.kind == "KEYWORD" and token.value == "NOT":
            nxt = tokens[i + 1]
            negates_in = nxt.kind == "KEYWORD" and nxt.value == "IN"
            is_not_null = prev is not None and prev.kind == "KEYWORD" and prev.value == "IS"
            if not negates_in and not is_not_null:
                invalid.append(token)
                texts.append(token.text)
        elif token.kind == "LPAREN" and (
            prev is None or (prev.kind == "KEYWORD" and prev.value in ("AND", "OR", "NOT"))
        ):
            depth, j = 0, i
            while j < len(tokens) - 1:
                if tokens[j].kind == "LPAREN":
                    depth += 1
                elif tokens[j].kind == "RPAREN":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            end = tokens[j].position + len(tokens[j].text)
            invalid.append(token)
            texts.append(source[token.position : end].strip())
            i = j + 1
            continue
        i += 1
    if invalid:
        listed = ", ".join(f"'{t}'" for t in texts)
        raise InvalidFilterError(
            f"Invalid clause(s) in filter string: {listed}", position=invalid[0].position, token=texts[0]
        )


def _err(message: str, token: Token | None, fallback: int = 0) -> InvalidFilterError:
    if token is None:
        return InvalidFilterError(message, position=fallback)
    return InvalidFilterError(message, position=token.position, token=token.text or None)


class _Parser:
    def __init__(self, source: str, tokens: list[Token]) -> None:
        self.source = source
        self.tokens = tokens
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        token = self.tokens[self.i]
        if token.kind != "EOF":
            self.i += 1
        return token

    def _where(self, token: Token) -> str:
        if token.kind == "EOF":
            return f"the filter ended (at position {token.position})"
        return f"found '{token.text}' at position {token.position}"

    def parse(self) -> tuple[Comparison, ...]:
        clauses = [self._clause()]
        while True:
            token = self.advance()
            if token.kind == "EOF":
                return tuple(clauses)
            if token.kind == "KEYWORD" and token.value == "AND":
                clauses.append(self._clause())
                continue
            raise _err(f"Invalid filter string: expected 'AND' or the end of the filter but "
                       f"{self._where(token)}", token)

    def _clause(self) -> Comparison:
        ident = self.advance()
        if ident.kind == "STRING" and ident.quote == '"':
            ident = Token("IDENT", ident.text, ident.position, segments=(ident.value,))
        if ident.kind != "IDENT":
            raise _err(f"Invalid comparison clause: expected an identifier such as "
                       f"'metadata.<key>' but {self._where(ident)}", ident)
        comparator, cmp_token = self._comparator(ident)
        if comparator.upper() in ("IS NULL", "IS NOT NULL"):
            value = _RawValue("none", None, "")
        else:
            value = self._value(comparator)
        return _resolve(ident, comparator, cmp_token, value)

    def _comparator(self, ident: Token) -> tuple[str, Token]:
        token = self.advance()
        if token.kind == "OP":
            return token.value, token
        if token.kind == "KEYWORD" and token.value in ("LIKE", "ILIKE", "RLIKE", "IN"):
            return token.text, token
        if token.kind == "KEYWORD" and token.value == "NOT":
            nxt = self.advance()
            if nxt.kind == "KEYWORD" and nxt.value == "IN":
                return f"{token.text} {nxt.text}", token
            raise _err(f"Invalid comparison clause: expected 'IN' after '{token.text}' but "
                       f"{self._where(nxt)}", nxt)
        if token.kind == "KEYWORD" and token.value == "IS":
            nxt = self.advance()
            if nxt.kind == "KEYWORD" and nxt.value == "NULL":
                return f"{token.text} {nxt.text}", token
            if nxt.kind == "KEYWORD" and nxt.value == "NOT":
                last = self.advance()
                if last.kind == "KEYWORD" and last.value == "NULL":
                    return f"{token.text} {nxt.text} {last.text}", token
                nxt = last
            raise _err(f"Invalid comparison clause: expected 'NULL' or 'NOT NULL' after 'IS' but "
                       f"{self._where(nxt)}", nxt)
        raise _err(f"Invalid comparison clause: expected a comparison operator after "
                   f"'{ident.text}' but {self._where(token)}", token)

    def _value(self, comparator: str) -> _RawValue:
        token = self.advance()
        if token.kind == "STRING":
            return _RawValue("string", token, token.text, string=token.value)
        if token.kind == "NUMBER":
            return _RawValue("number", token, token.text, string=token.value)
        if token.kind == "LPAREN":
            return self._list(token)
        if token.kind == "IDENT":
            raise _err(
                f"Parameter value is either not quoted or unidentified quote types used for string "
                f"value {token.text}. Use either single or double quotes.", token)
        raise _err(f"Invalid comparison clause: expected a value after '{comparator}' but "
                   f"{self._where(token)}", token)

    def _list(self, start: Token) -> _RawValue:
        items: list[str] = []
        bad: Token | None = None
        expect_item = True
        while True:
            token = self.advance()
            if token.kind == "EOF":
                raise _err(f"Invalid filter string: unterminated list starting at position "
                           f"{start.position}", start)
            if token.kind == "RPAREN":
                break
            if expect_item and token.kind == "STRING":
                items.append(token.value)
                expect_item = False
            elif not expect_item and token.kind == "COMMA":
                expect_item = True
            elif bad is None:
                bad = token
        end = self.tokens[self.i - 1]
        text = self.source[start.position : end.position + 1]
        if bad is not None or (items and expect_item):
            raise _err("While parsing a list in the query, expected string value, punctuation, or "
                       f"whitespace, but got different type in list: {text}", bad or start)
        if not items:
            raise _err("While parsing a list in the query, expected a non-empty list of string values, "
                       "but got empty list", start)
        return _RawValue("list", start, text, items=tuple(items))


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _quoted_string_error(entity: str, value: _RawValue) -> InvalidFilterError:
    return _err(f"Expected a quoted string value for {entity} (e.g. 'my-value'). Got value {value.text}",
                value.token)


def _check_shape(cmp: str, value: _RawValue, entity: str) -> None:
    """IN / NOT IN take a list; every other comparator a single value."""
    if cmp in ("IN", "NOT IN"):
        if value.kind != "list":
            raise _err(f"Expected a list of quoted string values for '{cmp}' (e.g. ('a', 'b')). "
                       f"Got value {value.text}", value.token)
    elif value.kind == "list":
        raise _quoted_string_error(entity, value)


def _resolve(ident: Token, comparator: str, cmp_token: Token, value: _RawValue) -> Comparison:
    segments = ident.segments
    cmp = " ".join(comparator.split()).upper()
    if len(segments) == 1:
        return _attribute(segments[0], ident, comparator, cmp, cmp_token, value)
    entity = ENTITY_ALIASES.get(segments[0])
    if entity is None:
        raise _err(f"Invalid entity type '{segments[0]}'. Valid values are {VALID_ENTITIES_TEXT}", ident)
    key = ".".join(segments[1:])
    if entity is Entity.ATTRIBUTE:
        return _attribute(key, ident, comparator, cmp, cmp_token, value)
    if entity in (Entity.TAG, Entity.METADATA):
        return _key_value(entity, key, ident, cmp, cmp_token, value)
    if entity is Entity.SPAN:
        return _span(segments[1:], ident, comparator, cmp_token, value)
    if entity in (Entity.FEEDBACK, Entity.EXPECTATION):
        return _assessment(entity, key, ident, comparator, cmp, cmp_token, value)
    return _issue(key, ident, comparator, cmp, cmp_token, value)


def _attribute(key: str, ident: Token, comparator: str, cmp: str, cmp_token: Token,
               value: _RawValue) -> Comparison:
    if key not in FILTER_ATTRIBUTES:
        raise _err(f"Invalid attribute key '{key}' specified. Valid keys are '{py_set(FILTER_ATTRIBUTES)}'",
                   ident)
    if value.kind == "list" and key not in LIST_ATTRIBUTES:
        raise _err(f"Only attributes in {py_set(LIST_ATTRIBUTES)} supports comparison with a list of "
                   "quoted string values.", value.token)
    if value.kind == "number" and key not in NUMERIC_ATTRIBUTES:
        raise _err(f"Only the '{py_set(NUMERIC_ATTRIBUTES)}' attributes support comparison with numeric "
                   "values.", value.token)
    if key == "name":
        return _key_value(Entity.TAG, TRACE_NAME_KEY, ident, cmp, cmp_token, value)
    if key == "run_id":
        return _key_value(Entity.METADATA, SOURCE_RUN_KEY, ident, cmp, cmp_token, value)
    if key == "text":
        return _span_content(ident, cmp, cmp_token, value)
    if key == "prompt":
        return _prompt(ident, cmp, cmp_token, value)
    key = ATTRIBUTE_ALIASES.get(key, key)
    if key in NUMERIC_ATTRIBUTES:
        if cmp not in NUMERIC_COMPARATORS:
            raise _err(f"Invalid comparator '{cmp}' not one of '{py_set(NUMERIC_COMPARATORS)}'", cmp_token)
        number = _number(value.string)
        if number is None:
            raise _err(f"Expected numeric value type for numeric attribute: {key}. Found {value.text}",
                       value.token)
        return Comparison(Entity.ATTRIBUTE, key, cmp, number, ident.position)
    if cmp not in STRING_ATTRIBUTE_COMPARATORS:
        raise _err(f"Invalid comparator '{cmp}' not one of '{py_set(STRING_ATTRIBUTE_COMPARATORS)}'",
                   cmp_token)
    _check_shape(cmp, value, "attributes")
    val: Value = value.items if value.kind == "list" else value.string
    return Comparison(Entity.ATTRIBUTE, key, cmp, val, ident.position)


def _key_value(entity: Entity, key: str, ident: Token, cmp: str, cmp_token: Token,
               value: _RawValue) -> Comparison:
    if value.kind == "number" or (value.kind == "list" and entity is Entity.METADATA):
        raise _quoted_string_error(entity.value, value)
    if cmp not in KEY_VALUE_COMPARATORS:
        raise _err(f"Invalid comparator '{cmp}' not one of '{py_set(KEY_VALUE_COMPARATORS)}'", cmp_token)
    if value.kind == "list":
        raise _quoted_string_error(entity.value, value)
    val = None if value.kind == "none" else value.string
    return Comparison(entity, key, cmp, val, ident.position)


def _span_content(ident: Token, cmp: str, cmp_token: Token, value: _RawValue) -> Comparison:
    if cmp not in SPAN_CONTENT_COMPARATORS:
        raise _err(f"Invalid comparator '{cmp}' not one of '{py_set(SPAN_CONTENT_COMPARATORS)}'", cmp_token)
    _check_shape(cmp, value, "span")
    return Comparison(Entity.SPAN, "content", cmp, value.string, ident.position)


def _prompt(ident: Token, cmp: str, cmp_token: Token, value: _RawValue) -> Comparison:
    if cmp != "=":
        raise _err(f"Invalid comparator '{cmp}' not one of '{py_set({'='})}'", cmp_token)
    name, _, version = value.string.rpartition("/")
    if value.kind != "string" or not name or not version:
        raise _err(f"Invalid prompts filter value '{value.string or value.text}'. "
                   'Expected format: prompt = "name/version"', value.token)
    return Comparison(Entity.ATTRIBUTE, "prompt", "=", value.string, ident.position)


def _span(key_segments: tuple[str, ...], ident: Token, comparator: str, cmp_token: Token,
          value: _RawValue) -> Comparison:
    if value.kind == "number":
        raise _quoted_string_error("span", value)
    key = ".".join(key_segments)
    head = key_segments[0]
    attribute: str | None = None
    if head == "attributes" and len(key_segments) > 1:
        attribute = ".".join(key_segments[1:])
        allowed = SPAN_FIELD_COMPARATORS
        field = "attributes"
    elif head == "attributes" and len(key_segments) == 1:
        raise _err("Span attribute name cannot be empty after 'attributes.'", ident)
    elif len(key_segments) == 1 and head in SPAN_FIELDS:
        allowed, field = SPAN_FIELD_COMPARATORS, head
    elif len(key_segments) == 1 and head == "content":
        allowed, field = SPAN_CONTENT_COMPARATORS, head
    else:
        raise _err(f"Invalid span attribute '{key}'. Supported attributes: "
                   f"{', '.join(sorted(SPAN_FIELDS))}, attributes.<attribute_name>.", ident)
    # MLflow checks span comparators before upper-casing them: `span.name like 'x'` is rejected.
    if comparator not in allowed:
        raise _err(f"span.{key} comparator '{comparator}' not one of '{py_set(allowed)}'", cmp_token)
    _check_shape(comparator, value, "span")
    val: Value = value.items if value.kind == "list" else value.string
    return Comparison(Entity.SPAN, field, comparator, val, ident.position, span_attribute=attribute)


def _assessment(entity: Entity, name: str, ident: Token, comparator: str, cmp: str, cmp_token: Token,
                value: _RawValue) -> Comparison:
    if value.kind != "none":
        numeric_cmp = cmp in ASSESSMENT_NUMERIC_COMPARATORS
        if numeric_cmp and value.kind != "number":
            raise _err(f"Expected a numeric value for {entity.value} when using comparator '{comparator}'. "
                       f"Got value {value.text}", value.token)
        if not numeric_cmp and value.kind != "string":
            raise _quoted_string_error(entity.value, value)
    if cmp not in ASSESSMENT_COMPARATORS:
        raise _err(f"Invalid comparator '{cmp}' not one of '{py_set(ASSESSMENT_COMPARATORS)}'", cmp_token)
    val: Value
    if value.kind == "none":
        val = None
    elif value.kind == "number":
        val = float(value.string)
    else:
        val = value.string
    return Comparison(entity, name, cmp, val, ident.position)


def _issue(key: str, ident: Token, comparator: str, cmp: str, cmp_token: Token,
           value: _RawValue) -> Comparison:
    if key != "id":
        raise _err(f"Invalid issue attribute '{key}'. Supported attributes: id.", ident)
    if value.kind not in ("string", "none"):
        raise _quoted_string_error("issue", value)
    if cmp not in ISSUE_COMPARATORS:
        raise _err(f"issue.id comparator '{comparator}' not one of '{py_set(ISSUE_COMPARATORS)}'", cmp_token)
    return Comparison(Entity.ISSUE, "id", cmp, value.string, ident.position)
