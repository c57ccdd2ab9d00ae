"""The sync API over the async core: a run goes on the shared background loop (`_aio`) and its
events come back to the calling thread through a queue.

The queue also carries calls that ask the user (`CallerJob`: a sync reviewer, ask_user): input()
and notebook widgets run in the thread that called `agent.run`, where the user is, not on the
background loop.
Ctrl-C while waiting interrupts the run and the stream goes on, so the stopped step and
RunCompleted still arrive; a second Ctrl-C stops waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from .. import _aio
from ..memory import Event, Run

_DONE = object()
Sink = Callable[[Event], None]


class CallerJob:
    """A call that asks the user (an approver, ask_user) handed to the thread that called the sync
    API (it is waiting on the event queue anyway), so `input()` and widgets run where the user is,
    not on the background loop."""

    def __init__(self, ask: Callable[[Any], Any], arg: Any) -> None:
        self.ask, self.arg = ask, arg
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run_here(self, interrupt: Callable[[], None]) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.ask(self.arg))
        except KeyboardInterrupt:  # Ctrl-C at the prompt interrupts the run
            interrupt()
            self.future.set_exception(asyncio.CancelledError())
        except Exception as exc:
            self.future.set_exception(exc)


Caller = Callable[[CallerJob], None]


def stream(start: Callable[[Sink, Caller], Coroutine[Any, Any, Run]], interrupt: Callable[[], None]) -> Iterator[Event]:
    """The events of `start(sink, caller)`, a run on the background loop, in this thread."""
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    future = _aio.submit(start(events.put, events.put))
    future.add_done_callback(lambda _: events.put(_DONE))
    wait = True
    try:
        while (event := _next(events, interrupt)) is not _DONE:
            yield event
        future.result()
    except KeyboardInterrupt:
        wait = False  # the user insists: the run winds down in the background
        raise
    finally:
        if not future.done():
            interrupt()
            if wait:
                future.exception()  # so the agent can run again as soon as this returns


def _next(events: queue.SimpleQueue[Any], interrupt: Callable[[], None]) -> Any:
    while True:
        try:
            item = events.get()
        except KeyboardInterrupt:
            interrupt()
            item = events.get()
        if not isinstance(item, CallerJob):
            return item
        item.run_here(interrupt)
