"""Steps *seek* and *ledger*, and the rebalance: where each assigned partition starts.

* **seek**: the first time a partition shows up after an assignment, read its committed offset C and
  seek there, discarding whatever the poll returned for it. This pins the stream to C even if a poll
  straddled a rebalance. Must not let a record older than C, or one fetched for a previous
  assignment, into a batch.
* **ledger**: before the first record of a partition after an assignment, look up the ledger row that
  starts at that record. If there is one, the first batch is bounded: it must end exactly at the row's
  ``last_offset`` (same bounds, same token: ClickHouse drops what was already inserted). Must not flush
  a bounded batch before it reaches its bound, on any trigger.
* **epoch**: on every assignment, read the broker epoch (``_epoch``). A new one (the broker lost its
  data, or this is the first start) is registered in the store first, after reconciling what an
  unclean stop left (``tracehouse.storage.begin_epoch``); the ledger, the tokens and the rollup marks
  are then keyed by it. Must run before the first record of the assignment is taken.
* **revoke**: flush and commit the revoked partitions' batches first, within ``revoke_timeout_s``;
  what cannot be flushed by then is dropped uncommitted (its next owner replays it).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError

from tracehouse.schemas.errors import WriteStuck

from ._commit import flush_final
from ._epoch import read_epoch
from ._state import PartitionState, SinkState, within_deadline

log = logging.getLogger("tracehouse.sink")


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks, run by the consumer between polls."""

    def __init__(self, state: SinkState) -> None:
        self._state = state

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        state = self._state
        async with state.lock:
            deadline = time.monotonic() + state.config.revoke_timeout_s
            for tp in revoked:
                part = state.parts.pop((tp[0], tp[1]), None)
                if part is not None:
                    await flush_final(state, part, deadline, "revoke")
        if revoked:
            log.info("partitions revoked: %s", sorted(f"{t}[{p}]" for t, p in revoked))

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        """Start every assigned partition afresh: its position is pinned (and its ledger row looked
        up) by the loop, which must not trust records fetched before that."""
        state = self._state
        async with state.lock:
            state.epoch_ok = False  # read again by the loop before any partition is pinned
            for tp in assigned:
                state.parts[(tp[0], tp[1])] = PartitionState(tp)
        log.info("partitions assigned: %s", sorted(f"{t}[{p}]" for t, p in assigned))


async def try_enter_epoch(state: SinkState) -> bool:
    """:func:`enter_epoch`, or (Kafka or the store failing) a retry scheduled with backoff. Until it
    succeeds no partition is pinned, so no record is taken under the wrong epoch."""
    if state.epoch_ok:
        return True
    if state.epoch_retry_at is not None and time.monotonic() < state.epoch_retry_at:
        return False
    try:
        await enter_epoch(state)
    except WriteStuck:
        raise
    except Exception as exc:
        state.epoch_failures += 1
        cfg = state.config
        delay = min(cfg.retry_backoff_max_ms, cfg.retry_backoff_ms * 2 ** min(state.epoch_failures, 20))
        state.epoch_retry_at = time.monotonic() + delay / 1000
        log.warning("reading or registering the broker epoch failed (attempt %d), retrying in %.1fs: %r",
                    state.epoch_failures, delay / 1000, exc)  # fmt: skip
        return False
    state.epoch_ok, state.epoch_failures, state.epoch_retry_at = True, 0, None
    return True


async def enter_epoch(state: SinkState) -> None:
    """Step *epoch*: key everything by the broker's current epoch, registering it in the store first."""
    from tracehouse.storage import Ledger, begin_epoch

    cfg, store = state.config, state.store
    assert store is not None
    epoch = await read_epoch(cfg.bootstrap, cfg.topics.epoch)
    if epoch is None or epoch == state.epoch:
        return
    partitions = len(state.consumer.partitions_for_topic(cfg.source_topic) or ()) if state.consumer else 0
    if not partitions:
        await state.consumer.topics()
        partitions = len(state.consumer.partitions_for_topic(cfg.source_topic) or ()) or 1
    if state.epoch:
        log.warning("broker epoch changed from %s to %s: the broker lost its data; offsets start again",
                    state.epoch, epoch)  # fmt: skip
    _, report = await within_deadline(
        state, lambda: begin_epoch(store, epoch, partitions=partitions, inactivity_gap_ms=cfg.inactivity_gap_ms,
                                   max_duration_ms=cfg.max_duration_ms, window_ms=int(cfg.reconcile_window_s * 1000)),
    )  # fmt: skip
    if report is not None:
        log.warning("an unclean stop left sessions and rollups to repair: recomputed %d sessions and %d "
                    "rollup buckets from the stored traces in %.1fs",
                    report.sessions, report.buckets, report.seconds)  # fmt: skip
    state.epoch = epoch
    state.ledger = Ledger(store, state.scope)


async def pin(state: SinkState, part: PartitionState) -> None:
    """Step *seek*: read the committed offset and seek there. The caller discards the records this
    poll returned for the partition."""
    tp = part.tp
    try:
        committed = await state.consumer.committed(tp)
        if committed is None:
            await state.consumer.seek_to_beginning(tp)
        else:
            state.consumer.seek(tp, committed)
    except IllegalStateError:
        part.lost = True
        return
    except KafkaError as exc:
        state.fail(part, None, "reading the committed offset", exc)
        return
    part.start_offset = committed
    part.pinned = True
    part.failures = 0
    if committed is not None:
        state.set_committed(tp, committed)


async def check_ledger(state: SinkState, part: PartitionState, offset: int) -> bool:
    """Step *ledger* for the partition's first record ``offset``; ``False`` when the lookup failed
    (the partition is paused and retried)."""
    assert state.ledger is not None
    ledger = state.ledger
    topic, partition = part.tp[0], part.tp[1]
    rollups = topic == state.config.rollups_topic

    def lookup() -> tuple[int | None, dict[int, tuple[int, int]] | None]:
        bound = ledger.replay_bound(topic, partition, offset)
        return bound, ledger.load_marks(topic, partition) if rollups else None

    try:
        bound, marks = await within_deadline(state, lookup)
    except WriteStuck:
        raise
    except Exception as exc:
        state.fail(part, offset, "the ledger lookup", exc)
        return False
    part.ledger_checked = True
    part.marks = marks
    part.failures = 0
    if bound is not None and bound >= offset:
        part.replay_end = bound
        log.info(
            "%s[%d]: replaying batch [%d, %d] from the ledger (same bounds, same dedup token)",
            part.tp[0], part.tp[1], offset, bound,
        )  # fmt: skip
    return True
