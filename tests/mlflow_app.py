"""An app instrumented with the real MLflow client, run as its own process by test_mlflow_client.py.

``python tests/mlflow_app.py <experiment name> <traces>`` logs traces to ``MLFLOW_TRACKING_URI``,
then reads them back with MLflow's own APIs and prints one JSON document: what it logged (the
ground truth) and what every read returned.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import AssessmentSource


def user_of(i: int) -> str:
    return f"user-{i % 7}"


def session_of(i: int) -> str:
    return f"{user_of(i)}-s{(i // 7) % 3}"


@mlflow.trace(span_type="RETRIEVER")
def retrieve(query: str) -> list[str]:
    return [f"doc about {query}", "another doc"]


@mlflow.trace
def chat(message: str, i: int) -> str:
    mlflow.update_current_trace(
        metadata={"mlflow.trace.user": user_of(i), "mlflow.trace.session": session_of(i)},
        client_request_id=f"req-{i}",
        tags={"env": "prod", "turn": str(i)},
    )
    docs = retrieve(message)
    with mlflow.start_span(name="llm", span_type="LLM") as span:
        span.set_inputs({"prompt": message, "docs": docs})
        if i % 10 == 9:
            raise ValueError(f"simulated LLM failure {i}")
        answer = f"answer to {message}"
        span.set_outputs(answer)
    return answer


def summary(trace: Any) -> dict[str, Any]:
    info = trace.info
    return {
        "trace_id": info.trace_id,
        "client_request_id": info.client_request_id,
        "user": info.trace_metadata.get("mlflow.trace.user"),
        "session": info.trace_metadata.get("mlflow.trace.session"),
        "state": str(info.state),
        "timestamp_ms": info.timestamp_ms,
        "tags": {k: v for k, v in info.tags.items() if not k.startswith("mlflow.")},
        "trace_name": info.tags.get("mlflow.traceName"),
        "spans": sorted((s.name, s.span_type, str(s.status.status_code)) for s in trace.data.spans),
        "exception_events": sum(1 for s in trace.data.spans for e in s.events if e.name == "exception"),
        "root_inputs": next((s.inputs for s in trace.data.spans if s.parent_id is None), None),
        "assessments": [(a.name, a.value, a.source.source_type) for a in info.assessments],
    }


def main() -> None:
    name, count = sys.argv[1], int(sys.argv[2])
    experiment_id = mlflow.set_experiment(name).experiment_id
    logged = []
    for i in range(count):
        error = None
        try:
            chat(f"question {i}", i)
        except ValueError as exc:
            error = str(exc)
        logged.append({"i": i, "trace_id": mlflow.get_last_active_trace_id(), "user": user_of(i),
                       "session": session_of(i), "client_request_id": f"req-{i}", "error": error})  # fmt: skip
    mlflow.flush_trace_async_logging()

    client = MlflowClient()
    loc = [experiment_id]
    out: dict[str, Any] = {"experiment_id": experiment_id, "logged": logged}
    user, session = user_of(3), session_of(3)
    out["by_user"] = [summary(t) for t in client.search_traces(
        locations=loc, filter_string=f"metadata.`mlflow.trace.user` = '{user}'", order_by=["timestamp ASC"],
        max_results=1000)]  # fmt: skip
    out["by_session"] = [summary(t) for t in client.search_traces(
        locations=loc, filter_string=f"metadata.`mlflow.trace.session` = '{session}'", order_by=["timestamp ASC"],
        max_results=1000)]  # fmt: skip
    out["combined"] = [summary(t) for t in client.search_traces(
        locations=loc, order_by=["timestamp ASC"], max_results=1000,
        filter_string=f"metadata.`mlflow.trace.user` = '{user}' AND metadata.`mlflow.trace.session` = '{session}'")]
    out["all"] = [t.info.trace_id for t in client.search_traces(
        locations=loc, order_by=["timestamp ASC"], max_results=1000, include_spans=False)]  # fmt: skip
    df = mlflow.search_traces(filter_string=f"metadata.`mlflow.trace.user` = '{user}'", order_by=["timestamp ASC"])
    out["dataframe"] = {"columns": list(df.columns), "trace_ids": list(df["trace_id"]),
                        "states": [str(s) for s in df["state"]]}  # fmt: skip

    failed = next(entry["trace_id"] for entry in logged if entry["error"])
    out["get_failed"] = summary(mlflow.get_trace(failed))
    target = str(logged[0]["trace_id"])
    client.set_trace_tag(target, "reviewed", "yes")
    out["after_set_tag"] = summary(client.get_trace(target))
    client.delete_trace_tag(target, "reviewed")
    out["after_delete_tag"] = summary(client.get_trace(target))
    mlflow.log_feedback(trace_id=target, name="thumbs", value=True, rationale="right",
                        source=AssessmentSource(source_type="HUMAN", source_id="reviewer-1"))  # fmt: skip
    out["after_feedback"] = summary(mlflow.get_trace(target))
    out["feedback_search"] = [t.info.trace_id for t in client.search_traces(
        locations=loc, filter_string="feedback.thumbs = 'true'", include_spans=False)]  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
