"""What one run may spend: its limits as a value (`Limits`), and the budget that enforces them.

A run is given its `Limits` (the agent's own by default, `agent.run(task, limits=...)` for one
run, as the magic does for each cell); `Budget` counts what the run spends and ends it, keeping
the steps done so far, when a limit is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import AgentKernelError
from ..memory import Run, Usage

_unpriced_said: set[str] = set()  # models whose missing price was already pointed out


class UnpricedModelWarning(UserWarning):
    """litellm has no price for the model: its cost counts as $0, so only token budgets apply."""


class _RunEnded(AgentKernelError):
    """A guard ended the run on purpose (budget, repetition, the reviewer): the steps so far are kept.
    Caught by the loop, which records it as the run's state; it never reaches the caller."""

    def __init__(self, state: Literal["budget_exceeded", "stuck", "stopped"], reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """What one run may spend. Checked when made, so a bad limit fails before any model call.

    Args:
        max_steps: action steps before the last, answer-only request (at least 1).
        max_cost: US dollars of model calls (litellm's prices); None: no limit.
        max_tokens: input plus output tokens of model calls; None: no limit.
        max_time: seconds of the agent's own work (waiting for the reviewer does not count); an
            action still running when it is used up is stopped. None: no limit.
    """

    max_steps: int = 10
    max_cost: float | None = None
    max_tokens: int | None = None
    max_time: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        for label, limit in (("max_cost", self.max_cost), ("max_tokens", self.max_tokens),
                             ("max_time", self.max_time)):
            if limit is not None and not limit > 0:
                raise ValueError(f"{label} must be a positive number or None (no limit), got {limit!r}")


class Budget:
    """One run's spending against its Limits: tokens and cost as replies arrive, and working time.

    Time spent waiting for the reviewer does not count (`paused()`). Inside `bounding()` (an action
    running) the budget cancels the task once the time is used up, so a long action is stopped (the
    sandbox interrupts its code) instead of overrunning the limit."""

    def __init__(self, limits: Limits, run: Run, model_name: str) -> None:
        self.limits = limits
        self.run = run
        self.model_name = model_name
        self.started = time.perf_counter()
        self.waited = 0.0
        self.expired = False
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - self.waited

    def spend(self, usage: Usage) -> None:
        self.run.usage += usage
        name = self.model_name
        if self.limits.max_cost is not None and usage.total_tokens and not usage.cost and name not in _unpriced_said:
            _unpriced_said.add(name)
            warnings.warn(f"litellm has no price for {name}: its cost counts as $0, so max_cost cannot stop this "
                          "run; set max_tokens to cap it", UnpricedModelWarning, stacklevel=2)

    def check(self) -> None:
        """Before each model call: stop when a limit is reached (the steps so far are kept)."""
        spent, elapsed, limits = self.run.usage, self.elapsed(), self.limits
        over = [
            f"{label} {shown(used)} of {shown(limit)}"
            for label, used, limit, shown in (
                ("max_cost", spent.cost, limits.max_cost, lambda v: f"${v:.4f}"),
                ("max_tokens", spent.total_tokens, limits.max_tokens, lambda v: f"{v:,}"),
                ("max_time", elapsed, limits.max_time, lambda v: f"{v:.1f} s"),
            )
            if limit is not None and used >= limit
        ]
        if over:
            raise _RunEnded("budget_exceeded", f"budget used up before the next model call ({'; '.join(over)}): "
                                              f"{self.spent()}")

    def spent(self) -> str:
        return (f"spent ${self.run.usage.cost:.4f}, {self.run.usage.total_tokens:,} tokens, "
                f"{self.elapsed():.1f} s of work")

    @contextlib.contextmanager
    def bounding(self) -> Iterator[None]:
        self._task = asyncio.current_task()
        self._arm()
        try:
            yield
        finally:
            self._disarm()
            self._task = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._disarm()
        began = time.perf_counter()
        try:
            yield
        finally:
            self.waited += time.perf_counter() - began
            self._arm()

    def _arm(self) -> None:
        if self.limits.max_time is not None and self._task is not None:
            left = max(0.0, self.limits.max_time - self.elapsed())
            self._timer = asyncio.get_running_loop().call_later(left, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self.expired = True
        if self._task is not None:
            self._task.cancel()
