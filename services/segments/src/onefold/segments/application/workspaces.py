"""A workspace's compiled definitions, cached by the log position of its latest definition change,
and what a running backfill holds back per profile."""

from __future__ import annotations

import threading

from sqlalchemy.engine import Connection

from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.segments.adapters.profile_states import Backfill, ProfileStates
from onefold.segments.adapters.read_model import definitions_position, workspace_definitions
from onefold.segments.domain.definitions import Workspace, compile_workspace, feature_from_key


class Workspaces:
    """Compiled definitions per workspace, recompiled when a definition changes or a scheduled RFM
    run moved the quintile boundaries."""

    def __init__(self, states: ProfileStates) -> None:
        self.states = states
        self._lock = threading.Lock()
        self._compiled: dict[str, tuple[tuple[int, int], Workspace, list[pb.Definition]]] = {}

    def compiled(self, conn: Connection, workspace: str) -> Workspace:
        return self.load(conn, workspace)[0]

    def load(self, conn: Connection, workspace: str) -> tuple[Workspace, list[pb.Definition]]:
        """(the compiled live definitions, every definition as stored, archived included)."""
        last_run, boundaries = self.states.rfm_boundaries(conn, workspace)
        key = (definitions_position(conn, workspace), last_run)
        with self._lock:
            cached = self._compiled.get(workspace)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        position, stored = workspace_definitions(conn, workspace)
        compiled = compile_workspace(stored, rfm_boundaries=boundaries)
        with self._lock:
            self._compiled[workspace] = ((position, last_run), compiled, stored)
        return compiled, stored


Holds = list[tuple[str, frozenset[str]]]  # (a running backfill's cursor, the names it holds back)


def holds(workspace: Workspace, running: list[Backfill], but: str = "") -> Holds:
    """What each running backfill (other than `but`) holds back: the definitions it has still to
    rebuild for the profiles past its cursor (it works through profiles in id order), with what
    reads them. Until then their answer would rest on part of the profile's history."""
    out: Holds = []
    for backfill in running:
        if backfill.backfill_id == but:
            continue
        features = {feature_from_key(key) for key in backfill.features}
        readers = [n for n in workspace.order if features & set(workspace.definitions[n].features)]
        out.append((backfill.cursor, frozenset(workspace.affected((), [*readers, *backfill.recompute]))))
    return out


def held_for(holds_: Holds, profile_id: str) -> frozenset[str]:
    if not holds_:
        return frozenset()
    return frozenset().union(*(names for cursor, names in holds_ if profile_id > cursor))
