"""How the sessionizer's state is kept in its faust table (and so its changelog topic).

Keys are ``b"<partition>\\0<session id>"``, so a new owner of a source partition loads exactly that
partition's sessions; ``b"<partition>\\0"`` holds ``b"<watermark ms>:<folded offset>"`` and is also
the sentinel written alone after every flush (Tansu reports a partition's end offset as the base
offset of its last batch + 1; without the sentinel faust's recovery would stop short). Values are
msgpack-encoded :class:`SessionState`\\ s. Pure encoding: no I/O.
"""

from __future__ import annotations

from typing import Final

import msgspec

from ._session import SessionState

_state_encoder: Final = msgspec.msgpack.Encoder()
_state_decoder: Final = msgspec.msgpack.Decoder(SessionState)


def state_key(partition: int, session_id: str) -> bytes:
    """Changelog key of a session folded from ``partition``."""
    return b"%d\x00%s" % (partition, session_id.encode())


def watermark_key(partition: int) -> bytes:
    """Changelog key of a partition's watermark; also the sentinel written after every flush."""
    return b"%d\x00" % partition


def watermark_value(watermark_ms: int, folded_offset: int) -> bytes:
    return b"%d:%d" % (watermark_ms, folded_offset)


def parse_watermark(raw: bytes) -> tuple[int, int]:
    """``b"<watermark ms>:<folded offset>"`` (older values: the watermark alone)."""
    wm, _, offset = raw.partition(b":")
    return int(wm), int(offset) if offset else -1


def encode_state(state: SessionState) -> bytes:
    return _state_encoder.encode(state)


def decode_state(raw: bytes) -> SessionState:
    return _state_decoder.decode(raw)
