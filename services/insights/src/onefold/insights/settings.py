"""The insights service's own settings: the `insights` section of onefold.yaml
(`ONEFOLD_INSIGHTS__<KEY>`); other services keep this section unread.

```yaml
insights:
  warehouse: ""                  # the DuckDB file; "" = insights.duckdb in the data dir
  threads: 2                     # DuckDB's threads for an analysis
  allowed_properties: [coupon]   # event properties copied for analyses (never personal ones)
  tags: [lifecycle_stage, rfm]   # segments' tags copied, over time, for ROI by stage
```
"""

from __future__ import annotations

from pydantic import Field

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
