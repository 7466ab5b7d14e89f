"""Model tags written back to profiles: train the models on a workspace's history in the analytical
copy, and record the tags that changed (`ProfileModelTagged`, sealed under the profile's key) and each
new model version (`ModelTrained`) in the service's log, from which segments takes them as tags marked
"model".

One training at a time (the RPC and the schedule share a lock): it is CPU-heavy, runs in a worker
thread on a warehouse cursor of its own, with scikit-learn's and numpy's thread pools (OpenMP, BLAS)
bounded to `insights.threads`. The events are then written through the one write path on the writer
thread, EVENTS_PER_TRANSACTION at a time, so the feed's batches interleave with a large write-back.

Only what changed is written: a tag whose value is the profile's current one (the read model's
`insights_model_tags`) is not written again, a profile the model no longer tags gets its tag removed
(value ""), and a model version already recorded is not recorded again — the same history and seed
train the same versions and the same tags, so a rerun on an unchanged history writes nothing. A
model the history cannot train (too few customers, no churn yet) is skipped, its tags left as they
were, and the answer says why.

On the leader, a Duty retrains every workspace with events on the `insights.retrain` schedule (cron,
UTC). The next moment is planned when a replica starts leading: a moment missed while no replica led
is not made up; the next one comes as scheduled.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
from croniter import croniter
from sqlalchemy.engine import Connection
from threadpoolctl import threadpool_limits

from onefold.contracts.insights.v1 import models_pb2 as pb
from onefold.eventlog.models import NewEvent
from onefold.eventlog.service import Duty, ServiceLog
from onefold.eventlog.streams import PARTITION_KEY
from onefold.insights.adapters.model_tags import current_tags, forget_profiles, held_tags, latest_models
from onefold.insights.adapters.models import (
    affinity_tags,
    behaviour_clusters,
    evaluate_churn,
    fit_churn,
    history_end,
    predict_churn,
)
from onefold.insights.adapters.warehouse import Warehouse
from onefold.insights.domain.models import (
    AffinitySpec,
    ChurnSpec,
    ClusterDescription,
    ClusterSpec,
    ModelTag,
    ModelVersion,
)
from onefold.insights.domain.streams import model_stream, profile_stream, subject_of
from onefold.platform.errors import InvalidArgument
from onefold.platform.telemetry import get_logger

log = get_logger("onefold.insights")
Clock = Callable[[], datetime]

# Each model and the tags it gives (a model's removals are of these tags only).
MODEL_TAGS: dict[str, tuple[str, ...]] = {
    "churn_risk": ("churn_risk",),
    "behaviour_cluster": ("behaviour_cluster",),
    "affinity": ("category_affinity", "product_affinity"),
}
MODELS = tuple(MODEL_TAGS)
EVENTS_PER_TRANSACTION = 1000
IDLE_WAIT_SECONDS = 60.0


def wall_clock() -> datetime:
    return datetime.now(UTC)


def next_retrain(schedule: str, after: datetime) -> datetime:
    """The first moment of the cron `schedule` (UTC) after `after`."""
    moment: datetime = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    return moment


@dataclass(frozen=True)
class Trained:
    """One model fitted on a workspace's history (or skipped, and why)."""

    model: str
    version: ModelVersion | None = None
    tags: list[ModelTag] = field(default_factory=list)
    clusters: list[ClusterDescription] = field(default_factory=list)
    skipped_because: str = ""


class ModelTraining:
    def __init__(
        self,
        log_: ServiceLog,
        warehouse: Warehouse,
        *,
        threads: int,
        seed: int,
        retrain: str = "",
        clock: Clock = wall_clock,
        churn: ChurnSpec = ChurnSpec(),  # noqa: B008 - frozen, so a shared default is safe
        clusters: ClusterSpec = ClusterSpec(),  # noqa: B008
        affinity: AffinitySpec = AffinitySpec(),  # noqa: B008
    ) -> None:
        self.log = log_
        self.warehouse = warehouse
        self.threads = threads
        self.seed = seed
        self.retrain = retrain
        self.clock = clock
        self.specs = (churn, clusters, affinity)
        self._training = asyncio.Lock()
        self._next_retrain: datetime | None = None
        # On the leader: every workspace retrained on the schedule.
        self.duty = Duty("insights.retrain", self._retrain_round, idle_seconds=IDLE_WAIT_SECONDS)

    # -------------------------------------------------------------------------- use cases

    async def train(self, workspace: str, models: Sequence[str] = ()) -> pb.TrainModelsResponse:
        """Train `models` (default: all) on the workspace's history; write back what changed."""
        unknown = [name for name in models if name not in MODEL_TAGS]
        if unknown:
            raise InvalidArgument(
                "unknown models",
                violations=[("models", f"{name!r} is not one of {', '.join(MODELS)}") for name in unknown],
            )
        chosen = [name for name in MODELS if name in models] if models else list(MODELS)
        async with self._training:
            trained = await asyncio.to_thread(self._fit, workspace, chosen)
            versions, holding = await asyncio.to_thread(self._recorded, workspace, chosen)
            events: list[NewEvent] = []
            answer = pb.TrainModelsResponse()
            for outcome in trained:
                written = self._changes(workspace, outcome, versions, holding)
                answer.models.append(_answer(outcome, tags_written=sum(_is_tag(e) for e in written)))
                events.extend(written)
            for start in range(0, len(events), EVENTS_PER_TRANSACTION):
                batch = events[start : start + EVENTS_PER_TRANSACTION]
                await self.log.writer.run(
                    self.log.projector.write, functools.partial(self._record, events=batch)
                )
        log.info(
            "insights.models_trained",
            workspace=workspace,
            models=[m.model for m in answer.models if not m.skipped_because],
            tags_written=sum(m.tags_written for m in answer.models),
        )
        return answer

    async def list_models(self, workspace: str) -> pb.ListModelsResponse:
        def read() -> list[pb.ModelTrained]:
            with self.log.store.engine.connect() as conn:
                return latest_models(conn, workspace)

        trained = await asyncio.to_thread(read)
        return pb.ListModelsResponse(models=[_listed(message) for message in trained])

    def held(self, workspace: str, profile_ids: Sequence[str]) -> int:
        """How many current model tags these profiles hold (a data-subject export's count)."""
        with self.log.store.engine.connect() as conn:
            return held_tags(conn, workspace, profile_ids)

    def forget(self, conn: Connection, workspace: str, profile_ids: Sequence[str]) -> int:
        """An erasure (on the writer thread, in the caller's transaction): the profiles' keys in this
        log shredded — their model tags read as erased — and their rows of current tags deleted.
        Returns how many current tags they held."""
        removed = forget_profiles(conn, workspace, profile_ids)
        for profile_id in dict.fromkeys(profile_ids):
            self.log.store.erase_subject(subject_of(workspace, profile_id), conn=conn)
        return removed

    # -------------------------------------------------------------------------- the schedule

    async def run_retrain(self, leading: Callable[[], bool]) -> None:
        await self.duty.run(leading)

    async def retrain_all(self) -> None:
        """Every workspace with events in the copy, one after the other (one failing does not stop
        the others: it is logged, and retrained at the next moment)."""
        for workspace in await asyncio.to_thread(self._workspaces):
            try:
                await self.train(workspace)
            except Exception:
                log.exception("insights.retrain_failed", workspace=workspace)

    async def _retrain_round(self) -> float | None:
        now = self.clock()
        if self._next_retrain is None:
            self._next_retrain = next_retrain(self.retrain, now)
        if now >= self._next_retrain:
            self._next_retrain = next_retrain(self.retrain, now)
            await self.retrain_all()
        return (self._next_retrain - self.clock()).total_seconds()

    def _workspaces(self) -> list[str]:
        rows = self.warehouse.reading(
            lambda cursor: cursor.execute("SELECT DISTINCT workspace FROM events ORDER BY 1").fetchall()
        )
        return [str(row[0]) for row in rows]

    # -------------------------------------------------------------------------- steps

    def _fit(self, workspace: str, models: Sequence[str]) -> list[Trained]:
        """The models fitted as of the history's end (worker thread, a cursor of its own)."""
        cursor = self.warehouse.cursor()
        try:
            with threadpool_limits(limits=self.threads):
                try:
                    as_of = history_end(cursor, workspace)
                except ValueError:
                    return [
                        Trained(name, skipped_because="the workspace has no events in the copy yet")
                        for name in models
                    ]
                return [self._fit_one(cursor, workspace, name, as_of) for name in models]
        finally:
            cursor.close()

    def _fit_one(
        self, cursor: duckdb.DuckDBPyConnection, workspace: str, model: str, as_of: datetime
    ) -> Trained:
        churn_spec, cluster_spec, affinity_spec = self.specs
        try:
            if model == "churn_risk":
                evaluation = evaluate_churn(cursor, workspace, as_of, churn_spec, self.seed)
                churn = fit_churn(cursor, workspace, as_of, churn_spec, self.seed, evaluation.metrics())
                return Trained(model, churn.version, predict_churn(cursor, workspace, churn, as_of))
            if model == "behaviour_cluster":
                clusters = behaviour_clusters(cursor, workspace, as_of, cluster_spec, self.seed)
                return Trained(model, clusters.version, clusters.tags, clusters.descriptions)
            version, tags = affinity_tags(cursor, workspace, as_of, affinity_spec)
            return Trained(model, version, tags)
        except ValueError as error:  # the history cannot train it; the reasons name no person
            return Trained(model, skipped_because=str(error))

    def _recorded(
        self, workspace: str, models: Sequence[str]
    ) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
        """(each model's latest recorded version, the profiles' current values of their tags)."""
        with self.log.store.engine.connect() as conn:
            versions = {m.model: m.version for m in latest_models(conn, workspace)}
            tags = [tag for model in models for tag in MODEL_TAGS[model]]
            return versions, current_tags(self.log.store, conn, workspace, tags)

    def _changes(
        self,
        workspace: str,
        outcome: Trained,
        versions: dict[str, str],
        holding: dict[tuple[str, str], str],
    ) -> list[NewEvent]:
        """The tags that changed (and the removals), then the version when it is new."""
        if outcome.version is None:
            return []
        label = outcome.version.label()
        events: list[NewEvent] = []
        given: set[tuple[str, str]] = set()
        for given_tag in outcome.tags:
            key = (given_tag.profile_id, given_tag.tag)
            given.add(key)
            if holding.get(key) != given_tag.value:
                events.append(
                    _tag_event(workspace, *key, given_tag.value, given_tag.score or 0.0, outcome.model, label)
                )
        own = MODEL_TAGS[outcome.model]
        for profile_id, tag in sorted(key for key in holding if key[1] in own and key not in given):
            events.append(_tag_event(workspace, profile_id, tag, "", 0.0, outcome.model, label))
        if versions.get(outcome.model) != outcome.version.version:
            events.append(_trained_event(workspace, outcome))
        return events

    def _record(self, conn: Connection, *, events: Sequence[NewEvent]) -> None:
        """Append a batch (writer thread); a profile erased since training is left out."""
        erased = self.log.store.erased_subjects(conn, {e.subject for e in events if e.subject})
        self.log.projector.record(conn, [e for e in events if e.subject not in erased])


def _is_tag(event: NewEvent) -> bool:
    return isinstance(event.message, pb.ProfileModelTagged)


def _tag_event(
    workspace: str, profile_id: str, tag: str, value: str, score: float, model: str, model_version: str
) -> NewEvent:
    message = pb.ProfileModelTagged(
        workspace=workspace,
        profile_id=profile_id,
        tag=tag,
        value=value,
        score=score,
        model=model,
        model_version=model_version,
    )
    return NewEvent(
        stream_id=profile_stream(workspace, profile_id),
        message=message,
        subject=subject_of(workspace, profile_id),
        workspace=workspace,
        # Segments folds a profile's inputs in order: the same partition as its other streams.
        metadata={PARTITION_KEY: profile_id},
    )


def _trained_event(workspace: str, outcome: Trained) -> NewEvent:
    assert outcome.version is not None
    version = outcome.version
    message = pb.ModelTrained(
        workspace=workspace,
        model=outcome.model,
        version=version.version,
        metrics=dict(version.metrics),
        features=list(version.feature_names),
        seed=version.seed,
        clusters=[_cluster(d) for d in outcome.clusters],
        profiles_tagged=len({tag.profile_id for tag in outcome.tags}),
    )
    message.cut_off.FromDatetime(version.trained_at)
    return NewEvent(stream_id=model_stream(workspace, outcome.model), message=message, workspace=workspace)


def _cluster(description: ClusterDescription) -> pb.ClusterDescription:
    return pb.ClusterDescription(
        cluster=description.cluster,
        size=description.size,
        share=description.share,
        words=description.words,
        centroid=dict(description.centroid),
    )


def _answer(outcome: Trained, *, tags_written: int) -> pb.TrainedModel:
    answer = pb.TrainedModel(model=outcome.model, skipped_because=outcome.skipped_because)
    if outcome.version is not None:
        answer.version = outcome.version.version
        answer.metrics.update(outcome.version.metrics)
        answer.cut_off.FromDatetime(outcome.version.trained_at)
        answer.profiles_tagged = len({tag.profile_id for tag in outcome.tags})
        answer.tags_written = tags_written
        answer.clusters.extend(_cluster(d) for d in outcome.clusters)
    return answer


def _listed(trained: pb.ModelTrained) -> pb.TrainedModel:
    return pb.TrainedModel(
        model=trained.model,
        version=trained.version,
        metrics=trained.metrics,
        cut_off=trained.cut_off,
        profiles_tagged=trained.profiles_tagged,
        clusters=trained.clusters,
    )
