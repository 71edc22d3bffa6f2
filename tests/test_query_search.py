"""TraceReader on the real chDB engine against an independent Python oracle.

A seeded workload (traces over users, sessions, states, tags, metadata, spans and assessments, plus
later tag changes/deletes, assessments and replayed duplicates) is written through RowBatch and
write_batch, the sink's path. Every operator and entity of the grammar is then checked against the
set the oracle computes from the generated events, and paging against the oracle's order.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracehouse.query import (
    InvalidFilterError,
    InvalidPageTokenError,
    InvalidParameterError,
    Trace,
    TraceReader,
    TraceState,
    collect_traces,
    traces_to_dataframe,
)
from tracehouse.schemas import (
    AssessmentEvent,
    AssessmentSource,
    Event,
    Span,
    SpanEvent,
    TagDeleteEvent,
    TagSetEvent,
    TraceEvent,
    resolve_identity,
)
from tracehouse.storage import RowBatch, Store, migrate, write_batch

SEED = 20261122
N_TRACES = 520
BASE_MS = 1_795_000_000_000
TRACE_NAME = "mlflow.traceName"
USERS = [f"user-{i:02d}" for i in range(10)]
PROMPTS = [
    orjson.dumps([{"name": "qa", "version": "1"}]).decode(),
    orjson.dumps([{"name": "summarizer", "version": 2}, {"name": "qa", "version": "3"}]).decode(),
]
CHILDREN = {"retrieve": "RETRIEVER", "vector_search": "RETRIEVER", "llm": "LLM", "tool_call": "TOOL"}


@dataclass
class Model:
    """What the oracle knows about one trace."""

    event: TraceEvent
    metadata: dict[str, str]
    tags: dict[str, str]
    assessments: list[AssessmentEvent] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.event.trace_id

    @property
    def ts(self) -> int:
        return self.event.timestamp_ms

    @property
    def ms(self) -> int:
        return self.event.execution_time_ms


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _spans(rng: random.Random, i: int, ts: int, state: str, identity: dict[str, str]) -> list[Span]:
    start = ts * 1_000_000
    root_id = _hex(rng, 64)
    word = rng.choice(["refund", "shipping", "boomerang", "invoice", "hello"])
    spans = [Span(
        span_id=root_id, name=rng.choice(["chat", "chat_v2", "answer", "Summarize"]), start_time_ns=start,
        end_time_ns=start + 5_000_000, span_type="CHAIN",
        attributes={"mlflow.spanInputs": {"message": f"{word} {i}"}, "mlflow.spanOutputs": f"answer {word}",
                    **identity},
    )]
    for j in range(rng.randrange(0, 4)):
        name = rng.choice(list(CHILDREN))
        failed = (state == "ERROR" and name == "llm") or rng.random() < 0.05
        attributes: dict[str, Any] = {"k": rng.randrange(1, 5), "flag": rng.random() < 0.5,
                                      "temperature": rng.choice([0.2, 0.7])}
        if name == "llm":
            attributes["model"] = rng.choice(["gpt-4o", "claude-3"])
        spans.append(Span(
            span_id=_hex(rng, 64), parent_span_id=root_id, name=name, span_type=CHILDREN[name],
            start_time_ns=start + j, end_time_ns=start + j + 1000, status="ERROR" if failed else "OK",
            status_message="ValueError: boom" if failed else "", attributes=attributes,
            events=[SpanEvent("exception", start + j, {"exception.message": "boom: simulated failure",
                                                       "exception.type": "ValueError"})] if failed else [],
        ))
    return spans


def build_workload(seed: int = SEED) -> tuple[list[Event], list[Event], dict[str, Model]]:
    """(events, replayed duplicates, oracle models by trace id)."""
    rng = random.Random(seed)
    events: list[Event] = []
    models: dict[str, Model] = {}
    ts = BASE_MS
    for i in range(N_TRACES):
        if i % 7:  # every 7th trace shares the previous timestamp: ties for the tie-breakers
            ts = BASE_MS + rng.randrange(0, 3_000_000) * 1000
        state = rng.choices(["OK", "ERROR", "IN_PROGRESS"], [75, 20, 5])[0]
        user = rng.choice([*USERS, None])
        session = f"s-{user}-{rng.randrange(3)}" if user and rng.random() < 0.85 else None
        mode = rng.choice(["metadata", "metadata", "root", "alias"])
        metadata = {"mlflow.trace_schema.version": "3"}
        identity: dict[str, str] = {}
        if mode == "metadata":
            pairs = (("mlflow.trace.user", user), ("mlflow.trace.session", session))
            metadata.update({k: v for k, v in pairs if v})
        elif mode == "alias":
            metadata.update({k: v for k, v in (("user.id", user), ("session.id", session)) if v})
        else:
            identity = {k: v for k, v in (("user.id", user), ("session.id", session)) if v}
        for key, choices in (("team", ["alpha", "beta", "Gamma", "alpha beta", None]),
                             ("mlflow.sourceRun", ["run-1", "run-2", None, None]),
                             ("mlflow.issue.id", ["ISSUE-1", None, None, None, None])):
            if (value := rng.choice(choices)) is not None:
                metadata[key] = value
        tags = {}
        for key, choices in (("env", ["prod", "staging", "dev", None]), ("priority", ["high", "low", None]),
                             ("my key", ["x y", None, None]),
                             ("mlflow.linkedPrompts", [*PROMPTS, None, None]),
                             ("mlflow.issue.id", ["ISSUE-1", "ISSUE-2", None, None, None, None])):
            if (value := rng.choice(choices)) is not None:
                tags[key] = value
        spans = _spans(rng, i, ts, state, identity)
        event = TraceEvent(
            trace_id="tr-" + _hex(rng, 128), timestamp_ms=ts, execution_time_ms=rng.randrange(1, 5000),
            state=state, experiment_id=rng.choice(["0", "0", "1", "2"]),  # type: ignore[arg-type]
            client_request_id=f"req-{i}" if rng.random() < 0.7 else None,
            request_preview=f"q{i}", response_preview=f"a{i}", metadata=metadata, tags=tags, spans=spans,
        )
        events.append(event)
        user_id, session_id = resolve_identity(metadata, spans[0].attributes)
        effective = dict(metadata)
        if user_id:
            effective["mlflow.trace.user"] = user_id
        if session_id:
            effective["mlflow.trace.session"] = session_id
        models[event.trace_id] = Model(event, effective, {**tags, TRACE_NAME: spans[0].name})

    later: list[Event] = []
    for m in models.values():
        version = m.ts * 1_000_000
        if rng.random() < 0.2:
            later.append(TagSetEvent(trace_id=m.id, key="env", value="canary", timestamp_ns=version + 10))
            m.tags["env"] = "canary"
        if rng.random() < 0.1:
            later.append(TagDeleteEvent(trace_id=m.id, key="env", timestamp_ns=version + 20))
            m.tags.pop("env", None)
            if rng.random() < 0.3:
                later.append(TagSetEvent(trace_id=m.id, key="env", value="revived",
                                         timestamp_ns=version + 30))
                m.tags["env"] = "revived"
        specs: list[tuple[str, str, Any]] = []
        if rng.random() < 0.6:
            specs.append(("feedback", "thumbs", rng.random() < 0.6))
        if rng.random() < 0.5:
            specs.append(("feedback", "score", round(rng.random(), 2)))
        if rng.random() < 0.3:
            specs.append(("feedback", "label", rng.choice(["good", "bad", "Great"])))
        if rng.random() < 0.2:
            specs.append(("expectation", "expected", rng.choice(["answer A", "answer B", "other"])))
        if rng.random() < 0.1:
            specs.append(("feedback", "thumbs", rng.random() < 0.5))  # a second opinion
        for kind, name, value in specs:
            a = AssessmentEvent(
                assessment_id="a-" + _hex(rng, 128), trace_id=m.id, name=name,
                kind=kind,  # type: ignore[arg-type]
                value=value, create_time_ms=m.ts + rng.randrange(1, 10_000), valid=rng.random() > 0.1,
                source=AssessmentSource(source_type="HUMAN", source_id="rater"), rationale="because",
            )
            later.append(a)
            m.assessments.append(a)
    events.extend(later)
    duplicates = [e for e in events if rng.random() < 0.3]
    return events, duplicates, models


EVENTS, DUPLICATES, MODELS = build_workload()
EXPS = ["0", "1", "2"]  # the workload's experiments (the fuzz test adds traces to others)
ALL = list(MODELS.values())


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TraceReader]:
    store = Store(f"chdb://{tmp_path_factory.mktemp('query-search') / 'chdb'}")
    migrate(store)
    batch = RowBatch()
    for e in EVENTS:
        batch.add(e)
    write_batch(store, batch, token="workload")
    replay = RowBatch()
    for e in DUPLICATES:
        replay.add(e)
    write_batch(store, replay, token="replay-with-another-token")
    try:
        yield TraceReader(store)
    finally:
        store.close()


# ---- the oracle -----------------------------------------------------------------------------------

def like(value: str | None, pattern: str, ci: bool = False) -> bool:
    if value is None:
        return False
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.S | (re.I if ci else 0)) is not None


def rlike(value: str | None, pattern: str) -> bool:
    return value is not None and re.search(pattern, value) is not None


def json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


def value_text(value: Any) -> str:
    return value if isinstance(value, str) else json_text(value)


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def span_content(s: Span) -> str:
    attrs = "\n".join(f"{k}: {json_text(v)}" for k, v in s.attributes.items())
    events = json_text([{"name": e.name, "timestamp_ns": e.timestamp_ns, "attributes": e.attributes}
                        for e in s.events]) if s.events else "[]"
    return f"{s.name}\n{s.span_type}\n{s.status_message}\n{attrs}\n{events}"


def any_span(m: Model, pred: Callable[[Span], bool]) -> bool:
    return any(pred(s) for s in m.event.spans)


def spans_where(pred: Callable[[Span], bool]) -> Callable[[Model], bool]:
    return lambda m: any(pred(s) for s in m.event.spans)


def assessed(kind: str, name: str, pred: Callable[[str], bool]) -> Callable[[Model], bool]:
    return lambda m: any(pred(v) for v in valid(m, kind, name))


def attr(s: Span, key: str) -> str | None:
    return value_text(s.attributes[key]) if key in s.attributes else None


def valid(m: Model, kind: str, name: str) -> list[str]:
    return [value_text(a.value) for a in m.assessments if a.kind == kind and a.name == name and a.valid]


def fb_num(m: Model, name: str, op: Callable[[float], bool]) -> bool:
    return any((n := number(v)) is not None and op(n) for v in valid(m, "feedback", name))


def prompts(m: Model) -> set[str]:
    raw = m.tags.get("mlflow.linkedPrompts")
    return {f"{p['name']}/{p['version']}" for p in orjson.loads(raw)} if raw else set()


TIMES = sorted(m.ts for m in ALL)
MID = TIMES[len(TIMES) // 2]
TIE = next(m.ts for m in ALL[7:] if sum(x.ts == m.ts for x in ALL) > 1)
ID0, ID1 = ALL[0].id, ALL[1].id
CRID = next(m.event.client_request_id for m in ALL[5:] if m.event.client_request_id)
END = sorted(m.ts + m.ms for m in ALL)[len(ALL) // 3]
MD = "mlflow.trace.user"
SD = "mlflow.trace.session"

CASES: list[tuple[str, Callable[[Model], bool]]] = [
    # numeric attributes and their aliases, quoted and float values
    (f"timestamp_ms > {MID}", lambda m: m.ts > MID),
    (f"trace.timestamp >= {MID}", lambda m: m.ts >= MID),
    (f"timestamp_ms = {TIE}", lambda m: m.ts == TIE),
    (f"attributes.timestamp_ms != {TIE}", lambda m: m.ts != TIE),
    (f"timestamp_ms < '{MID}'", lambda m: m.ts < MID),
    (f"timestamp <= {MID}.5", lambda m: m.ts <= MID + 0.5),
    ("execution_time_ms > 2500", lambda m: m.ms > 2500),
    ("trace.execution_time <= 100", lambda m: m.ms <= 100),
    (f"end_time_ms > {END}", lambda m: m.ts + m.ms > END),
    (f"trace.end_time < {END}", lambda m: m.ts + m.ms < END),
    # status
    ("status = 'ERROR'", lambda m: m.event.state == "ERROR"),
    ("attributes.status != 'OK'", lambda m: m.event.state != "OK"),
    ("status IN ('OK', 'IN_PROGRESS')", lambda m: m.event.state in ("OK", "IN_PROGRESS")),
    ("trace.status NOT IN ('OK')", lambda m: m.event.state != "OK"),
    ("status LIKE 'E%'", lambda m: like(m.event.state, "E%")),
    ("status ILIKE 'in_%'", lambda m: like(m.event.state, "in_%", ci=True)),
    ("status RLIKE '^(OK|IN)'", lambda m: rlike(m.event.state, "^(OK|IN)")),
    ("status in ('ERROR')", lambda m: m.event.state == "ERROR"),
    # request_id / client_request_id
    (f"request_id = '{ID0}'", lambda m: m.id == ID0),
    (f"request_id != '{ID0}'", lambda m: m.id != ID0),
    (f"trace.request_id IN ('{ID0}', '{ID1}', 'tr-nope')", lambda m: m.id in (ID0, ID1)),
    (f"request_id NOT IN ('{ID0}')", lambda m: m.id != ID0),
    ("request_id LIKE 'tr-0%'", lambda m: like(m.id, "tr-0%")),
    ("request_id RLIKE '[0-3]$'", lambda m: rlike(m.id, "[0-3]$")),
    (f"client_request_id = '{CRID}'", lambda m: m.event.client_request_id == CRID),
    (f"client_request_id != '{CRID}'", lambda m: m.event.client_request_id not in (None, CRID)),
    ("client_request_id LIKE 'req-1%'", lambda m: like(m.event.client_request_id, "req-1%")),
    ("client_request_id ILIKE 'REQ-2_'", lambda m: like(m.event.client_request_id, "REQ-2_", ci=True)),
    ("client_request_id IN ('req-1', 'req-2')", lambda m: m.event.client_request_id in ("req-1", "req-2")),
    ("client_request_id NOT IN ('req-1')", lambda m: m.event.client_request_id not in (None, "req-1")),
    ("client_request_id RLIKE '^req-[0-9]$'", lambda m: rlike(m.event.client_request_id, "^req-[0-9]$")),
    # name (tag mlflow.traceName), run_id (metadata mlflow.sourceRun), text, prompt
    ("name = 'chat'", lambda m: m.tags.get(TRACE_NAME) == "chat"),
    ("attributes.name != 'chat'", lambda m: m.tags.get(TRACE_NAME, "chat") != "chat"),
    ("name LIKE 'chat%'", lambda m: like(m.tags.get(TRACE_NAME), "chat%")),
    ("name ILIKE 'summ%'", lambda m: like(m.tags.get(TRACE_NAME), "summ%", ci=True)),
    ("name RLIKE '_v2$'", lambda m: rlike(m.tags.get(TRACE_NAME), "_v2$")),
    ("trace.name IS NOT NULL", lambda m: TRACE_NAME in m.tags),
    ("run_id = 'run-1'", lambda m: m.metadata.get("mlflow.sourceRun") == "run-1"),
    ("run_id IS NULL", lambda m: "mlflow.sourceRun" not in m.metadata),
    ("run_id LIKE 'run-%'", lambda m: like(m.metadata.get("mlflow.sourceRun"), "run-%")),
    ("trace.text LIKE '%boom%'", spans_where(lambda s: like(span_content(s), "%boom%"))),
    ("text ILIKE '%BOOMERANG%'", spans_where(lambda s: like(span_content(s), "%BOOMERANG%", True))),
    ("prompt = 'qa/1'", lambda m: "qa/1" in prompts(m)),
    ("prompt = 'summarizer/2'", lambda m: "summarizer/2" in prompts(m)),
    ("prompt = 'qa/3'", lambda m: "qa/3" in prompts(m)),
    # tags: current values (later sets win, deletes vanish)
    ("tags.env = 'prod'", lambda m: m.tags.get("env") == "prod"),
    ("tag.env != 'prod'", lambda m: m.tags.get("env", "prod") != "prod"),
    ("tags.env LIKE 'pro%'", lambda m: like(m.tags.get("env"), "pro%")),
    ("tags.env ILIKE 'PROD'", lambda m: like(m.tags.get("env"), "PROD", ci=True)),
    ("tags.env RLIKE '^(dev|canary)$'", lambda m: rlike(m.tags.get("env"), "^(dev|canary)$")),
    ("tags.env IS NULL", lambda m: "env" not in m.tags),
    ("tags.env IS NOT NULL", lambda m: "env" in m.tags),
    ("tags.env = 'revived'", lambda m: m.tags.get("env") == "revived"),
    ("tags.`my key` = 'x y'", lambda m: m.tags.get("my key") == "x y"),
    ("tags.env like 'd%'", lambda m: like(m.tags.get("env"), "d%")),
    ("tags.priority = 'high' AND tags.env = 'prod'",
     lambda m: m.tags.get("priority") == "high" and m.tags.get("env") == "prod"),
    ("tags.`mlflow.traceName` = 'answer'", lambda m: m.tags.get(TRACE_NAME) == "answer"),
    ("tags.mlflow.traceName = 'answer'", lambda m: m.tags.get(TRACE_NAME) == "answer"),
    # metadata, with the promoted identity keys
    ("metadata.team = 'alpha'", lambda m: m.metadata.get("team") == "alpha"),
    ("metadata.team != 'alpha'", lambda m: m.metadata.get("team", "alpha") != "alpha"),
    ("request_metadata.team LIKE 'alpha%'", lambda m: like(m.metadata.get("team"), "alpha%")),
    ("metadata.team ILIKE 'gamma'", lambda m: like(m.metadata.get("team"), "gamma", ci=True)),
    ("metadata.team RLIKE ' '", lambda m: rlike(m.metadata.get("team"), " ")),
    ("metadata.team IS NULL", lambda m: "team" not in m.metadata),
    ("metadata.team IS NOT NULL", lambda m: "team" in m.metadata),
    (f"metadata.`{MD}` = 'user-03'", lambda m: m.metadata.get(MD) == "user-03"),
    (f'metadata.{MD} = "user-03"', lambda m: m.metadata.get(MD) == "user-03"),
    (f"metadata.`{MD}` != 'user-03'", lambda m: m.metadata.get(MD, "user-03") != "user-03"),
    (f"metadata.`{MD}` IS NULL", lambda m: MD not in m.metadata),
    (f"metadata.`{SD}` IS NOT NULL", lambda m: SD in m.metadata),
    (f"metadata.`{SD}` LIKE 's-user-01-%'", lambda m: like(m.metadata.get(SD), "s-user-01-%")),
    (f"metadata.`{MD}` ILIKE 'USER-0_'", lambda m: like(m.metadata.get(MD), "USER-0_", ci=True)),
    (f"metadata.`{MD}` RLIKE '[12]$'", lambda m: rlike(m.metadata.get(MD), "[12]$")),
    (f"metadata.`{MD}` = 'user-03' AND metadata.`{SD}` = 's-user-03-1'",
     lambda m: m.metadata.get(MD) == "user-03" and m.metadata.get(SD) == "s-user-03-1"),
    # spans: a trace matches when any span matches
    ("span.name = 'vector_search'", spans_where(lambda s: s.name == "vector_search")),
    ("span.name != 'chat'", spans_where(lambda s: s.name != "chat")),
    ("span.name IN ('llm', 'tool_call')", spans_where(lambda s: s.name in ("llm", "tool_call"))),
    ("span.name NOT IN ('chat', 'chat_v2', 'answer', 'Summarize')",
     spans_where(lambda s: s.name not in ("chat", "chat_v2", "answer", "Summarize"))),
    ("span.name LIKE 'vec%'", spans_where(lambda s: like(s.name, "vec%"))),
    ("span.name ILIKE 'SUMM%'", spans_where(lambda s: like(s.name, "SUMM%", True))),
    ("span.name RLIKE '^t'", spans_where(lambda s: rlike(s.name, "^t"))),
    ("span.type = 'LLM'", spans_where(lambda s: s.span_type == "LLM")),
    ("span.type IN ('TOOL', 'RETRIEVER')", spans_where(lambda s: s.span_type in ("TOOL", "RETRIEVER"))),
    ("span.status = 'ERROR'", spans_where(lambda s: s.status == "ERROR")),
    ("span.status = 'STATUS_CODE_ERROR'", spans_where(lambda s: s.status == "ERROR")),
    ("span.status != 'OK'", spans_where(lambda s: s.status != "OK")),
    ("span.attributes.model = 'gpt-4o'", spans_where(lambda s: attr(s, "model") == "gpt-4o")),
    ("span.attributes.model != 'gpt-4o'", spans_where(lambda s: attr(s, "model") not in (None, "gpt-4o"))),
    ("span.attributes.model IN ('claude-3')", spans_where(lambda s: attr(s, "model") == "claude-3")),
    ("span.attributes.model NOT IN ('gpt-4o')",
     spans_where(lambda s: attr(s, "model") not in (None, "gpt-4o"))),
    ("span.attributes.model ILIKE 'GPT%'", spans_where(lambda s: like(attr(s, "model"), "GPT%", True))),
    ("span.attributes.model RLIKE 'claude'", spans_where(lambda s: rlike(attr(s, "model"), "claude"))),
    ("span.attributes.k = '3'", spans_where(lambda s: attr(s, "k") == "3")),
    ("span.attributes.flag = 'true'", spans_where(lambda s: attr(s, "flag") == "true")),
    ("span.attributes.temperature LIKE '0.7%'", spans_where(lambda s: like(attr(s, "temperature"), "0.7%"))),
    ("span.attributes.`mlflow.spanInputs` LIKE '%\"message\":\"refund%'",
     spans_where(lambda s: like(attr(s, "mlflow.spanInputs"), '%"message":"refund%'))),
    ("span.content LIKE '%vector%'", spans_where(lambda s: like(span_content(s), "%vector%"))),
    ("span.content ILIKE '%VALUEERROR%'", spans_where(lambda s: like(span_content(s), "%VALUEERROR%", True))),
    # feedback / expectation: valid assessments only
    ("feedback.thumbs = 'true'", lambda m: "true" in valid(m, "feedback", "thumbs")),
    ("feedback.thumbs != 'true'", lambda m: any(v != "true" for v in valid(m, "feedback", "thumbs"))),
    ("feedback.`thumbs` = 'false'", lambda m: "false" in valid(m, "feedback", "thumbs")),
    ("feedback.score > 0.5", lambda m: fb_num(m, "score", lambda x: x > 0.5)),
    ("feedback.score >= 0.5", lambda m: fb_num(m, "score", lambda x: x >= 0.5)),
    ("feedback.score < 0.25", lambda m: fb_num(m, "score", lambda x: x < 0.25)),
    ("feedback.score <= 0.25", lambda m: fb_num(m, "score", lambda x: x <= 0.25)),
    ("feedback.label LIKE 'g%'", assessed("feedback", "label", lambda v: like(v, "g%"))),
    ("feedback.label like 'G%'", assessed("feedback", "label", lambda v: like(v, "G%"))),
    ("feedback.label ILIKE 'great'", assessed("feedback", "label", lambda v: like(v, "great", True))),
    ("feedback.label RLIKE '^(bad|good)$'",
     assessed("feedback", "label", lambda v: rlike(v, "^(bad|good)$"))),
    ("feedback.label IS NULL", lambda m: not valid(m, "feedback", "label")),
    ("feedback.thumbs IS NOT NULL", lambda m: bool(valid(m, "feedback", "thumbs"))),
    ("feedback.expected IS NOT NULL", lambda m: bool(valid(m, "feedback", "expected"))),
    ("expectation.expected = 'answer A'", lambda m: "answer A" in valid(m, "expectation", "expected")),
    ("expectation.expected LIKE 'answer%'",
     assessed("expectation", "expected", lambda v: like(v, "answer%"))),
    ("expectation.expected IS NULL", lambda m: not valid(m, "expectation", "expected")),
    ("expectation.expected IS NOT NULL", lambda m: bool(valid(m, "expectation", "expected"))),
    # issue.id: tag or metadata mlflow.issue.id
    ("issue.id = 'ISSUE-1'",
     lambda m: "ISSUE-1" in (m.tags.get("mlflow.issue.id"), m.metadata.get("mlflow.issue.id"))),
    # combinations
    (f"metadata.`{MD}` = 'user-03' AND status = 'OK' AND span.type = 'LLM' AND feedback.thumbs IS NOT NULL",
     lambda m: m.metadata.get(MD) == "user-03" and m.event.state == "OK"
     and any_span(m, lambda s: s.span_type == "LLM") and bool(valid(m, "feedback", "thumbs"))),
]


def search_ids(reader: TraceReader, filter_string: str | None, experiment_ids: Sequence[str] | None = EXPS,
               order_by: Sequence[str] | None = None) -> list[str]:
    """Every match (following page tokens), within the workload's experiments by default."""
    traces = collect_traces(reader.search_traces, None, experiment_ids=experiment_ids,
                            filter_string=filter_string, order_by=order_by, include_spans=False)
    return [t.info.trace_id for t in traces]


@pytest.mark.parametrize(("filter_string", "predicate"), CASES, ids=[c[0] for c in CASES])
def test_filter_matches_oracle(
    reader: TraceReader, filter_string: str, predicate: Callable[[Model], bool]
) -> None:
    got = search_ids(reader, filter_string)
    expected = {m.id for m in ALL if predicate(m)}
    assert len(got) == len(set(got)), "a trace was returned twice"
    assert set(got) == expected
    assert expected or filter_string == "feedback.expected IS NOT NULL", "a case that tests nothing"


def test_unscoped_search_sees_every_experiment(reader: TraceReader) -> None:
    got = search_ids(reader, "status = 'ERROR'", experiment_ids=None)
    extra = set(got) - {m.id for m in ALL if m.event.state == "ERROR"}
    assert {m.id for m in ALL if m.event.state == "ERROR"} <= set(got)
    assert all(t.info.experiment_id.startswith("fuzz-") for t in reader.get_traces(sorted(extra)))
    assert search_ids(reader, "status = 'ERROR'", experiment_ids=[]) == got


def test_experiment_scoping(reader: TraceReader) -> None:
    got = search_ids(reader, "status = 'OK'", experiment_ids=["1", "2"])
    assert set(got) == {m.id for m in ALL if m.event.state == "OK" and m.event.experiment_id in ("1", "2")}
    assert search_ids(reader, None, experiment_ids=["nope"]) == []
    assert set(search_ids(reader, "span.type = 'LLM'", experiment_ids=["0"])) == {
        m.id for m in ALL if m.event.experiment_id == "0" and any_span(m, lambda s: s.span_type == "LLM")}


# ---- order_by and paging --------------------------------------------------------------------------

Key = tuple[Callable[[Model], Any], bool, bool]  # getter, ascending, nullable (missing sorts last)
TS_DESC: Key = (lambda m: m.ts, False, False)
ID_ASC: Key = (lambda m: m.id, True, False)

ORDERINGS: list[tuple[list[str] | None, list[Key]]] = [
    (None, [TS_DESC, ID_ASC]),
    (["timestamp ASC"], [(lambda m: m.ts, True, False), ID_ASC]),
    (["trace.timestamp_ms DESC"], [TS_DESC, ID_ASC]),
    (["execution_time_ms DESC"], [(lambda m: m.ms, False, False), TS_DESC, ID_ASC]),
    (["status", "end_time DESC"], [(lambda m: m.event.state, True, False),
                                   (lambda m: m.ts + m.ms, False, False), TS_DESC, ID_ASC]),
    (["tags.env DESC", "metadata.team ASC"], [
        (lambda m: m.tags.get("env"), False, True), (lambda m: m.metadata.get("team"), True, True),
        TS_DESC, ID_ASC]),
    (["name ASC", "run_id DESC"], [
        (lambda m: m.tags.get(TRACE_NAME), True, True),
        (lambda m: m.metadata.get("mlflow.sourceRun"), False, True), TS_DESC, ID_ASC]),
    (["experiment_id", "request_id DESC"], [(lambda m: m.event.experiment_id, True, False),
                                            (lambda m: m.id, False, False), TS_DESC]),
    ([f"metadata.`{MD}`"], [(lambda m: m.metadata.get(MD), True, True), TS_DESC, ID_ASC]),
]


def oracle_order(models: list[Model], keys: list[Key]) -> list[str]:
    items = list(models)
    for getter, ascending, nullable in reversed(keys):
        if nullable:
            if ascending:
                items.sort(key=lambda m: (getter(m) is None, getter(m) or ""))
            else:
                items.sort(key=lambda m: (getter(m) is not None, getter(m) or ""), reverse=True)
        else:
            items.sort(key=getter, reverse=not ascending)
    return [m.id for m in items]


@pytest.mark.parametrize(("order_by", "keys"), ORDERINGS, ids=[str(o[0]) for o in ORDERINGS])
def test_pages_follow_order_and_return_each_trace_once(
    reader: TraceReader, order_by: list[str] | None, keys: list[Key]
) -> None:
    expected = oracle_order(ALL, keys)
    got: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = reader.search_traces(EXPS, max_results=37, order_by=order_by, page_token=token,
                                    include_spans=False)
        pages += 1
        got.extend(t.info.trace_id for t in page.traces)
        # MLflow's rule: a token whenever the page is full, so the last page may be empty.
        assert (page.next_page_token is not None) == (len(page.traces) == 37)
        token = page.next_page_token
        if token is None:
            break
    assert got == expected
    assert pages == len(ALL) // 37 + 1


def test_filtered_paging_with_ties(reader: TraceReader) -> None:
    expected = oracle_order([m for m in ALL if m.event.state != "ERROR"], [TS_DESC, ID_ASC])
    got = [t.info.trace_id for t in collect_traces(
        lambda **kw: reader.search_traces(**{**kw, "max_results": 5}), None,
        experiment_ids=EXPS, filter_string="status != 'ERROR'", include_spans=False)]
    assert got == expected


def test_max_results_is_capped_and_collect_honours_more(reader: TraceReader) -> None:
    page = reader.search_traces(EXPS, max_results=1000, include_spans=False)
    assert len(page.traces) == 500
    assert page.next_page_token
    rest = reader.search_traces(EXPS, max_results=1000, page_token=page.next_page_token, include_spans=False)
    assert len(rest.traces) == N_TRACES - 500
    assert rest.next_page_token is None
    collected = collect_traces(reader.search_traces, 510, experiment_ids=EXPS, include_spans=False)
    assert len({t.info.trace_id for t in collected}) == 510
    assert len(list(reader.iter_traces(EXPS, include_spans=False, batch_size=200))) == N_TRACES
    with pytest.raises(InvalidParameterError):
        reader.search_traces(max_results=0)


def test_bad_page_tokens_are_rejected(reader: TraceReader) -> None:
    page = reader.search_traces(max_results=3, filter_string="status = 'OK'", include_spans=False)
    assert page.next_page_token
    with pytest.raises(InvalidPageTokenError, match="different search"):
        reader.search_traces(max_results=3, filter_string="status = 'ERROR'", page_token=page.next_page_token)
    with pytest.raises(InvalidPageTokenError, match="different search"):
        reader.search_traces(max_results=3, filter_string="status = 'OK'", order_by=["timestamp ASC"],
                             page_token=page.next_page_token)
    for bad in ("%%%", "bm90IGpzb24", "eyJ2IjogMX0"):
        with pytest.raises(InvalidPageTokenError) as err:
            reader.search_traces(page_token=bad)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_bad_regex_is_a_filter_error(reader: TraceReader) -> None:
    with pytest.raises(InvalidFilterError, match="regular expression") as err:
        reader.search_traces(filter_string="status = 'OK' AND tags.env RLIKE '(('")
    assert err.value.position == len("status = 'OK' AND ")


# ---- trace contents -------------------------------------------------------------------------------

def test_get_trace_returns_everything_current(reader: TraceReader) -> None:
    m = next(m for m in ALL if len(m.event.spans) > 2 and m.assessments and "env" in m.tags)
    trace = reader.get_trace(m.id)
    assert trace is not None
    info = trace.info
    assert info.trace_id == m.id
    assert info.experiment_id == m.event.experiment_id
    assert info.request_time == m.ts
    assert info.execution_time_ms == m.ms
    assert info.state == m.event.state
    assert info.client_request_id == m.event.client_request_id
    assert dict(info.metadata) == m.metadata
    assert info.tags == m.tags
    assert info.request_preview == m.event.request_preview
    got_ids = sorted(a.assessment_id or "" for a in info.assessments)
    assert got_ids == sorted(a.assessment_id for a in m.assessments)
    assert [s.span_id for s in trace.data.spans] == [s.span_id for s in m.event.spans]
    for got, sent in zip(trace.data.spans, m.event.spans, strict=True):
        assert got.name == sent.name
        assert got.span_type == sent.span_type
        assert got.status == sent.status
        assert got.parent_id == sent.parent_span_id
        injected = ("mlflow.spanType", "mlflow.traceRequestId")
        assert {k: v for k, v in got.attributes.items() if k not in injected} == sent.attributes
        assert [(e.name, e.timestamp_ns, e.attributes) for e in got.events] == [
            (e.name, e.timestamp_ns, e.attributes) for e in sent.events]
    assert trace.data.request == json_text(m.event.spans[0].attributes["mlflow.spanInputs"])
    assert Trace.from_dict(trace.to_dict()) == trace
    assert reader.get_trace("tr-" + "f" * 32) is None
    info_only = reader.get_trace_info(m.id)
    assert info_only == info


def test_get_traces_keeps_order_and_skips_unknown(reader: TraceReader) -> None:
    ids = [ALL[5].id, "tr-unknown", ALL[3].id, ALL[5].id]
    assert [t.info.trace_id for t in reader.get_traces(ids, include_spans=False)] == [ALL[5].id, ALL[3].id]
    assert reader.get_traces([]) == []


def test_replayed_duplicates_are_invisible(reader: TraceReader) -> None:
    replayed = {e.trace_id for e in DUPLICATES if isinstance(e, TraceEvent)}
    assert replayed
    got = search_ids(reader, None)
    assert len(got) == len(set(got)) == N_TRACES
    for trace in reader.get_traces(sorted(replayed)[:20]):
        m = MODELS[trace.info.trace_id]
        assert len(trace.data.spans) == len(m.event.spans)
        assert len(trace.info.assessments) == len(m.assessments)


def test_deleted_tags_vanish(reader: TraceReader) -> None:
    deleted = [m for m in ALL if any(isinstance(e, TagDeleteEvent) and e.trace_id == m.id for e in EVENTS)]
    gone = [m for m in deleted if "env" not in m.tags]
    revived = [m for m in deleted if "env" in m.tags]
    assert gone
    assert revived
    for trace in reader.get_traces([m.id for m in deleted], include_spans=False):
        assert trace.info.tags == MODELS[trace.info.trace_id].tags
    assert {m.id for m in gone} <= set(search_ids(reader, "tags.env IS NULL"))


def test_identity_from_root_span_attributes_is_searchable(reader: TraceReader) -> None:
    via_root = next(m for m in ALL if "user.id" in m.event.spans[0].attributes
                    and "mlflow.trace.user" not in m.event.metadata)
    user = via_root.metadata[MD]
    got = search_ids(reader, f"metadata.`{MD}` = '{user}'")
    assert via_root.id in got
    trace = reader.get_trace(via_root.id, include_spans=False)
    assert trace is not None
    assert trace.info.user_id == user
    assert trace.info.metadata[MD] == user


def test_dataframe_from_search(reader: TraceReader) -> None:
    traces = reader.search_traces(filter_string="status = 'ERROR'", max_results=10).traces
    df = traces_to_dataframe(traces)
    assert list(df["trace_id"]) == [t.info.trace_id for t in traces]
    assert set(df["state"]) == {TraceState.ERROR}
    assert all(isinstance(r, dict) and "message" in r for r in df["request"])


# ---- user text is data, never SQL -----------------------------------------------------------------

def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_nasty = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30) | (
    st.sampled_from(["'", "\\", "`", "{p0:String}", "') OR 1=1 --", "\" OR \"\"=\"", "%", "_", "}{", "\x00",
                     "a'; DROP TABLE traces; --"]))


@settings(max_examples=30, deadline=None)
@given(key=_nasty, value=_nasty)
def test_nasty_keys_and_values_are_literal_data(reader: TraceReader, key: str, value: str) -> None:
    rng = random.Random(f"{key}\x01{value}")
    trace_id = "tr-" + _hex(rng, 128)
    experiment = "fuzz-" + _hex(rng, 32)
    batch = RowBatch()
    batch.add(TraceEvent(trace_id=trace_id, timestamp_ms=BASE_MS, execution_time_ms=1, state="OK",
                         experiment_id=experiment, metadata={key: value}, tags={key: value}))
    write_batch(reader.store, batch)
    backtick = "`" + key.replace("`", "``") + "`"
    for filter_string in (f"tags.{backtick} = {_quote(value)}", f"metadata.{backtick} = {_quote(value)}",
                          f"tags.{backtick} LIKE {_quote(_like_escape(value))}",
                          f"metadata.{backtick} IS NOT NULL"):
        assert search_ids(reader, filter_string, experiment_ids=[experiment]) == [trace_id], filter_string
    assert search_ids(reader, f"tags.{backtick} != {_quote(value)}", experiment_ids=[experiment]) == []
    assert reader.store.query("SELECT count() FROM traces FINAL WHERE experiment_id IN {e:Array(String)}",
                              {"e": EXPS}) == [(N_TRACES,)]  # nothing was dropped or rewritten
