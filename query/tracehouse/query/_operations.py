"""One definition per read operation; the HTTP route, both clients and the CLI command are derived from it.

A read operation is a function ``fn(store, **params) -> result`` registered with :func:`read_operation`
next to its SQL. Its signature is the single description of its parameters: their names, types and
defaults, and (through ``Annotated[..., Param(...)]``) their help text and wire names. From it:

* the app serves ``method path`` (``GET`` parameters from the query string, ``POST`` from a JSON body,
  path parameters from ``{name}`` in the path), validating every value into a typed 400;
* :class:`~tracehouse.query.TraceClient` runs it in process (``fn(store, ...)``) or over HTTP (the
  same route), so both give the same result (``encode`` / ``decode`` are inverses);
* the app's CLI offers it as ``tracehouse <cli> [OPTIONS]``.

Adding an operation touches its module (the function and its SQL) and nothing else.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

from tracehouse.schemas.errors import InvalidRequest

R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])
Kind = Literal["str", "int", "float", "bool", "strs"]
Method = Literal["GET", "POST"]

_UNSET: Final[Any] = object()
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Param:
    """How one parameter of a read operation appears outside Python (``Annotated`` metadata)."""

    #: One line for the CLI's ``--help`` and the API reference.
    help: str = ""
    #: Its name on the wire (query string or JSON body); default: the parameter's name.
    wire: str | None = None
    #: Other wire names accepted (the first one present wins).
    aliases: tuple[str, ...] = ()
    #: Its CLI option name without dashes (default: the name with ``-``); ``""`` hides it.
    cli: str | None = None
    #: A positional CLI argument instead of an option.
    argument: bool = False
    #: The only values accepted (checked by the CLI; the operation checks them too).
    choices: tuple[str, ...] = ()
    #: The CLI's default when it differs from the function's.
    cli_default: Any = _UNSET
    #: Reads the value from a JSON body when the wire shape is not a plain value.
    read_body: Callable[[Mapping[str, Any]], Any] | None = None


@dataclass(frozen=True, slots=True)
class OperationField:
    """One parameter of an operation, resolved from the function's signature."""

    name: str
    kind: Kind
    optional: bool
    default: Any
    param: Param
    in_path: bool

    @property
    def wire(self) -> str:
        return self.param.wire or self.name

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    @property
    def cli_name(self) -> str:
        return self.param.cli if self.param.cli is not None else self.name.replace("_", "-")

    @property
    def hidden(self) -> bool:
        """Left out of the CLI (it still runs with :attr:`cli_default`)."""
        return self.param.cli == "" and not (self.in_path or self.param.argument)

    @property
    def cli_default(self) -> Any:
        """The CLI's default: ``Param.cli_default`` if given, else the function's (``None`` if required)."""
        if self.param.cli_default is not _UNSET:
            return self.param.cli_default
        return None if self.required else self.default


@dataclass(frozen=True, slots=True)
class ReadOperation(Generic[R]):
    """A registered read operation (see the module docstring)."""

    name: str
    method: Method
    path: str
    run: Callable[..., R]
    fields: tuple[OperationField, ...]
    #: The result as the HTTP response body, and back.
    encode: Callable[[R], dict[str, Any]]
    decode: Callable[[Mapping[str, Any]], R]
    #: The CLI command, or ``None`` for none.
    cli: str | None = None
    #: For a paged result: the attribute holding the page's items (``next_page_token`` continues).
    items: str | None = None
    summary: str = ""
    doc: str = ""

    def __call__(self, store: Any, /, **params: Any) -> R:
        return self.run(store, **params)

    @property
    def path_fields(self) -> tuple[OperationField, ...]:
        return tuple(f for f in self.fields if f.in_path)

    @property
    def route(self) -> str:
        """The path as a Starlette route (path parameters may hold ``/``)."""
        return re.sub(r"\{(\w+)\}", r"{\1:path}", self.path)

    # -- the server side ---------------------------------------------------------------------------

    def parse_query(self, path_params: Mapping[str, str], query: Any) -> dict[str, Any]:
        """Keyword arguments from a GET request (``query`` is a multi-dict with ``getlist``)."""
        out: dict[str, Any] = {}
        for f in self.fields:
            if f.in_path:
                out[f.name] = path_params[f.name]
                continue
            names = (f.wire, *f.param.aliases)
            if f.kind == "strs":
                values = next((v for n in names if (v := list(query.getlist(n)))), [])
                if values:
                    out[f.name] = [str(v) for v in values]
                continue
            text = next((v for n in names if (v := query.get(n))), None)
            if text is not None:
                out[f.name] = _from_text(f, text)
        return out

    def parse_body(self, path_params: Mapping[str, str], body: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments from a JSON request body."""
        out: dict[str, Any] = {}
        for f in self.fields:
            if f.in_path:
                out[f.name] = path_params[f.name]
                continue
            if f.param.read_body is not None:
                value = f.param.read_body(body)
            else:
                value = next((body[n] for n in (f.wire, *f.param.aliases) if body.get(n) not in (None, "")), None)
            if value is not None:
                out[f.name] = _from_json(f, value)
        return out

    # -- the HTTP client ---------------------------------------------------------------------------

    def request(self, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """``(path, payload)`` of a call: path parameters quoted into the path, the rest as query
        parameters (GET) or the JSON body (POST). ``None`` and empty values are left out."""
        from urllib.parse import quote

        path = self.path
        payload: dict[str, Any] = {}
        for f in self.fields:
            value = params.get(f.name)
            if f.in_path:
                path = path.replace("{" + f.name + "}", quote(str(value), safe=""))
                continue
            if value is None or value == [] or value == "":
                continue
            if self.method == "GET" and f.kind == "bool":
                value = "true" if value else "false"
            if f.kind == "strs":
                value = [value] if isinstance(value, str) else list(value)
            payload[f.wire] = value
        return path, payload


def _bad(f: OperationField, what: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"{f.wire} must be {what}, got {value!r}")


def _from_text(f: OperationField, text: str) -> Any:
    if f.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise _bad(f, "an integer", text) from None
    if f.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise _bad(f, "a number", text) from None
    if f.kind == "bool":
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise _bad(f, "true or false", text)
    return text


def _from_json(f: OperationField, value: Any) -> Any:
    if f.kind == "strs":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise _bad(f, "a list of strings", value)
    if f.kind == "bool":
        return bool(value)
    if f.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _bad(f, "an integer" if f.kind == "int" else "a number", value)
        return _from_text(f, str(value)) if isinstance(value, str) else (int(value) if f.kind == "int" else value)
    if not isinstance(value, str):
        raise InvalidRequest(f"{f.wire} must be a string, got {type(value).__name__}")
    return value


_KINDS: Final[dict[Any, Kind]] = {str: "str", int: "int", float: "float", bool: "bool"}


def _kind(annotation: Any, where: str) -> tuple[Kind, bool, Param]:
    """``(kind, optional, Param)`` of an annotation such as ``Annotated[list[str] | None, Param(...)]``."""
    param = Param()
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        param = next((e for e in extras if isinstance(e, Param)), param)
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            annotation = args[0]
        elif all(a is str or typing.get_origin(a) in (list, Sequence) for a in args):
            annotation = list[str]  # ``str | Sequence[str]``: one or several strings
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "str", optional, param
    if origin in (list, Sequence) or annotation in (list, Sequence):
        return "strs", optional, param
    if annotation in _KINDS:
        return _KINDS[annotation], optional, param
    raise TypeError(f"{where}: unsupported parameter type {annotation!r} for a read operation")


def _fields(fn: Callable[..., Any], path: str) -> tuple[OperationField, ...]:
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    params = list(signature.parameters.values())
    if not params or params[0].name != "store":
        raise TypeError(f"{fn.__qualname__}: a read operation takes the store first")
    in_path = set(re.findall(r"\{(\w+)\}", path))
    out = []
    for p in params[1:]:
        kind, optional, param = _kind(hints[p.name], f"{fn.__qualname__}({p.name})")
        out.append(OperationField(p.name, kind, optional, p.default, param, p.name in in_path))
    missing = in_path - {f.name for f in out}
    if missing:
        raise TypeError(f"{fn.__qualname__}: path {path!r} names {sorted(missing)}, which are not parameters")
    return tuple(out)


_REGISTRY: dict[str, ReadOperation[Any]] = {}


def _to_dict(result: Any) -> dict[str, Any]:
    out: dict[str, Any] = result.to_dict()
    return out


def read_operation(
    name: str,
    path: str,
    *,
    method: Method = "GET",
    cli: str | None = None,
    result: type[Any] | None = None,
    encode: Callable[[Any], dict[str, Any]] | None = None,
    decode: Callable[[Mapping[str, Any]], Any] | None = None,
    items: str | None = None,
    help: str | None = None,
) -> Callable[[F], F]:
    """Register the decorated ``fn(store, **params)`` as the read operation ``name`` served at
    ``method path``. The response body is ``encode(result)`` (default ``result.to_dict()``) and a client
    rebuilds the result with ``decode(body)`` (default ``result.from_dict(body)``). ``help`` is the
    one-line description (default: the docstring's first paragraph). The function itself is returned
    unchanged."""

    def register(fn: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"a read operation named {name!r} exists already")
        if decode is None and result is None:
            raise TypeError(f"{name}: give the result type or a decode function")
        doc = inspect.cleandoc(fn.__doc__ or "")
        _REGISTRY[name] = ReadOperation(
            name=name, method=method, path=path, run=fn, fields=_fields(fn, path),
            encode=encode or _to_dict,
            decode=decode or (lambda body: result.from_dict(body)),  # type: ignore[union-attr]
            cli=cli, items=items, summary=help or doc.split("\n\n")[0].replace("\n", " "), doc=doc,
        )  # fmt: skip
        return fn

    return register


def unregister(name: str) -> None:
    """Remove an operation (for tests that define one of their own)."""
    _REGISTRY.pop(name, None)


def operations() -> tuple[ReadOperation[Any], ...]:
    """Every registered read operation, in registration order."""
    return tuple(_REGISTRY.values())


def operation(name: str) -> ReadOperation[Any]:
    """The operation called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no read operation {name!r}; there are {', '.join(_REGISTRY)}") from None


def iterate(run: Callable[..., Any], op: ReadOperation[Any], params: Mapping[str, Any], page: int) -> Iterator[Any]:
    """Every item of a paged operation's result, page by page (lazily), following ``next_page_token``."""
    if op.items is None:
        raise TypeError(f"{op.name} is not paged")
    kwargs = {**params, "max_results": page}
    while True:
        result = run(op, **kwargs)
        yield from getattr(result, op.items)
        if not result.next_page_token:
            return
        kwargs["page_token"] = result.next_page_token


def collect(run: Callable[..., Any], op: ReadOperation[Any], params: Mapping[str, Any], limit: int | None,
            page: int) -> Any:  # fmt: skip
    """Follow ``next_page_token`` until ``limit`` items (``None``: all) of a paged operation's result are
    collected; returns the last page's result with every item collected so far in :attr:`items`."""
    if op.items is None:
        raise TypeError(f"{op.name} is not paged")
    kwargs = dict(params)
    gathered: list[Any] = []
    while True:
        want = page if limit is None else min(page, limit - len(gathered))
        result = run(op, **{**kwargs, "max_results": want})
        gathered.extend(getattr(result, op.items))
        token = result.next_page_token
        if not token or (limit is not None and len(gathered) >= limit):
            return dataclasses.replace(result, **{op.items: gathered})
        kwargs["page_token"] = token


#: Parameters most operations share, described once.
ExperimentIds = typing.Annotated[
    Sequence[str] | None,
    Param("Restrict to these experiments (repeatable).", wire="experiment_id", cli="experiment-id"),
]
PageToken = typing.Annotated[str | None, Param("Continue from a previous page.")]
PageSize = typing.Annotated[int, Param("How many results per page (at most 500).")]
OrderBy = typing.Annotated[str | Sequence[str] | None, Param("Sort keys with ASC/DESC (repeatable).")]
SinceMs = typing.Annotated[int | None, Param("From this time on (ms since the epoch).")]
UntilMs = typing.Annotated[int | None, Param("Before this time (ms since the epoch).")]
