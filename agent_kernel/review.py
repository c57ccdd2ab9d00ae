"""Review before running: the analyst sees each action before it touches their data, and decides.

    agent = CodeAgent(model, approve=lambda step: Decision.run())    # from a script
    agent = CodeAgent(model, review=True)                           # asks in the notebook / terminal

An approver is `callable(step) -> Decision` (or an async one). It is given the ActionStep about to
run: `step.code` for a CodeAgent, `step.tool_calls` for a ToolCallingAgent; `proposal(step)` is
that action as editable text (the code, or the calls as JSON). A sync approver called through the
sync API (`agent.run`, the magics) runs in the caller's thread, so `input()` and the notebook's own
output work as usual. `review=True` and the magic's `--review` ask through `approver(ui)`, the one
place that chooses between the widget prompt (a notebook that can show ipywidgets, see
agent_kernel._widgets) and `input()`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from . import _widgets
from .errors import AgentKernelError

if TYPE_CHECKING:
    from .records import ActionStep

Approver = Callable[["ActionStep"], "Decision | Awaitable[Decision]"]
ReviewUI = Literal["auto", "widgets", "input"]  # how the analyst is asked; auto: widgets where they show


@dataclass(frozen=True)
class Decision:
    """What the reviewer decided; made with Decision.run(), .edit(code), .skip(reason), .stop(reason).

    Args:
        action: "run" it, "edit" (run `code` instead), "skip" it (the model is told, with `reason`),
            or "stop" the run.
        code: for "edit": the new code, or the tool calls as JSON.
        reason: for "skip" and "stop": why, in words (the model reads a skip's reason).
    """

    action: Literal["run", "edit", "skip", "stop"]
    code: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.action not in ("run", "edit", "skip", "stop"):
            raise ValueError(f"a Decision is run, edit, skip or stop, not {self.action!r}")
        if self.action == "edit" and not isinstance(self.code, str):
            raise ValueError("Decision.edit(code) needs the edited code (for tool calls: the calls as JSON)")

    @classmethod
    def run(cls) -> Decision:
        return cls("run")

    @classmethod
    def edit(cls, code: str) -> Decision:
        return cls("edit", code=code)

    @classmethod
    def skip(cls, reason: str = "") -> Decision:
        return cls("skip", reason=reason)

    @classmethod
    def stop(cls, reason: str = "") -> Decision:
        return cls("stop", reason=reason)


def checked(decision: Any) -> Decision:
    """An approver's answer, or a clear error when it returned something else."""
    if isinstance(decision, Decision):
        return decision
    raise TypeError(f"an approver must return a Decision (Decision.run(), .edit(code), .skip(reason), .stop()), "
                    f"got {decision!r}")


def proposal(step: ActionStep) -> str:
    """The action as text the reviewer can edit: the code, or the tool calls as a JSON list."""
    if step.code is not None:
        return step.code
    calls = [{"name": c.name, "arguments": c.arguments} for c in step.tool_calls]
    return json.dumps(calls, indent=2, ensure_ascii=False, default=repr)


# -- the interactive approvers (review=True) ---------------------------------------------------------


class WidgetsUnavailable(AgentKernelError, ValueError):
    """ui="widgets" where widgets cannot show (no ipywidgets, not an ipykernel's main thread)."""


def uses_widgets(ui: ReviewUI = "auto") -> bool:
    """Whether the analyst is asked through widgets: never for "input", where they can show for
    "auto"; "widgets" where they cannot raises WidgetsUnavailable."""
    if ui == "input":
        return False
    usable = _widgets.usable()
    if ui == "widgets" and not usable:
        raise WidgetsUnavailable("review_ui = 'widgets' needs ipywidgets (pip install 'agent_kernel[widgets]') "
                                 "and a Jupyter kernel")
    return usable


def approver(ui: ReviewUI = "auto") -> Callable[[ActionStep], Decision]:
    """The analyst as reviewer: the widget prompt or `input()`, as `uses_widgets(ui)` decides."""
    return widget_prompt if uses_widgets(ui) else ask


def interactive(step: ActionStep) -> Decision:
    """review=True: chooses at each step (the same agent may run in a notebook and a terminal)."""
    return approver()(step)


_CHOICES = {"r": "run", "run": "run", "": "run", "e": "edit", "edit": "edit", "s": "skip", "skip": "skip",
            "t": "stop", "stop": "stop"}
_END_OF_EDIT = "."


def ask(step: ActionStep, read: Callable[[str], str] = input, write: Callable[[str], Any] = print) -> Decision:
    """Show the action and ask what to do, through `input()` (a notebook shows an input box)."""
    from ._safe import clean_text

    what = "code" if step.code is not None else "tool calls"
    write(f"── Step {step.index}: the agent wants to run this {what}\n{clean_text(proposal(step))}")
    while True:
        choice = _CHOICES.get(read("[r]un, [e]dit, [s]kip or s[t]op? ").strip().lower())
        if choice == "run":
            return Decision.run()
        if choice == "stop":
            return Decision.stop(read("Why stop? (optional) ").strip())
        if choice == "skip":
            return Decision.skip(read("Why skip? (the agent is told) ").strip())
        if choice == "edit":
            write(f"Type the {what} to run instead; end with a line holding only '{_END_OF_EDIT}'.")
            lines: list[str] = []
            while (line := read("")) != _END_OF_EDIT:
                lines.append(line)
            return Decision.edit("\n".join(lines))
        write("Answer r, e, s or t.")


def widget_prompt(step: ActionStep) -> Decision:
    """The review in a notebook: the action in an editable box; run it, run the edit, skip or stop.
    Model text only goes into plain-text widgets (Textarea), never into HTML."""
    import ipywidgets as w

    what = "code" if step.code is not None else "tool calls (JSON)"
    original = proposal(step)
    lines = min(original.count("\n") + 2, 30)
    editor = w.Textarea(value=original, layout=w.Layout(width="auto", height=f"{lines * 1.5 + 1:.1f}em"))
    reason = w.Text(placeholder="why (skip or stop): the agent is told", layout=w.Layout(width="auto"))
    buttons = {
        "run": w.Button(description="Run", button_style="success", tooltip="run the action as the agent wrote it"),
        "run my edit": w.Button(description="Run my edit", button_style="info",
                                tooltip="run the text in the box instead (the run records your edit)"),
        "skip": w.Button(description="Skip", button_style="warning", tooltip="do not run it; tell the agent why"),
        "stop": w.Button(description="Stop", button_style="danger", tooltip="end the run here"),
    }

    def settle(choice: str) -> Decision:
        if choice == "run my edit":
            return Decision.edit(editor.value)
        if choice == "skip":
            return Decision.skip(reason.value.strip())
        if choice == "stop":
            return Decision.stop(reason.value.strip())
        return Decision.run()

    return _widgets.ask_with_buttons(f"Step {step.index}: the agent wants to run this {what}", [editor, reason],
                                     buttons, settle)
