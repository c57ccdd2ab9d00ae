"""Many runs at once: one agent's configuration over a list of tasks, `concurrency` at a time.

Each task runs on its own copy of the agent (same model, tools and settings, empty memory) and,
for a CodeAgent, in its own fresh sandbox from a shared pool that starts kernels ahead of the runs
that need them (never more kernels than tasks). Model calls of different tasks overlap. A task that
fails yields a Run with state "error"; the others go on. Runs come back in input order.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO

from .. import _aio, _gc
from ..memory import Run
if TYPE_CHECKING:
    from ..sandbox import SandboxLike, SandboxPool

Task = str | tuple[str, dict[str, Any]]  # a task, or a task with its own variables


class Batchable(Protocol):
    """What a batch needs of an agent (every MultiStepAgent has it): copies for each task, and
    sandboxes for them if it runs code."""

    @property
    def kind(self) -> Literal["code", "tools"]: ...

    @property
    def model_name(self) -> str: ...

    def new_run(self, sandbox: SandboxLike | None = None) -> Batchable: ...

    def sandbox_pool(self, size: int, total: int) -> SandboxPool | None: ...

    async def arun(self, task: str, *, variables: dict[str, Any] | None = None) -> Run: ...

    def interrupt(self) -> None: ...


def run_many(agent: Batchable, tasks: Iterable[Task], *, concurrency: int = 4,
             variables: dict[str, Any] | None = None, progress: bool = True) -> list[Run]:
    """Run every task and return their Runs in input order (sync; see `arun_many`).

    Ctrl-C (Kernel > Interrupt) interrupts the runs in progress; they, and the tasks not started
    yet, come back with state "interrupted" next to the runs already finished.
    """
    batch = _Batch(agent, tasks, concurrency, variables, progress)
    future = _aio.submit(batch.run())
    try:
        return future.result()
    except KeyboardInterrupt:
        batch.interrupt()
        return future.result()


async def arun_many(agent: Batchable, tasks: Iterable[Task], *, concurrency: int = 4,
                    variables: dict[str, Any] | None = None, progress: bool = True) -> list[Run]:
    """Run every task, `concurrency` at a time, each on its own copy of `agent` (and sandbox).

    `tasks`: task strings, or (task, variables) pairs; `variables` are given to every task (a
    pair's own variables win). `progress`: show a progress bar (notebook display or terminal line).
    """
    return await _Batch(agent, tasks, concurrency, variables, progress).run()


class _Batch:
    def __init__(self, agent: Batchable, tasks: Iterable[Task], concurrency: int,
                 variables: dict[str, Any] | None, progress: bool) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive number of runs at a time, got {concurrency!r}")
        self.agent = agent
        self.items = [_item(task, variables or {}) for task in tasks]
        self.concurrency = min(concurrency, max(1, len(self.items)))
        self.runs: list[Run | None] = [None] * len(self.items)
        self.progress = _Progress(len(self.items)) if progress else None
        self._running: set[Batchable] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    async def run(self) -> list[Run]:
        self._loop = asyncio.get_running_loop()
        # each kernel serves one task: no more than the tasks
        pool = self.agent.sandbox_pool(self.concurrency, len(self.items)) if self.items else None
        slots = asyncio.Semaphore(self.concurrency)
        try:
            with _gc.runs_in_progress():  # held across the batch: no unfreeze between two tasks
                await asyncio.gather(*(self._one(index, pool, slots) for index in range(len(self.items))))
        finally:
            if pool is not None:
                await pool.aclose()
            if self.progress is not None:
                self.progress.finish()
        return [run for run in self.runs if run is not None]

    def interrupt(self) -> None:
        """Stop the runs in progress and skip the rest (from any thread)."""
        self._stopping = True
        if self._loop is not None:
            for twin in list(self._running):
                twin.interrupt()

    async def _one(self, index: int, pool: Any, slots: asyncio.Semaphore) -> None:
        task, variables = self.items[index]
        async with slots:
            if self._stopping:
                run = self._failed(task, "interrupted", None)
            else:
                run = await self._attempt(task, variables, pool)
        self.runs[index] = run
        if self.progress is not None:
            self.progress.update(run)

    async def _attempt(self, task: str, variables: dict[str, Any], pool: Any) -> Run:
        """One task on its own copy of the agent; whatever goes wrong stays in its Run."""
        sandbox = None
        try:
            if pool is not None:
                sandbox = await pool.aacquire()
            if self._stopping:  # interrupted while its kernel was starting
                return self._failed(task, "interrupted", None)
            twin = self.agent.new_run(sandbox)
            self._running.add(twin)
            try:
                return await twin.arun(task, variables=variables)
            finally:
                self._running.discard(twin)
        except Exception as exc:  # the sandbox failed to start, a bad task: this task fails, the batch goes on
            return self._failed(task, "error", f"{type(exc).__name__}: {exc}")
        finally:
            if sandbox is not None:
                await sandbox.aclose()

    def _failed(self, task: str, state: Any, error: str | None) -> Run:
        return Run(task=task, agent=self.agent.kind, model=self.agent.model_name, state=state, error=error)


def _item(task: Any, shared: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(task, str):
        return task, dict(shared)
    if (isinstance(task, tuple) and len(task) == 2 and isinstance(task[0], str) and isinstance(task[1], dict)):
        return task[0], {**shared, **task[1]}
    raise TypeError(f"each task must be a string or a (task, variables) pair, got {task!r:.200}")


class _Progress:
    """Tasks done so far: an updating display in a notebook, a rewritten line in a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        from ..display import _rich_frontend

        self.total, self.done, self.failed = total, 0, 0
        self._started = time.monotonic()
        self._stream = stream or sys.stderr
        self._handle = None
        self._tty = self._stream.isatty()
        self._printed = -1  # the last tenth printed when the stream is not a terminal
        if _rich_frontend():
            from IPython.display import display

            self._handle = display(self._bundle(), raw=True, display_id=True)

    def update(self, run: Run) -> None:
        self.done += 1
        self.failed += run.state in ("error", "interrupted")
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)
        elif self._tty:
            self._stream.write("\r" + self._line())
            self._stream.flush()
        elif self.done * 10 // max(self.total, 1) > self._printed:  # logs: every tenth, not every task
            self._printed = self.done * 10 // max(self.total, 1)
            self._stream.write(self._line() + "\n")

    def finish(self) -> None:
        if self._handle is None and self._tty:
            self._stream.write("\n")

    def _line(self) -> str:
        width = 24
        filled = width * self.done // max(self.total, 1)
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} runs{failed}, "
                f"{time.monotonic() - self._started:.1f} s")

    def _bundle(self) -> dict[str, str]:
        # numbers only: nothing from the model or the sandbox reaches this HTML
        return {"text/plain": self._line(),
                "text/html": f'<progress value="{self.done}" max="{self.total}"></progress> '
                             f"<code>{self._line()}</code>"}

