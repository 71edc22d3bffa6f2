"""``set_trace_tag`` / ``delete_trace_tag``: change an active trace in memory, or publish a tag event.

These are explicit API calls, so misuse raises: an immutable tag or a metadata key raises
:class:`ImmutableMetadataError`, a malformed trace id or key raises :class:`ValueError`.
"""

from __future__ import annotations

import re
from typing import Any, Final

from tracehouse.schemas import (
    IMMUTABLE_TAGS,
    SESSION_KEYS,
    TRACE_INPUTS,
    TRACE_OUTPUTS,
    TRACE_SCHEMA_VERSION,
    TRACE_TOKEN_USAGE,
    TRACE_USER,
    USER_KEYS,
)
from tracehouse.schemas.errors import ImmutableMetadataError

from ._events import MAX_KEY_CHARS, MAX_VALUE_CHARS, tag_delete_event, tag_set_event
from ._runtime import RUNTIME
from ._trace import active_trace

#: Keys naming the user and session of a trace: metadata, never tags.
IDENTITY_KEYS: Final = frozenset(USER_KEYS) | frozenset(SESSION_KEYS)
#: Metadata keys the SDK computes.
COMPUTED_METADATA_KEYS: Final = frozenset(
    {TRACE_SCHEMA_VERSION, TRACE_INPUTS, TRACE_OUTPUTS, TRACE_TOKEN_USAGE}
)
_TRACE_ID: Final = re.compile(r"tr-[0-9a-f]{32}")


def check_trace_id(trace_id: Any) -> str:
    """``trace_id`` if it is a tracehouse/MLflow trace id (``tr-`` + 32 lowercase hex), else ValueError."""
    if not isinstance(trace_id, str) or _TRACE_ID.fullmatch(trace_id) is None:
        raise ValueError(
            f"not a trace id: {trace_id!r} (expected 'tr-' followed by 32 lowercase hex characters)"
        )
    return trace_id


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS:
        raise ValueError(f"a tag key must be a string of 1 to {MAX_KEY_CHARS} characters, got {key!r}")
    if key in IMMUTABLE_TAGS:
        raise ImmutableMetadataError(
            f"tag {key!r} is immutable: MLflow reserves it and it cannot be set or deleted. "
            "Other tags are mutable (set_trace_tag / delete_trace_tag)."
        )
    if key in IDENTITY_KEYS or key in COMPUTED_METADATA_KEYS:
        raise ImmutableMetadataError(
            f"{key!r} is trace metadata, not a tag, and metadata is immutable once the trace is logged. "
            f"Set it while the trace is active with update_current_trace(metadata={{{key!r}: ...}})"
            + (" (or user=/session_id=)" if key == TRACE_USER or key in SESSION_KEYS else "")
            + "; tags are mutable (set_trace_tag / delete_trace_tag)."
        )
    return key


def set_trace_tag(trace_id: str, key: str, value: str) -> None:
    """Set a mutable tag on a trace, like ``mlflow.set_trace_tag``.

    On a trace that is still active the tag joins the trace in memory; on a logged trace a ``tag_set``
    event is published (partitioned by trace id; the newest write wins). ``value`` is stored as a
    string of at most 8000 characters.

    Raises :class:`ImmutableMetadataError` for an immutable tag (``mlflow.user``,
    ``mlflow.artifactLocation``...) or a metadata key (``mlflow.trace.user``, ``mlflow.trace.session``...),
    and :class:`ValueError` for a malformed trace id, key or value.
    """
    check_trace_id(trace_id)
    _check_key(key)
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_VALUE_CHARS:
        raise ValueError(f"a tag value may have at most {MAX_VALUE_CHARS} characters, got {len(text)}")
    state = active_trace(trace_id)
    if state is not None:
        state.tags[key] = text
        return
    RUNTIME.submit(tag_set_event(trace_id, key, text))


def delete_trace_tag(trace_id: str, key: str) -> None:
    """Delete a mutable tag of a trace, like ``mlflow.delete_trace_tag``: in memory on an active trace,
    else by publishing a ``tag_delete`` event. Raises like :func:`set_trace_tag`."""
    check_trace_id(trace_id)
    _check_key(key)
    state = active_trace(trace_id)
    if state is not None:
        state.tags.pop(key, None)
        return
    RUNTIME.submit(tag_delete_event(trace_id, key))
