"""A run as an nbformat v4 notebook that re-runs top to bottom and reproduces the answer.

The notebook keeps what really happened (each code action with the outputs the sandbox produced,
sanitised as in display.py) and what is needed to run it again outside the agent: the inputs saved
beside it in safe formats (Parquet, .npy without pickle, JSON), a `final_answer` that keeps the
answer as `answer`, and recorded results for tools that cannot run without the agent.

It is set to re-run in the `agent-sandbox` kernel (installed for the user when a notebook is
written and it is missing): the code is the model's, and Run All in the analyst's own kernel would
run it with the analyst's files, keys and network. Started from the kernelspec, that kernel reads
the notebook's folder (its inputs) and writes nothing there (see sandbox/_provisioner.py).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import keyword
import os
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from ._safe import clean_text, safe_bundle
from .display import provenance
from .observation import (
    Call,
    Code,
    Failure,
    Note,
    Proposed,
    Thought,
    answer_sources,
    describe,
    format_call,
    format_footer,
    review_label,
    state_label,
    unverified_note,
)
from .records import ActionStep, FinalAnswerStep, PlanningStep, TaskStep, ToolCall
from .records import RunRecord as Run  # the record: every memory.Run is one
from .sandbox import KERNEL_NAME, install_kernelspec

_KERNELS = {"python3": "Python 3 (ipykernel)", KERNEL_NAME: "agent_kernel sandbox"}
_WARNING = (
    "*The code below was written by a model and ran in agent_kernel's restricted sandbox. This notebook "
    "is set to run in the `{kernel}` kernel{where}: read the code before you run it.*"
)
_SANDBOXED = (
    " (the sandbox: it reads the files in this notebook's folder, writes none of them and has no network; "
    "`python -m agent_kernel install-kernelspec --user` installs it)"
)
_FINAL_ANSWER_DEF = '''\
answer = None


def final_answer(value):
    """Stands in for the sandbox's final_answer: keeps the value as `answer`."""
    global answer
    answer = value
    return value'''
_REPLAY_DEF = '''\
def _replay(tool):
    """Tools ran in the agent's session; here each call returns the next recorded result."""
    outcome, value = _recorded_results[tool].pop(0)
    if outcome == "error":
        raise RuntimeError(value)
    return value'''


def run_to_notebook(
    run: Run,
    path: str | os.PathLike[str] | None = None,
    inputs: Mapping[str, Any] | None = None,
    kernel: str = KERNEL_NAME,
) -> NotebookNode:
    """Export `run` as a notebook; with `path`, write it there and save `inputs` beside it.

    `kernel` is the kernelspec it is set to re-run in: the sandbox's by default (installed for this
    user if a notebook is written and it is missing), or the analyst's own (e.g. "python3"); its
    first cell says which, and whether that is the sandbox.

    `inputs` maps the notebook variables the agent was given to their values; they are saved in
    `<notebook stem>_inputs/` and the first code cell loads them back.
    """
    if inputs and path is None:
        raise ValueError("inputs are saved beside the notebook: pass path='name.ipynb' as well")
    target = Path(path) if path is not None else None
    if not re.fullmatch(r"[\w.-]+", kernel):
        raise ValueError(f"kernel {kernel!r} is not a kernelspec name (jupyter kernelspec list)")
    cells = [_stamped(new_markdown_cell(_title(run, kernel)), run, None)]
    setup = []
    if inputs:
        assert target is not None
        setup.append(_save_inputs(inputs, target))
    if run.agent == "code":
        setup.append(_FINAL_ANSWER_DEF)
        setup.extend(_replay_stubs(run))
    if setup:
        cells.append(_stamped(new_code_cell("\n\n\n".join(setup)), run, None))
    counter = _Counter()
    for step in run.steps:
        cells.extend(_stamped(cell, run, step) for cell in _step_cells(step, run, counter))
    final = next((s for s in reversed(run.steps) if isinstance(s, FinalAnswerStep)), FinalAnswerStep(run.output))
    cells.extend(_stamped(cell, run, final) for cell in _answer_cells(run, final, counter))

    nb = new_notebook(cells=cells, metadata=_metadata(run, kernel))
    nbformat.validate(nb)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(target))
        if kernel == KERNEL_NAME:
            install_kernelspec(user=True, missing_only=True)
    return nb


def _stamped(cell: NotebookNode, run: Run, step: Any) -> NotebookNode:
    """Provenance on every cell: the model, the run and the step it came from (and the review)."""
    stamp = provenance(run, step)["agent_kernel"]
    review = getattr(step, "review", None)
    if review is not None:
        stamp["review"] = review.decision
        if review.original is not None:
            stamp["proposed"] = review.original
        if review.reason:
            stamp["reason"] = review.reason
    cell.metadata["agent_kernel"] = stamp
    return cell


@dataclasses.dataclass
class _Counter:
    """Execution counts of the exported cells that carry outputs, as if run in order."""

    value: int = 0

    def next(self) -> int:
        self.value += 1
        return self.value


# ---------------------------------------------------------------------------------------------
# The run as one notebook cell


def run_as_cell(run: Run, number: int | None = None, answer: str = "answer") -> str | None:
    """The run's work as one cell of the analyst's notebook, to read and then run there: the code of
    every step that ran cleanly, in order (failed, declined and unfinished steps left out), on the
    notebook's own variables (the sandbox had them under the same names), with `final_answer(x)`
    as `answer = x`. A ToolCallingAgent's run becomes its successful calls. None: nothing ran."""
    if not answer.isidentifier() or keyword.iskeyword(answer):
        raise ValueError(f"{answer!r} is not a Python name")
    pieces, dropped = [], 0
    for step in run.action_steps:
        if step.code is not None:
            ex = step.execution
            if ex is None or ex.error is not None or ex.restarted:
                dropped += 1
                continue
            answers = [c.result for c in step.tool_calls if c.name == "ask_user" and c.error is None]
            pieces.append(_rewritten(step.code, answer, answers))
            continue
        for call in step.tool_calls:
            if call.error is not None:
                dropped += 1
            elif call.name == "final_answer":
                value = call.arguments.get("answer") if isinstance(call.arguments, dict) else call.arguments
                pieces.append(f"{answer} = {_literal(value)[0]}")
            else:
                pieces.append(format_call(call))
    if not pieces:
        return None
    task = " ".join(clean_text(run.task).split())
    head = [f"# From agent run {number if number is not None else run.id}: {task[:70]}{'…' if len(task) > 70 else ''}"]
    if dropped:
        head.append(f"# ({dropped} step{'s' if dropped != 1 else ''} that failed or did not run left out)")
    return "\n".join(head) + "\n" + "\n\n".join(clean_text(p).rstrip() for p in pieces) + "\n"


def _rewritten(code: str, answer: str, asked: list[Any]) -> str:
    """The code for the notebook, comments and all: `final_answer(x)` statements as `answer = x`,
    and each `ask_user(...)` (a tool only the agent had) as the analyst's recorded answer."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    starts = [0]
    for line in code.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def span(node: ast.AST) -> tuple[int, int]:
        end_line = node.end_lineno or node.lineno  # type: ignore[attr-defined]
        return (starts[node.lineno - 1] + node.col_offset,  # type: ignore[attr-defined]
                starts[end_line - 1] + (node.end_col_offset or 0))  # type: ignore[attr-defined]

    edits = []
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)),
                   key=lambda n: (n.lineno, n.col_offset))
    replies = iter(asked)
    for call in calls:
        name = call.func.id  # type: ignore[attr-defined]
        if name == "ask_user":
            edits.append((*span(call), repr(next(replies, None))))
    for node in ast.walk(tree):
        said = node.value if isinstance(node, ast.Expr) else None
        if (isinstance(said, ast.Call) and isinstance(said.func, ast.Name) and said.func.id == "final_answer"
                and len(said.args) == 1 and not said.keywords):
            edits.append((*span(node), f"{answer} = {ast.get_source_segment(code, said.args[0])}"))
    for begin, end, text in sorted(edits, reverse=True):
        if not any(b < begin < e or b < end < e for b, e, _ in edits if (b, e) != (begin, end)):
            code = code[:begin] + text + code[end:]
    return code


# ---------------------------------------------------------------------------------------------
# Markdown from untrusted text


# A code span on one line and one table cell: `` `a < b` `` renders its text as written, so it keeps
# it. Not after a backslash or a backtick (an escaped or longer run opens no span), no newline (a span
# cannot cross blocks) and no pipe (GFM splits table cells first): a match is always a real span.
_CODE_SPAN = re.compile(r"(?<![`\\])(`+)(?!`)[^\n|]+?(?<!`)\1(?!`)")


def safe_markdown(text: str) -> str:
    """Model text as markdown that renders as written but cannot carry HTML or links.

    Outside code spans, `<` becomes `&lt;` (no raw HTML, no autolinks) and the `(` / `:` after `]`
    an entity (no inline links, images or link definitions: no javascript: URLs, no tracking
    pixels); entities never open markdown structure, and they read and copy as the characters.
    Inside code spans, where markdown keeps text as written, nothing changes.
    """
    text = clean_text(text)
    pieces, start = [], 0
    for span in _CODE_SPAN.finditer(text):
        pieces += [_defused(text[start:span.start()]), span.group()]
        start = span.end()
    return "".join([*pieces, _defused(text[start:])])


def _defused(text: str) -> str:
    text = text.replace("<", "&lt;")
    return re.sub(r"\]([(:])", lambda m: "]&#40;" if m[1] == "(" else "]&#58;", text)


def _title(run: Run, kernel: str) -> str:
    footer = format_footer(run.usage, len(run.action_steps), run.duration, state_label(run))
    agent = "CodeAgent" if run.agent == "code" else "ToolCallingAgent"
    lines = [
        "# Agent run",
        "",
        safe_markdown(run.task),
        "",
        f"{agent} · model `{_code_span(run.model)}` · {footer}",
        "",
        _WARNING.format(kernel=kernel, where=_SANDBOXED if kernel == KERNEL_NAME else ", without the sandbox"),
    ]
    return "\n".join(lines)


def _code_span(text: str) -> str:
    return clean_text(text).replace("`", "'").replace("\n", " ")


def _fenced(code: str, lang: str = "") -> str:
    """A fenced block its content cannot close: the fence is longer than any backtick run in it."""
    longest = max((len(m) for m in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{clean_text(code).rstrip()}\n{fence}"


# ---------------------------------------------------------------------------------------------
# Steps


def _step_cells(step: Any, run: Run, counter: _Counter) -> list[NotebookNode]:
    if isinstance(step, TaskStep):
        if step.task == run.task:
            return []  # the title shows it
        return [new_markdown_cell("## Follow-up task\n\n" + safe_markdown(step.task))]
    if isinstance(step, PlanningStep):
        return [new_markdown_cell("### Plan\n\n" + safe_markdown(step.plan))]
    if isinstance(step, FinalAnswerStep):
        return []  # the answer cells at the end show it
    parts = describe(step)
    thought = next((p.text for p in parts if isinstance(p, Thought)), "")
    header = f"### Step {step.index}{safe_markdown(review_label(step))}\n\n{safe_markdown(thought)}".rstrip()
    cells = [new_markdown_cell(header)]
    for part in parts:
        if isinstance(part, Proposed):
            cells[0].source += ("\n\nThe reviewer edited the action before it ran; the model had proposed:\n\n"
                                + _fenced(part.source, part.language))
        elif isinstance(part, Code):
            cells.append(_action_cell(step, counter))
        elif isinstance(part, Call) and run.agent == "tools":
            cells.append(_tool_cell(part.call, counter))
        elif isinstance(part, Note):
            cells.append(new_markdown_cell(f"*[{part.text}]*"))
        elif isinstance(part, Failure):
            cells.append(new_markdown_cell("**Error**\n\n" + _fenced(part.text)))
    return cells


def _action_cell(step: ActionStep, counter: _Counter) -> NotebookNode:
    """The code as it ran, with its real outputs; code that never ran (or hung) stays unrunnable."""
    assert step.code is not None
    ex = step.execution
    if ex is None:
        return new_markdown_cell("This code was not run:\n\n" + _fenced(step.code, "python"))
    if ex.restarted:
        return new_markdown_cell(
            "This code crashed or hung the sandbox, so it is not runnable here:\n\n"
            + _fenced(step.code, "python")
        )
    count = counter.next()
    outputs = [o for o in (_output(raw, count) for raw in ex.outputs) if o is not None]
    cell = new_code_cell(step.code, execution_count=count, outputs=outputs)
    if ex.error is not None or any(o.output_type == "error" for o in outputs):
        cell.metadata["tags"] = ["raises-exception"]  # re-running it raises again, as it did
    return cell


def _output(raw: Mapping[str, Any], count: int) -> NotebookNode | None:
    kind = raw.get("output_type")
    if kind == "stream":
        name = raw.get("name") if raw.get("name") in ("stdout", "stderr") else "stdout"
        return new_output("stream", name=name, text=clean_text(_text(raw.get("text", ""))))
    if kind == "error":
        traceback = raw.get("traceback") or []
        return new_output(
            "error",
            ename=clean_text(str(raw.get("ename", "Error"))),
            evalue=clean_text(str(raw.get("evalue", ""))),
            traceback=[clean_text(str(line)) for line in traceback],
        )
    if kind in ("display_data", "execute_result"):
        data = safe_bundle(raw.get("data") or {})
        metadata = {m: _image_size(v) for m, v in (raw.get("metadata") or {}).items() if m in data}
        extra = {"execution_count": count} if kind == "execute_result" else {}
        return new_output(kind, data=data, metadata={m: v for m, v in metadata.items() if v}, **extra)
    return None  # update_display_data, clear_output and unknown kinds have no place in a file


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _image_size(meta: Any) -> dict[str, int]:
    if not isinstance(meta, dict):
        return {}
    return {k: v for k, v in meta.items() if k in ("width", "height") and isinstance(v, int)}


def _tool_cell(call: ToolCall, counter: _Counter) -> NotebookNode:
    """A tool call as readable code whose recorded result is a literal: tools don't re-run here."""
    count = counter.next()
    if call.error is not None:
        code = _comment(f"{format_call(call)} failed in the agent's session.")
        return new_code_cell(code, execution_count=count, outputs=[new_output("stream", name="stderr", text=clean_text(call.error))])
    literal, exact = _literal(call.result)
    lines = [_comment(f"{format_call(call)} ran in the agent's session; recorded result:")]
    if not exact:
        lines.append(_comment("(not a Python literal: its repr, as a string)"))
    code = "\n".join([*lines, f"result = {literal}", "result"])
    return new_code_cell(code, execution_count=count, outputs=[_result_output(call.result, exact, count)])


def _result_output(value: Any, exact: bool, count: int) -> NotebookNode:
    text = repr(value) if exact else repr(repr(value))
    return new_output("execute_result", data=safe_bundle({"text/plain": text}), execution_count=count)


def _comment(text: str) -> str:
    return "\n".join("# " + line for line in clean_text(text).splitlines() or [""])


def _literal(value: Any) -> tuple[str, bool]:
    """Python source that evaluates to `value`, and whether it is exact (else it is repr's text)."""
    text = repr(value)
    try:
        exact = ast.literal_eval(text) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        exact = False
    return (text, True) if exact else (repr(text), False)


def _replay_stubs(run: Run) -> list[str]:
    """Stand-ins for tools the CodeAgent's code called, returning the results recorded in order."""
    recorded: dict[str, list[tuple[str, Any]]] = {}
    for step in run.action_steps:
        for call in step.tool_calls:
            if call.name.isidentifier() and not keyword.iskeyword(call.name) and call.name != "final_answer":
                outcome = ("error", call.error) if call.error is not None else ("ok", call.result)
                recorded.setdefault(call.name, []).append(outcome)
    if not recorded:
        return []
    entries = []
    for name, outcomes in recorded.items():
        values = ", ".join(f"({kind!r}, {_literal(value)[0]})" for kind, value in outcomes)
        entries.append(f"    {name!r}: [{values}],")
    table = "_recorded_results = {\n" + "\n".join(entries) + "\n}"
    stubs = [f"def {name}(*args, **kwargs):\n    return _replay({name!r})" for name in recorded]
    return [table, _REPLAY_DEF, *stubs]


# ---------------------------------------------------------------------------------------------
# Final answer, inputs, metadata


def _answer_cells(run: Run, final: FinalAnswerStep, counter: _Counter) -> list[NotebookNode]:
    if run.state != "success":
        detail = f"\n\n{_fenced(run.error)}" if run.error else ""  # for budget_exceeded and stuck: what was spent, why
        return [new_markdown_cell(f"## No final answer\n\nThe run ended as **{run.state}**.{detail}")]
    count = counter.next()
    if any(s.is_final and s.execution is not None and s.execution.has_final_answer for s in run.action_steps):
        # `answer` is set by final_answer(...) in the cells above, so re-running reproduces it.
        code, exact = "answer", True
    else:  # the model's own words (a tool call, or a CodeAgent's reply in prose)
        literal, exact = _literal(run.output)
        note = [] if exact else [_comment("(not a Python literal: its repr, as a string)")]
        code = "\n".join([*note, f"answer = {literal}", "answer"])
    output = _result_output(run.output, exact, count)
    unverified, sources = unverified_note(final), answer_sources(final)
    notes = [f"**{safe_markdown(unverified)}**" if unverified else "", safe_markdown(sources)]
    heading = "\n\n".join(["## Final answer", *(note for note in notes if note)])
    return [new_markdown_cell(heading), new_code_cell(code, execution_count=count, outputs=[output])]


def _save_inputs(inputs: Mapping[str, Any], notebook: Path) -> str:
    """Write each input in a format that loads without pickle; return the code that loads them."""
    folder_name = f"{notebook.stem}_inputs"
    folder = notebook.parent / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    loads = [_save_input(name, value, folder) for name, value in inputs.items()]
    imports = sorted({line for line, _ in loads if line})
    return "\n".join(
        [
            "# The inputs the agent was given, saved beside this notebook (no pickle).",
            *imports,
            "from pathlib import Path",
            "",
            f"_inputs = Path({folder_name!r})",
            *(load for _, load in loads),
        ]
    )


def _save_input(name: str, value: Any, folder: Path) -> tuple[str, str]:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"input name {name!r} is not a Python identifier; inputs are notebook variable names")
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if kind == "pandas.DataFrame":
        if not all(isinstance(c, str) for c in value.columns):
            raise ValueError(
                f"input {name!r}: Parquet needs string column names; rename them first, "
                f"e.g. {name}.columns = {name}.columns.astype(str)"
            )
        value.to_parquet(folder / f"{name}.parquet")
        return "import pandas as pd", f"{name} = pd.read_parquet(_inputs / {name + '.parquet'!r})"
    if kind == "numpy.ndarray":
        import numpy as np

        try:
            np.save(folder / f"{name}.npy", value, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"input {name!r}: object arrays need pickle, which is never used; {exc}") from exc
        return "import numpy as np", f"{name} = np.load(_inputs / {name + '.npy'!r}, allow_pickle=False)"
    try:
        encoded = json.dumps(value, allow_nan=False)
        same = json.loads(encoded) == value
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(
            f"input {name!r} ({kind}) cannot be saved safely: pass a pandas DataFrame, a numpy array or a "
            "JSON value (str, number, bool, None, lists and dicts with string keys); nothing is pickled"
        )
    (folder / f"{name}.json").write_text(encoded, encoding="utf-8")
    return "import json", f"{name} = json.loads((_inputs / {name + '.json'!r}).read_text(encoding='utf-8'))"


def _metadata(run: Run, kernel: str) -> dict[str, Any]:
    # No language for the sandbox's: JupyterLab starts a notebook whose kernelspec it does not know
    # (not installed, or installed after the page loaded) in the one kernel of its language, the
    # analyst's own, without asking. Without a language it asks; the kernel fills it in when it runs.
    spec = {"name": kernel, "display_name": _KERNELS.get(kernel, kernel)}
    language: dict[str, Any] = {}
    if kernel != KERNEL_NAME:
        spec["language"], language["language_info"] = "python", {"name": "python"}
    return {
        "kernelspec": spec,
        **language,
        "agent_kernel": {
            "run_id": run.id,
            "task": clean_text(run.task),
            "agent": run.agent,
            "model": run.model,
            "state": run.state,
            "error": run.error and clean_text(run.error),
            "started_at": datetime.fromtimestamp(run.started_at, timezone.utc).isoformat(),
            "duration": run.duration,
            "usage": dataclasses.asdict(run.usage),
            "steps": [
                {"index": s.index, "duration": s.duration, "usage": dataclasses.asdict(s.usage),
                 "error": s.error and clean_text(s.error),
                 "review": s.review.decision if s.review else None}
                for s in run.action_steps
            ],
        },
    }
