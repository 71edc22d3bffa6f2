"""The SDK's memory of acknowledged envelopes (``tracehouse.producers._replay``), without a broker: when
acknowledged offsets show a replaced broker, what is handed back to re-send, and the bounds of the ring.
The same on the real broker: tests/test_sdk_faults.py."""

from __future__ import annotations

import orjson

from tracehouse.producers._envelopes import build_batch, outgoing, repack
from tracehouse.producers._events import tag_set_event
from tracehouse.producers._replay import AckMemory, Outgoing
from tracehouse.schemas import split_envelope
from tracehouse.schemas.kafka import partition_for


def _env(partition: int, size: int = 10, count: int = 1) -> Outgoing:
    return Outgoing(partition, b"k", b"x" * size, count, 4)


def test_ack_memory_sees_offsets_going_back_and_hands_back_the_window() -> None:
    memory = AckMemory(window_s=30, max_bytes=1000)
    a, b, c = _env(0), _env(0), _env(1)
    assert memory.acknowledged([(a, 0)], now=0.0) is None
    assert memory.acknowledged([(b, 1), (c, 0)], now=10.0) is None
    d = _env(1)
    assert memory.acknowledged([(d, 1)], now=20.0) is None  # higher on partition 1: same broker
    late, fresh = _env(0), _env(1)
    # partition 0 continues (acknowledged by the old broker just before it went), partition 1 starts again
    replaced = memory.acknowledged([(late, 2), (fresh, 0)], now=35.0)
    assert replaced is not None
    assert (replaced.partition, replaced.highest_before, replaced.offset) == (1, 1, 0)
    assert replaced.resend == [b, c, d, late]  # a is older than the window; fresh is on the new broker
    assert all(o.replay for o in replaced.resend)
    assert not fresh.replay
    # the offsets are remembered afresh: the new broker's next offsets are no change
    assert memory.acknowledged([(_env(1), 1), (_env(0), 0)], now=36.0) is None


def test_ack_memory_equal_offset_is_a_new_broker_and_the_byte_cap_holds() -> None:
    memory = AckMemory(window_s=30, max_bytes=25)
    first, second, third = _env(2), _env(2), _env(2)
    memory.acknowledged([(first, 0)], now=0.0)
    memory.acknowledged([(second, 1), (third, 2)], now=1.0)
    assert memory.size == (2, 20)  # the oldest went to keep 25 bytes at most
    replaced = memory.acknowledged([(_env(2), 2)], now=2.0)  # offset 2 twice: not the same log
    assert replaced is not None
    assert replaced.resend == [second, third]
    assert AckMemory(window_s=0, max_bytes=10).acknowledged([(_env(0), 0)], now=0.0) is None


def test_envelopes_are_packed_again_for_a_topic_with_another_partition_count() -> None:
    """A replaced broker may have created the topic with another partition count: what is re-sent (or
    retried) goes where the events' keys map to now, every line kept once."""
    events = [tag_set_event(f"tr-{i:032x}", "k", "v") for i in range(200)]
    old = outgoing(build_batch(events, [0, 1, 2, 3], max_bytes=2048), partition_count=4)
    for out in old[::2]:
        out.replay = True
    new = repack(old, [0, 1, 2, 3, 4, 5], max_bytes=2048)
    assert sum(o.count for o in new) == 200
    assert sum(o.count for o in new if o.replay) == sum(o.count for o in old if o.replay)
    seen = []
    for out in new:
        assert out.partition_count == 6
        for line in split_envelope(out.value):
            trace_id = orjson.loads(line)["trace_id"]
            assert out.partition == partition_for(trace_id.encode(), [0, 1, 2, 3, 4, 5])
            seen.append(trace_id)
    assert sorted(seen) == sorted(e["trace_id"] for e in events)
    assert repack(old, [0, 1, 2, 3], max_bytes=2048) is old  # same count: unchanged


def test_a_fresh_partition_race_is_retried_and_a_refusal_is_not() -> None:
    """Tansu answers UNKNOWN_SERVER_ERROR when two produces race to write a fresh partition's first
    batch (seen at a new broker generation under load): the batch was not written, so the SDK sends it
    again. A refusal that will not pass (a message too large) is still final."""
    from aiokafka import errors

    from tracehouse.producers._publisher import _retriable

    assert _retriable(errors.UnknownError())
    assert _retriable(errors.KafkaConnectionError())
    assert not _retriable(errors.MessageSizeTooLargeError())
