"""The models written back as tags, through the service's own log: TrainModels on a real ServiceLog
(SQLite) and Warehouse (DuckDB) over a seeded history with planted churn and taste.

Checked: the versions and changed tags are recorded (ModelTrained, ProfileModelTagged) with the tag
values sealed under the profile's key (no plaintext value in the database file); a rerun on the same
history and seed writes nothing and answers the same versions; an erasure — consent's request, or
identity's ProfileErased through the feed — leaves the profile's model tags unreadable.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from google.protobuf.message import Message

from onefold.contracts.common.v1.envelope_pb2 import EventEnvelope
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.insights.v1 import models_pb2 as pb
from onefold.eventlog import EventStore, schema
from onefold.eventlog.cipher import KeyEncryptionKey
from onefold.eventlog.mapper import ERASED
from onefold.eventlog.service import ServiceLog
from onefold.insights.adapters.model_tags import ModelsReadModel, current_tags, model_tags
from onefold.insights.adapters.synthetic_models import CATEGORIES, generate_planted_history
from onefold.insights.adapters.warehouse import Warehouse
from onefold.insights.application import InsightsApplication
from onefold.insights.application.feed import WarehouseFeed
from onefold.insights.application.models import MODELS, ModelTraining, next_retrain
from onefold.insights.domain.events import REGISTRY
from onefold.insights.domain.models import ChurnSpec
from onefold.insights.domain.streams import profile_stream
from onefold.insights.settings import InsightsSettings
from onefold.platform.database import create_engine
from onefold.platform.errors import InvalidArgument

PEOPLE = 1500
SEED = 7
# The faster estimator: what is checked here is the write-back (the adapters' tests check both).
CHURN = ChurnSpec(estimator="logistic_regression")


@dataclass
class Insights:
    store: EventStore
    log: ServiceLog
    warehouse: Warehouse
    models: ModelTraining
    feed: WarehouseFeed
    app: InsightsApplication
    workspace: str
    database: Path

    def tag_events(self, profile_id: str) -> list[pb.ProfileModelTagged]:
        stream = self.store.read_stream(profile_stream(self.workspace, profile_id))
        return [
            message
            for message in map(self.store.decode, stream)
            if isinstance(message, pb.ProfileModelTagged)
        ]

    def count(self, message: type[Message]) -> int:
        with self.store.engine.connect() as conn:
            counted = conn.execute(
                sa.select(sa.func.count())
                .select_from(schema.events)
                .where(schema.events.c.type == message.DESCRIPTOR.full_name)
            ).scalar()
        return int(counted or 0)

    def current(self) -> dict[tuple[str, str], str]:
        with self.store.engine.connect() as conn:
            return current_tags(
                self.store, conn, self.workspace, ["churn_risk", "behaviour_cluster", "category_affinity"]
            )

    def file_bytes(self) -> bytes:
        return b"".join(path.read_bytes() for path in self.database.parent.glob(self.database.name + "*"))


@pytest.fixture
def insights(tmp_path: Path) -> Iterator[Insights]:
    database = tmp_path / "insights.db"
    store = EventStore(
        create_engine(f"sqlite:///{database}"),
        service="insights",
        registry=REGISTRY,
        keys=KeyEncryptionKey.generate(),
    )
    store.create_schema()
    log = ServiceLog(store, projections=[ModelsReadModel(store)])
    warehouse = Warehouse(threads=2)
    cursor = warehouse.cursor()
    history = generate_planted_history(cursor, people=PEOPLE, seed=SEED)
    cursor.close()
    models = ModelTraining(log, warehouse, threads=2, seed=SEED, churn=CHURN)
    feed = WarehouseFeed(warehouse, allowed_properties=[], tags=[], erased=models.forget)
    app = InsightsApplication(log, warehouse, feed, models=models)
    yield Insights(store, log, warehouse, models, feed, app, history.workspace, database)
    asyncio.run(log.writer.stop())
    warehouse.close()
    store.engine.dispose()


def test_training_writes_versions_and_sealed_tags_and_a_rerun_writes_nothing(insights: Insights) -> None:
    first = asyncio.run(insights.models.train(insights.workspace))

    by_model = {m.model: m for m in first.models}
    assert sorted(by_model) == sorted(MODELS)
    assert all(not m.skipped_because and m.version and m.tags_written > 0 for m in first.models)
    churn = by_model["churn_risk"]
    assert churn.metrics["auc_model"] > churn.metrics["auc_baseline"]
    assert len(by_model["behaviour_cluster"].clusters) == 5
    assert insights.count(pb.ModelTrained) == len(MODELS)
    tagged = insights.count(pb.ProfileModelTagged)
    assert tagged == sum(m.tags_written for m in first.models)

    holding = insights.current()
    profile_id, _ = next(key for key, value in holding.items() if key[1] == "churn_risk" and value == "high")
    churn_tag = next(e for e in insights.tag_events(profile_id) if e.tag == "churn_risk")
    assert churn_tag.value == "high"
    assert churn_tag.model == "churn_risk"
    assert churn_tag.model_version == f"churn_risk@{churn.version}"
    assert 0.0 < churn_tag.score <= 1.0
    # The values are sealed: neither the bands nor the categories are in the database's bytes.
    on_disk = insights.file_bytes()
    assert b"\x22\x04high" not in on_disk  # ProfileModelTagged.value = "high", as protobuf would write it
    assert [category for category in CATEGORIES if category.encode() in on_disk] == []

    second = asyncio.run(insights.models.train(insights.workspace))

    assert [(m.model, m.version) for m in second.models] == [(m.model, m.version) for m in first.models]
    assert [m.tags_written for m in second.models] == [0, 0, 0]
    assert insights.count(pb.ProfileModelTagged) == tagged
    assert insights.count(pb.ModelTrained) == len(MODELS)
    listed = asyncio.run(insights.models.list_models(insights.workspace))
    assert {m.model: m.version for m in listed.models} == {m.model: m.version for m in first.models}
    assert {m.model: dict(m.metrics) for m in listed.models}["churn_risk"] == dict(churn.metrics)


def test_a_profile_the_model_no_longer_tags_has_its_tag_removed(insights: Insights) -> None:
    asyncio.run(insights.models.train(insights.workspace, ["behaviour_cluster"]))
    holding = insights.current()
    clustered = sorted(profile for profile, tag in holding if tag == "behaviour_cluster")
    # The profile's events leave the copy (as if they were never there): the next run does not cluster it.
    gone = clustered[0]
    cursor = insights.warehouse.cursor()
    cursor.execute("DELETE FROM events WHERE profile_id = ?", [gone])
    cursor.close()

    again = asyncio.run(insights.models.train(insights.workspace, ["behaviour_cluster"]))

    assert again.models[0].tags_written >= 1
    assert insights.tag_events(gone)[-1].value == ""
    assert (gone, "behaviour_cluster") not in insights.current()


def test_an_erasure_leaves_the_model_tags_unreadable(insights: Insights) -> None:
    asyncio.run(insights.models.train(insights.workspace, ["churn_risk", "affinity"]))
    holding = insights.current()
    by_request, by_identity = sorted({profile for profile, tag in holding if tag == "churn_risk"})[:2]

    exported = asyncio.run(insights.app.export_subject(insights.workspace, [by_request]))
    removed = asyncio.run(insights.app.erase_subject(insights.workspace, [by_request]))
    erasure = identity_pb2.ProfileErased(workspace=insights.workspace, profile_id=by_identity)
    envelope = EventEnvelope(
        event_id=str(uuid.uuid4()),
        type=erasure.DESCRIPTOR.full_name,
        workspace=insights.workspace,
        payload=erasure.SerializeToString(),
    )
    with insights.store.transaction() as conn:
        insights.feed.from_identity(conn, [envelope])

    assert removed["model_tags"] == exported["model_tags"] >= 1
    assert asyncio.run(insights.app.export_subject(insights.workspace, [by_request]))["model_tags"] == 0
    for profile_id in (by_request, by_identity):
        assert {e.value for e in insights.tag_events(profile_id)} == {ERASED}
        assert not [key for key in insights.current() if key[0] == profile_id]
    with insights.store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(sa.func.count()).select_from(model_tags).where(model_tags.c.profile_id == by_request)
        ).scalar()
    assert rows == 0
    # Retrained, the erased profiles (gone from the copy too) are not tagged again.
    asyncio.run(insights.models.train(insights.workspace, ["churn_risk"]))
    assert {e.value for e in insights.tag_events(by_request)} == {ERASED}


def test_unknown_models_are_refused_by_name(insights: Insights) -> None:
    with pytest.raises(InvalidArgument) as refused:
        asyncio.run(insights.models.train(insights.workspace, ["churn", "affinity"]))
    assert refused.value.violations == [
        ("models", "'churn' is not one of churn_risk, behaviour_cluster, affinity")
    ]


def test_the_retrain_schedule_is_cron_in_utc_and_checked() -> None:
    after = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    assert next_retrain("0 3 * * *", after) == after + timedelta(days=1)
    assert next_retrain("0 3 * * *", after - timedelta(seconds=1)) == after
    assert InsightsSettings(retrain="").retrain == ""
    with pytest.raises(ValueError, match="not a cron schedule"):
        InsightsSettings(retrain="at three")


def test_the_schedule_retrains_every_workspace_once_its_moment_has_come(insights: Insights) -> None:
    moments = iter(
        [datetime(2026, 3, 1, 2, 0, tzinfo=UTC), datetime(2026, 3, 1, 2, 0, tzinfo=UTC)]
        + [datetime(2026, 3, 1, 3, 0, 1, tzinfo=UTC)] * 2
    )
    insights.models.clock = lambda: next(moments)
    insights.models.retrain = "0 3 * * *"

    async def two_rounds() -> tuple[float | None, float | None]:
        return await insights.models.duty.step(), await insights.models.duty.step()

    before, after = asyncio.run(two_rounds())

    assert before == 3600.0  # not yet: nothing trained
    assert after is not None and after > 0
    assert insights.count(pb.ModelTrained) == len(MODELS)
