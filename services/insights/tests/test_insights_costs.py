"""A campaign cost is checked before it is recorded: every bad field named, names trimmed."""

from __future__ import annotations

from datetime import datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from onefold.contracts.insights.v1 import insights_pb2 as pb
from onefold.insights.domain.costs import checked_cost
from onefold.platform.errors import InvalidArgument


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_a_good_cost_is_kept_with_its_names_trimmed_and_bad_fields_are_named_together() -> None:
    good = pb.CampaignCost(
        campaign=" spring ",
        channel="email",
        period_start=_stamp(datetime(2026, 3, 1)),
        period_end=_stamp(datetime(2026, 4, 1)),
        amount=1200.5,
        currency="EUR",
    )
    assert checked_cost(good).campaign == "spring" and checked_cost(good).amount == 1200.5

    bad = pb.CampaignCost(
        campaign="",
        period_start=_stamp(datetime(2026, 4, 1)),
        period_end=_stamp(datetime(2026, 3, 1)),
        amount=-1,
        currency="euro",
    )
    with pytest.raises(InvalidArgument) as refused:
        checked_cost(bad)
    assert [field for field, _ in refused.value.violations] == [
        "cost.campaign",
        "cost.period_end",
        "cost.amount",
        "cost.currency",
    ]
    with pytest.raises(InvalidArgument, match=r"cost\.period_start"):
        checked_cost(pb.CampaignCost(campaign="x", amount=1, currency="EUR"))
