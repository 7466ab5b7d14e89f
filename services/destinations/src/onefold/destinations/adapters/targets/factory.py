"""The target of a destination, by the kind its definition chose (the `target` oneof)."""

from __future__ import annotations

from collections.abc import Mapping

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.targets.base import Target
from onefold.destinations.adapters.targets.files import FilesTarget
from onefold.destinations.adapters.targets.table import TableTarget
from onefold.destinations.adapters.targets.webhook import WebhookTarget


def build_target(destination: pb.Destination, *, secret: str, environ: Mapping[str, str]) -> Target:
    """A webhook (signed with `secret`), a table (its URL maybe from `environ`) or files; a
    ValueError for a definition that chose none or whose target cannot work."""
    kind = destination.WhichOneof("target")
    if kind == "webhook":
        return WebhookTarget(destination.webhook, secret)
    if kind == "table":
        return TableTarget(destination.table, environ)
    if kind == "files":
        return FilesTarget(destination.files, destination.name)
    raise ValueError(f"destination {destination.name!r} has no target: give webhook, table or files")
