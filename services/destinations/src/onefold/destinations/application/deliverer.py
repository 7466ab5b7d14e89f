"""Delivering what was queued: a batch at a time, on the leader.

Each round takes the due deliveries of active destinations in log order — none of a person whose
earlier delivery to the same destination waits for a retry, so order per person holds — and, at
once, reads what they send from their DeliveryQueued events and asks consent in one
CheckConsentBatch per purpose (DENY → suppressed with the reason and the ledger's evidence; consent
unreachable → nothing is delivered, the round is tried again; a purpose consent refuses to check →
the batches of the destinations naming it fail and are retried; deletions are never suppressed),
hands each destination its batch through its target, and records the outcomes as one event per
kind: delivered; failed, with the next try after a backoff with jitter; dead-lettered, after the
destination's last attempt or at once for what the receiver refuses.

A circuit breaker per destination holds its deliveries while it keeps failing (domain/retry.py).
A crash after the receiver answered and before the outcome was recorded leaves the deliveries
queued: they go again under the same ids, which receivers deduplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict
from prometheus_client import Counter, Gauge

from onefold.contracts.consent.v1 import consent_pb2
from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.read_model import QUEUED, catalog, outbox
from onefold.destinations.adapters.targets.base import BEHIND_A_FAILURE, Delivery, Outcome, Result, Target
from onefold.destinations.adapters.targets.factory import usable_target
from onefold.destinations.adapters.upstream import Upstream
from onefold.destinations.application.catalog import Clock, Destinations
from onefold.destinations.domain import retry
from onefold.destinations.domain.routing import KIND_NAMES
from onefold.eventlog.models import NewEvent, from_micros, to_micros
from onefold.eventlog.service import Duty, ServiceLog
from onefold.platform.errors import Unavailable
from onefold.platform.peer_calls import ConsentCheck
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.destinations")
DELIVERY_BATCH = 1000
IDLE_WAIT_SECONDS = 30.0
RETRY_WAIT_SECONDS = 5.0

DELIVERIES = Counter(
    "onefold_destination_deliveries_total",
    "Deliveries by destination and outcome (delivered, failed, dead_letter, suppressed)",
    ["destination", "outcome"],
)
LAG = Gauge(
    "onefold_destination_lag_seconds", "Age of the oldest delivery not yet delivered", ["destination"]
)

DestinationKey = tuple[str, str]  # (workspace, name)


@dataclass(frozen=True)
class Due:
    """An outbox row to try now."""

    delivery_id: str
    workspace: str
    destination: str
    profile_id: str
    kind: int
    position: int
    attempts: int


class Deliverer:
    def __init__(
        self,
        log_: ServiceLog,
        destinations: Destinations,
        upstream: Upstream,
        clock: Clock,
        environ: Mapping[str, str],
    ) -> None:
        self.log = log_
        self.destinations = destinations
        self.upstream = upstream
        self.clock = clock
        self.environ = environ
        self.breakers: dict[DestinationKey, retry.CircuitBreaker] = {}
        # Built once per (destination version, signing secret): a target holds connections.
        self._targets: dict[DestinationKey, tuple[tuple[int, int], Target]] = {}
        self._retired: list[Target] = []  # replaced by a new version or secret: closed next round
        self.duty = Duty(
            "destinations.deliverer",
            self._round,
            idle_seconds=IDLE_WAIT_SECONDS,
            retry_seconds=RETRY_WAIT_SECONDS,
        )

    def wake(self) -> None:
        """Deliveries were queued or replayed (safe from the writer thread)."""
        self.duty.wake()

    def circuit(self, workspace: str, name: str) -> str:
        breaker = self.breakers.get((workspace, name))
        return "closed" if breaker is None else breaker.state(self.clock())

    async def aclose(self) -> None:
        self._retired += [target for _, target in self._targets.values()]
        self._targets.clear()
        await self._close_retired()

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for target in retired:
            await target.aclose()

    async def _round(self) -> float | None:
        try:
            if await self.deliver_due() >= DELIVERY_BATCH:
                return 0.0
        except (grpc.aio.AioRpcError, Unavailable) as exc:  # consent unreachable: nothing goes unchecked
            log.warning("destinations.consent_unreachable", error=type(exc).__name__)
            return RETRY_WAIT_SECONDS
        upcoming = await asyncio.to_thread(self._next_try, self._held(self.clock()))
        if upcoming is None:
            return None
        return max((upcoming - self.clock()).total_seconds(), 0.05)

    def _held(self, now: datetime) -> set[DestinationKey]:
        """The destinations whose circuit is open: nothing of theirs is read or tried."""
        return {key for key, breaker in self.breakers.items() if breaker.state(now) == "open"}

    def _next_try(self, held: set[DestinationKey]) -> datetime | None:
        """The next moment anything queued may be tried (a retry, or a breaker's cool-down); the
        lag gauges are set on the way (one query a round, by destination)."""
        moments = [b.open_until for b in self.breakers.values() if b.open_until is not None]
        now = self.clock()
        with self.log.store.engine.connect() as conn:
            waiting = conn.execute(
                sa.select(
                    catalog.c.workspace,
                    catalog.c.name,
                    catalog.c.status,
                    sa.func.min(outbox.c.try_at_us),
                    sa.func.min(outbox.c.queued_at_us),
                )
                .select_from(catalog.outerjoin(outbox, _catalog_row() & (outbox.c.status == QUEUED)))
                .group_by(catalog.c.workspace, catalog.c.name, catalog.c.status)
            ).all()
        for workspace, name, status, try_at, queued_at in waiting:
            lag = 0.0 if queued_at is None else (now - from_micros(int(queued_at))).total_seconds()
            LAG.labels(str(name)).set(max(lag, 0.0))
            open_circuit = (str(workspace), str(name)) in held
            if try_at is not None and status == pb.DESTINATION_STATUS_ACTIVE and not open_circuit:
                moments.append(from_micros(int(try_at)))
        return min(moments, default=None)

    async def deliver_due(self) -> int:
        """One round: how many deliveries were tried (or suppressed)."""
        await self._close_retired()
        now = self.clock()
        due, purposes = await asyncio.to_thread(self._due, now, self._held(now))
        by_destination: dict[DestinationKey, list[Due]] = {}
        for row in due:
            by_destination.setdefault((row.workspace, row.destination), []).append(row)
        for key in by_destination:  # a circuit past its cool-down lets this round's batch probe
            self.breakers.setdefault(key, retry.CircuitBreaker()).allows(now)
        for workspace in dict.fromkeys(k[0] for k in by_destination):
            batches = {k: v for k, v in by_destination.items() if k[0] == workspace}
            await self._deliver_workspace(workspace, batches, purposes, now)
        return sum(len(v) for v in by_destination.values())

    def _due(self, now: datetime, held: set[DestinationKey]) -> tuple[list[Due], dict[DestinationKey, str]]:
        """The round's batch: each active destination's due deliveries in log order (a query per
        destination, each stopping at a full batch: a paused destination's backlog, or an open
        circuit's, is never read), then the earliest DELIVERY_BATCH of them all; and the consent
        purpose of each active destination. A person with a delivery waiting for its retry is held:
        none of their deliveries is due until it is tried."""
        retrying = outbox.alias("retrying")
        due: list[Due] = []
        purposes: dict[DestinationKey, str] = {}
        with self.log.store.engine.connect() as conn:
            active = conn.execute(
                sa.select(catalog.c.workspace, catalog.c.name, catalog.c.latest, catalog.c.destination).where(
                    catalog.c.status == pb.DESTINATION_STATUS_ACTIVE
                )
            ).all()
            for workspace, name, version, definition in active:
                if (str(workspace), str(name)) in held:
                    continue
                destination = self.destinations.decoded(str(workspace), str(name), int(version), definition)
                purposes[(str(workspace), str(name))] = destination.purpose
                # Found once per query on the (status, try_at_us) index: only retries are read, where a
                # subquery per due row walked each person's whole delivery history.
                held_people = sa.select(retrying.c.profile_id).where(
                    (retrying.c.status == QUEUED)
                    & (retrying.c.try_at_us > to_micros(now))
                    & (retrying.c.workspace == workspace)
                    & (retrying.c.destination == name)
                )
                query = (
                    sa.select(
                        outbox.c.delivery_id,
                        outbox.c.workspace,
                        outbox.c.destination,
                        outbox.c.profile_id,
                        outbox.c.kind,
                        outbox.c.position,
                        outbox.c.attempts,
                    )
                    .where(
                        (outbox.c.status == QUEUED)
                        & (outbox.c.workspace == workspace)
                        & (outbox.c.destination == name)
                        # "+ 0": walk the (status, workspace, destination, position) index in log
                        # order; on try_at_us's the planner read and sorted every queued row.
                        & (outbox.c.try_at_us + 0 <= to_micros(now))
                        & outbox.c.profile_id.not_in(held_people)
                    )
                    .order_by(outbox.c.position)
                    .limit(DELIVERY_BATCH)
                )
                due += [Due(*row) for row in conn.execute(query)]
        return sorted(due, key=lambda d: d.position)[:DELIVERY_BATCH], purposes

    async def _deliver_workspace(
        self,
        workspace: str,
        batches: dict[DestinationKey, list[Due]],
        purposes: Mapping[DestinationKey, str],
        now: datetime,
    ) -> None:
        asking: dict[str, list[Due]] = {}  # by purpose: each purpose's checks are one call
        for key, rows in batches.items():
            if key in purposes:
                asking.setdefault(purposes[key], []).extend(
                    row for row in rows if row.kind != pb.DELIVERY_KIND_DELETION
                )
        # Consent answers while the payloads are read and opened: the waits overlap.
        setup, asked = await asyncio.gather(
            asyncio.to_thread(self._prepare, workspace, batches, purposes),
            asyncio.gather(*(self._ask(workspace, purpose, rows) for purpose, rows in asking.items())),
        )
        denied: dict[str, consent_pb2.CheckConsentResponse] = {}
        refused: dict[str, str] = {}  # purpose -> why consent would not answer for it
        for purpose, answers in zip(asking, asked, strict=True):
            if isinstance(answers, str):
                refused[purpose] = answers
                continue
            for row, answer in zip(asking[purpose], answers, strict=True):
                if answer.decision != consent_pb2.DECISION_ALLOW:
                    denied[row.delivery_id] = answer
        results = await asyncio.gather(
            *(
                self._deliver_destination(
                    key, rows, setup.get(key), denied, refused.get(purposes.get(key, "")), now
                )
                for key, rows in batches.items()
            )
        )
        events = [event for found in results for event in found]
        if events:
            await self.log.writer.run(
                self.log.projector.write, lambda conn: self.log.projector.record(conn, events)
            )

    async def _ask(
        self, workspace: str, purpose: str, rows: Sequence[Due]
    ) -> list[consent_pb2.CheckConsentResponse] | str:
        """Consent's answers for `purpose`, or why consent refused to answer for it (a purpose
        removed from the consent model): that holds only the destinations naming it. Consent
        unreachable raises: the whole round waits."""
        try:
            return await self.upstream.check_consent(
                workspace, [ConsentCheck(row.profile_id, purpose) for row in rows]
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            log.warning("destinations.purpose_refused", purpose=purpose)
            return f"consent refused to check the purpose {purpose!r}: is it in the consent model?"

    def _prepare(
        self,
        workspace: str,
        batches: Mapping[DestinationKey, Sequence[Due]],
        purposes: Mapping[DestinationKey, str],
    ) -> dict[DestinationKey, _Prepared]:
        """Each destination's definition and target, and what its deliveries send, read in one go.
        A destination whose purpose is no longer the one consent was asked about is left out: its
        deliveries stay queued for the next round."""
        prepared: dict[DestinationKey, _Prepared] = {}
        store = self.log.store
        with store.engine.connect() as conn:
            opened: dict[int, pb.DeliveryQueued] = {}
            positions = [row.position for rows in batches.values() for row in rows]
            for event in store.read_positions(positions, conn=conn):
                message = store.decode(event, conn=conn)
                assert isinstance(message, pb.DeliveryQueued)
                opened[event.position] = message
            for key, rows in batches.items():
                found = conn.execute(
                    sa.select(catalog.c.latest, catalog.c.destination).where(
                        (catalog.c.workspace == key[0]) & (catalog.c.name == key[1])
                    )
                ).first()
                if found is None:
                    continue
                destination = self.destinations.decoded(key[0], key[1], int(found[0]), found[1])
                if destination.purpose != purposes.get(key):
                    continue
                secret_at, secret = self.destinations.signing_secret(conn, workspace, key[1])
                prepared[key] = _Prepared(
                    destination.retry,
                    self._target(key, destination, int(found[0]), secret_at, secret),
                    [_delivery(row, opened[row.position]) for row in rows if row.position in opened],
                )
        return prepared

    def _target(
        self, key: DestinationKey, destination: pb.Destination, version: int, secret_at: int, secret: str
    ) -> Target:
        built = self._targets.get(key)
        if built is not None and built[0] == (version, secret_at):
            return built[1]
        target = usable_target(destination, secret=secret, environ=self.environ)
        self._targets[key] = ((version, secret_at), target)
        if built is not None:
            self._retired.append(built[1])
        return target

    async def _deliver_destination(
        self,
        key: DestinationKey,
        rows: Sequence[Due],
        prepared: _Prepared | None,
        denied: Mapping[str, consent_pb2.CheckConsentResponse],
        refusal: str | None,
        now: datetime,
    ) -> list[NewEvent]:
        workspace, name = key
        if prepared is None:
            return []
        suppressed = [d for d in prepared.deliveries if d.delivery_id in denied]
        sending = [d for d in prepared.deliveries if d.delivery_id not in denied]
        if refusal is not None:
            # Nothing is sent, deletions neither (a deletion must not overtake the person's
            # earlier deliveries): the batch fails and is retried, so the destination's status
            # shows why, and its breaker holds it while consent keeps refusing.
            results = [Result.retry(refusal)] * len(sending)
        else:
            results = await prepared.target.deliver(sending) if sending else []
        attempts = {row.delivery_id: row.attempts + 1 for row in rows}
        delivered: list[str] = []
        failed: dict[tuple[int, str], list[str]] = {}  # by (the attempt that failed, its error)
        dead: dict[str, list[str]] = {}  # by error
        for delivery, result in zip(sending, results, strict=True):
            attempt = attempts[delivery.delivery_id]
            if result.outcome == Outcome.DELIVERED:
                delivered.append(delivery.delivery_id)
            elif result == BEHIND_A_FAILURE:
                continue  # left queued, not counted as an attempt: it goes after the earlier one
            elif result.outcome == Outcome.REJECTED or retry.exhausted(prepared.retry, attempt):
                dead.setdefault(result.error, []).append(delivery.delivery_id)
            else:
                failed.setdefault((attempt, result.error), []).append(delivery.delivery_id)
        breaker = self.breakers.setdefault(key, retry.CircuitBreaker())
        if delivered or not (failed or dead):
            breaker.succeeded()
        else:
            was = breaker.state(now)
            breaker.failed(now)
            if breaker.state(now) == "open" and was != "open":
                # Names and counts only: an error never quotes what a receiver answered.
                log.warning("destinations.circuit_opened", destination=name, failures=breaker.failures)
        if dead:
            log.warning(
                "destinations.dead_lettered",
                destination=name,
                deliveries=sum(len(v) for v in dead.values()),
                errors=sorted(dead),
            )
        events: list[
            pb.DeliveriesDelivered | pb.DeliveriesFailed | pb.DeliveriesDeadLettered | pb.DeliveriesSuppressed
        ] = []
        if delivered:
            events.append(
                pb.DeliveriesDelivered(workspace=workspace, destination=name, delivery_ids=delivered)
            )
        for (attempt, error), ids in sorted(failed.items()):
            failure = pb.DeliveriesFailed(
                workspace=workspace, destination=name, delivery_ids=ids, error=error
            )
            failure.retry_at.FromDatetime(now + retry.backoff(prepared.retry, attempt))
            events.append(failure)
        for error, ids in dead.items():
            events.append(
                pb.DeliveriesDeadLettered(
                    workspace=workspace, destination=name, delivery_ids=ids, error=error
                )
            )
        if suppressed:
            events.append(
                pb.DeliveriesSuppressed(
                    workspace=workspace,
                    destination=name,
                    suppressions=[_suppression(d.delivery_id, denied[d.delivery_id]) for d in suppressed],
                )
            )
        DELIVERIES.labels(name, "delivered").inc(len(delivered))
        DELIVERIES.labels(name, "failed").inc(sum(len(v) for v in failed.values()))
        DELIVERIES.labels(name, "dead_letter").inc(sum(len(v) for v in dead.values()))
        DELIVERIES.labels(name, "suppressed").inc(len(suppressed))
        return [
            NewEvent(
                stream_id=f"destinations-outcomes:{workspace}:{name}",
                message=event,
                workspace=workspace,
                occurred_at=now,
            )
            for event in events
        ]


@dataclass(frozen=True)
class _Prepared:
    """One destination's batch, ready to deliver."""

    retry: pb.RetryPolicy
    target: Target
    deliveries: list[Delivery]  # in log order


def _catalog_row() -> sa.ColumnElement[bool]:
    return (catalog.c.workspace == outbox.c.workspace) & (catalog.c.name == outbox.c.destination)


def _delivery(row: Due, queued: pb.DeliveryQueued) -> Delivery:
    data: dict[str, Any] = MessageToDict(queued.data)
    return Delivery(
        delivery_id=row.delivery_id,
        workspace=row.workspace,
        destination=row.destination,
        profile_id=row.profile_id,
        kind=KIND_NAMES.get(row.kind, ""),
        name=queued.name,
        occurred_at=queued.occurred_at.ToDatetime(tzinfo=UTC),
        position=row.position,
        data=data,
    )


def _suppression(delivery_id: str, answer: consent_pb2.CheckConsentResponse) -> pb.Suppression:
    reason = consent_pb2.DecisionReason.Name(answer.reason).removeprefix("DECISION_REASON_").lower()
    return pb.Suppression(
        delivery_id=delivery_id, reason=f"consent: {reason}", consent_evidence_id=answer.evidence.event_id
    )
