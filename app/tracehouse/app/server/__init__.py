"""The HTTP server: tracehouse's JSON API and web UI, MLflow's trace REST API and OTLP/HTTP, over a
ClickHouse store and (for writes) an ingest gateway."""

from ._app import create_app
from ._auth import AuthConfig, AuthMiddleware
from ._status_route import STATUS_PATH

__all__ = ["STATUS_PATH", "AuthConfig", "AuthMiddleware", "create_app"]
