"""Calls started at the same instant, each on its own thread — as replicas starting together."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence


def all_at_once(calls: Sequence[Callable[[], object]]) -> list[BaseException]:
    """Run `calls` on threads released together by a barrier; the errors they raised."""
    start = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            start.wait()
            call()
        except BaseException as error:  # returned to the test, which asserts on them
            errors.append(error)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
