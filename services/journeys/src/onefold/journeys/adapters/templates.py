"""Message templates: Jinja2 in a sandbox, rendered per profile.

A template sees `traits` (the profile's traits), `event` (the properties of the event that moved
the person along the journey), `profile.id`, `journey.id` and `message.id`. It is written by a
workspace's marketers, not by us, so it runs in Jinja's immutable sandbox (no attribute tricks, no
mutating what it is given, ranges bounded), a `*` or `**` that would build something huge is
refused, its source and its output are bounded, and a variable it names that the profile lacks is
an error rather than an empty string (StrictUndefined): a "Hello ," must never go out.

What the sandbox does not bound: time (nested loops over ranges of 100,000 render for long) and
the memory of some filters given huge widths (`center`, `format`). Templates come from a
workspace's users holding `journeys:write`, so these are theirs to misuse, not the public's.

Errors name the template, the part (subject, text, html), the line and the missing variable, and
never a value: what a template failed on is a person's data. HTML is autoescaped (a trait holding
`<script>` arrives as text); subjects and plain text are not.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateRuntimeError, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from onefold.platform.errors import InvalidArgument

MAX_SOURCE_CHARS = 64 * 1024
MAX_OUTPUT_CHARS = 256 * 1024
MAX_SUBJECT_CHARS = 255
MAX_POWER_EXPONENT = 64
MAX_COMPILED = 256  # compiled template parts kept for reuse (sources up to 64 KiB each)


class TemplateError(InvalidArgument):
    """A template that cannot be compiled or rendered for a profile; the message names the template,
    the part and the line, and the variable when one was missing, never a value."""

    def __init__(self, template: str, part: str, problem: str, *, line: int | None = None) -> None:
        where = f"template '{template}' ({part}" + (f", line {line}" if line else "") + ")"
        super().__init__(f"{where}: {problem}", violations=[(f"{template}.{part}", problem)])
        self.template = template
        self.part = part
        self.problem = problem
        self.line = line


@dataclass(frozen=True)
class TemplateVariables:
    """What one profile's message is rendered with."""

    profile_id: str
    journey_id: str
    message_id: str
    traits: Mapping[str, Any] = field(default_factory=dict)
    event: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # traits and event properties are personal
        return f"TemplateVariables(profile_id={self.profile_id!r}, message_id={self.message_id!r})"

    def context(self) -> dict[str, Any]:
        return {
            "traits": _named(self.traits, "traits"),
            "event": _named(self.event, "event"),
            "profile": _named({"id": self.profile_id}, "profile"),
            "journey": _named({"id": self.journey_id}, "journey"),
            "message": _named({"id": self.message_id}, "message"),
        }


@dataclass(frozen=True)
class EmailTemplate:
    name: str
    subject: str
    text: str
    html: str = ""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str

    def __repr__(self) -> str:
        return "RenderedEmail(...)"  # the bodies are personal


@dataclass(frozen=True)
class CompiledText:
    name: str
    part: str
    template: Template
    # The names the source spells out (variables, attributes, constant keys): only these may be
    # quoted in an error. A key computed at render time (`traits[event.sku]`) may be a value.
    spelled: frozenset[str]


@dataclass(frozen=True)
class CompiledEmail:
    name: str
    subject: CompiledText
    text: CompiledText
    html: CompiledText | None


class _NamedDict(dict[str, Any]):
    """A mapping that knows where it sits in the context, so a missing key is reported by its
    full name (`traits.first_name`), not just its last part. The attribute's name starts with an
    underscore so a template cannot read it (the sandbox refuses such names) and a trait called
    `path` is still the trait."""

    __slots__ = ("_onefold_path",)
    _onefold_path: str


def _named(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        named = _NamedDict({key: _named(item, f"{path}.{key}") for key, item in value.items()})
        named._onefold_path = path
        return named
    if isinstance(value, list | tuple):
        return [_named(item, f"{path}[]") for item in value]
    return value


class _MissingVariable(UndefinedError):
    """A variable the context lacks; its message is `<container path>\0<name>` (see below)."""


class _ReportingUndefined(StrictUndefined):
    """StrictUndefined that says where the missing variable was looked for and under which name,
    and nothing of its container (Jinja's own message describes the object it looked in)."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[TemplateRuntimeError] = _MissingVariable,
    ) -> None:
        super().__init__(hint, obj, name, exc)

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:  # the sandbox refusing an attribute says so itself
            return self._undefined_hint
        container = self._undefined_obj
        path = container._onefold_path if isinstance(container, _NamedDict) else ""
        return f"{path}\0{self._undefined_name}"


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with `*` and `**` refusing results too large to be a message."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > MAX_POWER_EXPONENT:
                raise SecurityError(f"an exponent above {MAX_POWER_EXPONENT} is not allowed")
            return operator.pow(left, right)
        for sequence, times in ((left, right), (right, left)):
            repeats = isinstance(sequence, str | list | tuple) and isinstance(times, int)
            if repeats and len(sequence) * times > MAX_OUTPUT_CHARS:
                raise SecurityError("a repetition that large is not allowed")
        return operator.mul(left, right)


def _environment(*, autoescape: bool) -> _BoundedSandbox:
    environment = _BoundedSandbox(
        undefined=_ReportingUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    # lorem ipsum of any length on demand: of no use in a message, a way to fill the memory.
    del environment.globals["lipsum"]
    return environment


class Templates:
    """Compiles templates once (`compile_*`, at definition time: syntax errors surface then) and
    renders them per profile (`render_*`)."""

    def __init__(self, *, max_source_chars: int = MAX_SOURCE_CHARS, max_output_chars: int = MAX_OUTPUT_CHARS):
        self.max_source_chars = max_source_chars
        self.max_output_chars = max_output_chars
        self._plain = _environment(autoescape=False)
        self._html = _environment(autoescape=True)
        # Compiling (Jinja parsing a source and generating its Python code) costs milliseconds, far
        # more than rendering, and the sender renders every message of a template from the same
        # source: each source is compiled once. Bounded: emptied when it holds too many.
        self._compiled: dict[tuple[str, str, str, bool], CompiledText] = {}

    def compile_text(self, name: str, part: str, source: str, *, html: bool = False) -> CompiledText:
        key = (name, part, source, html)
        compiled = self._compiled.get(key)
        if compiled is None:
            if len(self._compiled) >= MAX_COMPILED:
                self._compiled.clear()
            compiled = self._compiled[key] = self._compile_text(name, part, source, html=html)
        return compiled

    def _compile_text(self, name: str, part: str, source: str, *, html: bool) -> CompiledText:
        if len(source) > self.max_source_chars:
            raise TemplateError(name, part, f"is longer than {self.max_source_chars} characters")
        environment = self._html if html else self._plain
        try:
            tree = environment.parse(source, name=name, filename=_filename(name, part))
            code = environment.compile(tree, name=name, filename=_filename(name, part))
        except TemplateSyntaxError as exc:
            raise TemplateError(name, part, f"syntax error: {exc.message}", line=exc.lineno) from None
        template = environment.template_class.from_code(environment, code, environment.make_globals(None))
        return CompiledText(name, part, template, _spelled_names(tree))

    def compile_email(self, template: EmailTemplate) -> CompiledEmail:
        if not template.text and not template.html:
            raise TemplateError(template.name, "text", "an email needs a text or an HTML body")
        return CompiledEmail(
            template.name,
            self.compile_text(template.name, "subject", template.subject),
            self.compile_text(template.name, "text", template.text),
            self.compile_text(template.name, "html", template.html, html=True) if template.html else None,
        )

    def render_text(self, compiled: CompiledText, variables: TemplateVariables) -> str:
        return self._render(compiled, variables.context())

    def render_email(self, compiled: CompiledEmail, variables: TemplateVariables) -> RenderedEmail:
        context = variables.context()
        subject = self._render(compiled.subject, context).strip()
        if "\n" in subject or "\r" in subject:
            raise TemplateError(compiled.name, "subject", "renders with a line break")
        if len(subject) > MAX_SUBJECT_CHARS:
            raise TemplateError(
                compiled.name, "subject", f"renders longer than {MAX_SUBJECT_CHARS} characters"
            )
        return RenderedEmail(
            subject=subject,
            text=self._render(compiled.text, context),
            html=self._render(compiled.html, context) if compiled.html is not None else "",
        )

    def _render(self, compiled: CompiledText, context: dict[str, Any]) -> str:
        filename = _filename(compiled.name, compiled.part)
        try:
            return _bounded_join(compiled.template.generate(context), self.max_output_chars, compiled)
        except _MissingVariable as exc:
            path, _, missing_name = (exc.message or "").partition("\0")
            if missing_name in compiled.spelled:
                problem = f"variable '{f'{path}.{missing_name}' if path else missing_name}' is undefined"
            else:
                problem = "a key computed while rendering is undefined"
            raise TemplateError(compiled.name, compiled.part, problem, line=_line(exc, filename)) from None
        except SecurityError as exc:
            problem = f"is not allowed: {exc}"
            raise TemplateError(compiled.name, compiled.part, problem, line=_line(exc, filename)) from None
        except TemplateError:  # the output bound
            raise
        except Exception as exc:  # a filter or operator failing on a value: name the kind, not the value
            problem = f"failed with {type(exc).__name__}"
            raise TemplateError(compiled.name, compiled.part, problem, line=_line(exc, filename)) from None


def _spelled_names(tree: nodes.Template) -> frozenset[str]:
    spelled: set[str] = set()
    for node in tree.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Name):
            spelled.add(node.name)
        elif isinstance(node, nodes.Getattr):
            spelled.add(node.attr)
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            spelled.add(str(node.arg.value))
    return frozenset(spelled)


def _filename(name: str, part: str) -> str:
    return f"<template {name} {part}>"


def _bounded_join(chunks: Iterator[str], limit: int, compiled: CompiledText) -> str:
    """Render chunk by chunk, stopping as soon as the output passes `limit` (not after building it)."""
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise TemplateError(compiled.name, compiled.part, f"renders longer than {limit} characters")
        out.append(chunk)
    return "".join(out)


def _line(exc: BaseException, filename: str) -> int | None:
    """The template line the error was raised on: Jinja rewrites tracebacks so that the template's
    frames carry its filename and line numbers."""
    line = None
    trace: TracebackType | None = exc.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == filename:
            line = trace.tb_lineno
        trace = trace.tb_next
    return line
