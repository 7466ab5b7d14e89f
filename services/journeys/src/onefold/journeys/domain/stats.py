"""The uplift of a journey over its control group (the counters it rests on are the read model's,
adapters/read_model.py, summed by application/queries.py).

Uplift compares instances that a split assigned to a treated arm with those it held out (a control
arm): conversion(treated) - conversion(control), an instance converting when it reached any goal,
with a 95% confidence interval from the normal approximation of a difference of two proportions,
p1 - p0 ± 1.96 * sqrt(p1(1-p1)/n1 + p0(1-p0)/n0). With either group empty there is no uplift to state.

Counters are kept per journey version, so a report can be for one version or all of them. Revenue
per person is personal (sealed in GoalReached under the profile's data key); the read model keeps
only the sum, and a rebuild after a person's erasure counts their revenue as 0, as it should.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from onefold.contracts.journeys.v1 import journeys_pb2 as pb

Z_95 = 1.959963984540054  # the standard normal quantile of 0.975


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
