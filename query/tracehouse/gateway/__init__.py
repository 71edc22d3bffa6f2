"""The ingest gateway: the write side of ``tracehouse serve`` / ``tracehouse up``.

MLflow clients (``MLFLOW_TRACKING_URI=http://tracehouse:5000``) and OpenTelemetry exporters
(``POST /v1/traces``) send traces over HTTP; the gateway validates them, publishes them to Kafka as
tracehouse events and acknowledges only what Kafka acknowledged. Reads made through the same server
afterwards wait until the sink has stored those writes (:class:`WriteFence`).
"""

from ._config import DEFAULT_RYW_TIMEOUT_S, DEFAULT_SINK_GROUP, GatewayConfig
from ._errors import InvalidRequest
from ._fence import CommitWaiter, GroupCommitWaiter, WriteFence, sink_waiter
from ._gateway import Gateway, TraceIdentity
from ._mlflow import artifact_spans, assessment_from_request, event_key, tag_event, trace_info_events
from ._otlp import OtlpBatch, decompress, export_events, parse_request
from ._routes import ARTIFACT_LOCATION, SPANS_LOCATION, artifact_location, parse_artifact_path, write_routes
from ._writer import EventWriter, Unavailable

__all__ = [
    "ARTIFACT_LOCATION",
    "DEFAULT_RYW_TIMEOUT_S",
    "DEFAULT_SINK_GROUP",
    "SPANS_LOCATION",
    "CommitWaiter",
    "EventWriter",
    "Gateway",
    "GatewayConfig",
    "GroupCommitWaiter",
    "InvalidRequest",
    "OtlpBatch",
    "TraceIdentity",
    "Unavailable",
    "WriteFence",
    "artifact_location",
    "artifact_spans",
    "assessment_from_request",
    "decompress",
    "event_key",
    "export_events",
    "parse_artifact_path",
    "parse_request",
    "sink_waiter",
    "tag_event",
    "trace_info_events",
    "write_routes",
]
