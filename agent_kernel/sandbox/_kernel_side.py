"""Runs inside the sandbox kernel: final_answer, host-function stubs, transfers, the import policy.

The host reaches this through one hidden object, `__ak__`, in the user namespace. Everything it
returns to the host is JSON text (and files in the transfer folder), so nothing the host reads
back can run code when decoded.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import importlib
import json
import sys
import types
from collections import deque
from pathlib import Path
from typing import Any

from . import _codec
from ._messages import MAX_ITEM
from ._records import Isolation
from ._transfer import Transfer

CALL_MARKER = "\x00agent_kernel:call\x00"  # prefix of an input_request that is a host-function call
FINAL_ANSWER_PAYLOAD = "agent_kernel.final_answer"  # the execute_reply payload carrying final_answer(x)
CUT_MARK = "characters of output cut ...]"  # ends the note that replaces cut output
DROP_MARK = "from the sandbox dropped:"  # in the note that says outputs were dropped
HANDLE = "__ak__"  # the hidden object the host calls; each of its host-facing methods returns JSON text

# Data-analysis defaults; `imports=[...]` widens them, "*" lifts the policy.
DEFAULT_IMPORTS = frozenset(
    """math cmath statistics datetime time zoneinfo calendar json csv re string textwrap unicodedata
    collections itertools functools operator random decimal fractions numbers heapq bisect copy
    pprint enum dataclasses typing abc io sys base64 hashlib uuid warnings IPython numpy pandas matplotlib""".split()
)


class HostFunctionError(Exception):
    """A host function (a tool) failed; the message is the host's account of why."""


class _NoAnswer:
    pass


_NO_ANSWER = _NoAnswer()


class HeadTail:
    """Keeps the first and the last max_chars/2 characters of a run of text pieces; counts the cut.

    Used twice: in the kernel, so a flood of prints never crosses the wire, and in the host.
    """

    def __init__(self, max_chars: int) -> None:
        self._head_left = max_chars // 2
        self._tail_max = max_chars - max_chars // 2
        self._tail: deque[tuple[str, str]] = deque()
        self._tail_chars = 0
        self._cut = 0

    def add(self, key: str, text: str) -> str:
        """Take a piece; return the part of it that is still head, to pass on now."""
        head, rest = text[: self._head_left], text[self._head_left :]
        self._head_left -= len(head)
        if rest:
            self._tail.append((key, rest))
            self._tail_chars += len(rest)
            while self._tail_chars - len(self._tail[0][1]) >= self._tail_max:
                self._cut += len(self._tail[0][1])
                self._tail_chars -= len(self._tail.popleft()[1])
        return head

    def finish(self) -> tuple[str | None, list[tuple[str, str]]]:
        """The note saying what was cut (None when nothing was), and the kept tail pieces."""
        excess = self._tail_chars - self._tail_max
        if excess > 0:
            key, text = self._tail[0]
            self._tail[0] = (key, text[excess:])
            self._cut += excess
        note = f"\n[... {self._cut} {CUT_MARK}\n" if self._cut else None
        return note, list(self._tail)


class Bridge:
    def __init__(self, shell: Any, transfer_dir: str, isolation: Isolation, inline: bool = False) -> None:
        self._shell = shell
        self._isolation = isolation
        self._final: Any = _NO_ANSWER
        self.transfer_dir = Path(transfer_dir)
        self.transfer_dir.mkdir(exist_ok=True)
        self._transfer = Transfer(self.transfer_dir, inline)  # inline: the host is behind a gateway
        self._kept: dict[str, Any] = {}  # final_answer and the tool stubs: put back if code replaced them

    # -- final answer ---------------------------------------------------------------------------
    def final_answer(self, *answer: Any, **named: Any) -> None:
        """Give the task's final answer: `final_answer(value)`, or several values as one tuple
        (`final_answer(region, total)`: small models write a pair so)."""
        if set(named) - {"answer"} or len(answer) + len(named) == 0 or (named and answer):
            raise TypeError("final_answer takes the answer: final_answer(value), or final_answer(a, b) for a pair")
        # returns None: as a cell's last line it would otherwise show the answer twice
        self._final = named["answer"] if named else answer[0] if len(answer) == 1 else answer

    def report(self, _result: Any = None) -> None:
        """After each cell (even a failing one): a pending final answer rides on the execute_reply."""
        if self._final is _NO_ANSWER:
            return
        answer, self._final = self._final, _NO_ANSWER
        self._shell.payload_manager.write_payload(
            {"source": FINAL_ANSWER_PAYLOAD, "final": self._transfer.encode(answer, "final_answer")}
        )

    # -- values in and out ----------------------------------------------------------------------
    def load(self, descriptors: str) -> str:
        for name, descriptor in json.loads(descriptors).items():
            self._shell.user_ns[name] = self._transfer.decode(descriptor)
        return "null"

    def dump(self, names: str) -> str:
        ns = self._shell.user_ns
        found = {n: self._transfer.encode(ns[n], n) for n in json.loads(names) if n in ns}
        return json.dumps({"values": found, "missing": [n for n in json.loads(names) if n not in ns]})

    def variables(self) -> str:
        hidden = self._shell.user_ns_hidden
        return json.dumps(
            {
                name: _codec.describe(value)
                for name, value in self._shell.user_ns.items()
                if not name.startswith("_")
                and name not in hidden
                and not isinstance(value, (types.ModuleType, types.FunctionType, type))
            }
        )

    def isolation(self) -> str:
        return json.dumps({"active": self._isolation.active, "missing": self._isolation.missing})

    # -- host functions -------------------------------------------------------------------------
    def register(self, names: str) -> str:
        for name, doc in json.loads(names).items():
            self._expose(name, self._stub(name, doc))
        return "null"

    def _stub(self, name: str, doc: str) -> Any:
        bridge = self

        def stub(*args: Any, **kwargs: Any) -> Any:
            return bridge.call(name, args, kwargs)

        stub.__name__ = stub.__qualname__ = name
        stub.__doc__ = doc
        return stub

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        request = {
            "name": name,
            "args": [self._transfer.encode(a, f"{name}_arg{i}") for i, a in enumerate(args)],
            "kwargs": {k: self._transfer.encode(v, f"{name}_{k}") for k, v in kwargs.items()},
        }
        reply = json.loads(self._shell.kernel.raw_input(CALL_MARKER + json.dumps(request)))
        if "error" in reply:
            raise HostFunctionError(reply["error"])
        return self._transfer.decode(reply["ok"])

    def _expose(self, name: str, value: Any) -> None:
        self._shell.user_ns[name] = value
        self._shell.user_ns_hidden[name] = value
        self._kept[name] = value

    def restore(self, _result: Any = None) -> None:
        """After each cell: tools and final_answer that code replaced (globals()[...] = ..., del) are put
        back, and the code is told (the host refuses plain redefinitions before they run)."""
        ns = self._shell.user_ns
        replaced = [name for name, value in self._kept.items() if ns.get(name) is not value]
        for name in replaced:
            self._expose(name, self._kept[name])
            sys.stderr.write(f"[agent_kernel] `{name}` is a tool: call it, do not define or assign it "
                             "(the code replaced it; the real one is back)\n")


def install(
    shell: Any, imports: list[str], isolation: Isolation, transfer_dir: str, max_output: int, inline: bool = False,
    max_output_bytes: int = 64 * 1024**2, agent: bool = True,
) -> Bridge:
    """Set the kernel up for code from a model. With `agent` False (a kernel a Jupyter frontend started,
    no agent on the other side) there is no final_answer of the sandbox's, and none is kept."""
    bridge = Bridge(shell, transfer_dir, isolation, inline)
    shell.user_ns[HANDLE] = bridge
    shell.user_ns_hidden[HANDLE] = bridge
    if agent:
        bridge._expose("final_answer", bridge.final_answer)
    if "*" not in imports:
        _install_import_policy(DEFAULT_IMPORTS | set(imports))
    _cap_displays(shell, max_output_bytes)  # first: its note is written before the output cap's tail
    _cap_output(shell, max_output)
    _keep_no_output_history(shell)
    _describe_figures(shell)
    shell.events.register("post_run_cell", lambda result: _show_open_figures(shell))
    shell.events.register("post_run_cell", lambda result: _forget_last_error(shell, result))
    shell.events.register("post_run_cell", bridge.restore)
    shell.events.register("post_run_cell", bridge.report)
    return bridge


def _describe_figures(shell: Any) -> None:
    """A matplotlib figure's text form says what it shows (titles, axis labels, how many series):
    a model that cannot see the image reads that instead of "<Figure size 640x480 with 1 Axes>"."""

    def describe(fig: Any) -> dict[str, str]:
        parts = []
        suptitle = getattr(fig, "_suptitle", None)
        if suptitle is not None and suptitle.get_text():
            parts.append(f"title {suptitle.get_text()!r}")
        for n, ax in enumerate(fig.axes, 1):
            bits = [f"{label} {text!r}" for label, text in
                    (("title", ax.get_title()), ("x", ax.get_xlabel()), ("y", ax.get_ylabel())) if text]
            bits.append(f"{len(ax.lines) + len(ax.collections) + len(ax.containers)} series")
            parts.append(f"axes {n}: " + ", ".join(bits))
        return {"text/plain": "Figure (" + "; ".join(parts or ["empty"]) + ")"}

    # The mime-bundle formatter: configuring the inline backend drops the per-type ones for Figure.
    # By name: matplotlib is imported only by code that plots.
    shell.display_formatter.mimebundle_formatter.for_type_by_name("matplotlib.figure", "Figure", describe)


def _show_open_figures(shell: Any) -> None:
    """Every figure still open after an execution is shown, then closed, as the inline backend does:
    code written for scripts switches backend (`matplotlib.use("Agg")`) or only calls `savefig`,
    and its figures would reach neither the cell nor the model. With the inline backend they were
    shown and closed already, so nothing shows twice."""
    pyplot = sys.modules.get("matplotlib.pyplot")  # never imported here: only code that plots has it
    if pyplot is None or not pyplot.get_fignums():
        return
    from IPython.core.pylabtools import print_figure
    from IPython.display import display

    for number in pyplot.get_fignums():
        figure = pyplot.figure(number)
        data, metadata = shell.display_formatter.format(figure)
        if "image/png" not in data:  # the inline backend, which registers the PNG form, never ran
            data["image/png"] = base64.b64encode(print_figure(figure, "png")).decode("ascii")
        display(data, metadata=metadata, raw=True)
    pyplot.close("all")


def _cap_output(shell: Any, max_chars: int) -> None:
    """Cut each execution's printed output to head and tail inside the kernel."""
    streams = {"stdout": sys.stdout, "stderr": sys.stderr}
    writes = {name: stream.write for name, stream in streams.items()}
    budget = HeadTail(max_chars)

    def capped(name: str) -> Any:
        def write(text: str) -> int:
            head = budget.add(name, text)
            if head:
                writes[name](head)
            return len(text)

        return write

    def reset(*_: Any) -> None:
        nonlocal budget
        budget = HeadTail(max_chars)

    def flush_tail(*_: Any) -> None:
        note, tail = budget.finish()
        if note:
            writes["stdout"](note)
        for name, text in tail:
            writes[name](text)

    for name, stream in streams.items():
        stream.write = capped(name)  # type: ignore[method-assign]  # ipykernel's own stream objects
    shell.events.register("pre_run_cell", reset)
    shell.events.register("post_run_cell", flush_tail)


def _cap_displays(shell: Any, max_bytes: int) -> None:
    """Drop displays inside the kernel, and say so: one over MAX_ITEM (the host would not read it),
    and an execution's past `max_bytes` of their data (a flood of them would otherwise queue in
    this process while the host reads and cuts them)."""
    publish = shell.display_pub.publish
    left = max_bytes
    dropped: dict[str, int] = {}

    def capped(data: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal left
        values = data.values() if isinstance(data, dict) else ()
        size = sum(len(v) if isinstance(v, (str, bytes)) else 64 for v in values)
        if size > MAX_ITEM:
            why = f"each over the {MAX_ITEM // 1024**2} MiB one display may take"
        elif size > left:
            why = f"over the {max_bytes / 1024**2:.1f} MiB of outputs an execution may hold (max_output_bytes)"
        else:
            left -= size
            publish(data, *args, **kwargs)
            return
        dropped[why] = dropped.get(why, 0) + 1

    def reset(*_: Any) -> None:
        nonlocal left
        left = max_bytes
        dropped.clear()

    def say(*_: Any) -> None:
        for why, count in dropped.items():
            sys.stderr.write(f"\n[... {count} display{'s' * (count > 1)} {DROP_MARK} {why}]\n")

    shell.display_pub.publish = capped
    shell.events.register("pre_run_cell", reset)
    shell.events.register("post_run_cell", say)


def _keep_no_output_history(shell: Any) -> None:
    """IPython 9 keeps every printed text, display and result of a session (history_manager.outputs,
    for %notebook), with the history database off too: a kernel printing 20 MB kept 20 MB per run.
    The sandbox's outputs go to the host; it keeps none. (`_tee` copies each print into it.)"""
    if hasattr(shell, "_tee"):
        shell._tee = lambda channel: contextlib.nullcontext()
    outputs = getattr(shell.history_manager, "outputs", None)
    if outputs is not None:
        shell.events.register("post_run_cell", lambda result: outputs.clear())


def _forget_last_error(shell: Any, result: Any) -> None:
    """Drop the references that keep a failed execution's frames (and their memory) alive."""
    sys.last_type = sys.last_value = sys.last_traceback = None
    shell.InteractiveTB.tb = None
    error = getattr(result, "error_in_exec", None)
    if error is not None:
        error.__traceback__ = None


def _install_import_policy(allowed: frozenset[str] | set[str]) -> None:
    """Refuse imports outside the allowlist when they come from the sandbox's own code.

    This is a guard against honest mistakes, not the boundary (the OS layers are): imports made
    by allowed libraries themselves pass, only code running in the user namespace is checked.
    """
    real_import = builtins.__import__
    real_import_module = importlib.import_module

    def check(name: str, caller_globals: Any, level: int = 0) -> None:
        if level or not isinstance(caller_globals, dict) or caller_globals.get("__name__") != "__main__":
            return
        top = name.partition(".")[0]
        if top not in allowed:
            raise ImportError(
                f"import of {top!r} is not allowed in this sandbox. Allowed: {', '.join(sorted(allowed))}. "
                f"To allow it, start the agent with imports=[{top!r}] (magic: --imports {top})."
            )

    def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        check(name, globals, level)
        return real_import(name, globals, locals, fromlist, level)

    def guarded_import_module(name: str, package: str | None = None) -> Any:
        check(name, sys._getframe(1).f_globals)
        return real_import_module(name, package)

    builtins.__import__ = guarded_import
    importlib.import_module = guarded_import_module
