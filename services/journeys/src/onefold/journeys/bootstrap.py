"""Composition root of the journeys service: its log and read model, the channels (providers and
the sandbox, sealed under the profiles' keys), the clients of consent and segments, the
application on them, and the service around them (servicers, the identity, segments and consent
subscribers, and — on the leader — the timer, sender and schedule loops), built in that order. Nothing runs
at import time; `main()` hands `compose` to the platform runner (`python -m onefold.journeys`)."""

from __future__ import annotations

from onefold.eventlog.service import ClosedAtStop, EventSourcedService, Loop, ServiceLog, open_event_store
from onefold.journeys.adapters.providers.factory import build_channels
from onefold.journeys.adapters.providers.sandbox import SEALED_PURPOSE
from onefold.journeys.adapters.providers.sealing import SubjectKeySealer
from onefold.journeys.adapters.read_model import JourneysReadModel
from onefold.journeys.adapters.upstream import Upstream
from onefold.journeys.application import JourneysApplication
from onefold.journeys.domain import events
from onefold.journeys.domain.instance import subject_of
from onefold.journeys.entrypoints import consumers, grpc
from onefold.journeys.settings import JourneysSettings
from onefold.platform.client import Peers
from onefold.platform.service import ServiceContext, ServiceSpec, run_service

SERVICE_NAME = "journeys"


def compose(ctx: ServiceContext) -> EventSourcedService[JourneysApplication]:
    log = ServiceLog(open_event_store(ctx, events.REGISTRY), projections=[JourneysReadModel()])
    settings = ctx.settings.section(JourneysSettings)
    channels = build_channels(
        settings.channels,
        data_dir=ctx.settings.data_dir,
        sealer=SubjectKeySealer(log, subject_of, SEALED_PURPOSE),
    )
    peers = Peers(ctx.settings.peers.model_dump(), ctx.settings.auth.service_token)
    upstream = Upstream(peers, settings.consent_timeout_seconds)
    application = JourneysApplication(log, upstream, channels, policy=settings.pacing())
    leading = log.leading.is_set
    return EventSourcedService(
        ctx,
        log,
        application,
        servicers=grpc.registrations(application),
        subscriptions=consumers.subscriptions(application.runs),
        components=[
            ClosedAtStop(peers.close, channels.aclose),
            Loop("journeys-timers", lambda: application.run_timers(leading)),
            Loop("journeys-sender", lambda: application.run_sender(leading)),
            Loop("journeys-schedules", lambda: application.run_schedules(leading)),
        ],
    )


def main() -> int:
    return run_service(ServiceSpec(name=SERVICE_NAME, compose=compose, sections=[JourneysSettings]))
