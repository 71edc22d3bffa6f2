"""The typed methods :class:`~tracehouse.query.TraceReader` and :class:`~tracehouse.query.TraceClient`
share: shortcuts for the built-in read operations, written once over ``run(operation, **params)``.

A reader runs operations on its store, a client on a store or through a server; either way a method
here is one call of the operation that answers it. Operations added later are reached with ``run``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, cast

from ._analysis import SessionTimeline, UserSummary
from ._operations import ReadOperation
from ._sessions import SessionDetail, SessionPage
from ._users import SummarySource, UserDetail, UserPage, UserView


def listed(values: str | Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [values] if isinstance(values, str) else [str(v) for v in values]


class ReadMethods(ABC):
    """Typed shortcuts for the built-in read operations (see :mod:`tracehouse.query`)."""

    @abstractmethod
    def run(self, op: str | ReadOperation[Any], /, **params: Any) -> Any:
        """Run a read operation (by name or object) with ``params``."""

    def user_summary(self, user_id: str, experiment_ids: Sequence[str] | None = None,
                     source: SummarySource = "auto") -> UserSummary:  # fmt: skip
        """A user's interactions, unique sessions, response times and errors: from the per-user
        rollups (``source="rollups"``), from the raw traces (``"traces"``), or the rollups when the user
        has any (``"auto"``)."""
        view: UserView = self.run("user", user_id=user_id, experiment_ids=listed(experiment_ids), source=source)
        return view.user

    def get_user(self, user_id: str, experiment_ids: Sequence[str] | None = None, since: int | None = None,
                 until: int | None = None) -> UserDetail:  # fmt: skip
        """A user's rollup over the selected days and its daily buckets (``summary`` is ``None`` for a
        user without rollups)."""
        view: UserView = self.run("user", user_id=user_id, experiment_ids=listed(experiment_ids), since=since,
                                  until=until)  # fmt: skip
        return view.rollup

    def list_users(
        self,
        experiment_ids: Sequence[str] | None = None,
        since: int | None = None,
        until: int | None = None,
        order_by: str | Sequence[str] | None = None,
        max_results: int = 100,
        page_token: str | None = None,
    ) -> UserPage:
        """One page (at most 500) of users with their rollups, ordered by any rollup column (default
        ``interactions DESC``); see :func:`tracehouse.query.list_users`."""
        return cast("UserPage", self.run(
            "users", experiment_ids=listed(experiment_ids), since=since, until=until, order_by=listed(order_by),
            max_results=max_results, page_token=page_token,
        ))  # fmt: skip

    def list_sessions(
        self,
        user_id: str | None = None,
        experiment_ids: Sequence[str] | None = None,
        status: str | None = None,
        since: int | None = None,
        until: int | None = None,
        order_by: str | Sequence[str] | None = None,
        max_results: int = 100,
        page_token: str | None = None,
    ) -> SessionPage:
        """One page (at most 500) of sessions, the newest record of each; see
        :func:`tracehouse.query.list_sessions`."""
        return cast("SessionPage", self.run(
            "sessions", user_id=user_id, experiment_ids=listed(experiment_ids), status=status, since=since,
            until=until, order_by=listed(order_by), max_results=max_results, page_token=page_token,
        ))  # fmt: skip

    def get_session(self, session_id: str, page_token: str | None = None, max_results: int = 100,
                    experiment_ids: Sequence[str] | None = None) -> SessionDetail:  # fmt: skip
        """A session's stored summary (``None`` if not recorded), one page of its turns and its feedback
        counts; see :func:`tracehouse.query.get_session`."""
        return cast("SessionDetail", self.run("session", session_id=session_id, page_token=page_token,
                                              max_results=max_results, experiment_ids=listed(experiment_ids)))

    def session_timeline(self, session_id: str, experiment_ids: Sequence[str] | None = None,
                         page_token: str | None = None, max_results: int = 100) -> SessionTimeline:  # fmt: skip
        """A session's turns in order (turn number, time, duration, status), one page at a time."""
        return self.get_session(session_id, page_token, max_results, experiment_ids).timeline
