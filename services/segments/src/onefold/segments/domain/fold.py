"""A profile's segments state, folded from identity's events and the passing of time.

`apply(workspace, state, input, now)` folds one identity input (a resolved event, traits set, another
profile merged in) and `advance(workspace, state, now)` a timer firing; both return the changes to
append (entered / exited with reasons, tag and computed-trait changes) and the next timer moment.
The state (`ProfileState`) is what the application keeps on disk per profile (`to_proto`), with the
outputs last emitted, so a change is whatever differs from them.

**Batch equals incremental.** Outputs are a pure function of (the events observed, the traits,
now): the accumulators do not depend on arrival order (features.py), and a definition is
re-evaluated whenever anything it reads may have changed — its features or trait keys (by the
workspace's index), an output it reads (downstream, in topological order), or time (its `due`
moment, kept per definition). A definition nothing touched would evaluate to what it already holds,
so skipping it is an optimisation, not a different answer. A profile's very first input evaluates
everything once (`started`), since a definition can hold on an empty profile ("not performed …").

Timers are per definition: `due[name]` is the earliest moment its value may change by time alone.
`next_timer` is the earliest of them; firing late is fine (`advance` and `apply` both evaluate every
definition due at or before `now`), firing early only costs an evaluation.

Realtime definitions only: BATCH definitions are left to `recompute` on their schedule (no timers),
though their accumulators are kept current so a recompute needs no history.

`tag_by_model` records a model tag (the insights service's ProfileModelTagged) as an output of kind
MODEL_TAG — shown and tested like a definition's tag, announced with the model and its version — and
re-evaluates the definitions reading it. A definition of the same name takes precedence: the
model's tag is then ignored. Model tags are not definitions: archiving nothing withdraws them, only
the model (a removal), a merge or an erasure (`close`).

`backfill` rebuilds the features a new definition brought from the profile's history records;
`close` withdraws every output of a profile merged into another or erased; `recompute` runs a
BATCH definition or re-evaluates after a backfill.

Each input is applied exactly once (the subscriber's tracking row guarantees it): counts and sums
would count a replayed event twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field

from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.contracts.segments.v1 import segments_pb2 as pb
from onefold.segments.domain.definitions import (
    After,
    Compiled,
    Feature,
    Json,
    Micros,
    TraitKey,
    Workspace,
    feature_from_key,
)
from onefold.segments.domain.evaluate import Answer, Reason, View, evaluate, matches
from onefold.segments.domain.features import (
    Accumulator,
    AfterAcc,
    Event,
    Occurrence,
    canonical,
    from_struct,
    from_value,
    load_accumulator,
    merge,
    new_accumulator,
    to_struct,
    to_value,
)

_EVENT_TYPES = {
    ingest_pb2.EVENT_TYPE_TRACK: "track",
    ingest_pb2.EVENT_TYPE_IDENTIFY: "identify",
    ingest_pb2.EVENT_TYPE_PAGE: "page",
    ingest_pb2.EVENT_TYPE_SCREEN: "screen",
    ingest_pb2.EVENT_TYPE_GROUP: "group",
    ingest_pb2.EVENT_TYPE_ALIAS: "alias",
}


# ------------------------------------------------------------------------------------------------
# Inputs.


@dataclass(frozen=True, slots=True)
class Resolved:
    event: Event
    cause: str = ""  # identity's event id


@dataclass(frozen=True, slots=True)
class TraitsSet:
    traits: Mapping[str, Json]
    at: Occurrence  # (occurred, evidence event id): per key, the later setting wins
    cause: str = ""


@dataclass(frozen=True, slots=True)
class Merged:
    other: ProfileState  # the merged-in profile's state (`close` it for its own stream)
    cause: str = ""


@dataclass(frozen=True, slots=True)
class ModelTagged:
    tag: str
    value: str  # "" = removed
    score: float
    model: str
    model_version: str
    cause: str = ""  # the insights event's id


Input = Resolved | TraitsSet | Merged
MODEL_TAG = "model_tag"  # the kind of an output a model gave (not a definition)


def resolved(message: identity_pb2.EventResolved, cause: str = "") -> Resolved:
    """The domain's view of an opened EventResolved: when it happened (the skew-corrected
    timestamp, else the time ingest received it), its type, name and properties."""
    e = message.event
    stamp = e.timestamp if e.HasField("timestamp") else e.received_at
    at = stamp.seconds * 1_000_000 + stamp.nanos // 1000
    name = e.event if e.type == ingest_pb2.EVENT_TYPE_TRACK else e.name
    return Resolved(
        Event(at, message.event_id, _EVENT_TYPES.get(e.type, ""), name, from_struct(e.properties)), cause
    )


def traits_set(message: identity_pb2.TraitsUpdated, occurred_at: Micros, cause: str = "") -> TraitsSet:
    return TraitsSet(from_struct(message.traits), (occurred_at, message.evidence_event_id), cause)


def record_of(item: Resolved | TraitsSet, keys: Iterable[str]) -> pb.HistoryRecord:
    """What the service keeps of an input, to backfill and rebuild from (`from_record` reverses it)."""
    if isinstance(item, Resolved):
        e = item.event
        return pb.HistoryRecord(
            at_us=e.at,
            event_id=e.event_id,
            keys=list(keys),
            event=pb.ObservedEvent(type=e.type, name=e.name, properties=to_struct(e.properties)),
        )
    at, event_id = item.at
    return pb.HistoryRecord(at_us=at, event_id=event_id, keys=list(keys), traits=to_struct(item.traits))


def from_record(record: pb.HistoryRecord) -> Resolved | TraitsSet:
    if record.WhichOneof("record") == "traits":
        return TraitsSet(from_struct(record.traits), (record.at_us, record.event_id))
    e = record.event
    return Resolved(Event(record.at_us, record.event_id, e.type, e.name, from_struct(e.properties)))


# ------------------------------------------------------------------------------------------------
# Changes.


@dataclass(frozen=True, slots=True)
class Entered:
    name: str
    version: int
    reasons: tuple[Reason, ...]

    def to_event(self, workspace: str, profile_id: str, cause: str) -> pb.SegmentEntered:
        return pb.SegmentEntered(
            workspace=workspace,
            profile_id=profile_id,
            segment=self.name,
            definition_version=self.version,
            reasons=[r.to_proto() for r in self.reasons],
            cause_event_id=cause,
        )


@dataclass(frozen=True, slots=True)
class Exited:
    name: str
    version: int
    why: str  # "condition", "timer", "merged", "unmerged", "erased", "archived"

    def to_event(self, workspace: str, profile_id: str, cause: str) -> pb.SegmentExited:
        return pb.SegmentExited(
            workspace=workspace,
            profile_id=profile_id,
            segment=self.name,
            definition_version=self.version,
            cause_event_id=cause,
            why=self.why,
        )


@dataclass(frozen=True, slots=True)
class TagSet:
    name: str
    version: int
    value: str  # "" = removed
    reasons: tuple[Reason, ...]
    model: str = ""  # a model tag's model and version; "" for a definition's tag
    model_version: str = ""

    def to_event(self, workspace: str, profile_id: str, cause: str) -> pb.TagChanged:
        return pb.TagChanged(
            workspace=workspace,
            profile_id=profile_id,
            tag=self.name,
            value=self.value,
            definition_version=self.version,
            reasons=[r.to_proto() for r in self.reasons],
            cause_event_id=cause,
            model=self.model,
            model_version=self.model_version,
        )


@dataclass(frozen=True, slots=True)
class ComputedSet:
    name: str
    version: int
    value: Json  # None = none

    def to_event(self, workspace: str, profile_id: str, cause: str) -> pb.ComputedTraitChanged:
        message = pb.ComputedTraitChanged(
            workspace=workspace,
            profile_id=profile_id,
            name=self.name,
            definition_version=self.version,
            cause_event_id=cause,
        )
        message.value.CopyFrom(to_value(self.value))
        return message


Change = Entered | Exited | TagSet | ComputedSet


@dataclass(frozen=True, slots=True)
class Result:
    changes: list[Change]
    next_timer: Micros | None
    cause: str = ""  # identity's event id ("" = time passed)


# ------------------------------------------------------------------------------------------------
# State.


@dataclass(frozen=True, slots=True)
class Output:
    kind: str  # the definition's kind, to undo it the right way when it is archived; or MODEL_TAG
    value: Json  # segment: True; tag: its value; computed trait: its value
    since: Micros
    reasons: tuple[Reason, ...] = ()
    version: int = 0
    model: str = ""  # MODEL_TAG: the model and the version that gave the value
    model_version: str = ""


class Accumulators(MutableMapping[Feature, Accumulator]):
    """A profile's accumulators by feature, decoded from the stored state only when read.

    An event reads the few features it matches and the definitions it can affect read theirs; with
    a hundred definitions, decoding and re-encoding every accumulator of every profile an event
    touches would be most of the work. Untouched accumulators stay as the stored messages and are
    written back as they were. Expiry follows reads: `expire_at(now)` expires what is decoded and
    whatever is decoded later in the same pass, so an answer sees exactly what an eager expiry of
    every accumulator would have left (expiring is idempotent and depends only on `now`)."""

    __slots__ = ("_decoded", "_now", "_stored")

    def __init__(self) -> None:
        self._decoded: dict[Feature, Accumulator] = {}
        self._stored: dict[Feature, pb.FeatureState] = {}
        self._now: Micros | None = None

    def store(self, feature: Feature, message: pb.FeatureState) -> None:
        self._decoded.pop(feature, None)
        self._stored[feature] = message

    def expire_at(self, now: Micros | None) -> None:
        self._now = now
        if now is not None:
            for acc in self._decoded.values():
                acc.expire(now)

    def __getitem__(self, feature: Feature) -> Accumulator:
        acc = self._decoded.get(feature)
        if acc is None:
            acc = load_accumulator(feature, self._stored.pop(feature))  # KeyError when absent
            if self._now is not None:
                acc.expire(self._now)
            self._decoded[feature] = acc
        return acc

    def __setitem__(self, feature: Feature, acc: Accumulator) -> None:
        self._stored.pop(feature, None)
        self._decoded[feature] = acc

    def __delitem__(self, feature: Feature) -> None:
        if self._stored.pop(feature, None) is None:
            del self._decoded[feature]

    def holds_exactly(self, wanted: frozenset[Feature]) -> bool:
        """Whether the features kept are exactly `wanted` (without decoding any)."""
        return (
            len(self._decoded) + len(self._stored) == len(wanted)
            and wanted.issuperset(self._stored)
            and wanted.issuperset(self._decoded)
        )

    def __contains__(self, feature: object) -> bool:
        return feature in self._decoded or feature in self._stored

    def __iter__(self) -> Iterator[Feature]:
        yield from list(self._decoded)
        yield from list(self._stored)

    def __len__(self) -> int:
        return len(self._decoded) + len(self._stored)

    def messages(self) -> list[pb.FeatureState]:
        return [acc.to_proto() for acc in self._decoded.values()] + list(self._stored.values())


@dataclass
class ProfileState:
    profile_id: str = ""
    traits: dict[str, Json] = field(default_factory=dict)
    trait_at: dict[str, Occurrence] = field(default_factory=dict)
    features: Accumulators = field(default_factory=Accumulators)
    outputs: dict[str, Output] = field(default_factory=dict)
    due: dict[str, Micros] = field(default_factory=dict)
    started: bool = False

    def next_timer(self) -> Micros | None:
        return min(self.due.values(), default=None)

    def values(self) -> dict[str, Json]:
        """Every output's current value: what a batch recompute and an incremental fold agree on."""
        return {name: output.value for name, output in self.outputs.items()}

    def to_proto(self) -> pb.ProfileState:
        message = pb.ProfileState(profile_id=self.profile_id, started=self.started)
        message.traits.CopyFrom(to_struct(self.traits))
        for key, (at, event_id) in self.trait_at.items():
            message.trait_set_at[key].CopyFrom(pb.Occurrence(at_us=at, event_id=event_id))
        message.features.extend(self.features.messages())
        for name, output in sorted(self.outputs.items()):
            item = message.outputs.add(
                name=name,
                since_us=output.since,
                definition_version=output.version,
                kind=output.kind,
                model=output.model,
                model_version=output.model_version,
            )
            item.value.CopyFrom(to_value(output.value))
            item.reasons.extend(r.to_proto() for r in output.reasons)
        message.due_us.update(self.due)
        return message

    @staticmethod
    def from_proto(message: pb.ProfileState) -> ProfileState:
        state = ProfileState(profile_id=message.profile_id, started=message.started)
        state.traits = from_struct(message.traits)
        state.trait_at = {k: (o.at_us, o.event_id) for k, o in message.trait_set_at.items()}
        for item in message.features:
            state.features.store(feature_from_key(item.key), item)
        for o in message.outputs:
            reasons = tuple(Reason(r.condition, from_value(r.observed)) for r in o.reasons)
            state.outputs[o.name] = Output(
                o.kind,
                from_value(o.value),
                o.since_us,
                reasons,
                o.definition_version,
                o.model,
                o.model_version,
            )
        state.due = dict(message.due_us)
        return state


# ------------------------------------------------------------------------------------------------
# The fold.


def apply(
    workspace: Workspace, state: ProfileState, item: Input, now: Micros, held: frozenset[str] = frozenset()
) -> Result:
    """Fold one identity input at `now` (the processing moment; windows are measured from it).
    `held` definitions (and what reads them) are not evaluated: a backfill will, once it has rebuilt
    their features from the profile's history (until then their answer would rest on part of it)."""
    _sync(workspace, state)
    keys: set[Feature | TraitKey] = set()
    everything = False
    why = "condition"
    if isinstance(item, Resolved):
        for feature in workspace.watching(item.event.type, item.event.name):
            if isinstance(feature, After):
                if matches(feature.after, item.event):
                    after = state.features[feature]
                    assert isinstance(after, AfterAcc)
                    after.observe_after(item.event)
                    keys.add(feature)
                if matches(feature.then_not, item.event):
                    after = state.features[feature]
                    assert isinstance(after, AfterAcc)
                    after.observe_then_not(item.event)
                    keys.add(feature)
            elif matches(feature.filter, item.event):
                acc = state.features[feature]
                assert not isinstance(acc, AfterAcc)
                acc.observe(item.event)
                keys.add(feature)
    elif isinstance(item, TraitsSet):
        for key, value in item.traits.items():
            if _set_trait(state, key, value, item.at):
                keys.add(TraitKey(key))
    else:
        other = item.other
        for key, value in other.traits.items():
            _set_trait(state, key, value, other.trait_at.get(key, (0, "")))
        for feature, acc in other.features.items():
            if feature in state.features:
                merge(state.features[feature], acc)
        everything, why = True, "merged"
    return _settle(workspace, state, now, keys, everything, why, item.cause, held=held)


def tag_by_model(
    workspace: Workspace,
    state: ProfileState,
    item: ModelTagged,
    now: Micros,
    held: frozenset[str] = frozenset(),
) -> Result:
    """Record a model's tag (or its removal) and re-evaluate what reads it. Ignored where a definition
    has the tag's name: the definition's tag is the profile's."""
    _sync(workspace, state)
    if item.tag in workspace.definitions:
        return Result([], state.next_timer(), item.cause)
    changes: list[Change] = []
    previous = state.outputs.get(item.tag)
    if not item.value:
        if previous is not None:
            del state.outputs[item.tag]
            changes.append(_undo(item.tag, previous, "condition", previous.version))
    elif previous is None or canonical(previous.value) != canonical(item.value):
        # The score explains the value, as a definition's reasons do (sealed like them).
        reasons = (Reason(f"model {item.model_version} score", item.score),)
        output = Output(MODEL_TAG, item.value, now, reasons, 0, item.model, item.model_version)
        state.outputs[item.tag] = output
        changes.append(_announce(item.tag, output))
    else:
        return Result([], state.next_timer(), item.cause)  # delivered again: nothing changed
    readers = workspace.model_readers.get(item.tag, ())
    settled = _settle(workspace, state, now, set(), False, "condition", item.cause, extra=readers, held=held)
    return Result([*changes, *settled.changes], settled.next_timer, item.cause)


def advance(
    workspace: Workspace, state: ProfileState, now: Micros, held: frozenset[str] = frozenset()
) -> Result:
    """A timer fired: evaluate what is due at or before `now` (and what reads it)."""
    _sync(workspace, state)
    return _settle(workspace, state, now, set(), False, "timer", "", held=held)


def recompute(
    workspace: Workspace,
    state: ProfileState,
    now: Micros,
    names: Iterable[str] | None = None,
    held: frozenset[str] = frozenset(),
) -> Result:
    """Evaluate the named definitions (default: all, BATCH ones included) and what reads them: a
    scheduled BATCH run, or a definition just backfilled."""
    _sync(workspace, state)
    chosen = list(workspace.order) if names is None else list(names)
    return _settle(workspace, state, now, set(), False, "condition", "", extra=chosen, held=held)


def backfill(
    workspace: Workspace,
    state: ProfileState,
    history: Iterable[Event],
    features: Iterable[Feature],
    now: Micros,
    names: Iterable[str] = (),
    held: frozenset[str] = frozenset(),
) -> Result:
    """A new or changed definition needs features the profile's accumulators never saw: rebuild
    those (and only those: the others observed every event already) from the profile's history
    records, then re-evaluate the definitions reading them. Idempotent: the features restart empty,
    so a backfill resumed after a crash, or racing events that arrived live meanwhile (they are in
    the history too), counts each event once."""
    _sync(workspace, state)
    fresh = {f: new_accumulator(f) for f in features if f in state.features}
    state.features.update(fresh)
    for e in history:
        for feature, acc in fresh.items():
            if isinstance(acc, AfterAcc):
                assert isinstance(feature, After)
                if matches(feature.after, e):
                    acc.observe_after(e)
                if matches(feature.then_not, e):
                    acc.observe_then_not(e)
            elif not isinstance(feature, After) and matches(feature.filter, e):
                acc.observe(e)
    readers = [n for n in workspace.order if set(workspace.definitions[n].features) & fresh.keys()]
    return recompute(workspace, state, now, [*readers, *names], held)


def close(state: ProfileState, why: str, versions: Mapping[str, int] | None = None) -> Result:
    """Every output of the profile withdrawn (it was merged into another, or erased): the exits and
    removals to append on its stream. The state is emptied of outputs and timers."""
    changes = [
        _undo(name, output, why, (versions or {}).get(name, output.version))
        for name, output in sorted(state.outputs.items())
    ]
    state.outputs.clear()
    state.due.clear()
    return Result(changes, None)


def rebuild(
    workspace: Workspace,
    profile_id: str,
    inputs: Iterable[Input],
    now: Micros,
    previous: ProfileState | None,
    why: str,
) -> tuple[ProfileState, Result]:
    """A profile's state folded afresh from its inputs (a part of an unmerged profile, from the
    history records that go with it), and the changes from what `previous` had emitted."""
    state = ProfileState(profile_id)
    if previous is not None:  # a model tag is the kept profile's until the model says otherwise
        state.outputs.update({n: o for n, o in previous.outputs.items() if o.kind == MODEL_TAG})
    for item in inputs:
        apply(workspace, state, item, now)
    recompute(workspace, state, now)
    before = previous.outputs if previous is not None else {}
    changes: list[Change] = []
    for name in [n for n in workspace.order if n in before or n in state.outputs]:
        old, new = before.get(name), state.outputs.get(name)
        if new is None:
            assert old is not None
            changes.append(_undo(name, old, why, old.version))
        elif old is None or canonical(old.value) != canonical(new.value):
            changes.append(_announce(name, new))
    for name in sorted(set(before) - set(workspace.order) - set(state.outputs)):
        changes.append(_undo(name, before[name], "archived", before[name].version))
    return state, Result(changes, state.next_timer())


def _set_trait(state: ProfileState, key: str, value: Json, at: Occurrence) -> bool:
    current = state.trait_at.get(key)
    if current is not None and at < current:
        return False
    changed = key not in state.traits or canonical(state.traits[key]) != canonical(value)
    state.traits[key] = value
    state.trait_at[key] = at
    return changed


def _sync(workspace: Workspace, state: ProfileState) -> None:
    """Accumulators for exactly the workspace's features (a new feature starts empty: the
    application backfills it from history; a feature no definition needs any more is dropped)."""
    if state.features.holds_exactly(workspace.feature_set):
        return
    for feature in workspace.features:
        if feature not in state.features:
            state.features[feature] = new_accumulator(feature)
    for feature in [f for f in state.features if f not in workspace.feature_set]:
        del state.features[feature]


def _settle(
    workspace: Workspace,
    state: ProfileState,
    now: Micros,
    keys: set[Feature | TraitKey],
    everything: bool,
    why: str,
    cause: str,
    extra: Iterable[str] = (),
    held: frozenset[str] = frozenset(),
) -> Result:
    state.features.expire_at(now)
    changes: list[Change] = []
    for name in sorted(set(state.outputs) - set(workspace.definitions)):
        if state.outputs[name].kind == MODEL_TAG:
            continue  # no definition: the model's to withdraw
        gone = state.outputs.pop(name)
        changes.append(_undo(name, gone, "archived", gone.version))
    for name in [
        n for n in state.due if n not in workspace.definitions or not workspace.definitions[n].realtime
    ]:
        del state.due[name]
    chosen: set[str]
    if everything or not state.started:
        chosen = {n for n in workspace.order if workspace.definitions[n].realtime}
        state.started = True
    else:
        chosen = set(workspace.affected(keys, [n for n, moment in state.due.items() if moment <= now]))
    explicit = [n for n in extra if n in workspace.definitions]
    chosen.update(explicit, workspace.affected((), explicit))
    names = [n for n in workspace.order if n in chosen and n not in held]
    outputs = {name: output.value for name, output in state.outputs.items()}
    for name in names:
        compiled = workspace.definitions[name]
        view = View(state.traits, state.features, outputs, now, workspace.rfm_boundaries)
        answer = evaluate(compiled, view)
        if answer.due is None or not compiled.realtime:  # BATCH: only on its schedule
            state.due.pop(name, None)
        else:
            state.due[name] = answer.due
        change = _compare(compiled, state, answer, now, why)
        if change is not None:
            changes.append(change)
        outputs[name] = answer.value
        if answer.value is None:
            outputs.pop(name)
    state.features.expire_at(None)  # the next input observes before it expires, as here
    return Result(changes, state.next_timer(), cause)


def _compare(compiled: Compiled, state: ProfileState, answer: Answer, now: Micros, why: str) -> Change | None:
    name, previous = compiled.name, state.outputs.get(compiled.name)
    if previous is not None and previous.kind == MODEL_TAG:
        # A definition now has a model tag's name: its answer is the profile's tag from here on.
        del state.outputs[name]
        if answer.value is None:
            return _undo(name, previous, why, previous.version)
        previous = None
    if answer.value is None:
        if previous is None:
            return None
        del state.outputs[name]
        return _undo(name, previous, why, compiled.version)
    if previous is not None and canonical(previous.value) == canonical(answer.value):
        if previous.reasons != answer.reasons:  # the same answer for newer reasons: shown, not announced
            state.outputs[name] = dataclasses.replace(previous, reasons=answer.reasons)
        return None
    output = state.outputs[name] = Output(compiled.kind, answer.value, now, answer.reasons, compiled.version)
    return _announce(name, output)


def _announce(name: str, output: Output) -> Change:
    if output.kind == "segment":
        return Entered(name, output.version, output.reasons)
    if output.kind == "computed_trait":
        return ComputedSet(name, output.version, output.value)
    return TagSet(name, output.version, str(output.value), output.reasons, output.model, output.model_version)


def _undo(name: str, output: Output, why: str, version: int) -> Change:
    if output.kind == "segment":
        return Exited(name, version, why)
    if output.kind == "computed_trait":
        return ComputedSet(name, version, None)
    return TagSet(name, version, "", (), output.model, output.model_version)
