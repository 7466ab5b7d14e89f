"""`onefold lag [SERVICE] [--json]`: how far behind each service is, in events, at this moment.

For every service: its log's head, the events its relay has not yet had acknowledged by JetStream
(`unrelayed`), and for each upstream it consumes, the upstream's events not yet applied here
(`pending`: in the stream, not yet delivered; `in flight`: delivered, not yet applied and
acknowledged) with the last upstream position applied. Everything zero means the pipeline is
drained. It asks each service's EventLogService.Lag (scope `installation:admin`).

Exit status: 0 answered by every service asked; 2 a usage, credential or connection error (the
services that did answer are still shown).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from onefold.cli.audit import verify_targets
from onefold.cli.client import CliError, err_console, fail
from onefold.cli.options import DataDir, Json, ServiceName, ServiceTarget, Token
from onefold.cli.output import print_json, print_table

if TYPE_CHECKING:
    from onefold.contracts.eventlog.v1 import eventlog_pb2

LAG_TIMEOUT_SECONDS = 10.0
EXIT_ERROR = 2


@dataclass
class Backlog:
    service: str
    address: str
    answer: eventlog_pb2.LagResponse | None = None
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        if self.answer is None:
            return {"service": self.service, "address": self.address, "error": self.error}
        answer = self.answer
        return {
            "service": self.service,
            "address": self.address,
            "leading": answer.leading,
            "head_position": answer.head_position,
            "published_position": answer.published_position,
            "unrelayed": max(0, answer.head_position - answer.published_position),
            "consumers": [
                {
                    "upstream": consumer.upstream,
                    "consumer": consumer.consumer,
                    "pending": consumer.pending,
                    "in_flight": consumer.ack_pending,
                    "applied": dict(sorted(consumer.applied.items())),
                    "error": consumer.error or None,
                }
                for consumer in answer.consumers
            ],
        }


async def read_backlogs(targets: list[tuple[str, str]], token: str) -> list[Backlog]:
    import grpc

    from onefold.cli.client import Connection
    from onefold.cli.consent import channel_to, describe_service_error
    from onefold.contracts.eventlog.v1 import eventlog_pb2, eventlog_pb2_grpc

    async def one(service: str, address: str) -> Backlog:
        if not address:
            return Backlog(service, "", error="not running (not listed in endpoints.json)")
        try:
            async with channel_to(Connection(target=address, token=token)) as channel:
                answer = await eventlog_pb2_grpc.EventLogServiceStub(channel).Lag(
                    eventlog_pb2.LagRequest(), timeout=LAG_TIMEOUT_SECONDS
                )
        except grpc.RpcError as error:
            return Backlog(service, address, error=describe_service_error(error, service, address))
        return Backlog(service, address, answer)

    return list(await asyncio.gather(*(one(service, address) for service, address in targets)))


def lag(
    service: ServiceName = None,
    as_json: Json = False,
    data_dir: DataDir = Path(".onefold"),
    target: ServiceTarget = None,
    token: Token = None,
) -> None:
    """Show each service's backlog: its events not yet relayed to the bus, and each upstream's
    events not yet applied (pending delivery, or in flight). All zero: the pipeline is drained."""
    if not token:
        raise fail("no credential: pass --token or set ONEFOLD_TOKEN (see `onefold credentials create`)")
    try:
        targets = verify_targets(data_dir, service, target)
    except CliError as error:
        raise fail(error.message, error.code) from None
    backlogs = asyncio.run(read_backlogs(targets, token))
    if as_json:
        print_json([backlog.to_dict() for backlog in backlogs])
    else:
        rows = []
        for backlog in backlogs:
            if backlog.answer is None:
                rows.append((backlog.service, "", "", "", "", "", "", "[yellow]" + escape(backlog.error)))
                continue
            shown = backlog.to_dict()
            first = (
                backlog.service + ("" if shown["leading"] else " (not leading)"),
                f"{shown['head_position']:,}",
                f"{shown['unrelayed']:,}",
            )
            consumers = shown["consumers"] or [None]
            for index, consumer in enumerate(consumers):
                lead = first if index == 0 else ("", "", "")
                if consumer is None:
                    rows.append((*lead, "", "", "", "", ""))
                    continue
                applied = ", ".join(f"{key} #{position:,}" for key, position in consumer["applied"].items())
                rows.append(
                    (
                        *lead,
                        consumer["upstream"],
                        f"{consumer['pending']:,}",
                        f"{consumer['in_flight']:,}",
                        escape(applied),
                        "[yellow]" + escape(consumer["error"]) if consumer["error"] else "",
                    )
                )
        print_table(
            ("service", "head", "unrelayed", "upstream", "pending", "in flight", "applied", "problem"),
            rows,
            title="backlog, in events",
            markup=True,
        )
    failed = [backlog for backlog in backlogs if backlog.answer is None]
    for backlog in failed:
        err_console.print(
            f"[red]error:[/red] {escape(backlog.service)}: {escape(backlog.error)}",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(EXIT_ERROR if failed else 0)
