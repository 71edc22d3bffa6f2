"""Turn a call's ``(args, kwargs)`` into ``{parameter: value}`` fast.

``inspect.Signature.bind`` costs microseconds per call; the parameter table here is computed once per
decorated function and binding is a short loop. Defaults are applied (as MLflow records them) and a
leading ``self`` / ``cls`` is left out. Anything unusual falls back to ``{"args": [...], "kwargs": {...}}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Final

_EMPTY: Final[Any] = inspect.Parameter.empty
_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Binder:
    """The parameter table of one function."""

    __slots__ = ("_kwonly", "_positional", "_skip", "_valid", "_var_kw", "_var_pos")

    def __init__(self, func: Callable[..., Any]) -> None:
        try:
            params = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):  # builtins and other callables without a signature
            self._valid = False
            self._positional: tuple[tuple[str, bool, Any], ...] = ()
            self._kwonly: tuple[tuple[str, Any], ...] = ()
            self._var_pos = self._var_kw = self._skip = None
            return
        self._valid = True
        self._positional = tuple(
            (p.name, p.kind is inspect.Parameter.POSITIONAL_ONLY, p.default)
            for p in params
            if p.kind in _POSITIONAL
        )
        self._kwonly = tuple((p.name, p.default) for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
        self._var_pos = next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
        self._var_kw = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        first = params[0] if params else None
        self._skip = (
            first.name
            if first is not None and first.kind in _POSITIONAL and first.name in ("self", "cls")
            else None
        )

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name (never raises for a mismatched call)."""
        if not self._valid:
            return _fallback(args, kwargs)
        positional = self._positional
        n = len(args)
        if n > len(positional) and self._var_pos is None:
            return _fallback(args, kwargs)
        out: dict[str, Any] = {}
        used = 0
        for i, (name, positional_only, default) in enumerate(positional):
            if i < n:
                out[name] = args[i]
            elif not positional_only and name in kwargs:
                out[name] = kwargs[name]
                used += 1
            elif default is not _EMPTY:
                out[name] = default
            else:
                return _fallback(args, kwargs)
        if self._var_pos is not None:
            out[self._var_pos] = args[len(positional) :]
        for name, default in self._kwonly:
            if name in kwargs:
                out[name] = kwargs[name]
                used += 1
            elif default is not _EMPTY:
                out[name] = default
            else:
                return _fallback(args, kwargs)
        if used < len(kwargs):
            if self._var_kw is None:
                return _fallback(args, kwargs)
            out[self._var_kw] = {k: v for k, v in kwargs.items() if k not in out}
        elif self._var_kw is not None:
            out[self._var_kw] = {}
        if self._skip is not None:
            out.pop(self._skip, None)
        return out


def _fallback(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"args": list(args), "kwargs": dict(kwargs)}
