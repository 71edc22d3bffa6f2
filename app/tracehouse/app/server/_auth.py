"""Optional authentication for the HTTP app: one shared token.

Off unless a token is configured (``--auth-token`` / ``TRACEHOUSE_AUTH_TOKEN``). With a token, every
request except ``/health`` needs ``Authorization: Bearer <token>`` (what the MLflow client sends from
``MLFLOW_TRACKING_TOKEN``) or Basic auth whose password is the token (what it sends from
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``); if a username is configured too, Basic
auth must use it. Anything else gets a 401 with an MLflow error body.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from tracehouse.schemas import settings as s

_OPEN_PATHS: Final = frozenset({"/health"})


@dataclass(frozen=True, slots=True)
class AuthConfig:
    token: str | None = None
    username: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    @classmethod
    def resolve(
        cls, token: str | None = None, username: str | None = None, env: Mapping[str, str] | None = None
    ) -> AuthConfig:
        """Explicit argument > environment > off."""
        return cls(token=s.AUTH_TOKEN.read(token, env), username=s.AUTH_USERNAME.read(username, env))

    def allows(self, authorization: str | None) -> bool:
        if not self.token:
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == "bearer":
            return hmac.compare_digest(credentials.encode(), self.token.encode())
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            user_ok = self.username is None or hmac.compare_digest(user.encode(), self.username.encode())
            return hmac.compare_digest(password.encode(), self.token.encode()) and user_ok
        return False


class AuthMiddleware:
    """Pure ASGI middleware (no buffering, works for every route)."""

    def __init__(self, app: Any, config: AuthConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.config.enabled or scope.get("path") in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        if self.config.allows(header):
            await self.app(scope, receive, send)
            return
        message = "missing credentials" if header is None else "invalid credentials"
        body = orjson.dumps({"error_code": "UNAUTHENTICATED",
                             "message": f"{message}: send 'Authorization: Bearer <token>' or Basic auth"})  # fmt: skip
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Basic realm="tracehouse", charset="UTF-8"'),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
