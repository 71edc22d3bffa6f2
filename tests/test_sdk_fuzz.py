"""Whatever an application records, the SDK's events decode with the processors' decoder."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracehouse
from tracehouse.producers.testing import capture_events
from tracehouse.schemas import TraceEvent, decode_event

text = st.text(max_size=300)


def around(limit: int) -> st.SearchStrategy[str]:
    """Short text, or text right around a schema limit."""
    return st.text(max_size=20) | st.integers(limit - 5, limit + 5).map(lambda n: "é" * n)


scalars = st.none() | st.booleans() | st.integers() | st.floats() | text | st.binary(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.one_of(text, st.integers()), inner, max_size=5)
        | st.tuples(inner, inner)
    ),
    max_leaves=20,
)
string_maps = st.dictionaries(around(250), st.one_of(around(8000), st.integers(), st.none()), max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=around(1000),
    span_type=around(64),
    inputs=values,
    outputs=values,
    attributes=st.dictionaries(text, values, max_size=4),
    metadata=string_maps,
    tags=string_maps,
    request_id=st.none() | around(250),
    event_name=around(1000),
    fail=st.booleans(),
)
def test_any_recorded_values_make_a_valid_trace_event(
    name: str,
    span_type: str,
    inputs: Any,
    outputs: Any,
    attributes: dict[str, Any],
    metadata: dict[str, Any],
    tags: dict[str, Any],
    request_id: str | None,
    event_name: str,
    fail: bool,
) -> None:
    with capture_events(max_payload_chars=200) as events:
        try:
            with tracehouse.start_span(name, span_type=span_type, attributes=attributes) as root:
                tracehouse.update_current_trace(metadata=metadata, tags=tags, client_request_id=request_id)
                root.set_inputs(inputs)
                with tracehouse.start_span(event_name) as child:
                    child.add_event(event_name, attributes)
                    child.set_status("ERROR", event_name)
                root.set_outputs(outputs)
                if fail:
                    raise ValueError(event_name)
        except ValueError:
            pass
        (event,) = events.events
    decoded = decode_event(orjson.dumps(event))
    assert isinstance(decoded, TraceEvent)
    assert decoded.state == ("ERROR" if fail else "OK")
    assert len(decoded.spans) == 2
