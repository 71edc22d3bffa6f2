"""``tracehouse status``: is the pipeline healthy, and if not, what is wrong.

One :class:`Status` gathers consumer lag per topic and partition for the sink and the sessionizer,
dead letters, the embedded broker's memory, the store's size and freshness, and the drops SDKs
report; :func:`collect` builds it and grades every check ``ok``, ``warn`` or ``fail`` by the
thresholds in :class:`Thresholds` (docs/reliability.md). The CLI, ``GET /api/tracehouse/v1/status``
and the web UI show the same object.
"""

from ._collect import BrokerProbe, KafkaTarget, collect
from ._model import Check, GroupLag, PartitionLag, Status, Thresholds

__all__ = [
    "BrokerProbe",
    "Check",
    "GroupLag",
    "KafkaTarget",
    "PartitionLag",
    "Status",
    "Thresholds",
    "collect",
]
