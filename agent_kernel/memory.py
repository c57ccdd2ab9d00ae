"""An agent's memory: the typed steps (see `records`) and the Run that holds them and shows itself.

`Run` is a RunRecord with its views: `replay()` prints it, a notebook displays it, `to_notebook()`
exports it. The views (display, export) read only the records, so this module, above both, is
where the record and its views meet (records <- display <- export <- memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .records import (
    STOPPED_STATES,
    ActionStep,
    Event,
    FinalAnswerStep,
    PlanningStep,
    Review,
    RunCompleted,
    RunRecord,
    RunStarted,
    RunState,
    Step,
    StepCompleted,
    StepStarted,
    TaskStep,
    TextDelta,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:  # nbformat takes seconds to import: only an export needs it
    from nbformat import NotebookNode

__all__ = [
    "STOPPED_STATES", "ActionStep", "Event", "FinalAnswerStep", "PlanningStep", "Review", "Run", "RunCompleted",
    "RunRecord", "RunStarted", "RunState", "Step", "StepCompleted", "StepStarted", "TaskStep", "TextDelta",
    "ToolCall", "Usage",
]  # fmt: skip


class Run(RunRecord):
    """One agent run: the task, every step, the answer and what it cost; it shows itself."""

    def replay(self) -> None:
        """Print the run readably (plain text), as it happened."""
        from .display import render_text

        print(render_text(self))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict[str, str], dict[str, Any]]:
        """`run` as a cell's last line shows it as the live view did (sanitised HTML, or text)."""
        from .display import mime_bundle, provenance

        return mime_bundle(self), provenance(self)

    def to_notebook(self, path: str | None = None, **kwargs: Any) -> NotebookNode:
        """Export as an nbformat v4 notebook; written to `path` when given."""
        from .export import run_to_notebook

        return run_to_notebook(self, path, **kwargs)
