"""Deletion duties the processor must act on by itself (PIPL Art. 47), run by the leader replica.

1. Expiry: a grant past its validity (`consent_validity_days`) gets a ConsentExpired event, dated when
   it expired. Checks already deny it from that moment; the event makes the ledger say so.
2. Retention: a subject with no consent left (every answer withdrawn or expired) whose last answer is
   older than the retention of every purpose it answered for (`retention_days`, all of them set) is
   due for deletion: an ERASURE request is opened for it (actor `system:retention`), so the deletion
   runs — and is tracked, audited and refusable with a reason — like any data-subject request.
   A purpose without `retention_days` keeps its subjects out of this: nothing says when to delete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from onefold.consent.adapters.read_model import request_rows, state
from onefold.consent.application.consent_log import ConsentLog
from onefold.consent.application.subject_requests import SubjectRequests
from onefold.consent.domain.model import Model
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.eventlog.models import from_micros, to_micros
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.consent.duties")
RETENTION_ACTOR = "system:retention"
EXPIRY_BATCH = 500


@dataclass(frozen=True)
class Due:
    workspace: str
    profile_id: str


async def expire_due(consent_log: ConsentLog, now: datetime) -> int:
    """Append ConsentExpired for grants whose validity ended by `now`; returns how many."""

    def write(conn: Connection) -> int:
        rows = conn.execute(
            sa.select(
                state.c.workspace,
                state.c.profile_id,
                state.c.purpose_id,
                state.c.channel,
                state.c.event_id,
                state.c.expires_at,
            )
            .where(
                state.c.kind == "consent",
                state.c.status == pb.CONSENT_STATUS_GRANTED,
                state.c.expires_at.is_not(None),
                state.c.expires_at <= to_micros(now),
            )
            .limit(EXPIRY_BATCH)
        ).all()
        events = [
            consent_log.ledger_event(
                row.workspace,
                row.profile_id,
                pb.ConsentExpired(
                    workspace=row.workspace,
                    profile_id=row.profile_id,
                    purpose_id=row.purpose_id,
                    channel=row.channel,
                    grant_event_id=row.event_id,
                ),
                from_micros(row.expires_at),
                "system:expiry",
            )
            for row in rows
        ]
        consent_log.record(conn, events)
        return len(events)

    return await consent_log.write(write)


async def retention_due(consent_log: ConsentLog, now: datetime) -> list[Due]:
    """Subjects due for deletion under their purposes' retention limits (see the module docstring)."""
    answers: dict[tuple[str, str], list[tuple[str, int, int | None, int]]] = {}

    def read(conn: Connection) -> tuple[set[tuple[str, str]], set[tuple[str, str]], dict[str, Model]]:
        erased = {
            (row.workspace, row.profile_id)
            for row in conn.execute(
                sa.select(state.c.workspace, state.c.profile_id).where(state.c.kind == "erased")
            )
        }
        asked = {
            (row.workspace, row.profile_id)
            for row in conn.execute(
                sa.select(request_rows.c.workspace, request_rows.c.profile_id).where(
                    request_rows.c.type == pb.REQUEST_TYPE_ERASURE,
                    request_rows.c.state != pb.REQUEST_STATE_REFUSED,
                )
            )
        }
        for row in conn.execute(
            sa.select(
                state.c.workspace,
                state.c.profile_id,
                state.c.purpose_id,
                state.c.status,
                state.c.expires_at,
                state.c.occurred_at,
            ).where(state.c.kind == "consent")
        ):
            answers.setdefault((row.workspace, row.profile_id), []).append(
                (row.purpose_id, row.status, row.expires_at, row.occurred_at)
            )
        return erased, asked, {workspace: consent_log.model(conn, workspace) for workspace, _ in answers}

    erased, asked, models = await consent_log.read(read)
    cut = to_micros(now)
    due: list[Due] = []
    for (workspace, profile_id), rows in answers.items():
        if (workspace, profile_id) in erased or (workspace, profile_id) in asked:
            continue
        model = models[workspace]
        ended_last = 0  # when the last consent ended (withdrawn, expired)
        retention_days = 0
        for purpose_id, status, expires_at, occurred_at in rows:
            if status == pb.CONSENT_STATUS_GRANTED and (expires_at is None or expires_at > cut):
                break  # a consent still holds
            purpose = model.purpose(purpose_id)
            if purpose is None or not purpose.retention_days:
                break  # no limit says when to delete
            retention_days = max(retention_days, purpose.retention_days)
            ended = (
                expires_at if status == pb.CONSENT_STATUS_GRANTED and expires_at is not None else occurred_at
            )
            ended_last = max(ended_last, ended)
        else:
            if ended_last and now - from_micros(ended_last) >= timedelta(days=retention_days):
                due.append(Due(workspace, profile_id))
    return due


async def run_duties(
    consent_log: ConsentLog,
    requests_: SubjectRequests,
    leading: Callable[[], bool],
    *,
    interval_seconds: float = 60.0,
) -> None:
    """Until cancelled, on the leader: expire what is due, open erasure requests for what is due."""
    while True:
        await asyncio.sleep(interval_seconds)
        if not leading():
            continue
        try:
            now = consent_log.clock()
            expired = await expire_due(consent_log, now)
            if expired:
                log.info("consent.expired", count=expired)
            for item in await retention_due(consent_log, now):
                request = await requests_.open(
                    item.workspace,
                    item.profile_id,
                    pb.OpenRequestRequest(type=pb.REQUEST_TYPE_ERASURE),
                    RETENTION_ACTOR,
                )
                log.info("consent.retention_erasure", workspace=item.workspace, request_id=request.request_id)
                await requests_.process(item.workspace, request.request_id)  # later passes: the request loop
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("consent.duties_failed")
