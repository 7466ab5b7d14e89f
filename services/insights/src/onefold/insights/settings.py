"""The insights service's own settings: the `insights` section of onefold.yaml
(`ONEFOLD_INSIGHTS__<KEY>`); other services keep this section unread.

```yaml
insights:
  warehouse: ""                  # the DuckDB file; "" = insights.duckdb in the data dir
  threads: 2                     # DuckDB's threads for an analysis
  allowed_properties: [coupon]   # event properties copied for analyses (never personal ones)
  tags: [lifecycle_stage, rfm]   # segments' tags copied, over time, for ROI by stage
  retrain: "0 3 * * *"           # when the models are retrained (cron, UTC; "" = only on TrainModels)
  seed: 0                        # the models' random seed: the same history and seed, the same models
```
"""

from __future__ import annotations

from croniter import croniter
from pydantic import Field, field_validator

from onefold.platform.config import ServiceSection


class InsightsSettings(ServiceSection):
    section = "insights"

    warehouse: str = Field(default="", description='the DuckDB file; "" = insights.duckdb in the data dir')
    threads: int = Field(default=2, ge=1, le=64, description="DuckDB threads per analysis")
    allowed_properties: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="event properties copied by name for analyses; list only what is never personal",
    )
    tags: list[str] = Field(
        default_factory=lambda: ["lifecycle_stage", "rfm"],
        max_length=100,
        description="segments' tags whose values over time are copied (ROI per lifecycle stage)",
    )
    retrain: str = Field(
        default="0 3 * * *",
        description='when the models are retrained and their tags written back (cron, UTC); "" = only on TrainModels',
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="the models' random seed")

    @field_validator("retrain")
    @classmethod
    def _cron_schedule(cls, value: str) -> str:
        schedule = value.strip()
        if schedule and not croniter.is_valid(schedule):
            raise ValueError(
                f"{schedule!r} is not a cron schedule (five fields: minute hour day month weekday, "
                'e.g. "0 3 * * *" for 03:00 UTC daily; "" to retrain only on TrainModels)'
            )
        return schedule
