from __future__ import annotations

import pytest

from tracehouse.schemas import (
    EventDecodeError,
    SdkHeartbeat,
    TagDeleteEvent,
    TagSetEvent,
    TraceEvent,
    decode_event,
    encode_envelope,
    encode_event,
    example,
    invalid_examples,
    resolve_identity,
    split_envelope,
)
from tracehouse.schemas._jsonschema import SCHEMA_DIR, generate, render


def test_examples_decode_to_their_types() -> None:
    trace = decode_event(example("trace"))
    assert isinstance(trace, TraceEvent)
    assert trace.metadata["mlflow.trace.user"] == "user-123"
    assert len(trace.spans) == 3
    assert trace.spans[1].parent_span_id == trace.spans[0].span_id
    assert isinstance(decode_event(example("tag_set")), TagSetEvent)
    assert isinstance(decode_event(example("tag_delete")), TagDeleteEvent)
    beat = decode_event(example("sdk_heartbeat"))
    assert isinstance(beat, SdkHeartbeat)
    assert beat.published + beat.buffered == beat.accepted


def test_encode_decode_round_trip() -> None:
    trace = decode_event(example("trace"))
    assert decode_event(encode_event(trace)) == trace


@pytest.mark.parametrize("case", invalid_examples(), ids=lambda c: str(c["why"]))
def test_invalid_events_are_rejected_with_a_reason(case: dict[str, str]) -> None:
    with pytest.raises(EventDecodeError) as err:
        decode_event(case["line"].encode())
    assert str(err.value).startswith(("invalid event", "undecodable event"))


def test_envelope_lines_split_independently() -> None:
    env = encode_envelope([example("trace"), b"{broken", example("tag_set")])
    lines = list(split_envelope(env + b"\n\n"))
    assert len(lines) == 3
    assert isinstance(decode_event(lines[0]), TraceEvent)
    with pytest.raises(EventDecodeError):
        decode_event(lines[1])


def test_identity_aliases_and_precedence() -> None:
    assert resolve_identity({"user.id": "u", "gen_ai.conversation.id": "c"}) == ("u", "c")
    assert resolve_identity({"mlflow.trace.user": "a", "user.id": "b"}) == ("a", None)
    assert resolve_identity({}, {"session.id": "s", "user.id": "u"}) == ("u", "s")
    assert resolve_identity({"mlflow.trace.session": "m"}, {"session.id": "s"}) == (None, "m")


def test_json_schema_files_are_current() -> None:
    for name, schema in generate().items():
        assert (SCHEMA_DIR / name).read_text() == render(schema), f"regenerate {name}"


def test_rendered_schemas_do_not_depend_on_how_msgspec_indents_descriptions() -> None:
    """msgspec 0.22 kept a docstring's indentation in ``description``, 0.23 dedents it: the files are the
    same under both because render() cleans every description."""
    from tracehouse.schemas._jsonschema import render

    indented = {"$defs": {"X": {"description": "First line\n    second line\n\n    third"}}, "description": "a\n  b"}
    dedented = {"$defs": {"X": {"description": "First line\nsecond line\n\nthird"}}, "description": "a\nb"}
    assert render(indented) == render(dedented)
    assert '"First line\\nsecond line\\n\\nthird"' in render(indented)
