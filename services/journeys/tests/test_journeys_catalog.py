"""A journey's versions and lifecycle: draft → published → paused → archived, versions kept."""

from __future__ import annotations

from datetime import UTC

import pytest
from google.protobuf.message import Message
from journeys_domain_builders import T0, cart_journey, journey

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.journeys.domain import catalog as lifecycle
from onefold.journeys.domain.catalog import Catalog
from onefold.journeys.domain.definitions import compile_journey
from onefold.platform.errors import FailedPrecondition, NotFound


def applied(catalog: Catalog, events: list[Message]) -> list[Message]:
    for event in events:
        catalog.apply(event)
    return events


def test_versions_are_saved_as_drafts_and_the_published_one_is_entered() -> None:
    catalog = Catalog()
    first = journey(cart_journey(), version=0)
    (saved,) = applied(catalog, lifecycle.save(catalog, "acme", first, "ana", T0))
    assert isinstance(saved, pb.JourneyDraftSaved) and saved.journey.version == 1
    assert catalog.status == pb.JOURNEY_STATUS_DRAFT and not catalog.running
    # The same code again (even with server-set fields filled in) is no new version.
    again = journey(cart_journey(), version=7)
    again.status = pb.JOURNEY_STATUS_PUBLISHED
    assert lifecycle.save(catalog, "acme", again, "ana", T0) == []
    applied(catalog, lifecycle.publish(catalog, "acme", "abandoned_cart", 0, "ana"))
    assert catalog.running and catalog.published == 1
    assert lifecycle.publish(catalog, "acme", "abandoned_cart", 1, "ana") == []

    changed = journey(cart_journey(description="shorter wait"), version=0)
    applied(catalog, lifecycle.save(catalog, "acme", changed, "bo", T0))
    assert catalog.latest == 2 and catalog.published == 1  # a draft does not replace the live version
    applied(catalog, lifecycle.publish(catalog, "acme", "abandoned_cart", 2, "bo"))
    assert catalog.published == 2
    # Version 1 stays: its instances in flight still run it.
    assert catalog.version(1).description == "" and catalog.version(2).description == "shorter wait"
    assert catalog.version(2).status == pb.JOURNEY_STATUS_PUBLISHED and catalog.version(2).updated_by == "bo"
    assert compile_journey(catalog.version(1)).version == 1
    assert catalog.version(2).updated_at.ToDatetime(tzinfo=UTC) == T0
    assert lifecycle.definition_stream("acme", "abandoned_cart") == "journeys-definition:acme:abandoned_cart"


def test_pause_holds_publish_resumes_archive_is_final() -> None:
    catalog = Catalog()
    applied(catalog, lifecycle.save(catalog, "acme", journey(cart_journey()), "ana", T0))
    with pytest.raises(FailedPrecondition):
        lifecycle.pause(catalog, "acme", "abandoned_cart", "ana")  # never published
    applied(catalog, lifecycle.publish(catalog, "acme", "abandoned_cart", 0, "ana"))
    applied(catalog, lifecycle.pause(catalog, "acme", "abandoned_cart", "ana"))
    assert catalog.status == pb.JOURNEY_STATUS_PAUSED and not catalog.running
    assert lifecycle.pause(catalog, "acme", "abandoned_cart", "ana") == []
    applied(catalog, lifecycle.publish(catalog, "acme", "abandoned_cart", 0, "ana"))
    assert catalog.running
    (archived,) = applied(catalog, lifecycle.archive(catalog, "acme", "abandoned_cart", "ana"))
    assert isinstance(archived, pb.JourneyArchived)
    assert catalog.status == pb.JOURNEY_STATUS_ARCHIVED and not catalog.running
    assert lifecycle.archive(catalog, "acme", "abandoned_cart", "ana") == []
    for refused in (
        lambda: lifecycle.save(catalog, "acme", journey(cart_journey(description="x")), "ana", T0),
        lambda: lifecycle.publish(catalog, "acme", "abandoned_cart", 0, "ana"),
        lambda: lifecycle.pause(catalog, "acme", "abandoned_cart", "ana"),
    ):
        with pytest.raises(FailedPrecondition):
            refused()


def test_unknown_versions_and_journeys() -> None:
    catalog = Catalog()
    with pytest.raises(NotFound):
        catalog.version()
    with pytest.raises(NotFound):
        lifecycle.archive(catalog, "acme", "nothing", "ana")
    applied(catalog, lifecycle.save(catalog, "acme", journey(cart_journey()), "ana", T0))
    with pytest.raises(NotFound):
        lifecycle.publish(catalog, "acme", "abandoned_cart", 5, "ana")
    with pytest.raises(NotFound):
        catalog.version(5)


def test_the_fold_of_the_stream_equals_the_state_built_step_by_step() -> None:
    live = Catalog()
    log: list[Message] = []
    log += applied(live, lifecycle.save(live, "acme", journey(cart_journey()), "ana", T0))
    log += applied(live, lifecycle.publish(live, "acme", "abandoned_cart", 0, "ana"))
    log += applied(live, lifecycle.pause(live, "acme", "abandoned_cart", "ana"))
    assert Catalog.fold(log) == live
