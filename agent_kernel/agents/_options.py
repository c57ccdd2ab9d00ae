"""The settings every agent takes, in one record: both agents' constructors pass them through here,
so their names, types, defaults and checks are written once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..memory import Run, Step
from ..review import Approver
from ._limits import Limits

FinalAnswerCheck = Callable[[Any, Run], Any]  # (answer, run) -> bool, or raise with the reason
StepCallback = Callable[[Step, Run], Any]


@dataclass(frozen=True)
class AgentOptions:
    """How an agent works, beside its model and tools. Checked when made.

    Args:
        max_steps: action steps before the last, answer-only request (at least 1).
        planning_interval: every this many steps the model first writes a plan; None: never.
        instructions: your text, added to the system prompt.
        final_answer_checks: `check(answer, run)`, sync or async: false or raising rejects the
            answer and the model is told why.
        check_numbers: an answer stating a number that no step's output or tool result showed is
            sent back, asking the model to compute it first (a small model's guess is caught
            there), as is an answer of another kind than the task asks for: NaN, no amount for "how
            many" or "how much", one value for "... by <column>", a number for "which <text
            column>" (agents/_asked.py); at most twice a run, each time for another reason. A
            ToolCallingAgent with no tools of its own is not asked. The answer that stands records
            what is still doubtful (`run.unverified`, `run.mismatch`); False: no checks at all
            (the unverified numbers are recorded even then).
        step_callbacks: `callback(step, run)` after each step is recorded.
        max_observation_chars: an action's observation beyond this is cut (head and tail kept).
        keep_steps: the most recent action steps the model sees in full (older ones as a line each).
        retry_temperature: once the same error or action came twice in a row, the next request
            samples at this temperature (greedy decoding repeats itself), where the model takes a
            temperature and its own is lower; None: never.
        name: the agent's name when it is another agent's tool.
        description: what a manager agent reads about this agent when it is its tool.
        add_base_tools: add web search and page reading (a ToolCallingAgent also gets Python).
        review: ask the analyst before each action (widgets in a notebook, else input()).
        approve: `approve(step) -> Decision`, sync or async: a script's reviewer (wins over review).
        max_cost: US dollars a run may spend on model calls; None: no limit.
        max_tokens: tokens a run may spend; None: no limit.
        max_time: seconds of work a run may take (reviewing does not count); None: no limit.
    """

    max_steps: int = 10
    planning_interval: int | None = None
    instructions: str | None = None
    final_answer_checks: tuple[FinalAnswerCheck, ...] = ()
    check_numbers: bool = True
    step_callbacks: tuple[StepCallback, ...] = ()
    max_observation_chars: int = 10_000
    keep_steps: int = 8
    retry_temperature: float | None = 0.7
    name: str | None = None
    description: str | None = None
    add_base_tools: bool = False
    review: bool = False
    approve: Approver | None = None
    max_cost: float | None = None
    max_tokens: int | None = None
    max_time: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "final_answer_checks", tuple(self.final_answer_checks))
        object.__setattr__(self, "step_callbacks", tuple(self.step_callbacks))
        self.limits  # noqa: B018 - making the Limits checks them
        if self.planning_interval is not None and self.planning_interval < 1:
            raise ValueError(f"planning_interval must be a positive number of steps or None, got "
                             f"{self.planning_interval}")
        if self.keep_steps < 1:
            raise ValueError(f"keep_steps must be at least 1, got {self.keep_steps}")
        if self.retry_temperature is not None and not 0 < self.retry_temperature <= 2:
            raise ValueError(f"retry_temperature must be above 0 and at most 2, or None, got {self.retry_temperature}")
        if self.approve is not None and not callable(self.approve):
            raise TypeError(f"approve must be callable(step) -> Decision, got {self.approve!r}")

    @property
    def limits(self) -> Limits:
        """What each run may spend, unless a run is given its own."""
        return Limits(max_steps=self.max_steps, max_cost=self.max_cost, max_tokens=self.max_tokens,
                      max_time=self.max_time)

    @classmethod
    def split(cls, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the settings that are AgentOptions fields, the rest): for agents with options of their own."""
        names = {f.name for f in dataclasses.fields(cls)}
        return ({k: v for k, v in settings.items() if k in names},
                {k: v for k, v in settings.items() if k not in names})
