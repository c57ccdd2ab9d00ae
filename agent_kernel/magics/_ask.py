"""`--ask`: an ask_user tool the model may call when a task is ambiguous (which column is revenue?
which period?). The question is asked where the analyst is: a text box in the cell (widgets), else
`input()`; a run nobody can answer (headless, no stdin) gets "no answer" and states its assumption."""

from __future__ import annotations

from typing import Any

from .. import _widgets

MAX_QUESTIONS = 2  # per agent (--continue goes on counting): a pause for the analyst, not a hand-back
NO_ANSWER = "no answer: state the assumption you make and go on"
NO_MORE = f"no more questions ({MAX_QUESTIONS} asked): state the assumption you make and go on"


class AskUser:
    """The tool's state: the agent whose run asks (set once the agent exists), how it asks (widgets,
    as review_ui decides, or input()) and the questions asked."""

    def __init__(self, widgets: bool) -> None:
        self.agent: Any = None
        self.widgets = widgets
        self.asked = 0

    def tool(self) -> Any:
        from ..tools import tool

        async def ask_user(question: str) -> str:
            """Ask the analyst one short question, only when the task is ambiguous and the data cannot
            settle it (which column is revenue? which period?). At most twice in a task.

            Args:
                question: one short, concrete question.
            """
            self.asked += 1
            if self.asked > MAX_QUESTIONS:
                return NO_MORE
            asking = _widgets.ask_text if self.widgets else _typed
            answer = await self.agent.ask_user(asking, str(question)[:500])
            return answer or NO_ANSWER

        return tool(ask_user)


def _typed(question: str) -> str | None:
    """The analyst's answer through input(); None when empty or when nobody can be asked."""
    try:
        return input(f"The agent asks: {question}\n> ").strip() or None
    except (EOFError, OSError, RuntimeError):  # no stdin (IPython's StdinNotImplementedError is a RuntimeError)
        return None
