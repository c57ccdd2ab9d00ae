"""`%agent fix` / `%agent explain`: the notebook's last error, fixed (or explained) in the sandbox.

Nothing runs in the notebook's own kernel. The failing cell's source, its exception with a trimmed
traceback, and descriptions of the variables it uses go to the model; copies of those variables go
to a sandbox, where a CodeAgent reproduces the error and tries fixes. A fix is accepted only after
the fixed cell runs without error on fresh copies of the variables (a final-answer check); the
analyst gets a diff and decides whether to put the fixed cell in the notebook.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

from .memory import Run, Usage

_TRACEBACK_FRAMES = 12
_MAX_STEPS = 6

EXPLAIN_TASK = """\
{variables}
The cell:
```python
{source}
```

The error:
```
{error}
```"""  # the failing cell as the model reads it; FIX_TASK wraps the same text

FIX_TASK = (
    "A cell in the user's notebook failed. Reproduce the error, find its cause, and fix the cell.\n"
    + EXPLAIN_TASK
    + "\n\nWork step by step: run the cell's code to reproduce the error, inspect the data to find the cause, "
    "run your fixed version of the whole cell to check it works, then call final_answer with the complete "
    "fixed cell source as one string. Change only what the fix needs; keep the user's style and names."
)

EXPLAIN_SYSTEM = """\
You explain errors from a data analyst's notebook. Say what went wrong, why (use the variable \
descriptions), and how to fix it, in a few sentences and at most one short code snippet. Do not \
rewrite the whole cell."""


@dataclass
class FailedCell:
    """The last cell that raised, as the model is shown it (the values stay in the notebook)."""

    source: str
    error: str  # "KeyError: 'amount'" with the cell's own frames of the traceback
    variables: dict[str, Any] = field(default_factory=dict)  # the notebook values the cell uses

    def described(self) -> str:
        if not self.variables:
            return ""
        from .sandbox._codec import describe

        listed = "\n".join(f"- {name}: {describe(value)}" for name, value in self.variables.items())
        return f"Variables the cell uses (already defined in your kernel as copies):\n{listed}\n"


@dataclass
class Fix:
    """What `%agent fix` found: the fixed cell (None if no fix passed verification) and the run."""

    cell: FailedCell
    run: Run
    fixed: str | None

    @property
    def verified(self) -> bool:
        return self.fixed is not None

    @property
    def diff(self) -> str:
        if self.fixed is None:
            return ""
        lines = difflib.unified_diff(self.cell.source.splitlines(keepends=True),
                                     self.fixed.splitlines(keepends=True), "failing cell", "fixed cell")
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def failed_cell(source: str, error: BaseException, namespace: dict[str, Any], transform: Any = None) -> FailedCell:
    """The cell, its error with the traceback cut to the cell's own frames, and the values it uses."""
    python = transform(source) if transform is not None else source  # IPython syntax (%magics) as Python
    return FailedCell(source=source, error=_error_text(error), variables=_used_values(python, namespace))


def _error_text(error: BaseException) -> str:
    """`Type: message` after the frames of user code (IPython's own frames are not the user's)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/IPython/" not in f.filename]
    shown = traceback.format_list(frames[-_TRACEBACK_FRAMES:])
    return "".join(["Traceback (most recent call last):\n", *shown, *traceback.format_exception_only(error)]).strip()


def _used_values(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Notebook values the cell reads by name: data, not modules, functions or IPython's own names."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    names = dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))
    return {
        name: namespace[name]
        for name in names
        if name in namespace and not name.startswith("_") and name not in ("In", "Out", "exit", "quit", "get_ipython")
        and not hasattr(builtins, name)
        and not isinstance(namespace[name], (types.ModuleType, types.FunctionType, type))
    }


def _imports(source: str) -> list[str]:
    """Top-level modules the cell imports: the sandbox must allow them to reproduce the cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    found += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level]
    return sorted({name.split(".")[0] for name in found})


def fix(cell: FailedCell, model: Any, **agent_options: Any) -> Fix:
    """Run a CodeAgent on the failure in a sandbox; the fix it gives must run cleanly there."""
    from .agents import CodeAgent

    agent = CodeAgent(model, imports=_imports(cell.source), max_steps=agent_options.pop("max_steps", None) or _MAX_STEPS,
                      **agent_options)

    async def runs_cleanly(answer: Any, run: Run) -> bool:
        """The fix, on fresh copies of the variables: it must not raise (what the agent changed is reset)."""
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError("give the complete fixed cell source as one string")
        if cell.variables:
            await agent.sandbox.push(**cell.variables)
        checked = await agent.sandbox.execute(answer)
        if checked.error is not None:
            raise ValueError(f"the fixed cell still fails on fresh copies of the variables: "
                             f"{checked.error.name}: {checked.error.value}")
        return True

    agent.final_answer_checks.append(runs_cleanly)
    task = FIX_TASK.format(variables=cell.described(), source=cell.source, error=cell.error)
    with agent:
        run = agent.run(task, variables=cell.variables)
    fixed = run.output if run.state == "success" and isinstance(run.output, str) else None
    return Fix(cell=cell, run=run, fixed=fixed)


def explain(cell: FailedCell, model: Any) -> tuple[str, Usage]:
    """One model call: what went wrong and how to fix it, in words."""
    messages = [{"role": "system", "content": EXPLAIN_SYSTEM},
                {"role": "user", "content": EXPLAIN_TASK.format(variables=cell.described(), source=cell.source,
                                                                error=cell.error)}]
    reply = model.generate(messages)
    return reply.content.strip(), reply.usage
