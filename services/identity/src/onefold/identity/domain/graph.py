"""The identity graph of one workspace: identifiers (by keyed hash) -> live profiles, as a fold.

`resolve` decides what one event's identifiers do to the graph and returns the decisions as
operations (Created / Linked / Refused / Merged); `apply` folds an operation in. The service folds
the same operations from its log on start and on rebuild, so the graph is always the fold of the log
and a wrong merge can be split again (`plan_unmerge` replays the links a profile was built from).

Resolution (Segment Unify's model, made deterministic):

- The event's usable identifiers are taken in priority order (user_id > email > phone > ...).
- The first one that is already known names the event's profile. New identifiers of higher priority
  seen before it join that profile if its limits allow; otherwise they start a new profile.
- Every further known identifier on another profile merges that profile in, unless the merge would
  break a limit (e.g. two user_ids), a side is merge-protected, or the identifier was split off by an
  unmerge: then the link is refused and recorded, and the lower-priority identifier stays where it is.
- A new identifier is linked unless its type is at its limit on the profile (refused, recorded).
- The survivor of a merge is the older profile (created earlier in the log).

Order-independence: with no refusal anywhere, any order of the same events yields the same partition
(the connected components of "seen on one event"). Refusals depend on what was seen first, so the
property tested in general is weaker: every profile respects every limit, each identifier is on at
most one profile, the partition refines the connected components, and it equals them when no
limit/protection was hit in any order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from onefold.identity.domain.identifiers import Ident, Rules


@dataclass(frozen=True, slots=True)
class Created:
    profile_id: str
    evidence: str


@dataclass(frozen=True, slots=True)
class Linked:
    profile_id: str
    ident: Ident
    evidence: str
    rule: str = "event"


@dataclass(frozen=True, slots=True)
class Refused:
    profile_id: str
    ident: Ident
    reason: str  # "limit", "merge_limit", "protected", "split"
    other_profile_id: str
    evidence: str


@dataclass(frozen=True, slots=True)
class Merged:
    survivor_id: str
    merged_id: str
    rule: str
    evidence: str


Operation = Created | Linked | Refused | Merged


@dataclass(frozen=True, slots=True)
class Part:
    profile_id: str
    keys: tuple[str, ...]


@dataclass
class Resolution:
    profile_id: str  # "" when the event had no usable identifier
    operations: list[Operation] = field(default_factory=list)


class IdentityGraph:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.owner: dict[str, str] = {}  # key -> live profile id
        self.type_of: dict[str, str] = {}  # key -> identifier type
        self.members: dict[str, dict[str, set[str]]] = {}  # live profile -> type -> keys
        self.created: dict[str, int] = {}  # profile -> creation order (log position)
        self.merged_into: dict[str, str] = {}  # merged profile -> the profile it went into
        self.protected: set[str] = set()
        self.split_keys: set[str] = set()  # identifiers that never cause a merge again
        self.retired: set[str] = set()  # identifiers of erased profiles: never resolve again
        self.erased: set[str] = set()
        self._order = 0

    # ------------------------------------------------------------------------------ reading

    def live(self, profile_id: str) -> str:
        """The profile `profile_id` lives on as (itself, or the survivor it was merged into)."""
        seen = 0
        while profile_id in self.merged_into:
            profile_id = self.merged_into[profile_id]
            seen += 1
            if seen > 10_000:  # a cycle would be a bug in apply; never loop forever on it
                raise RuntimeError("merge pointers form a cycle")
        return profile_id

    def keys_of(self, profile_id: str) -> set[str]:
        return {key for keys in self.members.get(profile_id, {}).values() for key in keys}

    def partition(self) -> dict[str, str]:
        return dict(self.owner)

    def _count(self, profile_id: str, type_name: str) -> int:
        return len(self.members.get(profile_id, {}).get(type_name, ()))

    def fits(self, left: str, right: str) -> bool:
        """Whether merging the two live profiles keeps every identifier type within its limit."""
        a, b = self.members.get(left, {}), self.members.get(right, {})
        limit = self.rules.limit
        return all(
            len(keys) + len(b.get(type_name, ())) <= limit(type_name) for type_name, keys in a.items()
        ) and all(len(keys) <= limit(type_name) for type_name, keys in b.items() if type_name not in a)

    def limits_broken(self, left: str, right: str) -> str:
        """What merging the two live profiles would put over the limits (for the refusal)."""
        a, b = self.members.get(left, {}), self.members.get(right, {})
        problems = []
        for type_name in sorted(set(a) | set(b)):
            total = len(a.get(type_name, ())) + len(b.get(type_name, ()))
            if total > self.rules.limit(type_name):
                problems.append(f"{total} {type_name} identifiers, limit {self.rules.limit(type_name)}")
        return "; ".join(problems)

    # ------------------------------------------------------------------------------ deciding

    def resolve(self, idents: Sequence[Ident], evidence: str, new_id: Callable[[], str]) -> Resolution:
        """Decide and apply what an event's identifiers (priority order) do; return the operations."""
        ops: list[Operation] = []

        def emit(op: Operation) -> None:
            ops.append(op)
            self.apply(op)

        current = ""
        pending: list[Ident] = []
        limit = self.rules.limit
        for ident in idents:
            if ident.key in self.retired:
                continue
            owner = self.owner.get(ident.key)
            if owner is None:
                if current:
                    if self._count(current, ident.type) < limit(ident.type):
                        emit(Linked(current, ident, evidence))
                    else:
                        emit(Refused(current, ident, "limit", "", evidence))
                elif sum(1 for other in pending if other.type == ident.type) < limit(ident.type):
                    pending.append(ident)
                else:
                    ops.append(Refused("", ident, "limit", "", evidence))
                continue
            if owner == current:
                continue
            if not current:
                if not pending:
                    current = owner
                    continue
                counts: dict[str, int] = {}
                for other in pending:
                    counts[other.type] = counts.get(other.type, 0) + 1
                # An identifier split off by an unmerge names its profile but never pulls others in.
                fits = all(self._count(owner, t) + n <= limit(t) for t, n in counts.items())
                if fits and ident.key not in self.split_keys:
                    current = owner
                    for other in pending:
                        emit(Linked(owner, other, evidence))
                    pending = []
                    continue
                current = self._create(pending, evidence, new_id, emit)
                pending = []
            if ident.key in self.split_keys:
                ops.append(Refused(current, ident, "split", owner, evidence))
            elif owner in self.protected or current in self.protected:
                emit(Refused(current, ident, "protected", owner, evidence))
            elif not self.fits(current, owner):
                emit(Refused(current, ident, "merge_limit", owner, evidence))
            else:
                survivor, merged = (
                    (current, owner) if self.created[current] <= self.created[owner] else (owner, current)
                )
                emit(Merged(survivor, merged, f"identifier:{ident.type}", evidence))
                current = survivor
        if not current and pending:
            current = self._create(pending, evidence, new_id, emit)
        return Resolution(current, ops)

    def _create(
        self,
        idents: Sequence[Ident],
        evidence: str,
        new_id: Callable[[], str],
        emit: Callable[[Operation], None],
    ) -> str:
        profile_id = new_id()
        emit(Created(profile_id, evidence))
        for ident in idents:
            emit(Linked(profile_id, ident, evidence))
        return profile_id

    # ------------------------------------------------------------------------------ folding

    def apply(self, op: Operation, *, order: int | None = None) -> None:
        if isinstance(op, Linked):
            self.link(op.profile_id, op.ident.key, op.ident.type)
        elif isinstance(op, Merged):
            self.merge(op.survivor_id, op.merged_id)
        elif isinstance(op, Created):
            self.create(op.profile_id, order)
        # Refused changes nothing: it is the record of a decision.

    def create(self, profile_id: str, order: int | None = None) -> None:
        self._order = max(self._order + 1, order or 0)
        self.created[profile_id] = self._order
        self.members.setdefault(profile_id, {})

    def link(self, profile_id: str, key: str, type_name: str) -> None:
        previous = self.owner.get(key)
        if previous is not None and previous != profile_id:
            self.members.get(previous, {}).get(type_name, set()).discard(key)
        self.owner[key] = profile_id
        self.type_of[key] = type_name
        self.members.setdefault(profile_id, {}).setdefault(type_name, set()).add(key)

    def merge(self, survivor: str, merged: str) -> None:
        into = self.members.setdefault(survivor, {})
        for type_name, keys in self.members.pop(merged, {}).items():
            into.setdefault(type_name, set()).update(keys)
            for key in keys:
                self.owner[key] = survivor
        self.merged_into[merged] = survivor
        self.protected.discard(merged)

    def set_protected(self, profile_id: str, protected: bool) -> None:
        (self.protected.add if protected else self.protected.discard)(profile_id)

    def split(self, parts: Sequence[Part], split_key: str = "", order: int | None = None) -> None:
        """Fold an unmerge: each part lives (again) with exactly its keys."""
        for part in parts:
            self.merged_into.pop(part.profile_id, None)
            if part.profile_id not in self.created:
                self.create(part.profile_id, order)
            self.members[part.profile_id] = {}
        for part in parts:
            for key in part.keys:
                type_name = self.type_of.get(key)
                if type_name is not None:
                    self.link(part.profile_id, key, type_name)
        if split_key:
            self.split_keys.add(split_key)

    def erase(self, profile_ids: Iterable[str], keys: Iterable[str]) -> None:
        for key in keys:
            owner = self.owner.pop(key, None)
            type_name = self.type_of.pop(key, None)
            if owner is not None and type_name is not None:
                self.members.get(owner, {}).get(type_name, set()).discard(key)
            self.retired.add(key)
        for profile_id in profile_ids:
            self.erased.add(profile_id)
            self.members.pop(profile_id, None)
            self.protected.discard(profile_id)

    # ------------------------------------------------------------------------------ unmerging

    def plan_unmerge(
        self,
        profile_id: str,
        link_sets: Sequence[tuple[str, Sequence[str]]],
        created_by: dict[str, str],
        *,
        split_key: str = "",
        split_event: str = "",
        new_id: Callable[[], str],
    ) -> list[Part]:
        """Split live profile `profile_id` by replaying the events that built it without the bad link.

        `link_sets`: (evidence event id, keys in priority order) of every event resolved into the
        profile, in log order. `created_by`: evidence event id -> the profile id that event created
        (so a part whose first event created a profile that was merged in gets that id back).
        Splitting along `split_key` keeps that identifier from merging anything in the replay (it stays
        with the part that saw it first); along `split_event` ignores that event's links.
        Returns the parts, the one keeping `profile_id` first; keys not seen in any replayed event
        stay with it. A split that changes nothing returns one part.
        """
        keys = self.keys_of(profile_id)
        replay = IdentityGraph(self.rules)
        replay.split_keys = set(self.split_keys) | ({split_key} if split_key else set())
        replay_names: dict[str, str] = {}
        counter = iter(range(1, 1 << 62))

        def replay_id() -> str:
            return f"replay-{next(counter)}"

        for evidence, set_keys in link_sets:
            if evidence == split_event:
                continue
            idents = [Ident(self.type_of[key], "", key) for key in set_keys if key in keys]
            if not idents:
                continue
            resolution = replay.resolve(idents, evidence, replay_id)
            for op in resolution.operations:
                if isinstance(op, Created) and evidence in created_by:
                    replay_names[op.profile_id] = created_by[evidence]
        clusters = {pid: replay.keys_of(pid) for pid in replay.members if replay.keys_of(pid)}
        if len(clusters) <= 1:
            return [Part(profile_id, tuple(sorted(keys)))]
        named: dict[str, str] = {}
        used: set[str] = set()
        ordered = sorted(clusters, key=lambda pid: replay.created[pid])
        # The original profile keeps the part holding its own creating event, else the oldest part.
        keeper = next((pid for pid in ordered if replay_names.get(pid) == profile_id), ordered[0])
        named[keeper] = profile_id
        used.add(profile_id)
        for pid in ordered:
            if pid in named:
                continue
            name = replay_names.get(pid, "")
            if not name or name in used or name in self.erased:
                name = new_id()
            named[pid] = name
            used.add(name)
        covered = set().union(*clusters.values())
        parts = [Part(profile_id, tuple(sorted(clusters[keeper] | (keys - covered))))]
        parts += [Part(named[pid], tuple(sorted(clusters[pid]))) for pid in ordered if pid != keeper]
        return parts
