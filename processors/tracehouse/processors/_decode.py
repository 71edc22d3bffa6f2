"""Step *decode*: split one Kafka message into lines, validate each, append the rows to its partition's
batch and dead-letter what is refused.

Must not raise for bad input, must not drop a line silently, must not touch ClickHouse. A message that
is not NDJSON text is dead-lettered whole; a line that fails to decode or validate is dead-lettered
alone and the rest of its envelope flows on. A ``user_trace`` fact at or below its source partition's
mark was applied already (a sessionizer replay) and is skipped, counted.
"""

from __future__ import annotations

import time
from typing import Any

from tracehouse.schemas import FORMAT_NDJSON, HEADER_FORMAT, UserTraceFact, split_envelope

from ._batch import PartitionBatch, advance_mark
from ._dlq import WHOLE_MESSAGE, DeadLetter
from ._state import SinkState
from ._validate import Rejection, validate_line


def envelope_problem(value: bytes, headers: Any) -> str | None:
    """Why a message cannot be split into lines at all (then it is dead-lettered whole)."""
    for key, raw in headers or ():
        if key == HEADER_FORMAT and raw != FORMAT_NDJSON:
            return f"unsupported envelope format {raw!r} (expected {FORMAT_NDJSON!r})"
    if b"\x00" in value:
        return "binary message (contains NUL bytes), not an NDJSON envelope"
    if not value.isascii():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"message is not UTF-8 text: {exc}"
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
    for index, line in enumerate(split_envelope(value)):
        counts["lines"] += 1
        try:
            result = validate_line(line)
            if isinstance(result, Rejection):
                reason = result.reason
            elif isinstance(result, UserTraceFact) and marks is not None:
                if not advance_mark(marks, result.src_partition, result.src_offset, result.src_line):
                    counts["replayed_facts_skipped"] += 1  # re-emitted by a sessionizer replay: applied already
                    continue
                batch.add_event(result)
                batch.marks[result.src_partition] = marks[result.src_partition]
                continue
            else:
                batch.add_event(result)
                continue
        except Exception as exc:  # a bug or an unforeseen value: one line, not the stream
            reason = f"rejected while building rows: {exc!r}"
        await dead_letter(state, batch, rec, index, line, reason)


async def dead_letter(state: SinkState, batch: PartitionBatch, rec: Any, line: int, raw: bytes, reason: str) -> None:
    """Hand one refused line (or whole message) to the dead-letter producer; the batch keeps its
    pending send, confirmed before the batch's offsets are committed."""
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
