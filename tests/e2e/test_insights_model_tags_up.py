"""Model tags end to end: `onefold up`, people's browsing sent to ingest, TrainModels on the insights
service (gRPC), and segments showing each person's affinity as a tag marked with its model — the
ProfileModelTagged events relayed on the bus and their sealed values opened with insights' keys —
with the value nowhere in clear in either service's database."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from e2e_up import Cli, wait_for

from onefold.contracts.insights.v1 import models_pb2 as pb
from onefold.contracts.insights.v1 import models_pb2_grpc
from onefold.platform.client import authenticated_channel

CATEGORY = "model-tagged-gardening"


def _endpoints(cli: Cli) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((cli.data_dir / "run" / "endpoints.json").read_text())
    return loaded


def _train(cli: Cli, models: list[str]) -> pb.TrainModelsResponse:
    async def call() -> pb.TrainModelsResponse:
        channel = authenticated_channel(_endpoints(cli)["services"]["insights"], cli.token)
        try:
            answer: pb.TrainModelsResponse = await models_pb2_grpc.ModelsServiceStub(channel).TrainModels(
                pb.TrainModelsRequest(models=models), timeout=120
            )
            return answer
        finally:
            await channel.close()

    return asyncio.run(call())


@pytest.mark.slow
def test_trained_affinity_reaches_segments_as_a_model_tag(up: tuple[Cli, Any]) -> None:
    cli, _ = up
    write_key = cli.json("sources", "create", "web")["write_key"]
    people = [f"gardener-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    began = datetime.now(UTC) - timedelta(hours=1)
    batch = [
        {
            "messageId": uuid.uuid4().hex,
            "type": "track",
            "userId": person,
            "event": "Product Viewed",
            "properties": {"category": CATEGORY},
            "timestamp": (began + timedelta(minutes=minute)).isoformat(),
        }
        for person in people
        for minute in range(4)
    ]
    answer = httpx.post(
        f"{_endpoints(cli)['http']['ingest']}/v1/batch", json={"batch": batch}, auth=(write_key, "")
    )
    assert answer.status_code == 200, answer.text
    wait_for(
        lambda: (
            {t["table"]: int(t["rows"]) for t in cli.json("insights", "status")["tables"]}["events"]
            >= len(batch)
        ),
        "the copy of every event",
    )

    [affinity] = _train(cli, ["affinity"]).models

    assert affinity.model == "affinity" and affinity.version and affinity.tags_written >= 2
    for person in people:
        profile_id = wait_for(lambda person=person: cli.profile_id(person), "the profile")

        def tagged(profile_id: str = profile_id) -> dict[str, Any] | None:
            shown: dict[str, Any] = cli.json("segments", "profile", profile_id)
            tags = {t["tag"]: t for t in shown.get("tags", [])}
            return tags.get("category_affinity")

        tag = wait_for(tagged, "the model tag in segments")
        assert tag["value"] == CATEGORY
        assert tag["model"] == "affinity" and tag["model_version"] == f"affinity@{affinity.version}"
    # Sealed in both logs and read models (the warehouse copies the catalogue's categories: not personal).
    logs = [*cli.data_dir.glob("insights.db*"), *cli.data_dir.glob("segments.db*")]
    assert len(logs) >= 2
    for path in logs:
        assert CATEGORY.encode() not in path.read_bytes(), path
