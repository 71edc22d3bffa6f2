"""Realistic synthetic chat traffic through the SDK: users with multi-turn sessions, retrieval and
LLM spans, token usage, varied latencies and a share of failures.

Sessions run concurrently as asyncio tasks, so real (slept) latencies add up to seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import Callable
from dataclasses import dataclass

import tracehouse.producers as sdk

TOPICS = ("billing", "refunds", "shipping", "password reset", "api limits", "pricing", "onboarding")
QUESTIONS = (
    "How do I {t}?", "What is your policy on {t}?", "I have a problem with {t}.",
    "Can you explain {t} again?", "Is there a limit on {t}?", "Who do I contact about {t}?",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """What ``tracehouse demo`` sends: sessions of a few users, each a few turns long."""

    #: Distinct users; the first sessions go to each user once, the rest to random users.
    users: int = 20
    #: Multi-turn sessions.
    sessions: int = 50
    #: Turns of a session, drawn uniformly between these.
    min_turns: int = 2
    max_turns: int = 8
    #: Share of model calls that fail (the turn is recorded as an ERROR trace).
    error_rate: float = 0.05
    #: Real seconds slept per simulated second of model latency.
    latency_scale: float = 0.05
    #: Same seed, same traffic.
    seed: int = 7


class ModelError(RuntimeError):
    """A simulated upstream failure (rate limit, timeout)."""


#: The random source and plan of the session being simulated: kept out of the traced arguments so
#: that recorded inputs look like a real app's.
_sim: contextvars.ContextVar[tuple[random.Random, DemoPlan]] = contextvars.ContextVar("tracehouse_demo")


@sdk.trace(span_type="RETRIEVER")
async def retrieve(query: str) -> list[str]:
    rng, plan = _sim.get()
    await asyncio.sleep(rng.uniform(0.02, 0.12) * plan.latency_scale)
    return [f"doc-{rng.randrange(1000)}" for _ in range(rng.randint(1, 4))]


@sdk.trace(span_type="LLM")
async def generate(message: str, docs: list[str]) -> str:
    rng, plan = _sim.get()
    fail = rng.random() < plan.error_rate
    await asyncio.sleep(rng.lognormvariate(-0.7, 0.6) * plan.latency_scale)
    span = sdk.get_current_active_span()
    tokens_in, tokens_out = rng.randint(40, 900), rng.randint(10, 400)
    if span is not None:
        span.set_attribute(
            "mlflow.chat.tokenUsage",
            {"input_tokens": tokens_in, "output_tokens": tokens_out, "total_tokens": tokens_in + tokens_out},
        )
    if fail:
        raise ModelError(rng.choice(["rate limited by upstream model", "upstream timeout after 30s"]))
    return f"Here is what I found about that ({len(docs)} sources)."


@sdk.trace(span_type="CHAIN")
async def chat_completion(user_id: str, session_id: str, turn: int, message: str) -> str:
    sdk.update_current_trace(
        metadata={"mlflow.trace.user": user_id, "mlflow.trace.session": session_id},
        client_request_id=f"req-{session_id}-{turn}",
        tags={"env": "demo", "app": "support-bot"},
    )
    return await generate(message, await retrieve(message))


async def _session(user_id: str, session_id: str, turns: int, rng: random.Random, plan: DemoPlan,
                   done: Callable[[], None]) -> None:  # fmt: skip
    _sim.set((rng, plan))
    topic = rng.choice(TOPICS)
    for turn in range(1, turns + 1):
        message = rng.choice(QUESTIONS).format(t=topic)
        # A failure is recorded as an ERROR trace; the user simply tries again.
        with contextlib.suppress(ModelError):
            await chat_completion(user_id, session_id, turn, message)
        done()
        await asyncio.sleep(rng.uniform(0.05, 0.3) * plan.latency_scale)


def session_turns(plan: DemoPlan) -> list[tuple[str, str, int]]:
    """``(user_id, session_id, turns)`` for every session of the plan, deterministic per seed."""
    rng = random.Random(plan.seed)
    users = [f"user-{i:04d}" for i in range(plan.users)]
    out = []
    for i in range(plan.sessions):
        user = users[i % len(users)] if i < len(users) else rng.choice(users)
        out.append((user, f"session-{plan.seed}-{i:05d}", rng.randint(plan.min_turns, plan.max_turns)))
    return out


async def run_demo(plan: DemoPlan, progress: Callable[[int], None] | None = None) -> int:
    """Run every session concurrently; returns the number of traces produced."""
    sessions = session_turns(plan)
    count = 0

    def done() -> None:
        nonlocal count
        count += 1
        if progress:
            progress(1)

    await asyncio.gather(
        *(_session(u, s, n, random.Random(f"{plan.seed}:{s}"), plan, done) for u, s, n in sessions)
    )
    return count
