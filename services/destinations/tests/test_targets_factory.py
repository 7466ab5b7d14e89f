"""build_target: the target a destination's definition chose, and a definition that chose none."""

from __future__ import annotations

from pathlib import Path

import pytest

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.targets.factory import build_target
from onefold.destinations.adapters.targets.webhook import new_secret


async def test_each_kind_of_destination_gets_its_target(tmp_path: Path) -> None:
    environ = {"ERP_URL": f"sqlite:///{tmp_path / 'erp.db'}"}
    definitions = {
        "webhook": pb.Destination(name="crm", webhook=pb.Webhook(url="https://crm.example.com/hooks")),
        "table": pb.Destination(name="erp", table=pb.SqlTable(url_env="ERP_URL", table="erp")),
        "files": pb.Destination(name="lake", files=pb.Files(directory=str(tmp_path))),
    }
    for kind, definition in definitions.items():
        target = build_target(definition, secret=new_secret(), environ=environ)
        assert target.kind == kind
        await target.aclose()


def test_a_destination_without_a_target_is_refused() -> None:
    with pytest.raises(ValueError, match="no target"):
        build_target(pb.Destination(name="nowhere"), secret=new_secret(), environ={})
