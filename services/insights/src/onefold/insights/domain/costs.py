"""A campaign's cost over a period, checked before it is recorded: the figure ROI divides by."""

from __future__ import annotations

import math
import re

from onefold.contracts.insights.v1 import insights_pb2 as pb
from onefold.platform.errors import InvalidArgument

MAX_CAMPAIGN_CHARS = 200
MAX_CHANNEL_CHARS = 50
MAX_AMOUNT = 1e12
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def checked_cost(cost: pb.CampaignCost) -> pb.CampaignCost:
    """The cost as it will be recorded (names trimmed), or INVALID_ARGUMENT naming every bad field."""
    violations: list[tuple[str, str]] = []
    campaign, channel = cost.campaign.strip(), cost.channel.strip()
    if not campaign or len(campaign) > MAX_CAMPAIGN_CHARS:
        violations.append(("cost.campaign", f"1 to {MAX_CAMPAIGN_CHARS} characters"))
    if len(channel) > MAX_CHANNEL_CHARS:
        violations.append(("cost.channel", f"at most {MAX_CHANNEL_CHARS} characters"))
    if not cost.HasField("period_start") or not cost.HasField("period_end"):
        violations.append(("cost.period_start", "the period's start and end are required"))
    elif cost.period_end.ToDatetime() <= cost.period_start.ToDatetime():
        violations.append(("cost.period_end", "must be after period_start"))
    if not math.isfinite(cost.amount) or not 0 <= cost.amount <= MAX_AMOUNT:
        violations.append(("cost.amount", f"a number from 0 to {MAX_AMOUNT:,.0f}"))
    if not _CURRENCY.match(cost.currency):
        violations.append(("cost.currency", "an ISO 4217 code of three capital letters, e.g. EUR"))
    if violations:
        raise InvalidArgument(
            "the campaign cost is not valid: " + "; ".join(f for f, _ in violations), violations=violations
        )
    checked = pb.CampaignCost()
    checked.CopyFrom(cost)
    checked.campaign, checked.channel = campaign, channel
    return checked
