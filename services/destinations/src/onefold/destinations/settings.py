"""The destinations service's own settings: the `destinations` section of onefold.yaml
(`ONEFOLD_DESTINATIONS__<KEY>`); other services keep this section unread.

```yaml
destinations:
  consent_timeout_seconds: 5   # CheckConsentBatch before each batch of deliveries
```

What each destination delivers to, and how, is its definition (`onefold apply -f`); a database
URL holding a password is read from the environment variable the definition names.
"""

from __future__ import annotations

from pydantic import Field

from onefold.platform.config import ServiceSection


class DestinationsSettings(ServiceSection):
    section = "destinations"

    consent_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
