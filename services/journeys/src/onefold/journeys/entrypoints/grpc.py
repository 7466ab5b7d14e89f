"""gRPC servicers of the journeys service: they translate requests, call the application and
translate its answers — no SQL, no business rules. Until its API lands the service serves the
platform's own (health, reflection, onefold.platform.v1.PlatformService, the event log's) and the
data-subject contract."""

from __future__ import annotations

from collections.abc import Sequence

from onefold.journeys.application import JourneysApplication
from onefold.platform import data_subject
from onefold.platform.grpc_server import ServiceRegistration


def registrations(application: JourneysApplication) -> Sequence[ServiceRegistration]:
    # What journeys holds about a person is keyed by profile id.
    return (data_subject.registration(data_subject.ByProfileServicer(application)),)
