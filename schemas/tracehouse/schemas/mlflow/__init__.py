"""MLflow's wire entities: traces, trace infos, spans and assessments in the JSON shapes of MLflow 3's
REST API, each with ``to_dict()`` / ``from_dict()`` (``from_dict(x.to_dict()) == x``).

These are the objects the query side returns and the ingest gateway parses. They are not the event
contracts of the Kafka topics (:mod:`tracehouse.schemas`): a :class:`Span` here is MLflow's span
entity, what ``batchGet`` answers; :class:`tracehouse.schemas.Span` is a span inside a ``trace`` event.
"""

from ._assessment import Assessment, AssessmentKind, AssessmentSource, AssessmentSourceType
from ._span import SPAN_REQUEST_ID, Span, SpanEvent, SpanStatusCode
from ._trace import Trace, TraceData, TraceInfo, TraceMetadata, TraceState, TraceStatus
from ._wire import from_key_values, key_values

__all__ = [
    "SPAN_REQUEST_ID",
    "Assessment",
    "AssessmentKind",
    "AssessmentSource",
    "AssessmentSourceType",
    "Span",
    "SpanEvent",
    "SpanStatusCode",
    "Trace",
    "TraceData",
    "TraceInfo",
    "TraceMetadata",
    "TraceState",
    "TraceStatus",
    "from_key_values",
    "key_values",
]
