"""The target of a destination, by the kind its definition chose (the `target` oneof)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.destinations.adapters.targets.base import Delivery, Result, Target
from onefold.destinations.adapters.targets.files import FilesTarget
from onefold.destinations.adapters.targets.table import TableTarget
from onefold.destinations.adapters.targets.webhook import WebhookTarget


def build_target(destination: pb.Destination, *, secret: str, environ: Mapping[str, str]) -> Target:
    """A webhook (signed with `secret`), a table (its URL maybe from `environ`) or files (S3's
    credentials maybe from `environ`); a
    ValueError for a definition that chose none or whose target cannot work."""
    kind = destination.WhichOneof("target")
    if kind == "webhook":
        return WebhookTarget(destination.webhook, secret, environ=environ)
    if kind == "table":
        return TableTarget(destination.table, environ)
    if kind == "files":
        return FilesTarget(destination.files, destination.name, environ)
    raise ValueError(f"destination {destination.name!r} has no target: give webhook, table or files")


class UnusableTarget:
    """A destination whose target cannot be built here (its url_env unset, a malformed secret):
    every delivery answers RETRY with why, so they wait, are dead-lettered after the last attempt,
    and can be replayed once the configuration is fixed — without holding up other destinations."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.result = Result.retry(f"not configured: {reason}")

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return [self.result] * len(deliveries)

    async def aclose(self) -> None:
        return None


def usable_target(destination: pb.Destination, *, secret: str, environ: Mapping[str, str]) -> Target:
    """`build_target`, or an UnusableTarget saying why not."""
    try:
        return build_target(destination, secret=secret, environ=environ)
    except ValueError as problem:
        return UnusableTarget(destination.WhichOneof("target") or "", str(problem))
