"""``@tracehouse.trace``: record a function call as a span (sync, async, generator, async generator).

The wrappers keep the hot path short: one flag check, a fast argument binding, a JSON-safe copy of the
inputs, a span object and a ContextVar set/reset. SDK failures are logged and swallowed; the user's
exceptions propagate unchanged.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextvars import Token
from typing import Any, ParamSpec, TypeVar, cast, overload

from tracehouse.schemas import SPAN_FUNCTION_NAME, SPAN_INPUTS, SPAN_OUTPUTS

from ._binding import Binder
from ._context import CURRENT_SPAN, deactivate
from ._record import LiveSpan, SpanType
from ._runtime import RUNTIME
from ._serialize import _limits, to_jsonable
from ._trace import open_span

P = ParamSpec("P")
R = TypeVar("R")

_log = logging.getLogger("tracehouse")


class _Info:
    """What the wrappers need about one decorated function, computed once."""

    __slots__ = ("attributes", "binder", "function_name", "name", "output_reducer", "span_type")

    def __init__(
        self,
        func: Callable[..., Any],
        name: str | None,
        span_type: str,
        attributes: Mapping[str, Any] | None,
        output_reducer: Callable[[list[Any]], Any] | None,
    ) -> None:
        self.function_name = str(getattr(func, "__name__", type(func).__name__))
        self.name = str(name) if name else self.function_name
        self.span_type = str(span_type)
        attrs = {str(k): to_jsonable(v) for k, v in (attributes or {}).items()}
        attrs[SPAN_FUNCTION_NAME] = self.function_name
        self.attributes = attrs
        self.binder = Binder(func)
        self.output_reducer = output_reducer


def _open(info: _Info, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LiveSpan | None:
    try:
        attributes = dict(info.attributes)
        attributes[SPAN_INPUTS] = to_jsonable(info.binder.bind(args, kwargs))
        config = RUNTIME.config or RUNTIME.ensure()
        return open_span(info.name, info.span_type, attributes, CURRENT_SPAN.get(), config.experiment_id)
    except Exception:
        _log.warning("tracehouse: could not start a span for %s", info.name, exc_info=True)
        return None


def _close_ok(span: LiveSpan, result: Any, converted: bool = False) -> None:
    try:
        if span.end_time_ns is None:
            span._attributes[SPAN_OUTPUTS] = result if converted else to_jsonable(result)
        span.end()
    except Exception:
        _log.warning("tracehouse: could not end span %s", span.name, exc_info=True)


def _close_error(span: LiveSpan, exc: BaseException) -> None:
    try:
        span.record_exception(exc)
        span.end()
    except Exception:
        _log.warning("tracehouse: could not end span %s", span.name, exc_info=True)


def _reset(token: Token[LiveSpan | None], span: LiveSpan) -> None:
    try:
        CURRENT_SPAN.reset(token)
    except (ValueError, RuntimeError):  # a token of another context, or already used
        deactivate(token, span)


class _Outputs:
    """The items a generator yielded: JSON-safe and capped, or raw for an ``output_reducer``."""

    __slots__ = ("items", "reducer", "total")

    def __init__(self, reducer: Callable[[list[Any]], Any] | None) -> None:
        self.items: list[Any] = []
        self.reducer = reducer
        self.total = 0

    def add(self, item: Any) -> None:
        self.total += 1
        if self.reducer is not None:
            self.items.append(item)
        elif len(self.items) < _limits.items:
            self.items.append(to_jsonable(item))

    def close(self, span: LiveSpan) -> None:
        """End ``span`` OK with the yielded items as its outputs."""
        if self.reducer is not None:
            try:
                reduced = self.reducer(self.items)
            except Exception:
                _log.warning("tracehouse: output_reducer raised; recording the raw items", exc_info=True)
                reduced = self.items
            _close_ok(span, reduced)
            return
        items = self.items
        if self.total > len(items):
            items = [*items, f"... {self.total - len(items)} more item(s)"]
        _close_ok(span, items, converted=True)


def _enabled() -> bool:
    enabled = RUNTIME.enabled
    if enabled is None:
        enabled = RUNTIME.ensure().enabled
    return enabled


def _wrap_function(func: Callable[P, R], info: _Info) -> Callable[P, R]:
    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        enabled = RUNTIME.enabled
        if enabled is None:
            enabled = _enabled()
        span = _open(info, args, kwargs) if enabled else None
        if span is None:
            return func(*args, **kwargs)
        token = CURRENT_SPAN.set(span)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _reset(token, span)
            _close_error(span, exc)
            raise
        _reset(token, span)
        _close_ok(span, result)
        return result

    return wrapper


def _wrap_coroutine(func: Callable[P, Any], info: _Info) -> Callable[P, Any]:
    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        span = _open(info, args, kwargs) if _enabled() else None
        if span is None:
            return await func(*args, **kwargs)
        token = CURRENT_SPAN.set(span)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            _reset(token, span)
            _close_error(span, exc)
            raise
        _reset(token, span)
        _close_ok(span, result)
        return result

    return wrapper


def _wrap_generator(func: Callable[P, Generator[Any, Any, Any]], info: _Info) -> Callable[P, Any]:
    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Generator[Any, Any, Any]:
        span = _open(info, args, kwargs) if _enabled() else None
        if span is None:
            return (yield from func(*args, **kwargs))
        outputs = _Outputs(info.output_reducer)
        token = CURRENT_SPAN.set(span)
        try:
            gen = func(*args, **kwargs)
        except BaseException as exc:
            _reset(token, span)
            _close_error(span, exc)
            raise
        _reset(token, span)
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            token = CURRENT_SPAN.set(span)
            try:
                if to_throw is None:
                    item = gen.send(to_send)
                else:
                    thrown, to_throw = to_throw, None
                    item = gen.throw(thrown)
            except StopIteration as stop:
                _reset(token, span)
                outputs.close(span)
                return stop.value
            except BaseException as exc:
                _reset(token, span)
                _close_error(span, exc)
                raise
            _reset(token, span)
            outputs.add(item)
            try:
                to_send = yield item
            except GeneratorExit:  # the consumer stopped early (break, close(), garbage collection)
                token = CURRENT_SPAN.set(span)
                try:
                    gen.close()
                finally:
                    _reset(token, span)
                    outputs.close(span)
                raise
            except BaseException as exc:  # thrown in by the consumer: forward it
                to_throw, to_send = exc, None

    return wrapper


def _wrap_async_generator(func: Callable[P, AsyncGenerator[Any, Any]], info: _Info) -> Callable[P, Any]:
    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Any, Any]:
        span = _open(info, args, kwargs) if _enabled() else None
        outputs = _Outputs(info.output_reducer)
        token = CURRENT_SPAN.set(span) if span is not None else None
        try:
            agen = func(*args, **kwargs)
        except BaseException as exc:
            if span is not None and token is not None:
                _reset(token, span)
                _close_error(span, exc)
            raise
        if span is not None and token is not None:
            _reset(token, span)
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            token = CURRENT_SPAN.set(span) if span is not None else None
            try:
                if to_throw is None:
                    item = await agen.asend(to_send)
                else:
                    thrown, to_throw = to_throw, None
                    item = await agen.athrow(thrown)
            except StopAsyncIteration:
                if span is not None and token is not None:
                    _reset(token, span)
                    outputs.close(span)
                return
            except BaseException as exc:
                if span is not None and token is not None:
                    _reset(token, span)
                    _close_error(span, exc)
                raise
            if span is not None and token is not None:
                _reset(token, span)
                outputs.add(item)
            try:
                to_send = yield item
            except GeneratorExit:
                token = CURRENT_SPAN.set(span) if span is not None else None
                try:
                    await agen.aclose()
                finally:
                    if span is not None and token is not None:
                        _reset(token, span)
                        outputs.close(span)
                raise
            except BaseException as exc:
                to_throw, to_send = exc, None

    return wrapper


@overload
def trace(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def trace(
    func: None = None,
    /,
    *,
    name: str | None = None,
    span_type: str = SpanType.UNKNOWN,
    attributes: Mapping[str, Any] | None = None,
    output_reducer: Callable[[list[Any]], Any] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def trace(
    func: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    span_type: str = SpanType.UNKNOWN,
    attributes: Mapping[str, Any] | None = None,
    output_reducer: Callable[[list[Any]], Any] | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Record each call of the decorated function as a span, like ``mlflow.trace``.

    Usable bare (``@tracehouse.trace``) or with options (``@tracehouse.trace(name=..., span_type=...,
    attributes=...)``) on sync and ``async`` functions, generators and async generators. The span
    records the start time and duration, the bound arguments (``self``/``cls`` excluded, defaults
    applied) as ``mlflow.spanInputs``, the return value as ``mlflow.spanOutputs`` (for generators: the
    list of yielded items, capped, or ``output_reducer(items)``), and status OK/ERROR; an exception
    adds an ``exception`` span event and is re-raised unchanged. A call outside any span starts a new
    trace; inside one it becomes a child span. Values are copied JSON-safe with size caps (see
    :class:`TracehouseConfig`). Tracing problems are logged, never raised.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        info = _Info(fn, name, span_type, attributes, output_reducer)
        if inspect.isasyncgenfunction(fn):
            return cast("Callable[P, R]", _wrap_async_generator(cast("Callable[P, Any]", fn), info))
        if inspect.iscoroutinefunction(fn):
            return cast("Callable[P, R]", _wrap_coroutine(fn, info))
        if inspect.isgeneratorfunction(fn):
            return cast("Callable[P, R]", _wrap_generator(cast("Callable[P, Any]", fn), info))
        return _wrap_function(fn, info)

    if func is None:
        return decorate
    return decorate(func)
