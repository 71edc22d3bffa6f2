"""Opaque page tokens: URL-safe base64 (unpadded) of a small JSON document.

A token carries the sort key of the last row of the page it ends (keyset pagination: the next page
starts strictly after that key, so no row is skipped or repeated however deep the page) and a
fingerprint of the search it belongs to, so a token replayed against another filter, order_by or
scope is rejected instead of silently returning the wrong rows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Any, Final

import orjson

from tracehouse.schemas.errors import InvalidPageTokenError, InvalidParameterError

TOKEN_VERSION: Final = 1
#: Most rows one page of a search may hold; larger requests are capped (MLflow's server limit).
MAX_PAGE_SIZE: Final = 500

Scalar = int | str


def fingerprint(*parts: Any) -> str:
    """A short stable digest of the arguments that define a search."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def encode_page_token(key: Sequence[Scalar], search: str, **extra: Scalar) -> str:
    """A token resuming after sort key ``key`` of the search with fingerprint ``search``."""
    body = {"v": TOKEN_VERSION, "s": search, "k": list(key), **extra}
    return base64.urlsafe_b64encode(orjson.dumps(body)).decode("ascii").rstrip("=")


def decode_page_token(token: str, search: str, types: Sequence[type]) -> dict[str, Any]:
    """Validate ``token`` against the search fingerprint and key types; return its JSON body."""
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise InvalidPageTokenError("Invalid page token, could not base64-decode", token=token) from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidPageTokenError(f"Invalid page token, decoded value={raw!r}", token=token) from exc
    if not isinstance(body, dict) or body.get("v") != TOKEN_VERSION or not isinstance(body.get("k"), list):
        raise InvalidPageTokenError(f"Invalid page token, parsed value={body!r}", token=token)
    if body.get("s") != search:
        raise InvalidPageTokenError(
            "Invalid page token: it was issued for a different search (the filter, order_by or "
            "experiment ids changed since the first page)", token=token)
    key = body["k"]
    if len(key) != len(types) or not all(
        isinstance(v, t) and not isinstance(v, bool) for v, t in zip(key, types, strict=True)
    ):
        raise InvalidPageTokenError(f"Invalid page token, parsed value={body!r}", token=token)
    return body


def page_size(max_results: int | None, default: int = 100, cap: int = MAX_PAGE_SIZE) -> int:
    """Validate ``max_results`` (a positive integer) and cap it at ``cap`` rows per page."""
    if max_results is None:
        return min(default, cap)
    if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 1:
        raise InvalidParameterError(
            f"Invalid value {max_results!r} for parameter 'max_results' supplied. "
            "It must be a positive integer"
        )
    return min(max_results, cap)
