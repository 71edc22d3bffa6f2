"""Step *decode*: split one Kafka message into lines, validate each, append the rows to its partition's
batch and dead-letter what is refused.

Must not raise for bad input, must not drop a line silently, must not touch ClickHouse. Only a message
whose headers announce another format or envelope schema is dead-lettered whole; anything else is
judged line by line (a line that is too long, holds a raw NUL byte, is not UTF-8, does not decode or
validate, or has a schema version the sink does not read), and a refused line is dead-lettered alone
while the rest of its envelope flows on. A ``user_trace`` fact at or below its source partition's mark
was applied already (a sessionizer replay) and is skipped, counted.

The one exception: when the refusals pass the sink's :class:`~._dlq.RefusalLimit` (a stream the sink
cannot read), the batches held are dropped uncommitted and :class:`DeadLetterLimitExceeded` is raised,
which stops the sink.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

from tracehouse.schemas import (
    FORMAT_NDJSON,
    HEADER_FORMAT,
    HEADER_SCHEMA,
    SCHEMA_VERSION,
    UserTraceFact,
    split_envelope,
)

from ._batch import PartitionBatch, advance_mark
from ._dlq import WHOLE_MESSAGE, DeadLetter, limit_exceeded
from ._state import SinkState
from ._validate import Rejection, validate_line

_SCHEMA: bytes = str(SCHEMA_VERSION).encode()


def envelope_problem(value: bytes, headers: Any) -> str | None:
    """Why a message cannot be read as an envelope at all, by its headers (then it is dead-lettered
    whole). Its bytes are judged line by line."""
    for key, raw in headers or ():
        if key == HEADER_FORMAT and raw != FORMAT_NDJSON:
            return f"unsupported envelope format {raw!r} (expected {FORMAT_NDJSON!r})"
        if key == HEADER_SCHEMA and raw != _SCHEMA:
            return (
                f"unsupported schema version: the envelope's {HEADER_SCHEMA} header is {raw!r}, "
                f"this sink reads version {SCHEMA_VERSION}"
            )
    return None


async def decode_into(
    state: SinkState, batch: PartitionBatch, rec: Any, marks: dict[int, tuple[int, int]] | None = None
) -> None:
    """Decode the record ``rec`` into ``batch`` (``marks``: a rollups partition's applied positions)."""
    counts = state.counts
    value: bytes | None = rec.value
    counts["envelopes"] += 1
    if not value:
        return
    problem = envelope_problem(value, rec.headers)
    if problem is not None:
        await dead_letter(state, batch, rec, WHOLE_MESSAGE, value, problem)
        return
    max_bytes = state.config.max_event_bytes
    refusals = state.refusals
    taken = 0  # good lines since the last refusal, counted in one go
    for index, line in enumerate(split_envelope(value)):
        counts["lines"] += 1
        try:
            result = validate_line(line, max_bytes)
            if isinstance(result, Rejection):
                reason = result.reason
            elif isinstance(result, UserTraceFact) and marks is not None:
                taken += 1
                if not advance_mark(marks, result.src_partition, result.src_offset, result.src_line):
                    counts["replayed_facts_skipped"] += 1  # re-emitted by a sessionizer replay: applied already
                    continue
                batch.add_event(result)
                batch.marks[result.src_partition] = marks[result.src_partition]
                continue
            else:
                batch.add_event(result)
                taken += 1
                continue
        except Exception as exc:  # a bug or an unforeseen value: one line, not the stream
            reason = f"rejected while building rows: {exc!r}"
        refusals.good(taken)
        taken = 0
        await dead_letter(state, batch, rec, index, line, reason)
    refusals.good(taken)


async def dead_letter(state: SinkState, batch: PartitionBatch, rec: Any, line: int, raw: bytes, reason: str) -> None:
    """Hand one refused line (or whole message) to the dead-letter producer; the batch keeps its
    pending send, confirmed before the batch's offsets are committed. Stops the sink when the
    refusals pass its limit."""
    assert state.dlq is not None
    letter = DeadLetter(
        value=bytes(raw),
        reason=reason,
        origin_topic=rec.topic,
        origin_partition=rec.partition,
        origin_offset=rec.offset,
        origin_line=line,
        time_ms=int(time.time() * 1000),
        key=rec.key,
    )
    batch.dead_letters.append(await state.dlq.send(letter))
    state.counts["events_rejected"] += 1
    state.warnings.note(letter)
    tripped = state.refusals.refused(reason)
    if tripped is not None:
        halt(state, tripped, letter)


def halt(state: SinkState, why: str, letter: DeadLetter) -> NoReturn:
    """Stop the sink: drop every batch it holds uncommitted (their records are read again at the next
    start) and take nothing more from this run, then raise the reason."""
    committed = ", ".join(f"{t}[{p}] at {o}" for (t, p), o in sorted(state.committed.items())) or "none yet"
    for part in state.parts.values():
        part.batch = None
        part.lost = True  # neither the drain nor a revoke flushes or commits it now
    raise limit_exceeded(why, letter, state.config.dead_letter_topic, committed)
