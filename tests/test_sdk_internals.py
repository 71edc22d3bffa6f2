"""Building blocks: JSON-safe conversion, argument binding, partitioning and envelopes, configuration,
and the import-time promise (importing tracehouse starts nothing)."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import subprocess
import sys
import textwrap
import threading
import time
import types
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

import tracehouse
from tracehouse.producers._binding import Binder
from tracehouse.producers._buffer import EventBuffer
from tracehouse.producers._config import TracehouseConfig, resolve_config
from tracehouse.producers._envelopes import build_batch
from tracehouse.producers._serialize import set_limits, to_jsonable
from tracehouse.schemas import DEFAULT_TOPIC_PREFIX, decode_event, example, split_envelope
from tracehouse.schemas.kafka import partition_for, partition_key


@pytest.fixture
def limits() -> Iterator[None]:
    set_limits(20, 5)
    try:
        yield
    finally:
        set_limits(10_000, 1_000)


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_to_jsonable_common_and_odd_types() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    uid = uuid.UUID(int=1)
    value = {
        "s": "x",
        "n": None,
        "b": False,
        "f": 1.5,
        "i": 7,
        "t": (1, 2),
        "set": frozenset({3}),
        "enum": Color.RED,
        "dt": when,
        "uuid": uid,
        "dc": Point(1, 2),
        "exc": ValueError("bad"),
        Color.RED: "enum key",
        3: "int key",
        ("tuple",): "odd key",
    }
    out = to_jsonable(value)
    assert out == {
        "s": "x",
        "n": None,
        "b": False,
        "f": 1.5,
        "i": 7,
        "t": [1, 2],
        "set": [3],
        "enum": "red",
        "dt": when.isoformat(),
        "uuid": str(uid),
        "dc": {"x": 1, "y": 2},
        "exc": "ValueError: bad",
        "red": "enum key",
        "3": "int key",
        "('tuple',)": "odd key",
    }
    orjson.dumps(out)


def test_to_jsonable_caps(limits: None) -> None:
    assert to_jsonable("y" * 30) == "y" * 17 + "..."
    assert to_jsonable(list(range(8))) == [0, 1, 2, 3, 4, "... 3 more item(s)"]
    assert to_jsonable({str(i): i for i in range(7)}) == {
        **{str(i): i for i in range(5)},
        "...": "2 more item(s)",
    }
    nested = to_jsonable([[1, 2, 3], [4, 5, 6]])  # the item budget is shared by the whole value
    assert nested == [[1, 2, 3], ["... 3 more item(s)"]]


def test_to_jsonable_survives_hostile_objects() -> None:
    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert to_jsonable(BadRepr()) == "<unrepresentable BadRepr>"
    out = to_jsonable(cyclic)
    orjson.dumps(out)  # depth-capped, encodable

    class Model:
        def model_dump(self) -> dict[str, Any]:
            return {"a": 1}

    assert to_jsonable(Model()) == {"a": 1}


def test_binder_matches_inspect_bind() -> None:
    def f(a: int, /, b: int, c: int = 3, *args: int, d: int, e: int = 5, **kw: int) -> None:
        return None

    binder = Binder(f)
    assert binder.bind((1, 2), {"d": 4}) == {"a": 1, "b": 2, "c": 3, "args": (), "d": 4, "e": 5, "kw": {}}
    assert binder.bind((1, 2, 9, 8), {"d": 4, "z": 0}) == {
        "a": 1,
        "b": 2,
        "c": 9,
        "args": (8,),
        "d": 4,
        "e": 5,
        "kw": {"z": 0},
    }
    # a call the function would reject is recorded as it was made
    assert binder.bind((1,), {}) == {"args": [1], "kwargs": {}}
    assert Binder(max).bind((1, 2), {}) == {"args": [1, 2], "kwargs": {}}  # no signature


def test_partitions_agree_with_kafkas_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    partitions = list(range(8))
    for key in [b"session-abc-456", b"s", b"", b"tr-" + b"a" * 32, "é".encode()]:
        assert partition_for(key, partitions) == partitioner(key, partitions, partitions)


def test_partition_key_prefers_the_session() -> None:
    trace = orjson.loads(example("trace"))
    assert partition_key(trace) == "session-abc-456"
    error = orjson.loads(example("trace_error"))
    assert partition_key(error) == "conv-9"  # the gen_ai.conversation.id alias
    no_session = {**trace, "metadata": {}}
    assert partition_key(no_session) == trace["trace_id"]
    user_only = {**trace, "metadata": {"mlflow.trace.user": "user-7"}}
    assert partition_key(user_only) == "user-7"  # a user's session-less traces stay on one partition
    with_root_attr = {**no_session, "spans": [{"attributes": {"session.id": "s-attr"}}]}
    assert partition_key(with_root_attr) == "s-attr"
    assert partition_key(orjson.loads(example("tag_set"))) == trace["trace_id"]
    feedback = orjson.loads(example("assessment"))
    assert partition_key(feedback) == feedback["trace_id"]
    assert partition_key({**feedback, "session_id": "s-9"}) == "s-9"


def test_envelopes_group_by_partition_and_respect_the_size_limit() -> None:
    base = orjson.loads(example("trace"))
    items = []
    for i in range(40):
        event = {**base, "trace_id": f"tr-{i:032x}", "metadata": {"mlflow.trace.session": f"s{i % 4}"}}
        items.append(event)
    items.append({"type": "trace", "trace_id": "broken"})  # encodable, so it still travels
    items.append({"type": "trace", "no": object()})  # not encodable: counted as failed
    batch = build_batch(items, [0, 1, 2], max_bytes=4096)
    assert batch.failed == 1
    lines = 0
    for env in batch.envelopes:
        assert len(env.value) <= 4096 or env.count == 1
        assert env.key == partition_key(orjson.loads(env.lines[0])).encode()
        for line in split_envelope(env.value):
            lines += 1
            event = orjson.loads(line)
            if event["trace_id"] != "broken":
                assert partition_for(partition_key(event).encode(), [0, 1, 2]) == env.partition
                decode_event(line)
    assert lines == 41
    assert len(batch.envelopes) > 3  # the limit forced splits


def test_config_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_config(environ={}) == TracehouseConfig()
    assert TracehouseConfig().topic_prefix == DEFAULT_TOPIC_PREFIX
    env = {
        "TRACEHOUSE_KAFKA_BOOTSTRAP": "kafka:9092",
        "TRACEHOUSE_EXPERIMENT_ID": "7",
        "TRACEHOUSE_TOPIC_PREFIX": "prod.",
        "TRACEHOUSE_ENABLED": "false",
        "TRACEHOUSE_BUFFER_SIZE": "10",
        "TRACEHOUSE_LINGER_MS": "2.5",
    }
    config = resolve_config(environ=env)
    assert (config.kafka_bootstrap, config.experiment_id, config.topic_prefix) == ("kafka:9092", "7", "prod.")
    assert (config.enabled, config.buffer_size, config.linger_ms) == (False, 10, 2.5)
    assert config.topics.traces == "prod.traces.v1"
    explicit = resolve_config({"experiment_id": "9", "enabled": True}, environ=env)
    assert (explicit.experiment_id, explicit.enabled, explicit.buffer_size) == ("9", True, 10)

    monkeypatch.setenv("TRACEHOUSE_EXPERIMENT_ID", "42")
    try:
        assert tracehouse.configure(exporter=lambda e: None).experiment_id == "42"
        assert tracehouse.get_config().experiment_id == "42"
    finally:
        tracehouse.shutdown()


def test_bad_environment_is_ignored_bad_arguments_raise(caplog: pytest.LogCaptureFixture) -> None:
    config = resolve_config(environ={"TRACEHOUSE_BUFFER_SIZE": "lots", "TRACEHOUSE_ENABLED": "maybe"})
    assert config.buffer_size == 100_000
    assert config.enabled is True
    assert "TRACEHOUSE_BUFFER_SIZE" in caplog.text
    config = resolve_config({"experiment_id": "3"}, environ={"TRACEHOUSE_BUFFER_SIZE": "0"})
    assert config.buffer_size == 100_000
    assert config.experiment_id == "3"
    with pytest.raises(ValueError, match="buffer_size"):
        resolve_config({"buffer_size": 0}, environ={})
    with pytest.raises(TypeError, match="unknown"):
        resolve_config({"nope": 1}, environ={})
    with pytest.raises(ValueError, match="experiment_id"):
        tracehouse.configure(experiment_id="x" * 65)


def test_importing_tracehouse_starts_nothing() -> None:
    code = textwrap.dedent(
        """
        import os, sys, threading
        reads = []
        class Spy(dict):
            def get(self, key, default=None):
                reads.append(key); return super().get(key, default)
            def __getitem__(self, key):
                reads.append(key); return super().__getitem__(key)
        os.environ = Spy(os.environ)
        import tracehouse
        assert threading.active_count() == 1, threading.enumerate()
        assert not [r for r in reads if str(r).startswith("TRACEHOUSE")], reads
        assert "aiokafka" not in sys.modules
        assert "tracehouse.query" not in sys.modules
        assert "starlette" not in sys.modules and "fastapi" not in sys.modules
        from tracehouse.producers._runtime import RUNTIME
        assert RUNTIME.config is None and RUNTIME.sink is None
        assert tracehouse.flush(0.1) is True and threading.active_count() == 1
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_query_client_is_re_exported_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"TraceClient", "search_traces"} <= set(tracehouse.__all__)
    assert set(tracehouse.producers.__all__) <= set(tracehouse.__all__)
    fake = types.ModuleType("tracehouse.query")
    sentinel = object()
    fake.TraceClient = sentinel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tracehouse.query", fake)
    monkeypatch.delitem(vars(tracehouse), "TraceClient", raising=False)
    try:
        assert tracehouse.TraceClient is sentinel
    finally:
        vars(tracehouse).pop("TraceClient", None)
    with pytest.raises(AttributeError):
        _ = tracehouse.no_such_thing


def test_the_buffer_drops_or_waits_as_its_policy_says() -> None:
    drop = EventBuffer(2)
    assert [drop.put(i) for i in range(4)] == ["start", "queued", "dropped", "dropped"]
    assert drop.stats() == tracehouse.PublisherStats(accepted=2, dropped=2, buffered=2)
    assert list(drop.take_all()) == [0, 1]
    drop.finish(2, published=2, failed=0, replayed=0)
    assert drop.put(4) == "wake"

    block = EventBuffer(2, block=True, block_timeout=0.05)
    assert [block.put(i) for i in range(3)] == ["start", "queued", "dropped"]  # waited, no room came
    block._block_timeout = 3600.0  # a further wait would hang this test: after one that timed out, none
    assert block.put(3) == "dropped"
    block.finish(1, published=1, failed=0, replayed=0)  # progress: waiting is allowed again
    assert block.put(4) == "queued"
    results: list[str] = []
    waiter = threading.Thread(target=lambda: results.append(block.put(5)))
    waiter.start()  # the buffer is full: it waits until the publisher makes room
    while not block._cond._waiters:  # type: ignore[attr-defined]  # until it waits (a hang fails on timeout)
        time.sleep(0.01)
    block.finish(1, published=1, failed=0, replayed=0)
    waiter.join(60)
    assert results == ["queued"]
    block.close()
    assert block.put(6) == "dropped"
    assert block.stats() == tracehouse.PublisherStats(accepted=4, published=2, dropped=3, buffered=2)
