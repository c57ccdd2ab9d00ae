"""`%%agent` / `%agent`: ask an agent from a notebook cell, watch it work, get ordinary variables back.

    %load_ext agent_kernel
    %config AgentMagics.model = "openai/gpt-4o-mini"

    %%agent code --in sales --out summary --keep monthly
    Summarise {sales} by month and plot it.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import importlib
import inspect
import os
import re
import shlex
import threading
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default

if TYPE_CHECKING:
    from ..agents import Limits
    from ..memory import Event, Run
    from ..models import Model
    from ..sandbox import AsyncSandbox, SandboxPool

from .. import _aio, _widgets
from .. import review as _review
from .._safe import clean_text
from . import _ask
from ._options import (
    CELL_USAGE,
    LINE_USAGE,
    CellOptions,
    FixOptions,
    coerce,
    describe_task,
    parse_assignments,
    parse_cell_line,
    parse_fix_args,
    task_references,
)

T = TypeVar("T")
_CONFIGURABLE = ("model", "api_base", "max_steps", "timeout", "imports", "network", "quiet", "session_max_cost",
                 "approver", "review_ui", "context")
_CONTEXT_CHARS = 4000  # of one cell's source, output or error shown to the agent
_CONTEXT_KEPT = 200  # cells' errors remembered for --context


@dataclass
class _Record:
    """A past run with the inputs it was given (kept so `%agent export` can save them)."""

    run: Run
    inputs: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # how `%agent runs` lists it, when not by its task (a fix: by the cell it fixed)
    out: str | None = None  # the --out name: the answer's name in `%agent cell`


@magics_class
class AgentMagics(Magics):
    """The `%%agent` cell magic and `%agent` line magic. Defaults are traitlets config."""

    shell: InteractiveShell  # always given: the magics are registered on a shell

    model = Unicode(help="default model (litellm name or alias); $AGENT_KERNEL_MODEL if set").tag(config=True)
    max_steps = Int(10, help="default step limit").tag(config=True)
    timeout = Float(30.0, help="seconds per sandbox action").tag(config=True)
    imports = List(Unicode(), help="modules the sandbox may import beyond its defaults").tag(config=True)
    network = Bool(False, help="let the sandbox use the network").tag(config=True)
    quiet = Bool(False, help="no live display").tag(config=True)
    context = Int(0, help="notebook cells before a %%agent cell that its agent sees (source and errors); "
                  "--context N sets it per cell").tag(config=True)
    api_base = Unicode(
        None, allow_none=True, help="OpenAI-compatible endpoint, e.g. a local server; $AGENT_KERNEL_API_BASE if set"
    ).tag(config=True)
    aliases = Dict(Unicode(), help="short model names: {'fast': 'openai/gpt-4o-mini'}").tag(config=True)
    session_max_cost = Float(
        None, allow_none=True, help="US dollars all runs of this session may spend together (None: no cap)"
    ).tag(config=True)
    approver = Unicode(
        "", help="name of a notebook function f(step) -> Decision that reviews actions for --review; "
        "empty: ask the analyst (see review_ui)"
    ).tag(config=True)
    review_ui = Enum(
        ("auto", "widgets", "input"), "auto",
        help="how --review asks and %agent fix offers its fix: widgets (a prompt with buttons; the cell waits "
        "for the click), input (text prompts; %agent fix --apply), auto: widgets where ipywidgets can show",
    ).tag(config=True)
    warm = Bool(True, help="at load, import litellm and start a sandbox for the first %%agent code cell in the "
                "background (set in ipython_config.py: it acts when the extension loads)").tag(config=True)

    # The environment picks the model where a notebook must not name one (shared examples, CI).
    @default("model")
    def _default_model(self) -> str:
        from ..models import DEFAULT_MODEL

        return os.environ.get("AGENT_KERNEL_MODEL") or DEFAULT_MODEL

    @default("api_base")
    def _default_api_base(self) -> str | None:
        return os.environ.get("AGENT_KERNEL_API_BASE") or None

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.runs: list[_Record] = []
        self._agents: dict[str, Any] = {}  # kind -> the last agent of that kind, for --continue and --keep
        self._mcp: Any = None  # agent_kernel.mcp.MCPServers, made at the first `%agent mcp`
        self.spent = 0.0  # US dollars spent by every run, fix and explanation of this session
        self._failure: tuple[str, BaseException] | None = None  # the last cell that raised, and what
        self._errors: dict[int, str] = {}  # execution count -> the error that cell raised (--context)
        self._fix: Any = None  # the last agent_kernel.fix.Fix, for `%agent fix --apply` without a rerun
        self._warm: SandboxPool | None = None  # one sandbox started at load, for the first code cell
        self._lent: dict[str, AsyncSandbox] = {}  # kind -> the warm sandbox its agent runs in (ours to close)
        self._retiring: concurrent.futures.Future[None] | None = None  # a warm sandbox a cell did not match

    def warm_up(self) -> None:
        """Start litellm's import and a sandbox with this session's default options, in the background:
        the first `%%agent` cell would otherwise wait seconds for both before its model is called."""
        from .. import _litellm
        from ..sandbox import SandboxPool

        _litellm.preload()
        threading.Thread(target=importlib.import_module, args=("agent_kernel.agents",),  # 0.5 s of dataclasses
                         name="agent_kernel-agents-import", daemon=True).start()
        self._warm = SandboxPool(1, total=1, **self._sandbox_options(None))
        _aio.submit(self._warm.astart())

    def _sandbox_options(self, options: CellOptions | None) -> dict[str, Any]:
        """A code cell's sandbox options: the session's defaults, and the cell's own where it gives them."""
        return {"imports": [*self.imports, *(options.imports if options else ())],
                "timeout": (options.timeout if options else None) or self.timeout,
                "network": (options.network if options else False) or self.network,
                "read_paths": list(options.read if options else ())}

    def _take_warm(self, sandbox_options: dict[str, Any]) -> AsyncSandbox | None:
        """The warm sandbox if it was started with these options; the first code cell takes it or ends it."""
        pool, self._warm = self._warm, None
        if pool is None:
            return None
        if pool.options != sandbox_options:
            self._retiring = _aio.submit(pool.aclose())  # not waited for here (at exit): it is no use to this cell
            return None
        try:
            return _aio.run_sync(pool.aacquire())
        except Exception:  # it did not start: the agent starts its own sandbox and says why
            return None

    # -- %%agent ---------------------------------------------------------------------------------

    @line_cell_magic
    def agent(self, line: str, cell: str | None = None) -> Any:
        """Run an agent on the cell's task (`%%agent code|tools ...`) or manage them (`%agent ...`)."""
        if cell is None:
            return self._line(line)
        options = parse_cell_line(line)
        if not cell.strip():
            raise UsageError(f"the cell body is the task: say what the agent should do\n\n{CELL_USAGE}")
        inputs = self._inputs(options, cell)
        agent, follow_up = self._agent_for(options)
        limits = self._controls(agent, options)
        task = describe_task(self._cells_referenced(cell.strip()))
        run = self._run(agent, options, task, inputs, follow_up, limits, context=self._context(options))
        self.spent += run.usage.cost
        self.runs.append(_Record(run, inputs, label=task, out=options.out))
        self.shell.user_ns["_agent_run"] = run
        self._bind(run, options)
        if options.to_cell:
            self._to_cell(self.runs[-1], len(self.runs))
        return None

    def _inputs_typed(self) -> list[str]:
        """The session's cells as typed (In)."""
        history = self.shell.history_manager
        assert history is not None  # an interactive shell always keeps one
        return history.input_hist_raw

    def _cells_referenced(self, task: str) -> str:
        """`{In[3]}` / `{Out[3]}` in a task: that cell's source, or the repr of its output."""
        def cell(match: re.Match[str]) -> str:
            kind, number = match[1], int(match[2])
            found = self._inputs_typed() if kind == "In" else self.shell.user_ns.get("Out", {})
            try:
                value = found[number]
            except (IndexError, KeyError):
                raise UsageError(f"{{{kind}[{number}]}}: the notebook has no {kind}[{number}]") from None
            shown = value if kind == "In" else repr(value)
            return f"\n```\n{shown[:_CONTEXT_CHARS].rstrip()}\n```\n"

        return re.sub(r"\{(In|Out)\[(\d+)\]\}", cell, task)

    def _context(self, options: CellOptions) -> str:
        """--context N: the notebook's last N cells before this one, with their errors, for the agent."""
        count = self.context if options.context is None else options.context
        sources = self._inputs_typed()[1:-1]  # as typed; [0] is empty, the last is this cell
        shown = list(enumerate(sources, 1))[-count:] if count else []
        if not shown:
            return ""
        cells = []
        for number, source in shown:
            error = self._errors.get(number)
            cells.append(f"In [{number}]:\n```python\n{source[:_CONTEXT_CHARS].rstrip()}\n```"
                         + (f"\nIt raised {error}" if error else ""))
        return "\n\nThe notebook so far (its last cells, which the task may refer to):\n\n" + "\n\n".join(cells)

    def _inputs(self, options: CellOptions, task: str) -> dict[str, Any]:
        names = list(dict.fromkeys([*options.inputs, *task_references(task)]))
        missing = [n for n in names if n not in self.shell.user_ns]
        if missing:
            raise UsageError(f"not defined in the notebook: {', '.join(missing)} (define them first, or fix the name)")
        return {n: self.shell.user_ns[n] for n in names}

    def _tools(self, names: list[str]) -> list[Any]:
        """Notebook values by name; the agent checks each is a tool (a function, a Tool or an agent)."""
        found: list[Any] = []
        for name in names:
            if name in self.shell.user_ns:
                found.append(self.shell.user_ns[name])
                continue
            try:  # NAME: every tool of that MCP server; NAME.tool: one of them
                served = self._mcp.resolve(name) if self._mcp is not None else None
            except KeyError as exc:
                raise UsageError(f"--tools {name}: {exc.args[0]}") from None
            if served is None:
                raise UsageError(f"--tools: {name!r} is not defined in the notebook, nor an MCP server "
                                 "(%agent mcp list); define it first")
            found.extend(served)
        return found

    def _model(self, name: str | None) -> Model:
        """The model a cell names (or the default), aliases resolved, at the configured endpoint."""
        from ..models import Model

        name = name or self.model
        return Model(self.aliases.get(name, name), api_base=self.api_base)

    def _agent_for(self, options: CellOptions) -> tuple[Any, bool]:
        """A new agent, or the last one for --continue (same sandbox and memory)."""
        if options.follow_up:
            if options.kind not in self._agents:
                raise UsageError(f"--continue needs an earlier `%%agent {options.kind}` run in this session")
            return self._agents[options.kind], True
        from ..agents import CodeAgent, MultiStepAgent, ToolCallingAgent

        agent: MultiStepAgent
        asker = _ask.AskUser(self._asking(_review.uses_widgets)) if options.ask else None
        tools = [*self._tools(options.tools), *([asker.tool()] if asker else [])]
        common: dict[str, Any] = {"tools": tools, "max_steps": options.max_steps or self.max_steps,
                                  "add_base_tools": options.base_tools}
        warm: AsyncSandbox | None = None
        try:
            model = self._model(options.model)
            if options.kind == "code":
                sandbox_options = self._sandbox_options(options)
                warm = self._take_warm(sandbox_options)
                if warm is not None:
                    agent = CodeAgent(model, imports=sandbox_options["imports"], sandbox=warm, **common)
                else:
                    agent = CodeAgent(model, **sandbox_options, **common)
            else:
                agent = ToolCallingAgent(model, **common)
        except (ValueError, TypeError) as exc:  # a bad model name, tool or sandbox option
            if warm is not None:
                _aio.run_sync(warm.aclose())
            raise UsageError(f"{exc}\n\n{CELL_USAGE}") from None
        if asker is not None:
            asker.agent = agent  # its questions go where the analyst is, through the agent's run
        self._close_agents(options.kind)
        self._agents[options.kind] = agent
        if warm is not None:
            self._lent[options.kind] = warm
        return agent, False

    def _controls(self, agent: Any, options: CellOptions) -> Limits:
        """This cell's reviewer (set on the agent each time: --continue reuses it) and what its run
        may spend (checked as a Limits value; the steps stay the agent's own)."""
        from ..agents import Limits

        agent.approve = self._approver() if options.review else None
        try:
            return Limits(max_steps=agent.limits.max_steps, max_cost=self._budget(options.max_cost),
                          max_tokens=options.max_tokens, max_time=options.max_time)
        except ValueError as exc:
            raise UsageError(f"{exc}\n\n{CELL_USAGE}") from None

    def _approver(self) -> Any:
        """The reviewer for --review: a notebook function named by config, else the analyst."""
        if not self.approver:
            return self._asking(_review.approver)
        approve = self.shell.user_ns.get(self.approver)
        if not callable(approve):
            raise UsageError(f"AgentMagics.approver = {self.approver!r} is not a function defined in the notebook; "
                             "define it (f(step) -> Decision) or set it to '' to be asked with input()")
        return approve

    def _asking(self, choose: Callable[[_review.ReviewUI], T]) -> T:
        """`choose(review_ui)`: review's chooser of widgets or input(), refusals as UsageError."""
        try:
            return choose(cast(_review.ReviewUI, self.review_ui))  # the Enum trait allows only these
        except _review.WidgetsUnavailable as exc:
            raise UsageError(f"{exc}; or `%agent config review_ui=input` for text prompts") from None

    def _budget(self, max_cost: float | None) -> float | None:
        """The cell's cost cap within what the session cap leaves; refuses to start when nothing is left."""
        if self.session_max_cost is None:
            return max_cost
        left = self.session_max_cost - self.spent
        if left <= 0:
            raise UsageError(f"the session's cost cap is used up: spent ${self.spent:.4f} of "
                             f"AgentMagics.session_max_cost = ${self.session_max_cost:g}; raise it to go on")
        return left if max_cost is None else min(max_cost, left)

    def _run(self, agent: Any, options: CellOptions, task: str, inputs: dict[str, Any], follow_up: bool,
             limits: Limits, context: str = "") -> Run:
        """Stream the run into the live display. Kernel > Interrupt stops the agent, and the stream
        still delivers the stopped step and the interrupted run (see MultiStepAgent.run)."""
        from ..display import LiveRun
        from ..memory import Run, RunCompleted

        live = None if options.quiet or self.quiet else LiveRun(task, model=agent.model.model_id, agent=agent.kind)
        if live is not None and agent.approve is not None and not inspect.iscoroutinefunction(agent.approve):
            agent.approve = live.reviewing(agent.approve)  # set again by each cell's _controls
        # The agent reads the notebook's cells after the task (--context); the cell shows the task.
        events = agent.run(task + context, variables=inputs, reset=not follow_up, limits=limits, stream=True)
        run: Run | None = None

        def show(event: Event) -> None:
            nonlocal run
            if live is not None:
                live.update(event)
            if isinstance(event, RunCompleted):
                assert isinstance(event.run, Run)  # the agent's loop makes memory.Run
                run = event.run

        try:
            for event in events:
                show(event)
        except KeyboardInterrupt:  # it arrived while the display was drawing: the stream goes on
            agent.interrupt()
            for event in events:
                show(event)
        if live is not None:
            live.close()
        if run is None:  # only when a second interrupt stopped the wait
            raise KeyboardInterrupt
        return run

    def _bind(self, run: Run, options: CellOptions) -> None:
        ns = self.shell.user_ns
        if options.out:
            if run.state == "success":
                ns[options.out] = run.output
            else:
                print(f"--out {options.out}: not bound, the run ended as {run.state}")
        if options.keep:
            try:
                ns.update(_aio.run_sync(self._agents["code"].sandbox.pull(options.keep)))
            except (KeyError, RuntimeError) as exc:  # not defined there, or the sandbox is gone
                print(clean_text(f"--keep: {exc.args[0] if exc.args else exc}"))  # names from the sandbox

    def _close_agents(self, *kinds: str) -> None:
        """Stop agents (a CodeAgent owns a sandbox kernel); all of them when no kind is given."""
        for kind in kinds or list(self._agents):
            agent = self._agents.pop(kind, None)
            if hasattr(agent, "close"):
                agent.close()
            lent = self._lent.pop(kind, None)
            if lent is not None:
                _aio.run_sync(lent.aclose())

    # -- %agent ----------------------------------------------------------------------------------

    def _line(self, line: str) -> Any:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot read the arguments: {exc}\n\n{LINE_USAGE}") from None
        command, args = (words[0], words[1:]) if words else ("help", [])
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            raise UsageError(f"unknown command {command!r}\n\n{LINE_USAGE}")
        return handler(args)

    def _cmd_help(self, args: list[str]) -> None:
        print(f"{LINE_USAGE}\n\n{CELL_USAGE}")

    def _cmd_config(self, args: list[str]) -> None:
        for key, value in parse_assignments(args).items():
            if key not in _CONFIGURABLE:
                raise UsageError(f"unknown setting {key!r}; settings: {', '.join(_CONFIGURABLE)}")
            try:
                setattr(self, key, coerce(value, getattr(self, key), key))
            except TraitError:  # a choice outside the allowed ones (review_ui)
                allowed = ", ".join(self.traits()[key].values)  # type: ignore[attr-defined]
                raise UsageError(f"{key} is one of {allowed}, not {value!r}") from None
        print("\n".join(f"{key} = {getattr(self, key)!r}" for key in _CONFIGURABLE))

    def _cmd_alias(self, args: list[str]) -> None:
        if not args:
            raise UsageError("usage: %agent alias NAME=MODEL")
        self.aliases = {**self.aliases, **parse_assignments(args)}
        self._cmd_models([])

    def _cmd_model(self, args: list[str]) -> Model:
        """`m = %agent model [NAME]`: the Model the cells use, for agents built in Python."""
        if len(args) > 1:
            raise UsageError("usage: %agent model [NAME]")
        try:
            return self._model(args[0] if args else None)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def _cmd_models(self, args: list[str]) -> None:
        lines = [f"default: {self.model}", *(f"{a} = {m}" for a, m in sorted(self.aliases.items()))]
        print("\n".join(lines))

    def _cmd_runs(self, args: list[str]) -> None:
        if not self.runs:
            print("no runs yet")
            return
        from IPython.display import display

        from ..display import render_runs

        display(render_runs([(r.run, r.label or r.run.task) for r in self.runs]), raw=True)

    def _cmd_cell(self, args: list[str]) -> None:
        """`%agent cell [N]`: run N's code as the next cell, on the notebook's variables, not run."""
        if len(args) > 1:
            raise UsageError("usage: %agent cell [N]")
        record = self._record(args[0] if args else None)
        self._to_cell(record, self.runs.index(record) + 1)

    def _to_cell(self, record: _Record, number: int) -> None:
        from ..export import run_as_cell

        code = run_as_cell(record.run, number, answer=record.out or "answer")
        if code is None:
            print(f"run {number} has no code that ran cleanly: nothing to put in a cell")
            return
        self.shell.set_next_input(code, replace=False)
        print(f"run {number}'s code is in the next cell: read it, then run it")

    def _cmd_show(self, args: list[str]) -> None:
        from IPython.display import display

        from ..display import mime_bundle, provenance

        run = self._record(args[0] if args else None).run
        display(mime_bundle(run), raw=True, metadata=provenance(run))

    def _cmd_fix(self, args: list[str]) -> None:
        """Fix the last failing cell in a sandbox and show the diff; --apply puts it in the next cell."""
        from IPython.display import display

        from .. import fix
        from ..display import mime_bundle, provenance, render_diff

        options = parse_fix_args(args, "fix")
        cell = self._failed_cell()
        if cell.withheld_note():
            print(cell.withheld_note())
        buttons = not options.apply and self._asking(_review.uses_widgets)  # decided (and refused) before any model call
        reuse = options.apply and self._fix is not None and self._fix.cell.source == cell.source and self._fix.verified
        if not reuse:
            model, max_cost = self._fix_model(options), self._budget(None)
            print("reproducing and fixing the error in a sandbox, on copies of the variables…")
            self._fix = fix.fix(cell, model, max_steps=options.max_steps, max_cost=max_cost)
            self.spent += self._fix.run.usage.cost
            self.runs.append(_Record(self._fix.run, {}, label=f"%agent fix: {cell.source}"))
        found = self._fix
        self.shell.user_ns["_agent_fix"] = found
        if not found.verified:
            display(mime_bundle(found.run), raw=True, metadata=provenance(found.run))
            print(f"no verified fix: the run ended as {found.run.state}; see the steps above, or %agent explain")
            return
        display(render_diff(found.diff), raw=True, metadata=provenance(found.run))
        if options.apply or (buttons and _widgets.offer_fix()):  # the payload needs this cell still running
            self.shell.set_next_input(found.fixed, replace=False)
            print("the fixed cell is in the next cell: read it, then run it")
        else:
            print("verified in a new sandbox on copies of the variables; `%agent fix --apply` puts it in the next cell")

    def _cmd_explain(self, args: list[str]) -> None:
        from uuid import uuid4

        from IPython.display import display

        from .. import fix
        from ..display import render_prose, stamp

        model = self._fix_model(parse_fix_args(args, "explain"))
        self._budget(None)  # refuses when the session cap is used up
        cell = self._failed_cell()
        if cell.withheld_note():
            print(cell.withheld_note())
        text, usage = fix.explain(cell, model)
        self.spent += usage.cost
        display(render_prose("Why the last cell failed", text), raw=True,
                metadata=stamp(model.model_id, uuid4().hex[:12], "explain"))

    def _fix_model(self, options: FixOptions) -> Model:
        try:
            return self._model(options.model)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def _failed_cell(self) -> Any:
        from .. import fix

        if self._failure is None:
            raise UsageError("no failing cell to work on: %agent fix / explain look at the last cell that raised "
                             "since the extension was loaded")
        source, error = self._failure
        return fix.failed_cell(source, error, self.shell.user_ns, self.shell.transform_cell)

    def note_failure(self, result: Any) -> None:
        """post_run_cell hook: remember the last cell that raised (not the agent's own cells), and
        each cell's error by execution count (for --context)."""
        error = result.error_in_exec or result.error_before_exec
        source = getattr(result.info, "raw_cell", "") or ""
        if error is not None and isinstance(result.execution_count, int):
            self._errors[result.execution_count] = f"{type(error).__name__}: {error}"[:_CONTEXT_CHARS]
            while len(self._errors) > _CONTEXT_KEPT:
                self._errors.pop(min(self._errors))
        if error is not None and not source.lstrip().startswith(("%agent", "%%agent")):
            self._failure = (source, error)

    def _cmd_export(self, args: list[str]) -> None:
        from ..sandbox import KERNEL_NAME

        usage = "usage: %agent export [N] PATH.ipynb [--kernel NAME]"
        kernel = KERNEL_NAME  # the export's code is the model's: by default it re-runs in the sandbox
        if "--kernel" in args:
            at = args.index("--kernel")
            if at + 1 >= len(args):
                raise UsageError(usage)
            kernel, args = args[at + 1], args[:at] + args[at + 2:]
        if len(args) not in (1, 2) or not args[-1].endswith(".ipynb"):
            raise UsageError(usage)
        record = self._record(args[0] if len(args) == 2 else None)
        try:
            record.run.to_notebook(args[-1], inputs=record.inputs or None, kernel=kernel)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print(f"saved {args[-1]} (it re-runs in the {kernel} kernel)")

    def _cmd_sandbox(self, args: list[str]) -> None:
        sandbox = getattr(self._agents.get("code"), "sandbox", None)
        if sandbox is None:
            print("no sandbox: run `%%agent code` first")
            return
        variables = _aio.run_sync(sandbox.variables())
        listing = "\n".join(f"  {name}: {preview}" for name, preview in variables.items()) or "  (none)"
        print(clean_text(f"{sandbox.isolation}\nvariables\n{listing}"))  # the sandbox's own words

    def _cmd_mcp(self, args: list[str]) -> None:
        from ..mcp import MCP_USAGE, MCPConnectionError, MCPServers

        if args[:1] == ["help"]:
            print(MCP_USAGE)
            return
        if self._mcp is None:
            self._mcp = MCPServers()
        try:
            print(clean_text(self._mcp.command(args)))  # servers name and describe their tools
        except (ValueError, MCPConnectionError) as exc:
            raise UsageError(str(exc)) from None

    def _cmd_reset(self, args: list[str]) -> None:
        self._close_agents()
        print("agent and sandbox stopped; the next run starts fresh")

    def _record(self, number: str | None) -> _Record:
        if not self.runs:
            raise UsageError("no runs yet")
        if number is None:
            return self.runs[-1]
        if not number.isdigit() or not 1 <= int(number) <= len(self.runs):
            raise UsageError(f"no run {number!r}: runs are numbered 1 to {len(self.runs)} (%agent runs)")
        return self.runs[int(number) - 1]


def load_ipython_extension(ipython: Any) -> None:
    magics = AgentMagics(shell=ipython, config=ipython.config)
    ipython.register_magics(magics)
    ipython.events.register("post_run_cell", magics.note_failure)
    if magics not in ipython.configurables:  # `%config AgentMagics.model = ...` looks there; IPython 8 adds it
        ipython.configurables.append(magics)
    atexit.register(_shut_down, magics)  # sandbox kernels and MCP servers end with the notebook's kernel
    if magics.warm:
        magics.warm_up()


def _shut_down(magics: AgentMagics) -> None:
    magics._close_agents()
    warm, magics._warm = magics._warm, None
    if warm is not None:  # started at load and never used
        _aio.run_sync(warm.aclose())
    if magics._retiring is not None:
        magics._retiring.result()
    if magics._mcp is not None:
        magics._mcp.close()


def unload_ipython_extension(ipython: Any) -> None:
    for magics in [c for c in ipython.configurables if isinstance(c, AgentMagics)]:
        ipython.events.unregister("post_run_cell", magics.note_failure)
        atexit.unregister(_shut_down)
        _shut_down(magics)
        ipython.configurables.remove(magics)


__all__ = ["AgentMagics", "load_ipython_extension", "unload_ipython_extension"]
