"""``tracehouse status``: the pipeline's health, from a running server (``up`` or ``serve``) or straight
from a store. Exit status: 0 healthy (warnings allowed), 1 a check failed, 3 no status could be had."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
import orjson

from tracehouse.schemas import settings

from ._options import setting_option

UNREACHABLE = 3
_COLORS = {"ok": "green", "warn": "yellow", "fail": "red"}


def _fetch(uri: str) -> dict[str, Any]:
    import httpx

    from tracehouse.app.server import STATUS_PATH

    token = settings.AUTH_TOKEN.read()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(uri.rstrip("/") + STATUS_PATH, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {uri}: {exc}. Is `tracehouse up` running?") from None
    if response.status_code != 200:
        raise click.ClickException(f"{uri} answered {response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


def _collect(uri: str, bootstrap: str | None, topic_prefix: str | None) -> dict[str, Any]:
    from tracehouse.app.status import KafkaTarget, collect
    from tracehouse.processors.sessions import DEFAULT_SESSIONIZER_ID
    from tracehouse.schemas import Topics
    from tracehouse.storage import Store

    kafka = None
    if bootstrap:
        kafka = KafkaTarget(bootstrap, Topics(settings.TOPIC_PREFIX.read(topic_prefix)), settings.SINK_GROUP.read(),
                            DEFAULT_SESSIONIZER_ID)  # fmt: skip
    with Store(uri) as store:
        return asyncio.run(collect(store, kafka)).to_dict()


def _print(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    level = status["level"]
    console.print(f"[bold {_COLORS[level]}]{'healthy' if status['healthy'] else 'UNHEALTHY'}[/] ({level})")
    checks = Table(show_header=True, box=None)
    for column in ("check", "", "what"):
        checks.add_column(column)
    for check in status["checks"]:
        checks.add_row(check["name"], f"[{_COLORS[check['level']]}]{check['level']}[/]", check["message"])
    console.print(checks)
    for group in status.get("lag") or []:
        behind = [p for p in group["partitions"] if p["lag"]]
        if behind:
            lag = Table(title=f"{group['role']} ({group['group']}): partitions behind", box=None)
            for column in ("topic", "partition", "committed", "end", "lag"):
                lag.add_column(column)
            for p in behind:
                lag.add_row(p["topic"], str(p["partition"]), str(p["committed"]), str(p["end"]), str(p["lag"]))
            console.print(lag)


@click.command()
@setting_option(settings.SERVER_URI, "--uri",
                help="A tracehouse server (http://…), or a store URI (chdb:///path, clickhouse://…) to read directly.")
@setting_option(settings.KAFKA_BOOTSTRAP, "--bootstrap", help="With a store URI: also check Kafka lag here.")
@setting_option(settings.TOPIC_PREFIX, "--topic-prefix", help="Kafka topic prefix.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(uri: str | None, bootstrap: str | None, topic_prefix: str | None, as_json: bool) -> None:
    """Is the pipeline healthy? Consumer lag per topic and partition, dead letters, the embedded broker's
    memory, store size and the newest trace's age, and the drops SDKs report.

    Exit status: 0 healthy (warnings allowed), 1 a check failed, 3 no status could be had.
    Thresholds: docs/reliability.md.
    """
    target = settings.SERVER_URI.read(uri)
    try:
        if target.split(":", 1)[0].lower() in ("http", "https"):
            body = _fetch(target)
        else:
            body = _collect(target, bootstrap or settings.KAFKA_BOOTSTRAP.raw(), topic_prefix)
    except click.ClickException as exc:
        exc.exit_code = UNREACHABLE
        raise
    except Exception as exc:
        raise click.ClickException(f"no status from {target}: {exc}") from exc
    if as_json:
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print(body)
    sys.exit(0 if body["healthy"] else 1)
