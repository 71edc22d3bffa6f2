"""tracehouse: track the users and sessions of GenAI applications at high volume.

``import tracehouse`` gives the tracing SDK (``@tracehouse.trace``, spans, the context API) and,
lazily, the query client (``tracehouse.TraceClient``). Importing starts nothing: no thread,
socket or file exists until the SDK publishes its first event or a client is created.

``tracehouse`` is one import package assembled from several source roots (``producers/``,
``schemas/``, ``processors/``, ``query/``); the line below lets each contribute its subpackage.
"""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)
