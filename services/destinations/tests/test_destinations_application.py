"""The destinations application end to end in process: upstream envelopes routed as deliveries,
consent asked of the REAL consent service, delivered to REAL receivers (a signed webhook receiver,
PostgreSQL, files), through outages, retries, dead letters, replay, withdrawal and erasure."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from destinations_harness import (
    WORKSPACE,
    DestinationsFactory,
    DestinationsHarness,
    destination,
)
from prometheus_client import REGISTRY

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.application.routing import subject_of
from onefold.destinations.domain.definitions import Known
from onefold.platform.errors import FailedPrecondition, InvalidArgument
from onefold.testing.consent import ConsentService
from onefold.testing.webhooks import WebhookReceiver


async def known_without_consent(workspace: str) -> Known:
    """What a destination may name, when consent (asked by `Upstream.known`) is not reachable."""
    return Known(purposes=frozenset({"crm_sync"}), segments=frozenset({"vip"}))


async def known_with_ads(workspace: str) -> Known:
    """What a destination may name with a purpose, `ads`, that consent's model does not define."""
    return Known(purposes=frozenset({"crm_sync", "ads"}), segments=frozenset({"vip"}))


def delivered_counter(name: str) -> float:
    found = REGISTRY.get_sample_value(
        "onefold_destination_deliveries_total", {"destination": name, "outcome": "delivered"}
    )
    return found or 0.0


ORDERS = {"type": "track", "name": "Order Completed", "mapping": {"order": "properties.order_id"}}


async def webhook(
    harness: DestinationsHarness, receiver: WebhookReceiver, *, name: str = "crm", **extra: object
) -> pb.ApplyDestinationsResponse:
    applied = await harness.apply(
        destination(
            {"name": name, "webhook": {"url": receiver.url}, "events": [ORDERS], "segments": ["vip"], **extra}
        )
    )
    if applied.applied[0].signing_secret:
        receiver.secret = applied.applied[0].signing_secret
    return applied


async def test_events_memberships_and_traits_reach_a_signed_webhook_in_order_per_person(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    await consent.grant("p-1", "p-2")
    counted_before = delivered_counter("crm")
    with WebhookReceiver("") as receiver:
        applied = await webhook(destinations, receiver, traits=["email"])
        assert applied.applied[0].signing_secret.startswith("whsec_")
        for n in range(3):
            await destinations.track("p-1", "Order Completed", order_id=f"o-{n}")
        await destinations.track("p-1", "Cart Viewed")  # not chosen: nothing flows
        await destinations.segment_entered("p-2", "vip")
        await destinations.traits("p-2", email="b@example.com", plan="pro")
        await destinations.segment_exited("p-2", "vip")
        assert await destinations.deliver_due() == 6
        await receiver.wait_for(6)
        by_person = {
            p: [(r["type"], r["name"], r["data"]) for r in receiver.received if r["profileId"] == p]
            for p in ("p-1", "p-2")
        }
        assert receiver.bad_signatures == 0
    assert by_person["p-1"] == [("event", "Order Completed", {"order": f"o-{n}"}) for n in range(3)]
    assert by_person["p-2"] == [
        ("segment_entered", "vip", {}),
        ("traits", "", {"email": "b@example.com"}),
        ("segment_exited", "vip", {}),
    ]
    health = await destinations.status("crm")
    assert (health.delivered, health.queued, health.retrying, health.dead_letters) == (6, 0, 0, 0)
    assert health.circuit == "closed" and health.HasField("last_delivered_at")
    assert delivered_counter("crm") - counted_before == 6  # the Prometheus counter


async def test_an_outage_is_retried_then_dead_lettered_and_a_replay_delivers_each_exactly_once(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    await consent.grant("p-1", "p-2")
    with WebhookReceiver("") as receiver:
        await webhook(
            destinations,
            receiver,
            retry={"maxAttempts": 3, "initialBackoffSeconds": 1, "maxBackoffSeconds": 4},
        )
        await destinations.track("p-1", "Order Completed", order_id="o-1")
        await destinations.track("p-2", "Order Completed", order_id="o-2")
        receiver.fail(503)
        assert await destinations.deliver_due() == 2
        health = await destinations.status("crm")
        assert (health.retrying, health.delivered, health.last_error) == (2, 0, "HTTP 503")
        await destinations.advance(timedelta(seconds=5))
        await destinations.advance(timedelta(seconds=5))  # the third attempt was the last
        health = await destinations.status("crm")
        assert (health.dead_letters, health.retrying) == (2, 0)
        letters = await destinations.app.queries.dead_letters(
            WORKSPACE, "crm", pb.ListDeadLettersRequest().page
        )
        assert sorted(d.profile_id for d in letters.dead_letters) == ["p-1", "p-2"]
        assert {(d.attempts, d.error) for d in letters.dead_letters} == {(3, "HTTP 503")}
        receiver.recover()
        assert (
            await destinations.app.replay(WORKSPACE, "crm", "cred", since=None, until=None, dead_letters=True)
            == 2
        )
        await destinations.deliver_due()
        await receiver.wait_for(2)
        # A replay of the whole range sends both again under the same ids: the idempotent
        # receiver keeps one of each.
        since = destinations.clock.now - timedelta(hours=1)
        assert (
            await destinations.app.replay(
                WORKSPACE, "crm", "cred", since=since, until=None, dead_letters=False
            )
            == 2
        )
        await destinations.deliver_due()
        await receiver.wait_for(2)
        assert sorted(r["data"]["order"] for r in receiver.received) == ["o-1", "o-2"]
        assert receiver.duplicates == 2
    assert (await destinations.status("crm")).delivered == 2


async def test_a_person_whose_delivery_waits_for_a_retry_is_held_back_while_others_go(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    await consent.grant("p-1", "p-2")
    with WebhookReceiver("") as receiver:
        await webhook(destinations, receiver)
        receiver.fail_person("p-1", 503)
        await destinations.track("p-1", "Order Completed", order_id="a")
        await destinations.track("p-2", "Order Completed", order_id="b")
        await destinations.deliver_due()
        await destinations.track("p-1", "Order Completed", order_id="c")
        await destinations.deliver_due()  # p-1's "c" waits behind "a"
        assert destinations.statuses("p-1") == ["queued", "queued"]
        receiver.recover()
        await destinations.advance(timedelta(minutes=1))
        await receiver.wait_for(3)
        orders = [r["data"]["order"] for r in receiver.received]
    assert orders.index("a") < orders.index("c")
    assert destinations.statuses("p-1") == ["delivered", "delivered"]


async def test_the_breaker_holds_a_failing_destination(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    await consent.grant(*(f"p-{n}" for n in range(6)))
    with WebhookReceiver("") as receiver:
        await webhook(
            destinations,
            receiver,
            retry={"maxAttempts": 50, "initialBackoffSeconds": 0.01, "maxBackoffSeconds": 0.01},
        )
        receiver.fail(500)
        await destinations.track("p-0", "Order Completed", order_id="x")
        for _ in range(5):
            await destinations.advance(timedelta(seconds=1))
        assert (await destinations.status("crm")).circuit == "open"
        tried = len(receiver.requests)
        assert await destinations.advance(timedelta(seconds=1)) == 0  # held: nothing was tried
        assert len(receiver.requests) == tried
        receiver.recover()
        await destinations.advance(timedelta(seconds=30))  # half-open: one probe, which succeeds
        await receiver.wait_for(1)
    assert (await destinations.status("crm")).circuit == "closed"


async def test_consent_withdrawn_stops_further_deliveries_with_evidence(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    await consent.grant("p-1")
    with WebhookReceiver("") as receiver:
        await webhook(destinations, receiver)
        await destinations.track("p-1", "Order Completed", order_id="before")
        await destinations.deliver_due()
        await consent.withdraw("p-1")
        await destinations.track("p-1", "Order Completed", order_id="after")
        await destinations.track("p-never", "Order Completed", order_id="never")
        await destinations.deliver_due()
        await receiver.wait_for(1)
        assert [r["data"]["order"] for r in receiver.received] == ["before"]
    suppressed = [
        m
        for m in (destinations.store.decode(e) for e in destinations.store.iter_all())
        if isinstance(m, pb.DeliveriesSuppressed)
    ]
    reasons = {s.reason for m in suppressed for s in m.suppressions}
    assert reasons == {"consent: withdrawn", "consent: no_consent"} or reasons <= {
        "consent: withdrawn",
        "consent: no_consent",
    }
    assert all(
        s.consent_evidence_id or s.reason == "consent: no_consent" for m in suppressed for s in m.suppressions
    )
    assert destinations.statuses("p-1") == ["delivered", "suppressed"]
    assert (await destinations.status("crm")).suppressed == 2

    # Consent given later does not reach back: a replay sends again what was delivered (checked
    # again: p-1 has withdrawn since), never what consent refused when it was due.
    await consent.grant("p-never")
    with WebhookReceiver(receiver.secret) as again:
        await webhook(destinations, again)
        since = destinations.clock.now - timedelta(hours=1)
        replayed = await destinations.app.replay(
            WORKSPACE, "crm", "cred", since=since, until=None, dead_letters=False
        )
        assert replayed == 1
        await destinations.deliver_due()
        assert again.received == []
    assert destinations.statuses("p-never") == ["suppressed"]
    assert destinations.statuses("p-1") == ["suppressed", "suppressed"]


async def test_an_erasure_sends_a_deletion_to_every_destination_that_received_the_person(
    destinations: DestinationsHarness, consent: ConsentService, tmp_path: object
) -> None:
    await consent.grant("p-1", "p-2")
    database = f"sqlite:///{tmp_path}/crm.db"
    with WebhookReceiver("") as receiver:
        await webhook(destinations, receiver)
        await destinations.apply(
            destination(
                {
                    "name": "warehouse",
                    "table": {"url": database, "table": "crm"},
                    "events": [ORDERS],
                    "traits": ["*"],
                }
            )
        )
        await destinations.track("p-1", "Order Completed", order_id="o-1")
        await destinations.traits("p-1", email="a@example.com")
        await destinations.track("p-2", "Order Completed", order_id="o-2")
        await destinations.deliver_due()
        await destinations.track("p-1", "Order Completed", order_id="queued-when-erased")
        counts = await destinations.app.erase_subject(WORKSPACE, ["p-1"])
        assert counts == {
            "deletions_queued": 2,
            "profiles_erased": 1,
            "deletion_queued:crm": 1,
            "deletion_queued:warehouse": 1,
        }
        # Identity's ProfileErased follows the request: nothing new, and the deletions still go.
        await destinations.profile_erased("p-1")
        await destinations.deliver_due()
        await receiver.wait_for(3)
        kinds = [(r["profileId"], r["type"]) for r in receiver.received]
    # Order holds per person (persons go side by side): p-1's event, then the deletion.
    assert [k for k in kinds if k[0] == "p-1"] == [("p-1", "event"), ("p-1", "deletion")]
    assert [k for k in kinds if k[0] == "p-2"] == [("p-2", "event")]
    engine = sa.create_engine(database)
    with engine.connect() as conn:
        held = {
            table: [str(p) for (p,) in conn.execute(sa.text(f"select profile_id from {table}"))]
            for table in ("crm_events", "crm_traits")
        }
    engine.dispose()
    assert held == {"crm_events": ["p-2"], "crm_traits": []}
    assert destinations.statuses("p-1", "crm") == ["delivered", "dropped", "delivered"]
    assert destinations.store.is_erased(subject_of(WORKSPACE, "p-1"))
    # A replay never sends what was about an erased person again; their deletion, again.
    since = destinations.clock.now - timedelta(hours=1)
    await destinations.app.replay(WORKSPACE, "crm", "cred", since=since, until=None, dead_letters=False)
    assert destinations.statuses("p-1", "crm") == ["delivered", "dropped", "queued"]


async def test_an_erasure_request_after_identitys_profile_erased_still_names_the_deletions(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    """Identity's ProfileErased may reach destinations before the request's EraseSubject does: the
    request's confirmation still names each destination sent a deletion, and none is sent twice."""
    await consent.grant("p-1")
    with WebhookReceiver("") as receiver:
        await webhook(destinations, receiver)
        await destinations.track("p-1", "Order Completed", order_id="o-1")
        await destinations.deliver_due()
        await destinations.profile_erased("p-1")
        counts = await destinations.app.erase_subject(WORKSPACE, ["p-1"])
        assert counts == {"deletions_queued": 1, "profiles_erased": 1, "deletion_queued:crm": 1}
        await destinations.deliver_due()
        await receiver.wait_for(2)
        assert [r["type"] for r in receiver.received] == ["event", "deletion"]
    assert destinations.statuses("p-1", "crm") == ["delivered", "delivered"]


async def test_audience_sync_to_a_postgresql_table_follows_entries_and_exits(
    make_destinations: DestinationsFactory, consent: ConsentService, fresh_postgres_url: str
) -> None:
    postgres_url = fresh_postgres_url
    harness = make_destinations(environ={"CRM_DATABASE_URL": postgres_url})
    await consent.grant("p-1", "p-2")
    await harness.apply(
        destination(
            {
                "name": "audiences",
                "table": {"urlEnv": "CRM_DATABASE_URL", "table": "aud"},
                "segments": ["vip"],
            }
        )
    )
    await harness.segment_entered("p-1", "vip")
    await harness.segment_entered("p-2", "vip")
    await harness.segment_exited("p-1", "vip")
    await harness.deliver_due()
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        members = sorted(
            (str(p), str(s))
            for p, s in conn.execute(sa.text("select profile_id, segment from aud_memberships"))
        )
    engine.dispose()
    assert members == [("p-2", "vip")]


async def test_definitions_are_versioned_checked_and_archived(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    with WebhookReceiver("") as receiver:
        first = await webhook(destinations, receiver)
        again = await webhook(destinations, receiver)
        changed = await webhook(destinations, receiver, description="now with a description")
    assert [(a.version, a.changed) for a in (*first.applied, *again.applied, *changed.applied)] == [
        (1, True),
        (1, False),
        (2, True),
    ]
    assert not again.applied[0].signing_secret  # issued once; `SigningSecret` shows it again
    with pytest.raises(InvalidArgument) as refused:
        await destinations.apply(destination({"name": "bad", "purpose": "ads", "webhook": {"url": "x"}}))
    assert "nothing was applied" in str(refused.value) and "purpose" in str(refused.value)
    secret = await destinations.app.destinations.secret(WORKSPACE, "crm", "cred", rotate=False)
    rotated = await destinations.app.destinations.secret(WORKSPACE, "crm", "cred", rotate=True)
    assert secret.startswith("whsec_") and rotated != secret
    archived = await destinations.app.set_status(WORKSPACE, "crm", pb.DESTINATION_STATUS_ARCHIVED, "cred")
    assert archived.status == pb.DESTINATION_STATUS_ARCHIVED
    with pytest.raises(FailedPrecondition):
        await destinations.app.destinations.secret(WORKSPACE, "crm", "cred", rotate=False)
    assert await destinations.app.destinations.listed(WORKSPACE, include_archived=False) == []


async def test_a_paused_destination_queues_and_delivers_on_resume(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    await consent.grant("p-1")
    with WebhookReceiver("") as receiver:
        await webhook(destinations, receiver)
        await destinations.app.set_status(WORKSPACE, "crm", pb.DESTINATION_STATUS_PAUSED, "cred")
        await destinations.track("p-1", "Order Completed", order_id="o-1")
        assert await destinations.deliver_due() == 0
        await destinations.app.set_status(WORKSPACE, "crm", pb.DESTINATION_STATUS_ACTIVE, "cred")
        assert await destinations.deliver_due() == 1
        await receiver.wait_for(1)


async def test_a_round_leaves_out_a_destination_whose_purpose_changed_while_consent_was_asked(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    """A round asks consent (for the purposes it read with the due rows) while it reads the
    definitions again to deliver: a purpose changed in between must not send what was checked
    for the old one."""
    await consent.grant("p-1")
    destinations.app.destinations.known = known_with_ads
    key = (WORKSPACE, "crm")
    with WebhookReceiver("") as receiver:
        await webhook(destinations, receiver, purpose="ads")
        await destinations.track("p-1", "Order Completed", order_id="o-1")
        deliverer = destinations.app.deliverer
        due, purposes = deliverer._due(destinations.clock(), set())
        assert purposes == {key: "ads"} and len(due) == 1
        await webhook(destinations, receiver)  # crm_sync, applied while consent is asked about ads
        assert deliverer._prepare(WORKSPACE, {key: due}, purposes) == {}
        assert destinations.statuses("p-1") == ["queued"]
        assert await destinations.deliver_due() == 1  # the next round asks about crm_sync
        await receiver.wait_for(1)
    assert destinations.statuses("p-1") == ["delivered"]


async def test_a_purpose_consent_refuses_holds_only_the_destinations_naming_it(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    """A destination whose purpose is no longer in consent's model (consent answers
    INVALID_ARGUMENT) fails and retries with the reason; the workspace's other destinations go."""
    await consent.grant("p-1")
    destinations.app.destinations.known = known_with_ads
    with WebhookReceiver("") as receiver:
        await webhook(destinations, receiver, name="ads", purpose="ads")
        await webhook(destinations, receiver)  # the receiver verifies crm's signatures
        await destinations.track("p-1", "Order Completed", order_id="o-1")
        assert await destinations.deliver_due() == 2
        await receiver.wait_for(1)
        assert [r["destination"] for r in receiver.received] == ["crm"]
    assert destinations.statuses("p-1", "crm") == ["delivered"]
    assert destinations.statuses("p-1", "ads") == ["queued"]
    ads = await destinations.status("ads")
    assert ads.retrying == 1 and ads.delivered == 0
    assert ads.last_error == "consent refused to check the purpose 'ads': is it in the consent model?"


async def test_consent_unreachable_delivers_nothing(make_destinations: DestinationsFactory) -> None:
    harness = make_destinations(consent_target="127.0.0.1:1")
    with WebhookReceiver("") as receiver:
        harness.app.destinations.known = known_without_consent
        await webhook(harness, receiver)
        await harness.track("p-1", "Order Completed", order_id="o-1")
        with pytest.raises(grpc.aio.AioRpcError):  # the round fails as a whole and is tried again
            await harness.deliver_due()
        assert receiver.requests == []
    assert harness.statuses("p-1") == ["queued"]


async def test_what_a_destination_reads_from_the_environment_must_be_set_and_credentials_stay_out_of_the_log(
    make_destinations: DestinationsFactory, consent: ConsentService, tmp_path: Path
) -> None:
    environment = {
        "WAREHOUSE_URL": f"sqlite:///{tmp_path}/w.db",
        "CRM_TOKEN": "Bearer sk_live_not_in_the_log",
    }
    harness = make_destinations(environ=environment)
    await consent.grant("p-1")
    with pytest.raises(InvalidArgument) as refused:
        await harness.apply(
            destination(
                {"name": "w", "table": {"urlEnv": "NOT_SET_HERE", "table": "crm"}, "events": [ORDERS]}
            ),
            destination(
                {
                    "name": "c",
                    "webhook": {"url": "https://x.example", "headers": {"Authorization": "Bearer x"}},
                    "events": [ORDERS],
                }
            ),
        )
    assert (
        "destinations[0].table.url_env: the destinations service has no environment variable NOT_SET_HERE"
        in str(refused.value)
    )
    assert "destinations[1].webhook.headers.Authorization: carries a credential" in str(refused.value)
    with WebhookReceiver("") as receiver:
        await webhook(
            harness, receiver, webhook={"url": receiver.url, "headerEnvs": {"Authorization": "CRM_TOKEN"}}
        )
        await harness.apply(
            destination(
                {
                    "name": "warehouse",
                    "table": {"urlEnv": "WAREHOUSE_URL", "table": "crm"},
                    "events": [ORDERS],
                }
            )
        )
        # The service restarted without the warehouse's variable: the warehouse waits, saying why,
        # and the CRM's deliveries go on.
        del environment["WAREHOUSE_URL"]
        await harness.track("p-1", "Order Completed", order_id="o-1")
        await harness.deliver_due()
        await receiver.wait_for(1)
        assert receiver.requests[0].headers["authorization"] == "Bearer sk_live_not_in_the_log"
    warehouse = await harness.status("warehouse")
    assert warehouse.retrying == 1 and warehouse.last_error.startswith("not configured: ")
    assert "WAREHOUSE_URL" in warehouse.last_error
    logged = b"".join(bytes(e.payload) for e in harness.store.iter_all())
    assert b"sk_live_not_in_the_log" not in logged


async def test_files_are_written_incrementally_and_an_erasure_rewrites_them(
    destinations: DestinationsHarness, consent: ConsentService, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    await consent.grant("p-1", "p-2")
    await destinations.apply(
        destination(
            {
                "name": "exports",
                "files": {"directory": str(tmp_path / "out"), "format": "FILE_FORMAT_PARQUET"},
                "events": [ORDERS],
            }
        )
    )
    await destinations.track("p-1", "Order Completed", order_id="o-1")
    await destinations.track("p-2", "Order Completed", order_id="o-2")
    await destinations.deliver_due()
    await destinations.track("p-2", "Order Completed", order_id="o-3")
    await destinations.deliver_due()

    def rows() -> list[tuple[str, str]]:
        parts = sorted((tmp_path / "out" / "exports" / "events").glob("part-*.parquet"))
        return [(r["profile_id"], r["data"]) for part in parts for r in pq.read_table(part).to_pylist()]

    assert [p for p, _ in rows()] == ["p-1", "p-2", "p-2"]
    await destinations.app.erase_subject(WORKSPACE, ["p-1"])
    await destinations.deliver_due()
    assert [p for p, _ in rows()] == ["p-2", "p-2"]


async def test_an_open_circuit_holds_only_its_destination(
    destinations: DestinationsHarness, consent: ConsentService
) -> None:
    await consent.grant("p-1")
    fast_retries = {"maxAttempts": 50, "initialBackoffSeconds": 0.01, "maxBackoffSeconds": 0.01}
    with WebhookReceiver("") as down, WebhookReceiver("") as up:
        await webhook(destinations, down, name="crm", retry=fast_retries)
        await webhook(destinations, up, name="erp")
        down.fail(500)
        await destinations.track("p-1", "Order Completed", order_id="first")
        for _ in range(5):
            await destinations.advance(timedelta(seconds=1))
        assert (await destinations.status("crm")).circuit == "open"
        await destinations.track("p-1", "Order Completed", order_id="second")
        await destinations.advance(timedelta(seconds=1))
        await up.wait_for(2)
        assert [r["data"]["order"] for r in up.received] == ["first", "second"]
    crm = await destinations.status("crm")
    assert (crm.retrying, crm.queued) == (1, 1)  # the second was never tried while the circuit was open
