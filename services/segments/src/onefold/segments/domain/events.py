"""The events the segments service records in its log: declared once, in its proto (the messages of
`protos/onefold/segments/v1/segments.proto` with `option (onefold.options.v1.event_schema_version)`).
The pure fold that decides them is `domain/fold.py`; the read model folding them is
`adapters/read_model.py`."""

from __future__ import annotations

from onefold.contracts.segments.v1 import segments_pb2
from onefold.eventlog import EventRegistry

REGISTRY = EventRegistry.declared_in(segments_pb2)
