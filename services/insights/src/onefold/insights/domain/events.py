"""The events the insights service records in its log, declared in its protos: the model versions
trained and the model tags given to profiles (models.proto). The analytical copy itself is fed from
the other services' streams and records nothing; insights.proto declares none yet, and is read too
so that an event declared there later is registered without a change here."""

from __future__ import annotations

from onefold.contracts.insights.v1 import insights_pb2, models_pb2
from onefold.eventlog import EventRegistry

REGISTRY = EventRegistry.declared_in(insights_pb2, models_pb2)
