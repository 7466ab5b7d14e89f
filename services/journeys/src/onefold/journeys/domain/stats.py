"""A journey's counters, folded from its instances' events: entries, exits (by reason), per step
what was entered, queued, sent, suppressed, delivered and failed, conversions and revenue, and the
uplift of the journey over its control group.

Uplift compares instances that a split assigned to a treated arm with those it held out (a control
arm): conversion(treated) - conversion(control), an instance converting when it reached any goal,
with a 95% confidence interval from the normal approximation of a difference of two proportions,
p1 - p0 ± 1.96 * sqrt(p1(1-p1)/n1 + p0(1-p0)/n0). With either group empty there is no uplift to state.

Counters are kept per journey version, so a report can be for one version or all of them. Revenue
is personal (sealed with the profile's data key): a rebuild after a person's erasure counts their
revenue as 0, as it should.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from google.protobuf.message import Message

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.journeys.domain.instance import MESSAGE_OUTCOME

Z_95 = 1.959963984540054  # the standard normal quantile of 0.975

InstanceKey = tuple[str, str, int]  # (profile_id, entity_key, entry_seq): one entry of one instance


@dataclass
class VersionCounters:
    entered: int = 0
    exits: Counter[str] = field(default_factory=Counter)
    steps: dict[str, Counter[str]] = field(default_factory=dict)  # step -> "entered", "queued", …
    message_steps: dict[str, str] = field(default_factory=dict)  # message id -> its step
    converted: set[InstanceKey] = field(default_factory=set)
    revenue: float = 0.0
    treated: set[InstanceKey] = field(default_factory=set)
    control: set[InstanceKey] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Uplift:
    treated: int
    treated_converted: int
    control: int
    control_converted: int

    @property
    def uplift(self) -> float:
        return self.treated_converted / self.treated - self.control_converted / self.control

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% confidence interval of the uplift."""
        p1 = self.treated_converted / self.treated
        p0 = self.control_converted / self.control
        half = Z_95 * math.sqrt(p1 * (1 - p1) / self.treated + p0 * (1 - p0) / self.control)
        return self.uplift - half, self.uplift + half

    def to_proto(self) -> pb.Uplift:
        low, high = self.interval
        return pb.Uplift(
            treated=self.treated,
            treated_converted=self.treated_converted,
            control=self.control,
            control_converted=self.control_converted,
            uplift=self.uplift,
            ci_low=low,
            ci_high=high,
        )


def uplift(treated: int, treated_converted: int, control: int, control_converted: int) -> Uplift | None:
    if treated == 0 or control == 0:
        return None
    return Uplift(treated, treated_converted, control, control_converted)


@dataclass
class Stats(Handlers):
    """Every journey's counters, by (journey, version)."""

    versions: dict[tuple[str, int], VersionCounters] = field(default_factory=dict)

    def apply(self, message: Message) -> None:
        self.dispatch(message, message)

    def _of(self, ref: pb.InstanceRef) -> VersionCounters:
        return self.versions.setdefault((ref.journey, ref.version), VersionCounters())

    def _step(self, ref: pb.InstanceRef, step: str) -> Counter[str]:
        return self._of(ref).steps.setdefault(step, Counter())

    @handles(pb.JourneyEntered)
    def _entered(self, message: pb.JourneyEntered) -> None:
        self._of(message.instance).entered += 1

    @handles(pb.StepEntered)
    def _step_entered(self, message: pb.StepEntered) -> None:
        self._step(message.instance, message.step)["entered"] += 1

    @handles(pb.SplitAssigned)
    def _split(self, message: pb.SplitAssigned) -> None:
        counters = self._of(message.instance)
        (counters.control if message.control else counters.treated).add(_key(message.instance))

    @handles(pb.MessageQueued)
    def _queued(self, message: pb.MessageQueued) -> None:
        self._of(message.instance).message_steps[message.message_id] = message.step
        self._step(message.instance, message.step)["queued"] += 1

    @handles(pb.MessageSent, pb.MessageSuppressed, pb.MessageDelivered, pb.MessageFailed)
    def _message(
        self, message: pb.MessageSent | pb.MessageSuppressed | pb.MessageDelivered | pb.MessageFailed
    ) -> None:
        step = self._of(message.instance).message_steps.get(message.message_id)
        if step is not None:
            self._step(message.instance, step)[MESSAGE_OUTCOME[type(message)]] += 1

    @handles(pb.GoalReached)
    def _goal(self, message: pb.GoalReached) -> None:
        counters = self._of(message.instance)
        counters.converted.add(_key(message.instance))
        counters.revenue += message.revenue

    @handles(pb.JourneyExited)
    def _exited(self, message: pb.JourneyExited) -> None:
        self._of(message.instance).exits[message.reason] += 1

    def report(self, journey: str, version: int = 0) -> pb.JourneyStatsResponse:
        """The journey's counters: of one version, or (0) of all of them."""
        chosen = [
            counters
            for (name, number), counters in sorted(self.versions.items())
            if name == journey and version in (0, number)
        ]
        exits: Counter[str] = sum((c.exits for c in chosen), Counter())
        steps: dict[str, Counter[str]] = {}
        for counters in chosen:
            for step, counted in counters.steps.items():
                steps.setdefault(step, Counter()).update(counted)
        entered = sum(c.entered for c in chosen)
        exited = sum(exits.values())
        response = pb.JourneyStatsResponse(
            journey=journey,
            entered=entered,
            active=entered - exited,
            exited=exited,
            # An entry runs one version, so the versions' sets of converted entries are disjoint.
            converted=sum(len(c.converted) for c in chosen),
            revenue=sum(c.revenue for c in chosen),
            exits_by_reason=dict(exits),
            steps=[
                pb.StepStats(
                    step=step,
                    entered=counted["entered"],
                    queued=counted["queued"],
                    sent=counted["sent"],
                    suppressed=counted["suppressed"],
                    delivered=counted["delivered"],
                    failed=counted["failed"],
                )
                for step, counted in sorted(steps.items())
            ],
        )
        measured = uplift(
            sum(len(c.treated) for c in chosen),
            sum(len(c.treated & c.converted) for c in chosen),
            sum(len(c.control) for c in chosen),
            sum(len(c.control & c.converted) for c in chosen),
        )
        if measured is not None:
            response.uplift.CopyFrom(measured.to_proto())
        return response


def _key(ref: pb.InstanceRef) -> InstanceKey:
    return (ref.profile_id, ref.entity_key, ref.entry_seq)
