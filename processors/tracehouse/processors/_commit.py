"""Step *flush*: write a batch (step *write*, in a worker thread), wait for the dead letters of its
offsets, then commit ``last + 1``. Commit is the last step: it never happens before the rows and the
dead letters it covers are durable.

On failure the batch is kept, its partition paused and retried with backoff later: this step must not
sleep in the consumer loop, lose the batch, or let later records of that partition overtake it. A
commit the group refuses (a rebalance moved on) drops the batch uncommitted: its new owner replays it.

When a ``traces.v1`` or ``sessions.v1`` batch comes of age, every other batch of those topics is
flushed with it, in one insert per table (one ledger insert, one first-write-wins lookup, one commit):
a few hundred traces per partition every half second make small inserts, and ClickHouse pays per
insert. A group that fails is retried as the same group with the same token. ``user-rollups.v1``
batches are never grouped: their facts are sums, exact only by token and marks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from aiokafka.errors import CommitFailedError, IllegalStateError

from tracehouse.schemas.errors import WriteStuck

from ._batch import PartitionBatch
from ._state import PartitionState, SinkState, within_deadline
from ._write import write, write_group

log = logging.getLogger("tracehouse.sink")


def groupable(state: SinkState, part: PartitionState) -> bool:
    batch = part.batch
    return (batch is not None and not part.lost and part.retry_at is None and batch.bound is None
            and batch.group is None and part.tp[0] != state.config.rollups_topic)  # fmt: skip


async def flush_due(state: SinkState) -> None:
    """Flush batches past their age and retry failed flushes whose backoff has elapsed. A due batch of
    a groupable topic takes every other groupable batch along."""
    now = time.monotonic()
    group: list[PartitionState] = []
    group_due = False
    retried: set[str] = set()
    for part in list(state.parts.values()):
        if part.lost:
            continue
        batch = part.batch
        if part.retry_at is not None:
            if now < part.retry_at:
                continue
            if batch is None:  # a failed lookup: resume and look again
                part.retry_at = None
                state.resume(part)
                continue
            if batch.group is not None:
                if batch.group not in retried:  # the same group again, with the same token
                    retried.add(batch.group)
                    mates = [p for p in state.parts.values()
                             if not p.lost and p.batch is not None and p.batch.group == batch.group]  # fmt: skip
                    await flush_group(state, mates, batch.group)
                continue
            await flush(state, part, None)
            continue
        if groupable(state, part):
            group.append(part)
            assert batch is not None
            due = batch.due_at(state.limits)
            group_due = group_due or (due is not None and now >= due)
            continue
        if batch is not None and (due := batch.due_at(state.limits)) is not None and now >= due:
            await flush(state, part, None)
    if group_due:
        if len(group) == 1:
            await flush(state, group[0], None)
        else:
            await flush_group(state, group, None)


async def flush_group(state: SinkState, parts: list[PartitionState], token: str | None) -> bool:
    """Flush several partitions' batches at once (see the module docstring)."""
    assert state.dlq is not None
    batches = [p.batch for p in parts if p.batch is not None]
    if token is None:
        tokens = ";".join(b.token(state.scope) for b in batches)
        token = "group:" + hashlib.sha1(tokens.encode(), usedforsecurity=False).hexdigest()
        for b in batches:
            b.group = token
    try:
        if any(b.row_count() and not b.written for b in batches):
            await within_deadline(state, write_group, state, batches, token)
        for b in batches:
            await state.dlq.confirm(b.dead_letters)
        await state.consumer.commit({p.tp: p.batch.last_offset + 1 for p in parts if p.batch is not None})
    except (CommitFailedError, IllegalStateError) as exc:
        return _moved_on(state, parts, f"commit of a group of {len(parts)} batches refused ({exc!r})")
    except WriteStuck:
        raise
    except Exception as exc:
        state.counts["flush_failures"] += 1
        for p in parts:
            state.fail(p, None, f"grouped flush ({len(parts)} batches)", exc)
        return False
    for p in parts:
        if p.batch is not None:
            await flushed(state, p, p.batch)
    return True


async def flush(state: SinkState, part: PartitionState, next_offset: int | None) -> bool:
    """Flush the partition's batch. ``next_offset`` is the first record after the batch that was
    already fetched (the partition is rewound there if the flush fails)."""
    batch = part.batch
    assert batch is not None
    assert state.dlq is not None
    tp = part.tp
    try:
        if (batch.row_count() and not batch.written) or (batch.marks and not batch.marked):
            await within_deadline(state, write, state, batch)
        await state.dlq.confirm(batch.dead_letters)
        await state.consumer.commit({tp: batch.last_offset + 1})
    except (CommitFailedError, IllegalStateError) as exc:
        what = f"{tp[0]}[{tp[1]}]: commit of [{batch.first_offset}, {batch.last_offset}] refused ({exc!r})"
        return _moved_on(state, [part], what)
    except WriteStuck:
        raise
    except Exception as exc:
        state.counts["flush_failures"] += 1
        state.fail(part, next_offset, f"flush of [{batch.first_offset}, {batch.last_offset}]", exc)
        return False
    await flushed(state, part, batch)
    return True


def _moved_on(state: SinkState, parts: list[PartitionState], what: str) -> bool:
    """The group moved on (a rebalance): whoever owns the partitions now replays their batches from the
    ledger. Drop them uncommitted and stop fetching until the new assignment."""
    log.warning("%s; the new owner replays it", what)
    for p in parts:
        p.batch = None
        p.lost = True
        state.pause(p, None)
    return False


async def flushed(state: SinkState, part: PartitionState, batch: PartitionBatch) -> None:
    """Bookkeeping after a batch was written and committed."""
    part.batch = None
    if batch.bound is not None:
        part.replay_end = None
        state.counts["replayed_batches"] += 1
    if part.retry_at is not None:
        part.retry_at = None
        state.resume(part)
    part.failures = 0
    counts = state.counts
    counts["batches"] += 1
    counts["events_written"] += batch.events
    counts["rows_written"] += batch.rows_written
    state.set_committed(part.tp, batch.last_offset + 1)
    async with state.commit_cond:
        state.commit_cond.notify_all()


async def flush_final(state: SinkState, part: PartitionState, deadline: float, why: str) -> None:
    """Flush a partition's batch before giving the partition up (revoke or stop), retrying until
    ``deadline``. An incomplete replayed batch, or one that still fails, is dropped uncommitted: the
    next consumer rebuilds it from the same offsets."""
    tp = part.tp
    while part.batch is not None and not part.lost:
        batch = part.batch
        if not batch.complete:
            log.info(
                "%s[%d]: %s before the replayed batch [%d, %d] was complete; it is replayed later",
                tp[0], tp[1], why, batch.first_offset, batch.bound,
            )  # fmt: skip
            part.batch = None
            return
        remaining = deadline - time.monotonic()
        if remaining > 0:
            try:
                if await asyncio.wait_for(flush(state, part, None), remaining):
                    return
            except TimeoutError:
                pass
        retry_at = part.retry_at if part.retry_at is not None else time.monotonic()
        if part.lost or retry_at >= deadline or remaining <= 0:
            if part.batch is not None:
                log.error(
                    "%s[%d]: giving up on batch [%d, %d] at %s; not committed, it will be replayed",
                    tp[0], tp[1], batch.first_offset, batch.last_offset, why,
                )  # fmt: skip
            part.batch = None
            return
        await asyncio.sleep(max(0.0, retry_at - time.monotonic()))
