"""One background event loop for the whole process, so sync wrappers work everywhere.

The async core cannot use `asyncio.run` from inside Jupyter (the kernel's own loop is already
running in that thread), so sync callers hand coroutines to a private loop on a daemon thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    """The shared background loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None:
            new = asyncio.new_event_loop()
            threading.Thread(target=new.run_forever, name="agent_kernel-loop", daemon=True).start()
            _loop = new
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the background loop and wait for it.

    On KeyboardInterrupt (Kernel > Interrupt in a notebook) the coroutine is cancelled, given a
    moment to clean up, and the interrupt is re-raised to the caller.
    """
    if _in_loop_thread():
        raise RuntimeError("run_sync called from the agent_kernel loop thread; await the coroutine instead")
    future = submit(coro)
    try:
        return future.result(timeout)
    except KeyboardInterrupt:
        future.cancel()
        try:
            future.result(5)
        except BaseException:
            pass
        raise


async def to_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`asyncio.to_thread`, or here and now once the interpreter is shutting down.

    From then on (atexit callbacks included: a notebook's sandboxes are closed in one) every
    thread pool refuses work with "cannot schedule new futures after shutdown"; closing a sandbox
    must still remove its folder.
    """
    try:
        future = asyncio.get_running_loop().run_in_executor(None, functools.partial(func, *args, **kwargs))
    except RuntimeError:
        return func(*args, **kwargs)
    return await future


def _in_loop_thread() -> bool:
    try:
        return asyncio.get_running_loop() is _loop
    except RuntimeError:
        return False
