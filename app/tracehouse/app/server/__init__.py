"""The HTTP server: tracehouse's JSON API and web UI, MLflow's trace REST API and OTLP/HTTP, over a
ClickHouse store and (for writes) an ingest gateway."""

from ._app import create_app
from ._auth import AuthConfig, AuthMiddleware

__all__ = ["AuthConfig", "AuthMiddleware", "create_app"]
