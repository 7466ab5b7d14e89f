"""Folds and projections say which events they handle, next to the code that handles them.

    class ConsentView(Handlers):
        @handles(pb.ConsentGranted, pb.ConsentWithdrawn)
        def _ledger(self, conn, event, message): ...

        def handle(self, conn, event, message):
            self.dispatch(message, conn, event, message)

A service declares its events once, in its proto (`domain/events.py` is
`EventRegistry.declared_in(<service>_pb2)`); its fold and projection handle them with `@handles`;
`onefold.testing.events.assert_events_handled` fails when a declared type is handled by neither
(the way an event used to vanish silently from reads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from google.protobuf.message import Message

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__onefold_handles__"


def handles(*message_classes: type[Message]) -> Callable[[F], F]:
    """Mark a method as the handler of these event types."""

    def mark(method: F) -> F:
        setattr(method, _MARK, tuple(message.DESCRIPTOR.full_name for message in message_classes))
        return method

    return mark


class Handlers:
    """A class whose `@handles` methods form a dispatch table by event type name."""

    _handler_names: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attribute, value in vars(klass).items():
                for type_name in getattr(value, _MARK, ()):
                    table[type_name] = attribute
        cls._handler_names = table

    @classmethod
    def handled_types(cls) -> frozenset[str]:
        return frozenset(cls._handler_names)

    def dispatch(self, message: Message, *args: Any) -> Any:
        """Call the handler of `message`'s type with `args`; None when no handler takes it."""
        name = self._handler_names.get(message.DESCRIPTOR.full_name)
        if name is None:
            return None
        return getattr(self, name)(*args)
