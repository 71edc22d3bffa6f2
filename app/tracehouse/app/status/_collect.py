"""Gather a :class:`Status`: Kafka (lag, dead letters), the store (size, freshness, SDK reports) and the
embedded broker (memory), each check graded on its own, so one unreachable part never hides the others.

Lag is the partition's end offset minus the group's committed offset. Tansu answers a ListOffsets for
the end as the base offset of the partition's last batch plus one, which undercounts a batch of many
records, so the end is read where it is exact: one past the last record of the last batch, fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracehouse.schemas import Topics
from tracehouse.storage import Store, current_retention

from ._model import GroupLag, Level, PartitionLag, Status, Thresholds

_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class KafkaTarget:
    """Where the pipeline's topics are, and which consumer groups read them."""

    bootstrap: str
    topics: Topics
    sink_group: str
    sessionizer_group: str | None = None


@dataclass(slots=True)
class BrokerProbe:
    """The embedded broker's memory as ``up``'s watchdog sees it (``sample`` returns its fields)."""

    sample: Callable[[], dict[str, Any]] = field(default=dict)


async def _ends(consumer: Any, tps: list[Any]) -> dict[Any, int]:
    """Exact end offsets: the last batch of each partition is fetched, its last record + 1 is the end."""
    reported = await consumer.end_offsets(tps) if tps else {}
    ends = {tp: int(end) for tp, end in reported.items()}
    pending = {tp for tp, end in ends.items() if end > 0}
    if not pending:
        return ends
    consumer.assign(sorted(pending))
    for tp in pending:
        consumer.seek(tp, ends[tp] - 1)
    deadline = asyncio.get_running_loop().time() + _TIMEOUT_S
    while pending and asyncio.get_running_loop().time() < deadline:
        batch = await consumer.getmany(*pending, timeout_ms=500)
        for tp, records in batch.items():
            if records:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
                pending.discard(tp)
    return ends


async def _group_lag(admin: Any, role: str, group: str, tps: list[Any], ends: dict[Any, int]) -> GroupLag:
    # Named partitions: Tansu cannot answer an OffsetFetch for all of a group's topics.
    committed = await admin.list_consumer_group_offsets(group, partitions=tps) if tps else {}
    parts = []
    for tp in tps:
        meta = committed.get(tp)
        offset = meta.offset if meta is not None and meta.offset >= 0 else None
        end = ends.get(tp, 0)
        parts.append(PartitionLag(tp.topic, tp.partition, offset, end, max(0, end - (offset or 0))))
    return GroupLag(role, group, parts)


async def _kafka(status: Status, target: KafkaTarget, thresholds: Thresholds) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=target.bootstrap, request_timeout_ms=int(_TIMEOUT_S * 1000))
    consumer = AIOKafkaConsumer(bootstrap_servers=target.bootstrap, group_id=None, enable_auto_commit=False,
                                request_timeout_ms=int(_TIMEOUT_S * 1000))  # fmt: skip
    try:
        await asyncio.wait_for(asyncio.gather(admin.start(), consumer.start()), _TIMEOUT_S)
        await consumer.topics()
        t = target.topics
        partitions = {name: [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
                      for name in (t.traces, t.sessions, t.user_rollups, t.dlq)}  # fmt: skip
        ends = await _ends(consumer, [tp for tps in partitions.values() for tp in tps])
        groups = [("sink", target.sink_group, [t.traces, t.sessions, t.user_rollups])]
        if target.sessionizer_group:
            groups.append(("sessionizer", target.sessionizer_group, [t.traces]))
        for role, group, topics in groups:
            lag = await _group_lag(admin, role, group, [tp for name in topics for tp in partitions[name]], ends)
            status.lag.append(lag)
            worst = max((p.lag for p in lag.partitions), default=0)
            level: Level = "ok"
            if lag.lag > thresholds.max_lag:
                level = "fail"
            elif lag.lag > thresholds.max_lag // 2:
                level = "warn"
            status.add(f"{role} lag", level, f"{lag.lag} records behind (worst partition {worst})")
        letters = status.dead_letters = sum(ends.get(tp, 0) for tp in partitions[t.dlq])
        status.add("dead letters", "warn" if letters else "ok",
                   f"{letters} refused lines or messages (tracehouse dlq list)" if letters else "none")  # fmt: skip
    except Exception as exc:
        status.add("kafka", "fail", f"Kafka at {target.bootstrap} did not answer: {exc!r}")
    finally:
        with contextlib.suppress(Exception):  # a client that never connected
            await consumer.stop()
        with contextlib.suppress(Exception):
            await admin.close()


def _store(status: Status, store: Store) -> None:
    try:
        size, rows = store.query(
            "SELECT sum(bytes_on_disk), sum(rows) FROM system.parts WHERE database = currentDatabase() AND active"
        )[0]
        newest = store.query(
            "SELECT count(), max(timestamp_ms), toUnixTimestamp64Milli(max(ingested_at)), "
            "toUnixTimestamp64Milli(now64(3)) FROM traces"
        )[0]
        retention = current_retention(store)
    except Exception as exc:
        status.add("store", "fail", f"the store did not answer: {exc!r}")
        return
    traces, newest_ms, ingested_ms, now_ms = (int(v or 0) for v in newest)
    status.store = {
        "uri": store.uri.split("@")[-1], "bytes": int(size or 0), "rows": int(rows or 0), "traces": traces,
        "newest_trace_ms": newest_ms or None, "newest_ingested_ms": ingested_ms or None,
        "newest_trace_age_s": round((now_ms - ingested_ms) / 1000, 1) if ingested_ms else None,
        "retention_days": None if retention is None else retention.raw_days,
        "summary_retention_days": None if retention is None else retention.summary_days,
    }  # fmt: skip
    age = status.store["newest_trace_age_s"]
    status.add("store", "ok", f"{traces} traces, {int(size or 0) / 2**20:.1f} MiB"
               + (f"; newest stored {age:.0f}s ago" if age is not None else ""))  # fmt: skip


def _sdk(status: Status, store: Store) -> None:
    try:
        row = store.query(
            "SELECT count(), sum(accepted), sum(published), sum(dropped), sum(failed), max(last) FROM "
            "(SELECT process_id, argMax(accepted, time_ms) AS accepted, argMax(published, time_ms) AS published, "
            "argMax(dropped, time_ms) AS dropped, argMax(failed, time_ms) AS failed, max(time_ms) AS last "
            "FROM sdk_heartbeats WHERE time_ms > toUnixTimestamp64Milli(now64(3)) - 86400000 GROUP BY process_id)"
        )[0]
    except Exception as exc:
        status.add("sdk", "warn", f"SDK reports unreadable: {exc!r}")
        return
    processes, accepted, published, dropped, failed, last = (int(v or 0) for v in row)
    status.sdk = {"processes": processes, "accepted": accepted, "published": published, "dropped": dropped,
                  "failed": failed, "last_report_ms": last or None}  # fmt: skip
    if not processes:
        status.add("sdk", "ok", "no SDK reported in the last 24 h")
    else:
        text = f"{processes} processes in 24 h: {published} published, {dropped} dropped, {failed} failed"
        status.add("sdk", "warn" if dropped or failed else "ok", text)


def _broker(status: Status, probe: BrokerProbe, thresholds: Thresholds) -> None:
    sample = probe.sample()
    status.broker = sample
    rss, limit = sample.get("rss_mib"), sample.get("limit_mib")
    if rss is None:
        status.add("broker memory", "warn", "the embedded broker is not running")
        return
    text = f"{rss:.0f} MiB" + (f" of {limit:.0f} MiB" if limit else "")
    if sample.get("rollovers"):
        text += f"; {sample['rollovers']} new generations so far (the policy at the limit)"
    level: Level = "ok"
    if limit and rss >= limit:
        level = "fail"
    elif limit and rss >= thresholds.broker_warn_fraction * limit:
        level = "warn"
    status.add("broker memory", level, text)


async def collect(store: Store | None, kafka: KafkaTarget | None = None, broker: BrokerProbe | None = None,
                  thresholds: Thresholds | None = None) -> Status:  # fmt: skip
    """The pipeline's status now. Store calls run in worker threads."""
    limits = thresholds or Thresholds()
    status = Status(time_ms=int(time.time() * 1000))
    if kafka is not None:
        await _kafka(status, kafka, limits)
    if broker is not None:
        _broker(status, broker, limits)
    if store is not None:
        await asyncio.to_thread(_store, status, store)
        await asyncio.to_thread(_sdk, status, store)
    return status
