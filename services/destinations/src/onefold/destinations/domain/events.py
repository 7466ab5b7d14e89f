"""The events the destinations service records in its log: declared once, in its proto (the
messages of `protos/onefold/destinations/v1/destinations.proto` with
`option (onefold.options.v1.event_schema_version)`). The fold reading a destination's versions is
`domain/definitions.py` (`DestinationVersions`); the read model is `adapters/read_model.py`."""

from __future__ import annotations

from google.protobuf.message import Message

from onefold.contracts.destinations.v1 import destinations_pb2
from onefold.eventlog import EventRegistry


def replay_v1_to_v2(replay: Message) -> Message:
    """A version 1 replay queued suppressed deliveries again too (version 2 does not)."""
    assert isinstance(replay, destinations_pb2.DeliveriesReplayed)
    replay.suppressed_too = True
    return replay


REGISTRY = EventRegistry.declared_in(
    destinations_pb2,
    upcasters={destinations_pb2.DeliveriesReplayed.DESCRIPTOR.full_name: {1: replay_v1_to_v2}},
)
