"""The read model of the consent service (its projection), folded from its own log.

- `consent_state`: per subject, one row per (kind, purpose, channel): the current answer for a
  consent ("consent"), standing objections ("objection"), a restriction ("restriction") and erasure
  ("erased"), each with the ledger event it rests on. CheckConsent reads these rows (one query).
- `consent_aliases`: a profile merged into another (identity) -> the survivor whose ledger now counts.
- `consent_models`: each workspace's model (protobuf bytes).
- `consent_requests`: data-subject requests (their public fields, steps as JSON, the signed
  completion record) for listing and deadlines; the personal parts (identifiers, corrections,
  the export) stay encrypted in the request's own stream `dsr:<workspace>:<request_id>`.

Nothing personal is stored here: proof (IP, user agent, guardian) stays encrypted in the log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from onefold.consent.domain.ledger import LEDGER_EVENTS, Entry, Evidence, LedgerState, evidence_of
from onefold.consent.domain.subject_request import fold_request
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.eventlog.models import RecordedEvent, from_micros, to_micros

PROJECTION_NAME = "consent"
TRACKING_NAME = f"projection:{PROJECTION_NAME}"  # its tracking row (Projector)
metadata = sa.MetaData()

state = sa.Table(
    "consent_state",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("purpose_id", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("notice_id", sa.String(64), nullable=False),
    sa.Column("notice_version", sa.String(64), nullable=False),
    sa.Column("jurisdiction", sa.Integer, nullable=False),
    sa.Column("guardian_given", sa.Boolean, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("recorded_at", sa.BigInteger, nullable=False),
    sa.Column("occurred_at", sa.BigInteger, nullable=False),
)

aliases = sa.Table(
    "consent_aliases",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("survivor_id", sa.String(64), nullable=False),
)

models = sa.Table(
    "consent_models",
    metadata,
    sa.Column("workspace", sa.String(64), primary_key=True),
    sa.Column("model", sa.LargeBinary, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
)

request_rows = sa.Table(
    "consent_requests",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("workspace", sa.String(64), nullable=False, index=True),
    sa.Column("profile_id", sa.String(64), nullable=False, index=True),
    sa.Column("type", sa.Integer, nullable=False),
    sa.Column("state", sa.Integer, nullable=False),
    sa.Column("received_at", sa.BigInteger, nullable=False),
    sa.Column("due_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("steps", sa.Text, nullable=False),  # JSON list of RequestStep
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("extended", sa.Boolean, nullable=False, default=False),
    sa.Column("extension_reason", sa.Text, nullable=False, default=""),
    sa.Column("refusal_reason", sa.Text, nullable=False, default=""),
    sa.Column("completed_at", sa.BigInteger, nullable=True),
    sa.Column("completion_record", sa.Text, nullable=False, default=""),
    sa.Column("completion_signature", sa.String(64), nullable=False, default=""),
)

_STATE_COLUMNS = (
    "kind, purpose_id, channel, status, notice_id, notice_version, jurisdiction, guardian_given, "
    "expires_at, event_id, position, hash, event_type, recorded_at, occurred_at"
)
# CheckConsent's one round trip: the live profile (after merges), the model's version, the state
# rows of the live profile, and where the log and this read model stand (one statement: one
# snapshot, so a cache can tell which events the answer already reflects). Plain SQL on the driver:
# this runs on every send that misses the cache.
_CHECK_SQL = (
    "WITH l AS (SELECT COALESCE((SELECT survivor_id FROM consent_aliases WHERE workspace = {p} AND profile_id = {p}), "
    "{p}) AS live, (SELECT version FROM consent_models WHERE workspace = {p}) AS model_version, "
    "(SELECT max(position) FROM events) AS head, "
    f"(SELECT position FROM tracking WHERE upstream = '{TRACKING_NAME}') AS tracked) "
    f"SELECT l.head, l.tracked, l.live, l.model_version, {', '.join('s.' + c for c in _STATE_COLUMNS.split(', '))} "
    "FROM l LEFT JOIN consent_state AS s ON s.workspace = {p} AND s.profile_id = l.live"
)
_PROFILES_PER_QUERY = 500  # bound parameters per statement stay well under SQLite's limit
_INSERT_STATE = (
    f"INSERT INTO consent_state (workspace, profile_id, {_STATE_COLUMNS}) "
    f"VALUES ({', '.join(['{p}'] * (2 + len(_STATE_COLUMNS.split(', '))))})"
)
_DELETE_STATE = "DELETE FROM consent_state WHERE workspace = {p} AND profile_id = {p}"
_CHECK_SQLITE = _CHECK_SQL.format(p="?")
_CHECK_PG = _CHECK_SQL.format(p="%s")
# Where the log and this read model stand: two index seeks, what a cached answer is checked against.
POSITIONS_SQL = (
    "SELECT (SELECT max(position) FROM events), "
    f"(SELECT position FROM tracking WHERE upstream = '{TRACKING_NAME}')"
)


def _fold_rows(rows: Iterable[Sequence[Any]]) -> LedgerState:
    """State rows (in _STATE_COLUMNS order) -> the state CheckConsent decides on."""
    ledger = LedgerState()
    for row in rows:
        (kind, purpose_id, channel, status, notice_id, notice_version, jurisdiction, guardian_given,
         expires_at, event_id, position, hash_, event_type, recorded_at, occurred_at) = row  # fmt: skip
        if kind is None:
            continue
        evidence = Evidence(
            event_id, position, bytes(hash_), event_type, from_micros(recorded_at), from_micros(occurred_at)
        )
        if kind == "consent":
            ledger.entries[(purpose_id, channel)] = Entry(
                status,
                evidence,
                notice_id,
                notice_version,
                jurisdiction,
                bool(guardian_given),
                from_micros(expires_at) if expires_at is not None else None,
            )
        elif kind == "objection":
            ledger.objections[purpose_id] = evidence
        elif kind == "restriction":
            ledger.restricted = evidence
        elif kind == "erased":
            ledger.erased = evidence
    return ledger


def _fold_rows_by_profile(rows: Iterable[Sequence[Any]]) -> dict[str, LedgerState]:
    """(profile_id, *state columns) rows -> each profile's state."""
    grouped: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row[1:])
    return {profile_id: _fold_rows(profile_rows) for profile_id, profile_rows in grouped.items()}


def _placeholder(conn: Connection) -> str:
    return "?" if conn.dialect.name == "sqlite" else "%s"


def current_ledgers(conn: Connection, workspace: str, profile_ids: Sequence[str]) -> dict[str, LedgerState]:
    """The current state of each of `profile_ids` that has any (a query per 500 profiles)."""
    p = _placeholder(conn)
    ledgers: dict[str, LedgerState] = {}
    for start in range(0, len(profile_ids), _PROFILES_PER_QUERY):
        chunk = profile_ids[start : start + _PROFILES_PER_QUERY]
        rows = conn.exec_driver_sql(
            f"SELECT profile_id, {_STATE_COLUMNS} FROM consent_state WHERE workspace = {p} "
            f"AND profile_id IN ({', '.join([p] * len(chunk))})",
            (workspace, *chunk),
        )
        ledgers.update(_fold_rows_by_profile(rows))
    return ledgers


def current_ledger(conn: Connection, workspace: str, profile_id: str) -> LedgerState:
    """The subject's current state from the rows (what CheckConsent decides on)."""
    rows = conn.exec_driver_sql(
        f"SELECT {_STATE_COLUMNS} FROM consent_state WHERE workspace = {'?' if conn.dialect.name == 'sqlite' else '%s'} "
        f"AND profile_id = {'?' if conn.dialect.name == 'sqlite' else '%s'}",
        (workspace, profile_id),
    )
    return _fold_rows(rows)


@dataclass(frozen=True, slots=True)
class LogPositions:
    """The log's head and the position this read model has folded up to, read together."""

    head: int
    folded: int

    @staticmethod
    def read(head: int | None, folded: int | None) -> LogPositions:
        """From the columns as read (None: an empty log, a read model that never folded)."""
        return LogPositions(int(head or 0), int(folded or 0))

    @property
    def read_model_current(self) -> bool:
        """False while the read model is rebuilt or catches up: its rows are then incomplete."""
        return self.folded == self.head


@dataclass(frozen=True, slots=True)
class CheckState:
    """What CheckConsent decides on for a profile, and the positions of the snapshot it was read at."""

    live: str
    model_version: int | None
    ledger: LedgerState
    positions: LogPositions


def check_state(conn: Connection, workspace: str, profile_id: str) -> CheckState:
    """The live profile, the model version (None: no model yet) and its state, in one query."""
    sql = _CHECK_SQLITE if conn.dialect.name == "sqlite" else _CHECK_PG
    rows = conn.exec_driver_sql(sql, (workspace, profile_id, profile_id, workspace, workspace)).fetchall()
    head, folded, live, version = rows[0][:4]
    return CheckState(live, version, _fold_rows(row[4:] for row in rows), LogPositions.read(head, folded))


def changed_by(message: Message) -> tuple[str, list[str], bool]:
    """What an event changes in this read model for CheckConsent: (workspace, the profiles whose
    answers change — a ledger's owner, both sides of a merge, the profiles an unmerge revives —,
    whether the workspace's model changed). Kept beside the projection so the two agree."""
    name = message.DESCRIPTOR.full_name
    if name in LEDGER_EVENTS:
        profiles = [message.profile_id]  # type: ignore[attr-defined]
        if isinstance(message, pb.ConsentsMerged):
            profiles.append(message.merged_profile_id)
        return message.workspace, profiles, False  # type: ignore[attr-defined]
    if isinstance(message, pb.ConsentsUnmerged):
        return message.workspace, [message.profile_id, *message.revived_profile_ids], False
    if isinstance(message, pb.ConsentModelSet):
        return message.workspace, [], True
    return "", [], False


def _rows(workspace: str, profile_id: str, ledger: LedgerState) -> list[tuple[object, ...]]:
    """The subject's state rows: workspace, profile_id, then the _STATE_COLUMNS."""

    def row(
        kind: str, purpose: str, channel: str, evidence: Evidence, entry: Entry | None = None
    ) -> tuple[object, ...]:
        return (
            workspace,
            profile_id,
            kind,
            purpose,
            channel,
            entry.status if entry else 0,
            entry.notice_id if entry else "",
            entry.notice_version if entry else "",
            entry.jurisdiction if entry else 0,
            entry.guardian_given if entry else False,
            to_micros(entry.expires_at) if entry and entry.expires_at else None,
            evidence.event_id,
            evidence.position,
            evidence.hash,
            evidence.event_type,
            to_micros(evidence.recorded_at),
            to_micros(evidence.occurred_at),
        )

    out = [row("consent", p, c, entry.evidence, entry) for (p, c), entry in ledger.entries.items()]
    out += [row("objection", p, "", evidence) for p, evidence in ledger.objections.items()]
    if ledger.restricted is not None:
        out.append(row("restriction", "", "", ledger.restricted))
    if ledger.erased is not None:
        out.append(row("erased", "", "", ledger.erased))
    return out


class ConsentReadModel(Handlers):
    """The projection: ledger events into `consent_state` (by the ledger's fold), merges into
    `consent_aliases`, the model, and the requests' public fields."""

    name = PROJECTION_NAME
    tables: Sequence[sa.Table] = (state, aliases, models, request_rows)
    # A PublicFieldsProjection: the ledger's fold writes none of the personal fields (proof,
    # guardian, reasons, preference values) into the rows, so a rebuild need not decrypt ledger events.
    public_types = LEDGER_EVENTS

    def __init__(self) -> None:
        # The ledger events of this batch by subject, folded in `flush` onto the subjects' rows, read
        # once for the batch and written once (a rebuild reads and writes each subject once per
        # batch, with one statement per 500 subjects to read and one executemany to write).
        self._pending: dict[tuple[str, str], list[tuple[Evidence, Message]]] = {}

    def reset(self, conn: Connection) -> None:
        self._pending.clear()
        for table in self.tables:
            conn.execute(table.delete())

    def flush(self, conn: Connection) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        by_workspace: dict[str, list[str]] = {}
        for workspace, profile_id in pending:
            by_workspace.setdefault(workspace, []).append(profile_id)
        rows: list[tuple[object, ...]] = []
        for workspace, profile_ids in by_workspace.items():
            ledgers = current_ledgers(conn, workspace, profile_ids)
            for profile_id in profile_ids:
                ledger = ledgers.get(profile_id) or LedgerState()
                for evidence, message in pending[(workspace, profile_id)]:
                    ledger.apply(evidence, message)
                rows += _rows(workspace, profile_id, ledger)
        p = _placeholder(conn)
        conn.exec_driver_sql(_DELETE_STATE.format(p=p), list(pending))
        if rows:
            conn.exec_driver_sql(_INSERT_STATE.format(p=p), rows)

    def handle(self, conn: Connection, event: RecordedEvent, message: Message) -> None:
        if message.DESCRIPTOR.full_name in LEDGER_EVENTS:
            # Every ledger event names its workspace and profile.
            key = (message.workspace, message.profile_id)  # type: ignore[attr-defined]
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = []
            pending.append((evidence_of(event), message))
        self.dispatch(message, conn, message, event)

    @handles(pb.ConsentsMerged)
    def _merged(self, conn: Connection, message: pb.ConsentsMerged, event: RecordedEvent) -> None:
        workspace, profile_id = message.workspace, message.profile_id
        conn.execute(
            aliases.delete().where(
                aliases.c.workspace == workspace, aliases.c.profile_id == message.merged_profile_id
            )
        )
        conn.execute(
            aliases.insert(),
            [{"workspace": workspace, "profile_id": message.merged_profile_id, "survivor_id": profile_id}],
        )
        # Whatever had been merged into the merged profile now lives on in the survivor too.
        conn.execute(
            aliases.update()
            .where(aliases.c.workspace == workspace, aliases.c.survivor_id == message.merged_profile_id)
            .values(survivor_id=profile_id)
        )

    @handles(pb.ConsentsUnmerged)
    def _unmerged(self, conn: Connection, message: pb.ConsentsUnmerged, event: RecordedEvent) -> None:
        if message.revived_profile_ids:
            conn.execute(
                aliases.delete().where(
                    aliases.c.workspace == message.workspace,
                    aliases.c.profile_id.in_(list(message.revived_profile_ids)),
                )
            )

    @handles(pb.ConsentModelSet)
    def _model_set(self, conn: Connection, message: pb.ConsentModelSet, event: RecordedEvent) -> None:
        conn.execute(models.delete().where(models.c.workspace == message.workspace))
        conn.execute(
            models.insert(),
            [
                {
                    "workspace": message.workspace,
                    "model": message.model.SerializeToString(deterministic=True),
                    "version": message.model.version,
                }
            ],
        )

    @handles(pb.RequestOpened)
    def _request_opened(self, conn: Connection, message: pb.RequestOpened, event: RecordedEvent) -> None:
        conn.execute(request_rows.insert(), [request_row(message.request, event.position)])

    @handles(pb.RequestStepUpdated, pb.RequestExtended, pb.RequestCompleted, pb.RequestRefused)
    def _request_updated(self, conn: Connection, message: Any, event: RecordedEvent) -> None:
        request_id, workspace = message.request_id, message.workspace
        row = conn.execute(sa.select(request_rows).where(request_rows.c.request_id == request_id)).first()
        if row is None or row.workspace != workspace:
            return  # an update of a request this read model never saw opened: nothing to fold into
        request = request_from_row(row)
        fold_request(request, event, message)
        conn.execute(
            request_rows.update()
            .where(request_rows.c.request_id == request_id)
            .values(request_row(request, event.position))
        )


# ------------------------------------------------------------------------------ data-subject requests


def request_row(request: pb.SubjectRequest, position: int) -> dict[str, object]:
    """The read-model row of a request: its public fields only (no identifiers, corrections or export)."""
    return {
        "request_id": request.request_id,
        "workspace": request.workspace,
        "profile_id": request.profile_id,
        "type": request.type,
        "state": request.state,
        "received_at": to_micros(request.received_at.ToDatetime(tzinfo=UTC)),
        "due_at": to_micros(request.due_at.ToDatetime(tzinfo=UTC)),
        "steps": json.dumps([MessageToDict(step) for step in request.steps], sort_keys=True),
        "position": position,
        "extended": request.extended,
        "extension_reason": request.extension_reason,
        "refusal_reason": request.refusal_reason,
        "completed_at": to_micros(request.completed_at.ToDatetime(tzinfo=UTC))
        if request.HasField("completed_at")
        else None,
        "completion_record": request.completion_record,
        "completion_signature": request.completion_signature,
    }


def request_from_row(row: sa.Row[Any]) -> pb.SubjectRequest:
    """A request as the read model holds it (public fields; what ListRequests answers)."""
    request = pb.SubjectRequest(
        request_id=row.request_id,
        workspace=row.workspace,
        type=row.type,
        profile_id=row.profile_id,
        state=row.state,
        extended=bool(row.extended),
        extension_reason=row.extension_reason,
        refusal_reason=row.refusal_reason,
        completion_record=row.completion_record,
        completion_signature=row.completion_signature,
        steps=[ParseDict(step, pb.RequestStep()) for step in json.loads(row.steps)],
    )
    request.received_at.FromDatetime(from_micros(row.received_at))
    request.due_at.FromDatetime(from_micros(row.due_at))
    if row.completed_at is not None:
        request.completed_at.FromDatetime(from_micros(row.completed_at))
    return request
