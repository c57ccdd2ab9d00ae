"""The cap on what a local sandbox stores: the host measures the sandbox's folders while code runs.

Nothing unprivileged caps a directory tree's size (quotas and size-limited mounts need root), so
the host measures the folders the kernel may write (its workdir, transfer and runtime folders)
after every `EVERY` seconds of running code, and the sandbox stops code that went over the cap.
RLIMIT_FSIZE keeps each file under the cap as well, so code overshoots by at most what it writes
between two looks. This catches code that writes files in a runaway loop; it is not a hard quota.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

EVERY = 0.25  # seconds of running code between two measures
MAX_FILES = 100_000  # more entries than this count as over the cap: the walk itself must stay cheap


@dataclass
class DiskWatch:
    root: Path
    cap: int
    _unmeasured: float = 0.0  # seconds of code run since the last measure
    _measured_at: float = 0.0  # time.perf_counter() of the last measure

    def next_measure(self, started: float) -> float:
        """When an execution that started at `started` is due for a measure."""
        return started + max(0.0, EVERY - self._unmeasured)

    async def after(self, started: float) -> str | None:
        """Count an execution's time; measure when due. Returns what `measure` returns."""
        now = time.perf_counter()
        self._unmeasured += now - max(started, self._measured_at)
        return await self.measure() if self._unmeasured >= EVERY else None

    async def measure(self) -> str | None:
        """None while under the cap, else what went over, for the error the code's author reads."""
        self._unmeasured, self._measured_at = 0.0, time.perf_counter()
        try:
            used, entries = await asyncio.to_thread(_usage, self.root)  # off the loop other sandboxes share
        except PermissionError as exc:
            return f"the sandbox made a folder the host cannot measure ({exc.strerror}: {exc.filename})"
        if entries > MAX_FILES:
            return f"the sandbox's folders hold more than {MAX_FILES:,} files and folders"
        if used > self.cap:
            return f"the sandbox's folders hold {mib(used)}, over its disk cap of {mib(self.cap)}"
        return None


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
