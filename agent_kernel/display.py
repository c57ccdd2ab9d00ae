"""Rendering runs and steps: sanitised HTML for notebooks, plain text for terminals, a live view.

Everything shown here was written by a model or produced by the sandbox, so it is untrusted: text
is escaped, the sandbox's HTML goes through nh3 with a table-friendly allowlist, images must decode
as real PNG/JPEG, scripts never pass, and each assembled fragment gets a last nh3 pass as a backstop.
Terminal text loses ANSI/control sequences so a model cannot drive the user's terminal.
"""

from __future__ import annotations

import html
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ._safe import clean_text, safe_bundle
from ._safe import joined as _joined
from ._safe import sanitize_document as _backstop
from .records import (
    STOPPED_STATES,
    ActionStep,
    Event,
    FinalAnswerStep,
    PlanningStep,
    RunRecord as Run,  # the record: every memory.Run is one
    RunCompleted,
    RunStarted,
    Step,
    StepCompleted,
    StepStarted,
    TaskStep,
    TextDelta,
    Usage,
)
from .observation import (
    Call,
    Code,
    Failure,
    Note,
    Output,
    Part,
    Proposed,
    Thought,
    answer_sources,
    describe,
    describe_streamed,
    format_call,
    format_footer,
    review_label,
    state_label,
    unverified_note,
)
from .sandbox import MimeBundle

Renderable = Run | Step

COLLAPSE_LINES = 25  # outputs longer than this are folded into <details> / shortened in text
COLLAPSE_CHARS = 3000
MAX_TEXT_CHARS = 100_000  # one output's text beyond this is cut: a notebook must stay openable
TEXT_SUMMARY_LINES = 12  # head/tail lines kept per output in plain text

# ---------------------------------------------------------------------------------------------
# Shared formatting


def provenance(run: Run, step: Step | None = None) -> dict[str, Any]:
    """Display metadata saying what produced an output: the model, the run and the step (its index
    for an action; task, plan, final, or run for the rest), so a reader can tell model work apart."""
    label: int | str = "run" if step is None else step.index if isinstance(step, ActionStep) else step.kind
    return stamp(run.model, run.id, "plan" if label == "planning" else label)


def stamp(model: str, run_id: str, step: int | str) -> dict[str, Any]:
    """The provenance metadata itself, for outputs that are not a step of a Run (`%agent explain`)."""
    return {"agent_kernel": {"model": model, "run_id": run_id, "step": step}}


def render_diff(diff: str) -> dict[str, str]:
    """A unified diff as a mime bundle: coloured, sanitised HTML and the plain diff."""
    spans = _highlighted(diff, "diff")
    return {"text/plain": clean_text(diff), "text/html": _boxed(_backstop(f'<pre style="{_CODE_PRE}">{spans}</pre>'))}


TASK_COLUMN = 60  # characters of a task in the text table of runs


def render_runs(runs: list[tuple[Run, str]]) -> dict[str, str]:
    """`%agent runs`: each run (and the label it is listed by) as a table row. In text a longer task
    is cut with an ellipsis; in HTML no cell wraps, and the task column ends in an ellipsis to fit."""
    head = ["#", "agent", "state", "steps", "tokens", "cost", "time", "task"]
    rows = []
    for number, (run, label) in enumerate(runs, 1):
        task = " ".join(clean_text(label).split())
        rows.append([str(number), run.agent, state_label(run), str(len(run.action_steps)), f"{run.usage.total_tokens:,}",
                     f"${run.usage.cost:.4f}", f"{run.duration:.1f}s", task])
    cut = [[*r[:-1], r[-1] if len(r[-1]) <= TASK_COLUMN else r[-1][: TASK_COLUMN - 1] + "…"] for r in rows]
    widths = [max(len(r[i]) for r in [head, *cut]) for i in range(len(head) - 1)]
    right = {0, 3, 4, 5, 6}
    text = "\n".join("  ".join([*(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))),
                                  r[-1]]) for r in [head, *cut])
    cell = "white-space: nowrap; padding: 2px 8px;"
    task_cell = f"{cell} max-width: 40em; overflow: hidden; text-overflow: ellipsis;"
    header = "".join(f'<th style="{cell}">{_esc(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f'<td style="{task_cell if i == 7 else cell}" title="{_esc(c) if i == 7 else ""}">'
                                    f"{_esc(c)}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return {"text/plain": text, "text/html": _boxed(_backstop(f"<table><tr>{header}</tr>{body}</table>"))}


def render_prose(title: str, text: str) -> dict[str, str]:
    """Model-written prose (an explanation) as escaped HTML and plain text."""
    body = _backstop(f"<div><b>{_esc(title)}</b></div>{_prose(text)}")
    return {"text/plain": clean_text(f"{title}\n{text}"), "text/html": _boxed(body)}


def _step_header(step: ActionStep) -> str:
    detail = [f"{step.duration:.1f} s"] if step.duration else []
    if step.usage.total_tokens:
        detail.append(f"{step.usage.total_tokens:,} tokens")
    return f"Step {step.index}" + (f" ({', '.join(detail)})" if detail else "") + review_label(step)


def _closing_label(run: Run) -> str:
    return "Stopped" if run.state in STOPPED_STATES else "Error"


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _shorten(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n… [{len(text) - limit:,} characters cut] …\n{text[-half:]}"


# ---------------------------------------------------------------------------------------------
# Plain text


def render_text(obj: Renderable) -> str:
    """A run or step as plain text: for terminals, logs and `run.replay()`."""
    if isinstance(obj, Run):
        return _run_text(obj)
    return clean_text(_step_text(obj))


def _run_text(run: Run) -> str:
    parts = [_step_text(s) for s in run.steps]
    if not any(isinstance(s, TaskStep) for s in run.steps):
        parts.insert(0, _step_text(TaskStep(run.task)))
    return clean_text("\n\n".join(p for p in [*parts, _closing_text(run)] if p))


def _footer(run: Run, writing: bool = False) -> str:
    """The run's footer; `writing`: a step is in progress, and counts."""
    return format_footer(run.usage, len(run.action_steps) + writing, run.duration, state_label(run))


def _closing_text(run: Run, writing: bool = False) -> str:
    """What ends a run's text: its error, the answer unless a step showed it, the footer."""
    parts = [f"{_closing_label(run)}: {run.error}"] if run.error else []
    if run.output is not None and not any(isinstance(s, FinalAnswerStep) for s in run.steps):
        parts.append(_step_text(FinalAnswerStep(run.output)))
    return "\n\n".join([*parts, f"── {_footer(run, writing)}"])


def _step_text(step: Step, with_model_text: bool = True) -> str:
    if isinstance(step, TaskStep):
        return f"Task: {step.task}"
    if isinstance(step, PlanningStep):
        return f"── Plan\n{step.plan}"
    if isinstance(step, FinalAnswerStep):
        lines = [_summarised(_value_text(step.output)), unverified_note(step), answer_sources(step)]
        return "── Final answer\n" + "\n".join(line for line in lines if line)
    lines = [f"── {_step_header(step)}"] if with_model_text else []
    for part in describe(step):
        if with_model_text or not isinstance(part, (Thought, Code, Proposed)):
            lines.extend(_part_text(part))
    return "\n".join(lines)


def _part_text(part: Part) -> list[str]:
    if isinstance(part, Thought):
        return [part.text]
    if isinstance(part, Code):
        return [_indent(part.source.rstrip())]
    if isinstance(part, Proposed):
        return ["The model had proposed:\n" + _indent(part.source.rstrip())]
    if isinstance(part, Call):
        call = part.call
        outcome = f"error: {call.error}" if call.error else _value_text(call.result)
        return [f"→ {format_call(call)}", _indent(_summarised(outcome))]
    if isinstance(part, Output):
        text = _output_text(part.output)
        return [_indent(_summarised(text))] if text else []
    if isinstance(part, Note):
        return [f"  [{part.text}]"]
    if isinstance(part, Failure):
        return [f"Error: {part.text}"]
    return []  # ExecutionFailure (its error output shows it), FinalValue (the final answer step shows it)


def _output_text(output: dict[str, Any]) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return _joined(output.get("text", ""))
    if kind == "error":
        tb = output.get("traceback") or []
        return "\n".join(tb) if tb else f"{output.get('ename')}: {output.get('evalue')}"
    data = output.get("data", {})
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            meta = (output.get("metadata") or {}).get(mime)
            sized = isinstance(meta, dict) and {"width", "height"} <= meta.keys()
            size = f" {meta['width']}x{meta['height']}" if sized else ""  # type: ignore[index]  # sized: a dict
            return f"[{mime}{size}]"
    return _joined(data.get("text/plain", f"[{', '.join(data)}]"))


def _summarised(text: str) -> str:
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= 2 * TEXT_SUMMARY_LINES:
        return _shorten(text.rstrip("\n"), COLLAPSE_CHARS * 2)
    hidden = len(lines) - 2 * TEXT_SUMMARY_LINES
    return "\n".join([*lines[:TEXT_SUMMARY_LINES], f"… [{hidden} lines]", *lines[-TEXT_SUMMARY_LINES:]])


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# ---------------------------------------------------------------------------------------------
# HTML

# Colours are JupyterLab's theme variables (so the run follows light and dark themes), each with the
# light theme's value as the fallback for frontends without them (classic Notebook, VS Code, nbviewer).
# JupyterLab sets `word-break: break-all` on outputs; the run's text breaks between words instead.
_WRAP = "word-break: normal; overflow-wrap: anywhere;"
_BOX = f"font-family: var(--jp-ui-font-family, sans-serif); font-size: 13px; line-height: 1.4; {_WRAP}"
_STEP = "border-left: 3px solid var(--jp-brand-color2, #8aa4c8); padding-left: 10px; margin: 8px 0;"
_ANSWER_BORDER = "border-left-color: var(--jp-success-color1, #2da44e);"
_PRE = (
    f"white-space: pre-wrap; {_WRAP} margin: 4px 0; padding: 6px; border-radius: 4px; "
    "font-family: var(--jp-code-font-family, monospace); font-size: 12px;"
)
_CODE_PRE = (_PRE + " background-color: var(--jp-cell-editor-background, #f6f8fa);"
             " color: var(--jp-content-font-color1, #1f2328);")
_MUTED = "color: var(--jp-content-font-color2, #6e7781);"
_ERROR = "color: var(--jp-error-color1, #cf222e);"
_TEXT = f"white-space: pre-wrap; {_WRAP} margin: 4px 0;"

# Code highlighting in CodeMirror's own theme colours: pygments tokens, coloured by JupyterLab's variables.
_TOKEN_COLOURS = {
    "Keyword": "var(--jp-mirror-editor-keyword-color, #008000)",
    "Name.Builtin": "var(--jp-mirror-editor-builtin-color, #008000)",
    "Name.Function": "var(--jp-mirror-editor-def-color, #0000ff)",
    "Name.Class": "var(--jp-mirror-editor-def-color, #0000ff)",
    "Name.Decorator": "var(--jp-mirror-editor-meta-color, #aa22ff)",
    "Literal.String": "var(--jp-mirror-editor-string-color, #ba2121)",
    "Literal.Number": "var(--jp-mirror-editor-number-color, #008800)",
    "Comment": "var(--jp-mirror-editor-comment-color, #408080)",
    "Operator": "var(--jp-mirror-editor-operator-color, #aa22ff)",
    "Generic.Inserted": "var(--jp-success-color1, #2da44e)",
    "Generic.Deleted": "var(--jp-error-color1, #cf222e)",
    "Generic.Heading": "var(--jp-content-font-color2, #6e7781)",
    "Generic.Subheading": "var(--jp-content-font-color2, #6e7781)",
}


def _highlighted(code: str, language: str) -> str:
    """Escaped code with coloured spans (inline styles: a notebook output cannot bring a stylesheet)."""
    from pygments.lexers import DiffLexer, PythonLexer

    lexer = PythonLexer() if language == "python" else DiffLexer()
    spans = []
    for token, value in lexer.get_tokens(clean_text(code)):
        while token.parent is not None and str(token)[6:] not in _TOKEN_COLOURS:  # "Token.Keyword" -> "Keyword"
            token = token.parent
        colour = _TOKEN_COLOURS.get(str(token)[6:])
        text = html.escape(value, quote=False)
        spans.append(f'<span style="color: {colour}">{text}</span>' if colour else text)
    return "".join(spans)


def render_html(obj: Renderable) -> str:
    """A run or step as sanitised HTML for notebook frontends."""
    body = _run_html(obj) if isinstance(obj, Run) else _safe_step_html(obj)
    return _boxed(body)


def mime_bundle(obj: Renderable) -> dict[str, str]:
    """What IPython displays: HTML for notebooks with plain text for everything else."""
    return {"text/plain": render_text(obj), "text/html": render_html(obj)}


def _run_html(run: Run) -> str:
    """Each fragment is sanitised on its own: sanitised fragments are balanced, so none can close
    the container it sits in, and the live view can send one step without re-cleaning the run."""
    steps = run.steps if any(isinstance(s, TaskStep) for s in run.steps) else [TaskStep(run.task), *run.steps]
    return "".join(map(_safe_step_html, steps)) + _closing_html(run)


def _closing_html(run: Run, live_tail: str = "") -> str:
    """The HTML twin of _closing_text, after an optional live tail (the step being written)."""
    parts = [live_tail]
    if run.error:
        style = _MUTED if run.state in STOPPED_STATES else _ERROR  # a stop on purpose is not a failure
        parts.append(f'<div style="{style}"><b>{_closing_label(run)}</b> {_pre(run.error)}</div>')
    if run.output is not None and not any(isinstance(s, FinalAnswerStep) for s in run.steps):
        parts.append(_step_html(FinalAnswerStep(run.output)))
    parts.append(f'<div style="{_MUTED} margin-top: 6px;">{_esc(_footer(run, bool(live_tail)))}</div>')
    return _backstop("".join(parts))


def _safe_step_html(step: Step) -> str:
    return _backstop(_step_html(step))


def _boxed(body: str) -> str:
    return f'<div style="{_BOX}">{body}</div>'


def _step_html(step: Step) -> str:
    if isinstance(step, TaskStep):
        return f"<div><b>Task</b>{_pre(step.task, style=_TEXT)}</div>"
    if isinstance(step, PlanningStep):
        return f'<div style="{_STEP}"><b>Plan</b>{_prose(step.plan)}</div>'
    if isinstance(step, FinalAnswerStep):
        notes = [f'<div style="{style}">{_esc(text)}</div>' for style, text in
                 ((_ERROR, unverified_note(step)), (_MUTED, answer_sources(step))) if text]
        return (f'<div style="{_STEP} {_ANSWER_BORDER}"><b>Final answer</b>{_value_html(step.output)}'
                f'{"".join(notes)}</div>')
    parts = [f"<div><b>{_esc(_step_header(step))}</b></div>", *map(_part_html, describe(step))]
    return f'<div style="{_STEP}">{"".join(parts)}</div>'


def _part_html(part: Part) -> str:
    if isinstance(part, Thought):
        return _prose(part.text)
    if isinstance(part, Code):
        return _code(part.source)
    if isinstance(part, Proposed):
        return f"<details><summary>The model had proposed</summary>{_code(part.source)}</details>"
    if isinstance(part, Call):
        call = part.call
        outcome = _collapsible(clean_text(call.error), _ERROR) if call.error else _value_html(call.result)
        return _code(format_call(call)) + outcome
    if isinstance(part, Output):
        return _output_html(part.output)
    if isinstance(part, Note):
        return f'<div style="{_ERROR if part.kind == "restarted" else _MUTED}">[{_esc(part.text)}]</div>'
    if isinstance(part, Failure):
        return _collapsible(clean_text(part.text), _ERROR)
    return ""  # ExecutionFailure (its error output shows it), FinalValue (the final answer step shows it)


def _output_html(output: dict[str, Any]) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        style = _ERROR if output.get("name") == "stderr" else ""
        return _collapsible(clean_text(_joined(output.get("text", ""))), style)
    if kind == "error":
        return _collapsible(clean_text(_output_text(output)), _ERROR)
    return _bundle_html(output.get("data", {}), output.get("metadata", {}))


def _bundle_html(data: MimeBundle, metadata: dict[str, Any]) -> str:
    """The richest safe representation, the way a notebook would pick it."""
    safe = safe_bundle(data)
    for mime in ("image/png", "image/jpeg"):
        if mime in safe:
            size = "".join(
                f' {dim}="{metadata[mime][dim]}"'
                for dim in ("width", "height")
                if isinstance(metadata.get(mime), dict) and isinstance(metadata[mime].get(dim), int)
            )
            return f'<div><img src="data:{mime};base64,{safe[mime]}" alt="{mime}"{size}></div>'
    if "text/html" in safe:
        fragment = safe["text/html"]
        if len(fragment) > COLLAPSE_CHARS * 10:
            return f"<details><summary>HTML output ({len(fragment):,} chars)</summary>{fragment}</details>"
        return f'<div style="overflow-x: auto;">{fragment}</div>'
    return _collapsible(safe["text/plain"])


def _value_html(value: Any) -> str:
    """A Python value (final answer, tool result) shown the way IPython would, safely."""
    repr_html = getattr(type(value), "_repr_html_", None)
    if repr_html is not None:
        try:
            rendered = repr_html(value)
        except Exception:  # a broken _repr_html_ falls back to the plain repr
            rendered = None
        if isinstance(rendered, str):
            return _bundle_html({"text/html": rendered}, {})
    return _collapsible(clean_text(_value_text(value)))


def _collapsible(text: str, style: str = "") -> str:
    text = _shorten(text.rstrip("\n"))
    if not text:
        return ""
    lines = text.count("\n") + 1
    block = _pre(text, style=_PRE + " " + style)
    if lines > COLLAPSE_LINES or len(text) > COLLAPSE_CHARS:
        first = _esc(text.split("\n", 1)[0][:120])
        return f"<details><summary>{first} … ({lines:,} lines)</summary>{block}</details>"
    return block


def _code(code: str) -> str:
    return f'<pre style="{_CODE_PRE}">{_highlighted(code, "python")}</pre>'


def _prose(text: str) -> str:
    return f'<div style="{_TEXT}">{_esc(text.strip())}</div>'


def _pre(text: str, style: str = _PRE) -> str:
    return f'<pre style="{style}">{_esc(text)}</pre>'


def _esc(text: str) -> str:
    return html.escape(clean_text(text), quote=True)


# ---------------------------------------------------------------------------------------------
# Live view


class LiveRun:
    """A run's progress in the cell output, shown while the agent works.

    In a notebook frontend each step gets its own display: created when the step starts, updated in
    place through its display id while the model's tokens stream (at most `max_rate` times a
    second), then set to the finished step; a last display holds the answer and the footer. Only
    the step in progress is re-sent, so a long run full of plots stays cheap to update. Elsewhere
    (terminal IPython, plain Python) it prints text as it goes: tokens, then each step's outputs.
    Every display is a mime bundle with text/plain and text/html.
    """

    def __init__(
        self,
        task: str,
        *,
        model: str = "",
        agent: str = "code",
        max_rate: float = 10.0,
        rich: bool | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_rate <= 0:
            raise ValueError("max_rate must be a positive number of updates per second")
        self.run = Run(task=task, agent="tools" if agent == "tools" else "code", model=model)
        self.rich = _rich_frontend() if rich is None else rich
        self.updates = 0  # display updates sent (rich) or step blocks printed (text), for tuning
        self._interval = 1.0 / max_rate
        self._clock = clock
        self._start = clock()
        self._last_update = float("-inf")
        self._dirty = False
        self._current: int | None = None
        self._streamed = ""
        self._out = stream
        self._handle: Any = None  # the display of the step in progress
        self._shown: dict[int, Step] = {}  # steps already displayed, by id (holding them keeps ids unique)
        self._task_step = TaskStep(task)
        self._task_handle: Any = None
        if self.rich:
            self._task_handle = self._show(mime_bundle(self._task_step), self._task_step)
        else:
            self._print(render_text(self._task_step) + "\n")

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, event: Event) -> None:
        """Take one event from `agent.run(..., stream=True)` or a step callback."""
        if isinstance(event, RunStarted):  # now the run has an id: the task's display names it
            self.run.id, self.run.model = event.run.id, event.run.model
            if self._task_handle is not None:
                self._task_handle.update(mime_bundle(self._task_step), raw=True,
                                         metadata=provenance(self.run, self._task_step))
        elif isinstance(event, StepStarted):
            self._current, self._streamed = event.index, ""
            if self.rich:
                self._handle = self._show(self._live_bundle(), ActionStep(event.index))
            else:
                self._print(f"── Step {event.index}\n")
        elif isinstance(event, TextDelta):
            self._current = event.index  # planning streams without a StepStarted
            self._streamed += event.text
            if not self.rich:
                self._print(event.text)
            elif self._handle is None:
                self._handle = self._show(self._live_bundle(), ActionStep(event.index))
            else:
                self._refresh(force=False)
        elif isinstance(event, StepCompleted):
            self._add_step(event.step)
        elif isinstance(event, RunCompleted):
            self.finish(event.run)
        else:
            raise TypeError(f"LiveRun.update takes agent events (StepStarted, TextDelta, ...), not {type(event).__name__}")

    def finish(self, run: Run) -> None:
        """Show the finished (or interrupted) run as recorded: steps not shown yet, then the footer."""
        self.run, self._current, self._streamed = run, None, ""
        if not self.rich:
            self._print(f"\n{_closing_text(run)}\n")
            return
        for step in run.steps:
            if id(step) not in self._shown:
                self._place(step)  # e.g. the step an interrupt stopped
        closing = {"text/plain": clean_text(_closing_text(run)), "text/html": _boxed(_closing_html(run))}
        if self._handle is not None:
            self._handle.update(closing, raw=True, metadata=provenance(run))
            self.updates += 1
            self._handle = None
        else:
            self._show(closing, None)
        self._dirty = False

    def close(self) -> None:
        """Send an update still held back by the rate limit."""
        if self._dirty and self._handle is not None:
            self._refresh(force=True)

    def _add_step(self, step: Step) -> None:
        streamed = self._streamed
        self.run.steps.append(step)
        self.run.usage = sum((s.usage for s in self.run.steps if isinstance(s, (ActionStep, PlanningStep))), Usage())
        self._current, self._streamed = None, ""
        if self.rich:
            self._place(step)
        elif isinstance(step, ActionStep):
            # Thought and code were just streamed; print them only if nothing was.
            body = _step_text(step, with_model_text=not streamed)
            self._print(("\n" if streamed else "") + (body + "\n" if body else ""))
            self.updates += 1
        elif not isinstance(step, TaskStep):
            self._print(_step_text(step) + "\n")
            self.updates += 1

    def _place(self, step: Step) -> None:
        """Show a finished step in the display of its progress, or in a new one."""
        self._shown[id(step)] = step
        if isinstance(step, TaskStep):
            return  # shown when the view opened
        bundle = mime_bundle(step)
        if self._handle is not None:
            self._handle.update(bundle, raw=True, metadata=provenance(self.run, step))
            self.updates += 1
            self._handle = None
        else:
            self._show(bundle, step)
        self._dirty = False

    def _refresh(self, force: bool) -> None:
        now = self._clock()
        if not force and now - self._last_update < self._interval:
            self._dirty = True
            return
        step = ActionStep(self._current) if self._current is not None else None
        self._handle.update(self._live_bundle(), raw=True, metadata=provenance(self.run, step))
        self._last_update, self._dirty = now, False
        self.updates += 1

    def _show(self, bundle: dict[str, str], step: Step | None) -> Any:
        from IPython.display import display

        return display(bundle, raw=True, display_id=True, metadata=provenance(self.run, step))

    def reviewing(self, approve: Callable[[ActionStep], Any]) -> Callable[[ActionStep], Any]:
        """`approve`, after the step's display shows the whole step it is asked about (the
        rate-limited stream may have left it a few tokens in): the reviewer reads thought and code."""

        def shown_then_asked(step: ActionStep) -> Any:
            if self.rich and self._handle is not None:
                bundle = self._step_bundle(describe(step), "waiting for your review")
                self._handle.update(bundle, raw=True, metadata=provenance(self.run, step))
                self._dirty, self.updates = False, self.updates + 1
            return approve(step)

        return shown_then_asked

    def _live_bundle(self) -> dict[str, str]:
        """The step being written (its latest tokens) and the footer so far."""
        return self._step_bundle(describe_streamed(self._streamed), "writing…")

    def _step_bundle(self, parts: list[Part], doing: str) -> dict[str, str]:
        run = self.run
        run.duration = self._clock() - self._start
        header = f"Step {self._current}"
        tail = (f'<div style="{_STEP}"><b>{header}</b> <span style="{_MUTED}">{doing}</span>'
                + "".join(map(_part_html, parts)) + "</div>")
        body = "\n".join(line for part in parts for line in _part_text(part))
        text = f"── {header} ({doing})\n{body}\n\n{clean_text(_closing_text(run, writing=True))}"
        return {"text/plain": clean_text(text), "text/html": _boxed(_closing_html(run, tail))}

    def _print(self, text: str) -> None:
        if text:
            out = self._out or sys.stdout
            out.write(clean_text(text))
            out.flush()


def _rich_frontend() -> bool:
    """True inside a notebook-like frontend (ipykernel), False in terminal IPython or plain Python."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    return not any(cls.__name__ == "TerminalInteractiveShell" for cls in type(shell).__mro__)
