"""The ingest gateway: the write side of ``tracehouse serve`` / ``tracehouse up``.

MLflow clients (``MLFLOW_TRACKING_URI=http://tracehouse:5000``) and OpenTelemetry exporters
(``POST /v1/traces``) send traces over HTTP; the gateway validates them, publishes them to Kafka as
tracehouse events and acknowledges only what Kafka acknowledged. Reads made through the same server
afterwards wait until the sink has stored those writes (:class:`WriteFence`).
"""

from ._config import DEFAULT_RYW_TIMEOUT_S, DEFAULT_SINK_GROUP, GatewayConfig
from ._fence import CommitWaiter, GroupCommitWaiter, WriteFence, sink_waiter
from ._gateway import Gateway, TraceIdentity
from ._mlflow import artifact_spans, assessment_from_request, spans_events, tag_event, trace_info_events
from ._otlp import JSON, PROTOBUF, OtlpBatch, decompress, export_events, export_response, parse_request
from ._writer import EventWriter, event_key

__all__ = [
    "DEFAULT_RYW_TIMEOUT_S",
    "DEFAULT_SINK_GROUP",
    "JSON",
    "PROTOBUF",
    "CommitWaiter",
    "EventWriter",
    "Gateway",
    "GatewayConfig",
    "GroupCommitWaiter",
    "OtlpBatch",
    "TraceIdentity",
    "WriteFence",
    "artifact_spans",
    "assessment_from_request",
    "decompress",
    "event_key",
    "export_events",
    "export_response",
    "parse_request",
    "sink_waiter",
    "spans_events",
    "tag_event",
    "trace_info_events",
]
