"""The records of a run: typed steps, usage, tool calls, the events a run streams, and RunRecord
(the run's data). Records only: agents fill them in, the views (display, export) read them.

`agent_kernel.memory.Run` is the RunRecord users hold: it adds the views (replay, notebook
display, export), which import these records, so it lives above them in `memory`."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the sandbox package imports jupyter_client: keep records cheap to import
    from .sandbox import Execution

# running: not finished; success: answered; max_steps: the step limit came first; error: a failure
# (`RunRecord.error` says which); interrupted: Kernel > Interrupt or `agent.interrupt()`; stopped: the
# reviewer chose Stop; budget_exceeded, stuck: a guard ended it.
RunState = Literal["running", "success", "max_steps", "error", "interrupted", "stopped", "budget_exceeded", "stuck"]
STOPPED_STATES = ("stopped", "budget_exceeded", "stuck")  # ended on purpose: `RunRecord.error` says why, not a failure


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0  # USD, as litellm prices it; 0.0 where litellm has no price

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost + other.cost,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class ToolCall:
    """One call a model asked for, and what came of it."""

    name: str
    arguments: dict[str, Any]
    id: str = ""
    result: Any = None
    error: str | None = None


@dataclass
class Review:
    """What the reviewer decided about an action before it ran (`review=True` / `approve=`)."""

    decision: Literal["run", "edit", "skip", "stop"]
    original: str | None = None  # the model's proposal, when the reviewer edited it
    reason: str = ""  # why it was skipped or stopped, as the model is told


@dataclass
class TaskStep:
    task: str
    variables: dict[str, str] = field(default_factory=dict)  # name -> short preview shown to the model
    kind: Literal["task"] = "task"


@dataclass
class PlanningStep:
    plan: str
    usage: Usage = field(default_factory=Usage)
    duration: float = 0.0
    kind: Literal["planning"] = "planning"


@dataclass
class ActionStep:
    index: int
    model_output: str = ""  # the raw reply text
    thought: str = ""  # the reply's prose, without the code
    code: str | None = None  # CodeAgent: the action
    tool_calls: list[ToolCall] = field(default_factory=list)  # the actions (tools); tools the code called (code)
    execution: Execution | None = None  # CodeAgent: what running the code produced
    observation: str = ""  # what the model is shown next
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    duration: float = 0.0
    is_final: bool = False
    review: Review | None = None  # set when a reviewer saw the action before it ran
    images: list[str] = field(default_factory=list)  # base64 PNGs sent to a model that can see (scaled down)
    kind: Literal["action"] = "action"


@dataclass
class FinalAnswerStep:
    """The run's answer, and where its numbers came from (see agents._evidence)."""

    output: Any
    sources: dict[str, int] = field(default_factory=dict)  # a number as the answer writes it -> the step
    # whose output showed it (0: only the task gave it)
    unverified: list[str] = field(default_factory=list)  # the answer's numbers that no step showed
    mismatch: str = ""  # how the answer is not the kind the task asks for ("" when it is; agents._asked.WHY)
    kind: Literal["final"] = "final"


Step = TaskStep | PlanningStep | ActionStep | FinalAnswerStep


@dataclass
class RunRecord:
    """One agent run's data: the task, every step, the answer and what it cost (see memory.Run)."""

    task: str
    agent: Literal["code", "tools"]
    model: str
    steps: list[Step] = field(default_factory=list)
    output: Any = None
    state: RunState = "running"
    usage: Usage = field(default_factory=Usage)
    started_at: float = field(default_factory=time.time)
    duration: float = 0.0
    error: str | None = None  # why it failed, or (budget_exceeded, stuck) why it was stopped
    unverified: list[str] = field(default_factory=list)  # numbers in the answer no step computed: a success,
    # but one to check (the final answer step says the same, and where the other numbers came from)
    mismatch: str = ""  # how the answer is not the kind the task asks for: a success to check as well
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # provenance: outputs and exports name it

    @property
    def doubted(self) -> bool:
        """An answer the run's checks doubt: numbers no step showed, or not the kind the task asks for."""
        return bool(self.unverified or self.mismatch)

    @property
    def action_steps(self) -> list[ActionStep]:
        return [s for s in self.steps if isinstance(s, ActionStep)]

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


# Events a run streams while it works (`agent.run(..., stream=True)`, step callbacks, live display).


@dataclass
class RunStarted:
    """The first event: the run's id and model, before any step."""

    run: RunRecord


@dataclass
class StepStarted:
    index: int


@dataclass
class TextDelta:
    """Tokens of the model's reply as they arrive."""

    index: int
    text: str


@dataclass
class StepCompleted:
    step: Step


@dataclass
class RunCompleted:
    run: RunRecord


Event = RunStarted | StepStarted | TextDelta | StepCompleted | RunCompleted
