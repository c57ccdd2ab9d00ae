"""Parsing `%%agent` options: bad input becomes a usage message (IPython's UsageError), never a traceback."""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from IPython.core.error import UsageError

CELL_USAGE = """\
%%agent code|tools [options]
<the task, in plain language; {name} refers to a notebook variable>

  -m, --model MODEL     litellm model name or an alias (%agent alias fast=openai/gpt-4o-mini)
  --max-steps N         steps before the agent must answer
  --tools f,g           notebook callables the agent may call; an MCP server (NAME) or one of its
                        tools (NAME.tool), after `%agent mcp add NAME ...`
  --base-tools          add web_search and visit_webpage (and python_interpreter for tools)
  --in a,b              notebook variables the agent can use
  --out NAME            bind the final answer to NAME
  --keep x,y            pull these sandbox variables back into the notebook (code only)
  --imports m,n         modules the sandbox may import, beyond the defaults (code only)
  --timeout SECONDS     per action in the sandbox (code only)
  --network             let the sandbox use the network (code only)
  --read PATH           let the sandbox read PATH (repeatable; code only)
  --continue            follow up on the last run: same sandbox and memory
  --quiet               no live display
  --to-cell             afterwards, put the run's code in the next cell (as %agent cell does)
  --ask                 the agent may ask you (at most twice) when the task is ambiguous: a text box
                        in the cell, else input(); unanswered, it states its assumption
  --context [N]         the agent sees the notebook's last N cells (5 without N) and their errors;
                        {In[3]} / {Out[3]} in the task insert that cell's source / output
  --review              show each action before it runs: run, edit, skip (the agent is told why) or stop
                        (a prompt with buttons where ipywidgets can show, else input(): %agent config
                        review_ui=input; %config AgentMagics.approver = "f" uses a notebook
                        function f(step) -> Decision instead)
  --max-cost USD        stop before the next model call once the run has cost this much
  --max-tokens N        ... once it has used this many tokens
  --max-time SECONDS    ... once it has worked this long (an action still running then is stopped;
                        time waiting for your review does not count)
                        (a cap for the whole session: %config AgentMagics.session_max_cost = USD)"""

LINE_USAGE = """\
%agent config [key=value ...]      show or set defaults (also %config AgentMagics.model = "...")
%agent models                      the default model and aliases
m = %agent model [NAME]            that model as a Model, to build agents in Python
%agent alias NAME=MODEL            a short name for a model
%agent runs                        past runs in this session
%agent show [N]                    replay run N (default: the last)
%agent cell [N]                    run N's code as the next cell, on the notebook's variables (failed
                                   steps left out, final_answer(x) as answer = x, or the --out name)
%agent export [N] PATH.ipynb       save run N as a notebook that re-runs in the sandbox kernel
                                   (--kernel NAME: in that kernel instead, e.g. python3)
%agent sandbox                     isolation layers and variables of the last code sandbox
%agent reset                       stop sandboxes, forget runs' memory
%agent fix [--apply] [-m MODEL]    fix the last failing cell in a sandbox (never in this kernel) and show
                                   the diff with a "Put in next cell" button (the cell waits for it);
                                   --apply puts the verified fix in the next cell
%agent explain [-m MODEL]          explain the last error, without fixing it
%agent mcp add NAME -- CMD ARGS    connect an MCP server (stdio; or NAME URL for HTTP): %agent mcp help"""

_NAME = re.compile(r"[A-Za-z_]\w*\Z")
_CODE_ONLY = ("keep", "imports", "timeout", "network", "read")


@dataclass
class CellOptions:
    """What one `%%agent` cell asked for; unset values fall back to the AgentMagics defaults."""

    kind: Literal["code", "tools"]
    model: str | None = None
    max_steps: int | None = None
    tools: list[str] = field(default_factory=list)
    base_tools: bool = False
    inputs: list[str] = field(default_factory=list)
    out: str | None = None
    keep: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    timeout: float | None = None
    network: bool = False
    read: list[str] = field(default_factory=list)
    follow_up: bool = False
    quiet: bool = False
    to_cell: bool = False
    ask: bool = False
    context: int | None = None
    review: bool = False
    max_cost: float | None = None
    max_tokens: int | None = None
    max_time: float | None = None


@dataclass
class FixOptions:
    """What `%agent fix` / `%agent explain` asked for."""

    apply: bool = False
    model: str | None = None
    max_steps: int | None = None


class _Parser(argparse.ArgumentParser):
    """argparse that raises a UsageError instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n\n{CELL_USAGE}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(message or CELL_USAGE)


def _names(text: str) -> list[str]:
    """A comma-separated list of Python names (`a,b`), checked."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not _NAME.match(n)]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated Python names, got {text!r}")
    return names


def _tool_names(text: str) -> list[str]:
    """`--tools`: Python names, or NAME.tool for one tool of an MCP server (its own spelling)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not _NAME.match(n.split(".", 1)[0])]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names (or SERVER.tool), got {text!r}")
    return names


def _name(text: str) -> str:
    if not _NAME.match(text):
        raise argparse.ArgumentTypeError(f"expected a Python name, got {text!r}")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of cells, got {text!r}")
    return int(text)


def _positive_number(what: str) -> Any:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive number {what}, got {text!r}")
        return value

    return convert


_positive_float = _positive_number("of seconds")
_positive_usd = _positive_number("of US dollars, like 0.50")


def _build_parser() -> _Parser:
    p = _Parser(prog="%%agent", add_help=False, usage=CELL_USAGE)
    p.add_argument("kind", choices=("code", "tools"))
    p.add_argument("-m", "--model")
    p.add_argument("--max-steps", type=_positive_int)
    p.add_argument("--tools", type=_tool_names, default=[])
    p.add_argument("--base-tools", action="store_true")
    p.add_argument("--in", dest="inputs", type=_names, default=[])
    p.add_argument("--out", type=_name)
    p.add_argument("--keep", type=_names, default=[])
    p.add_argument("--imports", type=lambda s: [m.strip() for m in s.split(",") if m.strip()], default=[])
    p.add_argument("--timeout", type=_positive_float)
    p.add_argument("--network", action="store_true")
    p.add_argument("--read", action="append", default=[])
    p.add_argument("--continue", dest="follow_up", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--to-cell", action="store_true")
    p.add_argument("--ask", action="store_true")
    p.add_argument("--context", type=_count, nargs="?", const=5)
    p.add_argument("--review", action="store_true")
    p.add_argument("--max-cost", type=_positive_usd)
    p.add_argument("--max-tokens", type=_positive_int)
    p.add_argument("--max-time", type=_positive_float)
    return p


_PARSER = _build_parser()


class _LineParser(_Parser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n\n{LINE_USAGE}")


def _build_fix_parser() -> _Parser:
    p = _LineParser(prog="%agent fix", add_help=False, usage=LINE_USAGE)
    p.add_argument("--apply", action="store_true")
    p.add_argument("-m", "--model")
    p.add_argument("--max-steps", type=_positive_int)
    return p


_FIX_PARSER = _build_fix_parser()


def parse_fix_args(args: list[str], command: str) -> FixOptions:
    """The options after `%agent fix` (or `explain`, which takes only -m)."""
    options = FixOptions(**vars(_FIX_PARSER.parse_args(args)))
    if command == "explain" and (options.apply or options.max_steps):
        raise UsageError(f"%agent explain only takes -m MODEL\n\n{LINE_USAGE}")
    return options


def parse_cell_line(line: str) -> CellOptions:
    """The options after `%%agent`."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:  # an unclosed quote
        raise UsageError(f"cannot read the options: {exc}\n\n{CELL_USAGE}") from None
    if not argv:
        raise UsageError(f"say which agent: code or tools\n\n{CELL_USAGE}")
    values = vars(_PARSER.parse_args(argv))
    options = CellOptions(**values)
    if options.kind == "tools":
        used = [f"--{name}" for name in _CODE_ONLY if getattr(options, name)]
        if used:
            raise UsageError(f"{', '.join(used)} only apply to `%%agent code` (tools agents have no sandbox)")
    return options


def parse_assignments(words: list[str]) -> dict[str, str]:
    """`key=value` words (from `%agent config` / `%agent alias`) as a dict."""
    pairs = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"expected key=value, got {word!r}\n\n{LINE_USAGE}")
        pairs[key.strip()] = value.strip()
    return pairs


def task_references(task: str) -> list[str]:
    """Notebook variables the task names as `{name}`, in order, without repeats."""
    return list(dict.fromkeys(re.findall(r"\{([A-Za-z_]\w*)\}", task)))


def describe_task(task: str) -> str:
    """The task as the model reads it: `{df}` becomes `` `df` `` (the variable's preview goes with it)."""
    return re.sub(r"\{([A-Za-z_]\w*)\}", r"`\1`", task)


def coerce(value: str, current: Any, key: str = "") -> Any:
    """A `%agent config` value as the type of the current default."""
    if key == "context":  # cells, and 0 for none
        return _checked(_count, value)
    if key == "session_max_cost":  # an optional cap: a dollar amount, or none to lift it
        return None if value.lower() == "none" else _checked(_positive_usd, value)
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UsageError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if isinstance(current, int):
        return _checked(_positive_int, value)
    if isinstance(current, float):
        return _checked(_positive_float, value)
    if isinstance(current, list):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _checked(convert: Any, value: str) -> Any:
    try:
        return convert(value)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(str(exc)) from None
