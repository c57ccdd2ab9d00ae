"""The cap on what a local sandbox stores: the host measures its folders for as long as its kernel lives.

Nothing unprivileged caps a directory tree's size (quotas and size-limited mounts need root), so
the host measures the folders the kernel may write (its workdir, transfer and runtime folders)
every `EVERY` seconds, whether code runs or not: one task per sandbox, its walk off the event
loop (a sandbox's usual few dozen entries take ~0.1 ms). Over the cap:
- while an execution runs, the execution is interrupted and ends in DiskLimitError, its variables
  kept (code that does not stop is restarted, as for a timeout); one that ended before it could be
  stopped gets the notice;
- while no code runs, and the folders grew since the previous measure: something the code left
  behind (a thread) writes on its own, and an interrupt cannot reach it. The kernel is killed and
  restarted at once, and the next `execute` reports DiskLimitError, says the variables were lost,
  and does not run its code. Folders over the cap that do not grow are left for code to clean up.
RLIMIT_FSIZE keeps each file under the cap as well, so the folders overshoot by at most what the
kernel writes in about two measuring intervals (plus a walk's time). It is not a hard quota.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

from .. import _aio

EVERY = 0.25  # seconds between two measures
MAX_FILES = 100_000  # more entries than this count as over the cap: the walk itself must stay cheap


class DiskWatch:
    """The measures of one sandbox's folders; `busy` is the sandbox's lock, held while code runs."""

    def __init__(self, root: Path, cap: int, busy: asyncio.Lock) -> None:
        self.root, self.cap = root, cap
        self.over: str | None = None  # what the latest measure found over the cap
        self._measured_at = -math.inf  # time.perf_counter() when the latest measure began
        self._busy = busy
        self._executions = 0  # executions begun: growth between two idle measures is no code's
        self._task: asyncio.Task[None] | None = None

    def began(self) -> None:
        """An execution begins (its holder of `busy` calls this)."""
        self._executions += 1

    def over_since(self, started: float) -> str | None:
        """What a measure begun at or after `started` (a time.perf_counter()) found over the cap."""
        return self.over if self._measured_at >= started else None

    def watch(self, stop_writes: Callable[[str], Awaitable[None]]) -> None:
        """Measure until `stop`; `stop_writes(why)`, a bound method held weakly (the sandbox may be
        dropped unclosed), when the folders grow over the cap while no code runs."""
        self._task = asyncio.ensure_future(self._watch(weakref.WeakMethod(stop_writes)))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self, stop_writes: weakref.WeakMethod) -> None:
        idle: tuple[int, int] | None = None  # (executions, bytes) at the previous measure made while idle
        while stop_writes() is not None:
            await asyncio.sleep(EVERY)
            executions, quiet = self._executions, not self._busy.locked()
            used = await self.measure()
            if not quiet or self._busy.locked() or executions != self._executions:
                idle = None  # code ran during the measure: what it wrote is its own
                continue
            if self.over is not None and idle is not None and idle[0] == executions and used > idle[1]:
                idle = None
                stop = stop_writes()
                if stop is not None:
                    await stop(self.over)
                del stop
                continue
            idle = (executions, used)

    async def measure(self) -> int:
        """Bytes stored now; sets `over` (None while under the cap, else what went over, for the
        error the code's author reads)."""
        self._measured_at = time.perf_counter()
        try:
            used, entries = await _aio.to_thread(_usage, self.root)  # off the loop other sandboxes share
        except PermissionError as exc:
            self.over = f"the sandbox made a folder the host cannot measure ({exc.strerror}: {exc.filename})"
            return 0
        if entries > MAX_FILES:
            self.over = f"the sandbox's folders hold more than {MAX_FILES:,} files and folders"
        elif used > self.cap:
            self.over = f"the sandbox's folders hold {mib(used)}, over its disk cap of {mib(self.cap)}"
        else:
            self.over = None
        return used


def _usage(root: Path) -> tuple[int, int]:
    """Bytes allocated under `root` (sparse files count what they use) and entries seen, the walk
    stopping past MAX_FILES. Symlinks are not followed; hard links count once per name. A folder
    the host may not list raises PermissionError: what it holds cannot be measured."""
    used = entries = 0
    folders = [str(root)]
    while folders and entries <= MAX_FILES:
        try:
            listing = os.scandir(folders.pop())
        except (FileNotFoundError, NotADirectoryError):  # removed while walked: nothing of it stored
            continue
        with listing:
            for entry in listing:
                entries += 1
                try:
                    used += entry.stat(follow_symlinks=False).st_blocks * 512
                except OSError:  # removed while walked
                    continue
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
    return used, entries


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"
