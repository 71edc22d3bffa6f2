"""tracehouse: track the users and sessions of GenAI applications at high volume.

``import tracehouse`` gives the tracing SDK (``@tracehouse.trace``, spans, the context API) and,
lazily, the query client (``tracehouse.TraceClient``). Importing starts nothing: no thread,
socket or file exists until the SDK publishes its first event or a client is created.

``tracehouse`` is one import package assembled from several source roots, one per layer (``schemas/``,
``producers/``, ``storage/``, ``processors/``, ``query/``, ``app/``); the line below lets each
contribute its subpackages. No module of the package imports this one: it only hands names on.
"""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from typing import Any

import tracehouse.producers as _sdk
from tracehouse.producers import *  # noqa: F403  (the SDK's names are tracehouse's: tracehouse.producers.__all__)
from tracehouse.schemas.errors import TracehouseError

# The import spec lists every source root too, as the package's path does (tools such as grimp read it).
if __spec__ is not None and __spec__.submodule_search_locations is not None:
    __spec__.submodule_search_locations[:] = __path__

_LAZY_QUERY = ("TraceClient", "search_traces")


def __getattr__(name: str) -> Any:
    """``TraceClient`` and ``search_traces`` come from ``tracehouse.query``, imported on first use."""
    if name in _LAZY_QUERY:
        import importlib

        value = getattr(importlib.import_module("tracehouse.query"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tracehouse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_QUERY))


__all__ = [*_sdk.__all__, "TraceClient", "TracehouseError", "search_traces"]  # noqa: F405  (two of them lazy)
