"""The processors of ``tracehouse up``: one sink and one sessionizer over the embedded broker and the
shared store, started together and drained together.

A drain stores everything the broker holds, in this order: the sink catches up on the traces, the
sessionizer's final flush emits the last session records and facts, the sink catches up on those.
When it succeeds, sessions and rollups equal the stored traces, and the store is marked consistent:
the next start (or broker generation) has nothing to reconcile.

Two kinds of drain:

- **to quiet** (:meth:`EmbeddedProcessors.stop`, when ``up`` stops): until nothing new has arrived for
  :data:`QUIET_S`, so an app still writing while ``up`` stops is drained too, up to the time limit.
- **to a cut** (:meth:`EmbeddedProcessors.stop_at_cut`, before a new broker generation): apps that
  write to the broker directly cannot be paused, so under sustained load "quiet" never comes (the
  30-minute soak ran into the limit, and what it had not drained was lost). Instead both processors
  stop at one offset per ``traces.v1`` partition, taken at once (no await between reading their
  positions and setting the cut): everything the broker held at that moment is stored, the sink and
  the sessionizer have taken exactly the same traces, so the store is consistent, and it takes
  seconds. Before the cut is taken, the broker is given up to :data:`SETTLE_S` to settle (its end
  offsets unchanged for :data:`QUIET_S`): with the gateway paused, a producer that was finishing a
  batch (a plain Kafka producer that cannot re-send) lands in the cut, and only writers that keep going
  (an app's SDK, under sustained load) are cut. What apps wrote past the cut goes with the old broker;
  the SDKs re-send it to the new one (their replay window, ``producers/_replay.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tracehouse.schemas import Topics

if TYPE_CHECKING:
    from tracehouse.processors import Sink, SinkStats
    from tracehouse.processors.sessions import Sessionizer
    from tracehouse.storage import Store

log = logging.getLogger("tracehouse.up")
#: How long the sink must stay caught up, with no new record, for a drain to be complete.
QUIET_S = 1.0
#: How long a drain to a cut waits at most for the broker's end offsets to stop moving before it cuts.
SETTLE_S = 5.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProcessorOptions:
    partitions: int
    inactivity_gap_ms: int
    max_duration_ms: int | None
    infer_sessions: bool
    datadir: str


class EmbeddedProcessors:
    """The sink and the sessionizer of one broker generation (see the module docstring)."""

    def __init__(self, bootstrap: str, topics: Topics, store: Store, options: ProcessorOptions) -> None:
        self.bootstrap, self.topics, self.store, self.options = bootstrap, topics, store, options
        self.sink: Sink | None = None
        self.sessionizer: Sessionizer | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self._sessions_stop = asyncio.Event()
        self.group = ""
        self.sessionizer_group = ""

    async def start(self) -> None:
        from tracehouse.processors import Sink, SinkConfig
        from tracehouse.processors.sessions import Sessionizer, SessionizerConfig, run_sessionizer

        o = self.options
        config = SinkConfig.resolve(
            bootstrap=self.bootstrap, topic_prefix=self.topics.prefix, store_uri=self.store.uri,
            inactivity_gap_ms=o.inactivity_gap_ms, max_duration_ms=o.max_duration_ms,
        )  # fmt: skip
        self.group = config.group_id
        self.sink = Sink(config, self.store)
        sessionizer = SessionizerConfig.resolve(
            bootstrap=self.bootstrap, topic_prefix=self.topics.prefix, partitions=o.partitions,
            rollup_partitions=o.partitions, inactivity_gap_ms=o.inactivity_gap_ms, max_duration_ms=o.max_duration_ms,
            infer_sessions=o.infer_sessions, datadir=o.datadir,
        )  # fmt: skip
        self.sessionizer_group = sessionizer.app_id
        self._sessions_stop = asyncio.Event()
        # The sessionizer shares the store: it continues the sessions a previous generation left open,
        # and reloads the ones it evicted when they get a late turn.
        self.sessionizer = Sessionizer(sessionizer, self.store)
        self.tasks = [
            asyncio.create_task(self.sink.run(), name="tracehouse-sink"),
            asyncio.create_task(run_sessionizer(sessionizer, self._sessions_stop, sessionizer=self.sessionizer),
                                name="tracehouse-sessionizer"),
        ]

    async def wait_committed(self, offsets: Mapping[tuple[str, int], int], timeout_s: float | None) -> bool:
        """Read-your-writes for the gateway: the current generation's sink."""
        sink = self.sink
        return sink is not None and await sink.wait_committed(offsets, timeout_s)

    async def _caught_up(self, limit_s: float) -> bool:
        """Wait until the sink has committed everything the broker holds and nothing more arrives.

        The in-process SDK is flushed first (its events are acknowledged). Then the sink must report
        itself caught up without a break for :data:`QUIET_S`: its fetches long-poll for at most 0.5 s,
        so a record any producer (an app writing to the broker directly, too) got acknowledged meanwhile
        would have shown up. While producers keep writing it keeps draining, up to ``limit_s``."""
        import tracehouse.producers as sdk

        assert self.sink is not None
        await asyncio.to_thread(sdk.flush, 10.0)
        deadline = time.monotonic() + limit_s
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.sink.caught_up():
                quiet_since = quiet_since if quiet_since is not None else time.monotonic()
                if time.monotonic() - quiet_since >= QUIET_S:
                    return True
            else:
                quiet_since = None
            await asyncio.sleep(0.1)
        return False

    def _cut(self) -> dict[int, int] | None:
        """Set the cut on both processors and return it (``None`` while a partition's position is not
        known yet). No await here: neither processor moves between reading positions and the hold."""
        sink, worker = self.sink, self.sessionizer
        assert sink is not None
        assert worker is not None
        taken = sink.positions(self.topics.traces)
        if taken is None or len(taken) < self.options.partitions:
            return None
        folded = worker.positions()
        cut = {p: max(taken.get(p, 0), folded.get(p, 0)) for p in taken.keys() | folded.keys()}
        sink.hold({(self.topics.traces, p): o for p, o in cut.items()})
        worker.hold(cut)
        return cut

    async def _settle(self, deadline: float, quiet_s: float) -> bool:
        """Until the broker's end offsets of ``traces.v1`` (the sink's fetch high watermarks) have not
        moved for ``quiet_s``, or ``deadline`` (monotonic) passes: whether they settled."""
        sink = self.sink
        assert sink is not None
        last, since = sink.highwaters(self.topics.traces), time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            now = sink.highwaters(self.topics.traces)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return True
        return False

    async def stop_at_cut(self, limit_s: float, *, settle_s: float = SETTLE_S,
                          quiet_s: float = QUIET_S) -> tuple[bool, SinkStats | None]:  # fmt: skip
        """Drain to a cut (see the module docstring), stop both, mark the store consistent if drained.
        Falls back to :meth:`stop` while the sink has not pinned every partition yet. The broker may
        settle for up to ``settle_s`` first (``quiet_s`` without a new record)."""
        import tracehouse.producers as sdk

        sink, worker = self.sink, self.sessionizer
        if sink is None or worker is None:
            return False, None
        await asyncio.to_thread(sdk.flush, 10.0)  # this process's own events: acknowledged before the cut
        deadline = time.monotonic() + limit_s
        settled = await self._settle(min(deadline, time.monotonic() + settle_s), quiet_s)
        cut = await _poll(self._cut, deadline)
        if cut is None:
            return await self.stop(max(1.0, deadline - time.monotonic()))
        log.info("draining to the cut %s (offsets of %s%s)", dict(sorted(cut.items())), self.topics.traces,
                 "" if settled else f"; writes went on for {settle_s:.0f} s, what follows is re-sent by the SDKs")
        committed = sink.committed_offsets

        def reached() -> bool:
            done = committed()
            return worker.reached(cut) and all(done.get((self.topics.traces, p), 0) >= o for p, o in cut.items())

        # the sink's batches age 0.5 s; the sessionizer flushes each 0.5-1 s
        return await self.stop(max(1.0, deadline - time.monotonic()), reached=bool(await _poll(reached, deadline)))

    async def stop(self, limit_s: float, *, reached: bool | None = None) -> tuple[bool, SinkStats | None]:
        """Drain (see the module docstring), stop both, and mark the store consistent if drained.
        ``reached``: a cut was set, and reached or not (``stop_at_cut``); the traces need no drain."""
        from tracehouse.storage import StateTable

        sink = self.sink
        if sink is None:
            return False, None
        drained = reached if reached is not None else await self._caught_up(limit_s)
        self._sessions_stop.set()
        try:
            await asyncio.wait_for(self.tasks[1], limit_s)
        except Exception as exc:  # the store is reconciled at the next start
            log.warning("the sessionizer did not stop cleanly: %r", exc)
            drained = False
        drained = await self._caught_up(limit_s) and drained
        await sink.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self.tasks[0]
        if drained:  # sessions and rollups now equal the stored traces: nothing to reconcile next time
            await asyncio.to_thread(StateTable(self.store).mark_consistent)
        self.sink = self.sessionizer = None
        return drained, sink.stats()


async def _poll(check: Callable[[], T | None], deadline: float) -> T | None:
    """``check()`` every 50 ms until it returns something truthy or ``deadline`` (monotonic) passes;
    its last answer."""
    result = check()
    while not result and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        result = check()
    return result
