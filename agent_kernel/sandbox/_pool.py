"""A warm pool: kernels started ahead of time, so a new run does not wait for a kernel start.

Each pooled kernel serves one user and is then closed, never handed out again: a run cannot find
files or state left by an earlier one.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Any

from .. import _aio
from ._base import SandboxError
from ._client import AsyncSandbox, Sandbox
from ._spec import gateway_url


class SandboxPool:
    """Keeps `size` sandboxes with the same options started and ready.

    `total`: start no more than this many kernels over the pool's life (a batch of n tasks needs
    n, and no kernel should start only to be closed unused); None: no limit.
    `starts_at_once`: kernels starting at the same time; None: as many as this machine has cores
    for local kernels, no limit on a gateway. A local start is mostly CPU (the zygote's fork and
    ipykernel's set-up): eight at once on two cores made each of them, and every run in progress,
    wait for all eight. A gateway start is mostly round trips (REST, the websocket, the kernel's
    first answers), and the gateway's machine is another one.
    """

    def __init__(self, size: int = 1, *, total: int | None = None, starts_at_once: int | None = None,
                 **options: Any) -> None:
        """Args:
            size: sandboxes kept started and ready.
            total: kernels started over the pool's life at most; None: no limit.
            starts_at_once: kernels starting at the same time; None: this machine's cores (local), no limit (gateway).
            **options: each sandbox's (AsyncSandbox's imports, timeout, memory, ...).
        """
        if size < 1:
            raise ValueError("a pool needs size >= 1")
        if total is not None and total < 0:
            raise ValueError(f"total={total} is not a number of kernels to start; pass None for no limit")
        if starts_at_once is not None and starts_at_once < 1:
            raise ValueError(f"starts_at_once={starts_at_once} must be at least 1, or None for the default")
        self.size = size
        self.total = total
        self.options = options
        self.starts_at_once = starts_at_once or _local_cores(options) or size
        self._starting = asyncio.Semaphore(self.starts_at_once)
        self._left = total
        self._ready: deque[asyncio.Task[AsyncSandbox]] = deque()

    def _fill(self) -> None:
        while len(self._ready) < self.size and self._left != 0:
            if self._left is not None:
                self._left -= 1
            self._ready.append(asyncio.ensure_future(self._start_one()))

    async def _start_one(self) -> AsyncSandbox:
        async with self._starting:
            return await AsyncSandbox(**self.options).start()

    async def astart(self) -> None:
        """Start the pool's kernels and wait until they are ready."""
        self._fill()
        await asyncio.gather(*self._ready)

    async def aacquire(self) -> AsyncSandbox:
        """A ready sandbox, yours to close; a replacement starts in the background.

        The replacement starts once this sandbox is up, not before: when many runs acquire at once
        (run_many's first wave), their kernels start without replacements competing for the CPU.
        """
        if not self._ready:
            self._fill()
        if not self._ready:
            raise SandboxError(f"the pool has handed out all {self.total} sandboxes it may start (total={self.total})")
        task = self._ready.popleft()
        try:
            return await task
        finally:
            self._fill()

    async def aclose(self) -> None:
        tasks, self._ready = list(self._ready), deque()
        for sandbox in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(sandbox, AsyncSandbox):
                await sandbox.aclose()

    # sync API
    def start(self) -> None:
        _aio.run_sync(self.astart())

    def acquire(self) -> Sandbox:
        return Sandbox._wrap(_aio.run_sync(self.aacquire()))

    def close(self) -> None:
        _aio.run_sync(self.aclose())

    def __enter__(self) -> SandboxPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _local_cores(options: dict[str, Any]) -> int | None:
    """This machine's cores for local kernels; None for a gateway's."""
    if gateway_url(options.get("gateway")):
        return None
    return os.cpu_count() or 1
