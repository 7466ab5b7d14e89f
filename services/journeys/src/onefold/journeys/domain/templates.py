"""A message template's versions, folded from its stream, and the decision to save a new one.

A template is code like a journey: each applied change is a new version (`TemplateSaved`), and a
send step renders the latest version of the template it names (a typo fixed in a template reaches
the people still waiting, which is what its author means). The Jinja2 syntax of its parts is
checked by the renderer (adapters/templates.py) before it is saved; what is checked here is what
needs no renderer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.message import Message

from onefold.contracts.journeys.v1 import journeys_pb2 as pb
from onefold.eventlog.dispatch import Handlers, handles
from onefold.journeys.domain.definitions import NAME, Problem, channel_name, quoted
from onefold.platform.errors import FailedPrecondition


def template_stream(workspace: str, name: str) -> str:
    return f"journeys-template:{workspace}:{name}"


@dataclass
class TemplateVersions(Handlers):
    """A template's stored versions, by number."""

    versions: dict[int, pb.Template] = field(default_factory=dict)

    @staticmethod
    def fold(messages: Iterable[Message]) -> TemplateVersions:
        folded = TemplateVersions()
        for message in messages:
            folded.apply(message)
        return folded

    def apply(self, message: Message) -> None:
        self.dispatch(message, message)

    @handles(pb.TemplateSaved)
    def _saved(self, message: pb.TemplateSaved) -> None:
        self.versions[message.template.version] = message.template

    @property
    def latest(self) -> pb.Template | None:
        return self.versions[max(self.versions)] if self.versions else None


def problems(template: pb.Template, path: str) -> list[Problem]:
    """What is wrong with `template` before its parts are compiled."""
    found: list[Problem] = []
    if not NAME.fullmatch(template.name):
        found.append(Problem(f"{path}.name", "must match [a-z][a-z0-9_]{0,62}"))
    if template.channel == pb.CHANNEL_UNSPECIFIED or template.channel not in pb.Channel.values():
        found.append(Problem(f"{path}.channel", "required: email, sms, push or wechat"))
    if not template.text and not template.html:
        found.append(Problem(f"{path}.text", "required: the message's body"))
    if template.channel == pb.CHANNEL_EMAIL and not template.subject:
        found.append(Problem(f"{path}.subject", "required for email"))
    if template.html and template.channel != pb.CHANNEL_EMAIL:
        channel = channel_name(template.channel)
        found.append(Problem(f"{path}.html", f"only email has an HTML body, not {channel}"))
    return found


def save(
    versions: TemplateVersions, workspace: str, template: pb.Template, actor: str, now: datetime
) -> list[Message]:
    """A new version, unless nothing but the server-set fields differ from the latest."""
    code = _code_of(template)
    latest = versions.latest
    if latest is not None and _code_of(latest) == code:
        return []
    if latest is not None and latest.channel != code.channel:
        # A journey's send step was checked against the channel the template had.
        raise FailedPrecondition(
            f"template {quoted(template.name)} is for {channel_name(latest.channel)}; "
            "a template keeps its channel: apply it under another name"
        )
    code.version = (latest.version if latest is not None else 0) + 1
    code.updated_by = actor
    code.updated_at.FromDatetime(now)
    return [pb.TemplateSaved(workspace=workspace, template=code, actor=actor)]


def _code_of(template: pb.Template) -> pb.Template:
    code = pb.Template()
    code.CopyFrom(template)
    for server_set in ("version", "updated_at", "updated_by"):
        code.ClearField(server_set)
    return code
