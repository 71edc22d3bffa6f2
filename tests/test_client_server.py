"""TraceClient gives the same answers over HTTP (the server of `tracehouse up`) and over the store."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from _serve import serving
from _workload import chat_workload

from tracehouse.app.embedded import free_port
from tracehouse.query import RemoteError, TraceClient
from tracehouse.schemas import TraceEvent
from tracehouse.storage import RowBatch, Store, write_batch

FILTERS = [
    None,
    "metadata.`mlflow.trace.user` = 'user-1'",
    "metadata.`mlflow.trace.user` = 'user-1' AND metadata.`mlflow.trace.session` = 'session-006'",
    "status = 'ERROR'",
    "tag.env = 'prod' AND execution_time_ms > 300",
    "span.type = 'LLM' AND attributes.client_request_id LIKE 'req-1%'",
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, str, list[TraceEvent]]]:
    store = Store(f"chdb://{tmp_path_factory.mktemp('cs') / 'chdb'}")
    from tracehouse.storage import migrate

    migrate(store)
    events = chat_workload()
    batch = RowBatch()
    for e in events:
        batch.add(e)
    write_batch(store, batch, token="client-server")
    with serving(store) as url:
        try:
            yield store, url, [e for e in events if isinstance(e, TraceEvent)]
        finally:
            store.close()


@pytest.mark.parametrize("filter_string", FILTERS)
def test_http_and_store_backends_agree(served: tuple[Store, str, list[TraceEvent]], filter_string: str | None) -> None:
    store, url, _ = served
    with TraceClient(url) as remote:
        over_http = remote.search_traces(filter_string=filter_string, max_results=1000, order_by=["timestamp ASC"])
    direct = TraceClient.from_store(store).search_traces(
        filter_string=filter_string, max_results=1000, order_by=["timestamp ASC"]
    )
    assert [t.to_dict() for t in over_http] == [t.to_dict() for t in direct]
    assert over_http.token is None or len(over_http) == 1000


def test_search_pages_past_500_and_matches_ground_truth(served: tuple[Store, str, list[TraceEvent]]) -> None:
    _, url, events = served
    with TraceClient(url) as client:
        got = client.search_traces(max_results=10_000, order_by=["timestamp ASC"])
        small = client.search_traces(max_results=7)
    expected = sorted(events, key=lambda e: (e.timestamp_ms, e.trace_id))
    assert [t.info.trace_id for t in got] == [e.trace_id for e in expected]
    assert len(small) == 7
    assert small.token
    newest = max(events, key=lambda e: e.timestamp_ms)
    assert small[0].info.trace_id == newest.trace_id  # newest first by default


def test_guide_style_analysis_code_runs_against_the_client(served: tuple[Store, str, list[TraceEvent]]) -> None:
    """The code of MLflow's user & session guide, unchanged but for the client class."""
    _, url, events = served
    client = TraceClient(url)
    user_id = "user-2"
    traces = client.search_traces(
        experiment_ids=["0"],
        filter_string=f"metadata.`mlflow.trace.user` = '{user_id}'",
        max_results=1000,
    )
    total_interactions = len(traces)
    unique_sessions = len({t.info.metadata.get("mlflow.trace.session") for t in traces})
    avg_response_time = sum(t.info.execution_time_ms or 0 for t in traces) / len(traces)

    mine = [e for e in events if e.metadata["mlflow.trace.user"] == user_id]
    assert total_interactions == len(mine)
    assert unique_sessions == len({e.metadata["mlflow.trace.session"] for e in mine})
    assert avg_response_time == pytest.approx(sum(e.execution_time_ms for e in mine) / len(mine))

    summary = client.user_summary(user_id)
    assert summary.total_interactions == total_interactions
    assert summary.unique_sessions == unique_sessions
    assert summary.avg_response_time_ms == pytest.approx(avg_response_time)

    session_id = "session-007"
    session_traces = client.search_traces(
        filter_string=f"metadata.`mlflow.trace.session` = '{session_id}'", order_by=["timestamp ASC"]
    )
    flow = [
        (i + 1, t.info.timestamp, t.info.execution_time_ms, str(t.info.status)) for i, t in enumerate(session_traces)
    ]
    timeline = client.session_timeline(session_id)
    assert [(x.turn, x.timestamp_ms, x.execution_time_ms, x.status) for x in timeline.turns] == [
        (n, ts, dur, st.split(".")[-1]) for n, ts, dur, st in flow
    ]
    client.close()


def test_get_trace_has_spans_tags_and_immutable_metadata(served: tuple[Store, str, list[TraceEvent]]) -> None:
    _, url, events = served
    first = events[0]
    with TraceClient(url) as client:
        trace = client.get_trace(first.trace_id)
        assert client.get_trace("tr-" + "f" * 32) is None
    assert trace is not None
    assert trace.info.tags["reviewed"] == "yes"
    assert trace.info.client_request_id == first.client_request_id
    assert [s.name for s in sorted(trace.data.spans, key=lambda s: s.start_time_ns)] == ["chat", "llm"]
    with pytest.raises(TypeError):
        trace.info.metadata["mlflow.trace.user"] = "someone-else"  # type: ignore[index]


def test_bad_filter_is_a_typed_4xx_with_mlflow_error_body(served: tuple[Store, str, list[TraceEvent]]) -> None:
    _, url, _ = served
    with TraceClient(url) as client, pytest.raises(RemoteError) as err:
        client.search_traces(filter_string="metadata.x = 'a' OR status = 'OK'")
    assert err.value.status == 400
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "OR" in str(err.value)
    resp = httpx.post(f"{url}/api/3.0/mlflow/traces/search", json={"order_by": ["state DESC"]})
    assert resp.status_code == 400
    assert resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert httpx.get(f"{url}/no/such/route").json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_dataframe_has_mlflow_columns(served: tuple[Store, str, list[TraceEvent]]) -> None:
    _, url, _ = served
    with TraceClient(url) as client:
        df = client.search_traces_df(filter_string="status = 'ERROR'")
    assert list(df.columns) == [
        "trace_id", "trace", "client_request_id", "state", "request_time", "execution_duration",
        "request", "response", "trace_metadata", "tags", "spans", "assessments",
    ]  # fmt: skip
    assert set(df["state"]) == {"ERROR"}


def test_unreachable_server_says_how_to_fix_it() -> None:
    client = TraceClient(f"http://127.0.0.1:{free_port()}")
    with client, pytest.raises(ConnectionError, match="tracehouse up"):
        client.search_traces()


def test_ids_with_url_characters_mean_the_same_over_http(served: tuple[Store, str, list[TraceEvent]]) -> None:
    store, url, _ = served
    direct = TraceClient.from_store(store)
    with TraceClient(url) as remote:
        for user in ("user-1#x", "user-1?experiment_id=nope", "a/b", "user-1"):
            assert remote.user_summary(user).to_dict() == direct.user_summary(user).to_dict()
        assert remote.get_trace("../users/user-1") is None
        odd = "session-004/.."
        assert remote.session_timeline(odd).to_dict() == direct.session_timeline(odd).to_dict()


@pytest.mark.parametrize(
    "body",
    [{"filter": 5}, {"page_token": ["x"]}, {"experiment_ids": "10"}, {"filter": "tag.env LIKE 'a\\\\'"}],
    ids=["filter-int", "token-list", "exps-str", "like-trailing-backslash"],
)
def test_malformed_search_bodies_are_400s(served: tuple[Store, str, list[TraceEvent]], body: dict[str, object]) -> None:
    _, url, _ = served
    resp = httpx.post(f"{url}/api/3.0/mlflow/traces/search", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"
