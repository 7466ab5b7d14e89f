"""The events the segments service records in its log: declared once, in its proto.

Segments appends none yet: its events are declared in `protos/onefold/segments/v1/segments.proto`
(the messages with `option (onefold.options.v1.event_schema_version)`), and the pure fold that
produces them is in `domain/fold.py`. This becomes `EventRegistry.declared_in(segments_pb2)` in the
same change that adds the read model folding them, so the events-handled check holds at every step.
"""

from __future__ import annotations

from onefold.eventlog import EventRegistry

REGISTRY = EventRegistry.declared_in()
