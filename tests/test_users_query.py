"""Per-user rollups read back: ``list_users`` / ``get_user`` / ``user_summary`` over the store, over HTTP
and from the CLI, against ground truth computed in Python from the facts written (real chDB; the
facts are written in several blocks and one block twice, as a sink replay would)."""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from _serve import serving
from click.testing import CliRunner

from tracehouse.app.cli import main
from tracehouse.processors.sessions import quantile
from tracehouse.query import (
    USER_DATAFRAME_COLUMNS,
    InvalidOrderByError,
    InvalidPageTokenError,
    RemoteError,
    TraceClient,
    UserRollup,
    get_user,
    list_users,
    user_summary,
)
from tracehouse.schemas import TraceEvent, UserTraceFact
from tracehouse.storage import RowBatch, Store, migrate, write_batch

DAY_MS = 86_400_000
BASE_MS = 1_795_000_000_000 // DAY_MS * DAY_MS  # midnight UTC: five whole days


def make_facts(n: int = 3000, users: int = 60, seed: int = 3) -> list[UserTraceFact]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tokens_in, tokens_out = rng.randint(0, 500), rng.randint(0, 200)
        u = f"user-{(int(rng.paretovariate(1.2)) - 1) % users:03d}"  # a few heavy users
        out.append(UserTraceFact(
            user_id=u, trace_id=f"tr-{i:032x}", timestamp_ms=BASE_MS + rng.randrange(5 * DAY_MS),
            execution_time_ms=rng.randint(1, 9000), src_partition=i % 4, src_offset=i, error=rng.random() < 0.08,
            experiment_id="1" if i % 5 == 0 else "0", session_id=f"s-{u}-{rng.randrange(6)}" if i % 9 else "",
            input_tokens=tokens_in, output_tokens=tokens_out, total_tokens=tokens_in + tokens_out,
        ))  # fmt: skip
    return out


FACTS = make_facts()


def truth(facts: list[UserTraceFact], day: str | None = None) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[UserTraceFact]] = {}
    for f in facts:
        d = (datetime.date(1970, 1, 1) + datetime.timedelta(days=f.timestamp_ms // DAY_MS)).isoformat()
        if day is None or d == day:
            groups.setdefault(f.user_id, []).append(f)
    out = {}
    for u, fs in groups.items():
        durations = sorted(f.execution_time_ms for f in fs)
        errors = sum(f.error for f in fs)
        out[u] = {
            "interactions": len(fs), "unique_sessions": len({f.session_id for f in fs} - {""}),
            "avg_response_time_ms": sum(durations) / len(fs), "p50_response_time_ms": quantile(durations, 0.5),
            "p95_response_time_ms": quantile(durations, 0.95), "error_count": errors, "error_rate": errors / len(fs),
            "first_seen_ms": min(f.timestamp_ms for f in fs), "last_seen_ms": max(f.timestamp_ms for f in fs),
            "input_tokens": sum(f.input_tokens for f in fs), "output_tokens": sum(f.output_tokens for f in fs),
            "total_tokens": sum(f.total_tokens for f in fs),
        }  # fmt: skip
    return out


def same(got: UserRollup, want: dict[str, Any]) -> bool:
    return all(getattr(got, k) == pytest.approx(v, rel=1e-12) for k, v in want.items())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, str]]:
    store = Store(f"chdb://{tmp_path_factory.mktemp('users') / 'chdb'}")
    migrate(store)
    for n, k in enumerate(range(0, len(FACTS), 700)):
        batch = RowBatch()
        for f in FACTS[k : k + 700]:
            batch.add(f)
        write_batch(store, batch, token=f"facts-{n}")
        write_batch(store, batch, token=f"facts-{n}")  # a replayed batch: dropped, view included
    traces = RowBatch()  # the raw traces of user-000, for the rollups-vs-traces comparison
    for f in FACTS:
        if f.user_id == "user-000":
            meta = {"mlflow.trace.user": f.user_id}
            if f.session_id:
                meta["mlflow.trace.session"] = f.session_id
            usage = f'{{"input_tokens": {f.input_tokens}, "output_tokens": {f.output_tokens}}}'
            traces.add(TraceEvent(
                trace_id=f.trace_id, timestamp_ms=f.timestamp_ms, execution_time_ms=f.execution_time_ms,
                state="ERROR" if f.error else "OK", experiment_id=f.experiment_id,
                metadata={**meta, "mlflow.trace.tokenUsage": usage},
            ))  # fmt: skip
    write_batch(store, traces, token="traces")
    with serving(store) as url:
        try:
            yield store, url
        finally:
            store.close()


@pytest.mark.parametrize("order", ["interactions DESC", "p95_response_time_ms", "error_rate DESC", "last_seen_ms"])
def test_every_user_once_in_order_with_exact_values(served: tuple[Store, str], order: str) -> None:
    store, _ = served
    want = truth(FACTS)
    key, *direction = order.split()
    desc = direction == ["DESC"]
    got: list[UserRollup] = []
    token = None
    while True:
        page = list_users(store, order_by=order, max_results=7, page_token=token)
        got += page.users
        token = page.next_page_token
        if not token:
            break
    assert [u.user_id for u in got] == [
        u for _, u in sorted(((-v[key] if desc else v[key]), u) for u, v in want.items())
    ]
    assert all(same(u, want[u.user_id]) for u in got)


def test_get_user_daily_buckets_filters_and_summary_equal_the_traces(served: tuple[Store, str]) -> None:
    store, _ = served
    detail = get_user(store, "user-000")
    assert detail.summary is not None
    assert same(detail.summary, truth(FACTS)["user-000"])
    days = [str(d.day) for d in detail.days]
    assert days == sorted(days)
    assert len(days) == 5
    for d in detail.days:
        assert d.day is not None
        assert same(d, truth(FACTS, d.day)["user-000"])
    second_day = BASE_MS + DAY_MS
    window = get_user(store, "user-000", since=second_day + 5, until=second_day + DAY_MS)
    assert [d.day for d in window.days] == [days[1]]  # whole UTC days overlapping [since, until)
    only_exp1 = get_user(store, "user-000", experiment_ids=["1"])
    assert only_exp1.summary is not None
    assert same(only_exp1.summary, truth([f for f in FACTS if f.experiment_id == "1"])["user-000"])
    assert get_user(store, "nobody").summary is None

    rollups = user_summary(store, "user-000", source="rollups")
    traces = user_summary(store, "user-000", source="traces")
    assert rollups.to_dict() == pytest.approx(traces.to_dict())
    assert user_summary(store, "user-001", source="auto").total_traces == truth(FACTS)["user-001"]["interactions"]
    assert user_summary(store, "nobody", source="rollups").total_traces == 0


def test_bad_input_is_a_clear_error(served: tuple[Store, str]) -> None:
    store, url = served
    with pytest.raises(InvalidOrderByError, match="Invalid order_by key 'nope' for users"):
        list_users(store, order_by="nope")
    token = list_users(store, max_results=2).next_page_token
    assert token
    with pytest.raises(InvalidPageTokenError):
        list_users(store, order_by="last_seen_ms", page_token=token)  # issued for another order
    with TraceClient(url) as remote, pytest.raises(RemoteError, match="order_by"):
        remote.list_users(order_by="nope")


def test_http_dataframe_and_cli_agree_with_the_store(served: tuple[Store, str]) -> None:
    store, url = served
    local = TraceClient.from_store(store)
    with TraceClient(url) as remote:
        assert remote.list_users(order_by="error_rate DESC", max_results=9) == local.list_users(
            order_by="error_rate DESC", max_results=9
        )
        assert remote.get_user("user-002") == local.get_user("user-002")
        assert remote.user_summary("user-002") == local.user_summary("user-002")
        df = remote.list_users_df(max_results=None)
    assert list(df.columns) == list(USER_DATAFRAME_COLUMNS)
    assert sorted(df["user_id"]) == sorted(truth(FACTS))
    assert int(df["interactions"].sum()) == len(FACTS)
    days = local.get_user_df("user-000")
    assert len(days) == 5
    assert days["day"].notna().all()

    result = CliRunner().invoke(main, ["users", "--uri", url, "--order-by", "interactions DESC", "--top", "3",
                                       "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    top = sorted(truth(FACTS).items(), key=lambda kv: (-kv[1]["interactions"], kv[0]))[:3]
    assert [r["user_id"] for r in rows] == [u for u, _ in top]
    table = CliRunner().invoke(main, ["users", "--uri", url, "--top", "2"])
    assert table.exit_code == 0
    assert "more users: --page-token" in table.output
    user = CliRunner().invoke(main, ["user", "user-000", "--uri", url, "--format", "json"])
    assert user.exit_code == 0, user.output
    data = json.loads(user.output)[0]
    assert data["total_traces"] == truth(FACTS)["user-000"]["interactions"]
    assert len(data["days"]) == 5
    view = CliRunner().invoke(main, ["user", "user-000", "--uri", url])
    assert view.exit_code == 0
    assert "5 days" in view.output


def test_web_ui_calls_only_routes_that_answer_with_the_fields_it_reads(served: tuple[Store, str]) -> None:
    """The UI's users, user, sessions, session and status views: every API path its script builds answers
    200 here, with the keys the script reads."""
    import re

    import httpx

    _, url = served
    html = httpx.get(url + "/").text
    paths = set(re.findall(r"'(/api/tracehouse/v1/[a-z/]+)", html))
    v1 = "/api/tracehouse/v1/"
    assert paths == {v1 + p for p in ("traces/search", "traces/", "users", "users/", "sessions", "sessions/",
                                      "status")}
    users = httpx.get(url + "/api/tracehouse/v1/users", params={"max_results": 100, "order_by": "error_rate DESC"})
    assert users.status_code == 200
    row = users.json()["users"][0]
    columns = re.search(r"const USER_COLS = \[([^\]]+)\]", html)
    assert columns is not None
    for column in columns.group(1).replace("'", "").split(","):
        assert column in row, column
    one = httpx.get(url + "/api/tracehouse/v1/users/user-000").json()
    assert one["user"]["total_traces"] > 0
    assert one["rollup"]["days"][0]["day"]
    listed = httpx.get(url + "/api/tracehouse/v1/sessions", params={"max_results": 20, "user_id": "user-000"})
    assert listed.status_code == 200
    assert "sessions" in listed.json()
    detail = httpx.get(url + "/api/tracehouse/v1/sessions/s-user-000-1", params={"max_results": 500}).json()
    assert {"session", "summary", "feedback"} <= set(detail)
    status = httpx.get(url + "/api/tracehouse/v1/status")
    assert status.status_code == 200
    health = status.json()
    assert {"level", "healthy", "checks", "store"} <= set(health)
    assert health["store"]["traces"] > 0
    assert all({"name", "level", "message"} <= set(check) for check in health["checks"])
