"""MLflow experiments: the records ``mlflow.set_experiment`` creates and reads.

Traces name their experiment by id; an experiment record only gives the id a name. Experiment
``"0"`` ("Default") always exists. A created experiment's id is derived from its name (a 63-bit
hash in decimal), so creating it is idempotent across servers with no coordination; an experiment
that was never created but has traces (the SDK logs to any id) is reported under its id as name.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tracehouse.schemas.errors import ExperimentExists

from ._store import Store

DEFAULT_EXPERIMENT_ID: Final = "0"
DEFAULT_EXPERIMENT_NAME: Final = "Default"
MAX_NAME: Final = 500
_COLUMNS: Final = ("experiment_id", "name", "artifact_location", "lifecycle_stage", "creation_time",
                   "last_update_time", "tags")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Experiment:
    experiment_id: str
    name: str
    artifact_location: str = ""
    lifecycle_stage: str = "active"
    creation_time: int = 0
    last_update_time: int = 0
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """MLflow's ``Experiment`` JSON."""
        d: dict[str, Any] = {
            "experiment_id": self.experiment_id,
            "name": self.name,
            "artifact_location": self.artifact_location or f"mlflow-artifacts:/{self.experiment_id}",
            "lifecycle_stage": self.lifecycle_stage,
            "creation_time": self.creation_time,
            "last_update_time": self.last_update_time,
        }
        if self.tags:
            d["tags"] = [{"key": k, "value": v} for k, v in self.tags.items()]
        return d


def experiment_id_for(name: str) -> str:
    """The id an experiment named ``name`` gets: never "0", stable across servers and restarts."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return str((int.from_bytes(digest, "big") >> 1) or 1)


def _row(r: tuple[Any, ...]) -> Experiment:
    return Experiment(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), int(r[5]), dict(r[6] or {}))


class Experiments:
    """Experiment records in ``store``. Blocking calls (run them off the event loop)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, experiment_id: str) -> Experiment | None:
        rows = self.store.query(
            f"SELECT {', '.join(_COLUMNS)} FROM experiments FINAL WHERE experiment_id = {{id:String}}",
            {"id": experiment_id},
        )
        if rows:
            return _row(rows[0])
        if experiment_id == DEFAULT_EXPERIMENT_ID:
            return Experiment(DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME)
        has_traces = self.store.query(
            "SELECT 1 FROM traces WHERE experiment_id = {id:String} LIMIT 1", {"id": experiment_id}
        )
        return Experiment(experiment_id, experiment_id) if has_traces else None

    def get_by_name(self, name: str) -> Experiment | None:
        rows = self.store.query(
            f"SELECT {', '.join(_COLUMNS)} FROM experiments FINAL WHERE name = {{name:String}} "
            "AND lifecycle_stage = 'active' ORDER BY creation_time LIMIT 1",
            {"name": name},
        )
        if rows:
            return _row(rows[0])
        return Experiment(DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME) if name == DEFAULT_EXPERIMENT_NAME else None

    def create(self, name: str, artifact_location: str = "", tags: Mapping[str, str] | None = None) -> Experiment:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("experiment name must be a non-empty string")
        if len(name) > MAX_NAME:
            raise ValueError(f"experiment name is {len(name)} characters; the limit is {MAX_NAME}")
        if self.get_by_name(name) is not None:
            raise ExperimentExists(f"Experiment '{name}' already exists.")
        now = int(time.time() * 1000)
        exp = Experiment(experiment_id_for(name), name, artifact_location, "active", now, now, dict(tags or {}))
        self.store.insert(
            "experiments",
            [(exp.experiment_id, exp.name, exp.artifact_location, exp.lifecycle_stage, now, now, exp.tags)],
            list(_COLUMNS),
        )
        return exp

    def search(self, max_results: int = 1000) -> list[Experiment]:
        rows = self.store.query(
            f"SELECT {', '.join(_COLUMNS)} FROM experiments FINAL WHERE lifecycle_stage = 'active' "
            "ORDER BY creation_time DESC LIMIT {n:UInt32}",
            {"n": max_results},
        )
        found = [_row(r) for r in rows]
        if all(e.experiment_id != DEFAULT_EXPERIMENT_ID for e in found):
            found.append(Experiment(DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME))
        return found
