"""Every event identity declares is folded somewhere, and everything folded is declared."""

from __future__ import annotations

from onefold.identity.adapters.read_model import IdentityProjection
from onefold.identity.domain.events import REGISTRY
from onefold.identity.domain.fold import GraphFold
from onefold.identity.domain.profile import MergeHistory, ProfileAssembly
from onefold.testing.events import assert_events_handled


def test_every_identity_event_is_handled() -> None:
    assert_events_handled(REGISTRY, GraphFold, IdentityProjection, ProfileAssembly, MergeHistory)


def test_the_registry_holds_exactly_the_identity_events() -> None:
    assert REGISTRY.names() == sorted(
        f"onefold.identity.v1.{name}"
        for name in (
            "ProfileCreated",
            "IdentifierLinked",
            "LinkRefused",
            "ProfilesMerged",
            "ProfileUnmerged",
            "TraitsUpdated",
            "EventResolved",
            "IdentityRulesSet",
            "ProfileProtectionSet",
            "ProfileErased",
        )
    )
