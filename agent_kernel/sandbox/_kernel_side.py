"""Runs inside the sandbox kernel: final_answer, host-function stubs, transfers, the import policy.

The host reaches this through one hidden object, `__ak__`, in the user namespace. Everything it
returns to the host is JSON text (and files in the transfer folder), so nothing the host reads
back can run code when decoded.
"""

from __future__ import annotations

import builtins
import importlib
import json
import sys
import types
from pathlib import Path
from typing import Any

from . import _codec
from ._records import Isolation

CALL_MARKER = "\x00agent_kernel:call\x00"  # prefix of an input_request that is a host-function call
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


class Bridge:
    def __init__(self, shell: Any, workdir: str, isolation: Isolation) -> None:
        self._shell = shell
        self._isolation = isolation
        self._final: Any = _NO_ANSWER
        self.transfer_dir = Path(workdir) / ".transfer"
        self.transfer_dir.mkdir(exist_ok=True)

    # -- final answer ---------------------------------------------------------------------------
    def final_answer(self, answer: Any) -> Any:
        """Give `answer` as the task's final answer."""
        self._final = answer
        return answer

    def report(self) -> str:
        """Evaluated by the host after every execution (as a user expression): the final answer, if any."""
        if self._final is _NO_ANSWER:
            return "{}"
        answer, self._final = self._final, _NO_ANSWER
        return json.dumps({"final": _codec.encode(answer, self.transfer_dir, "final_answer")})

    # -- values in and out ----------------------------------------------------------------------
    def load(self, descriptors: str) -> str:
        for name, descriptor in json.loads(descriptors).items():
            self._shell.user_ns[name] = _codec.decode(descriptor, self.transfer_dir)
        return "null"

    def dump(self, names: str) -> str:
        ns = self._shell.user_ns
        found = {n: _codec.encode(ns[n], self.transfer_dir, n) for n in json.loads(names) if n in ns}
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
            "args": [_codec.encode(a, self.transfer_dir, f"{name}_arg{i}") for i, a in enumerate(args)],
            "kwargs": {k: _codec.encode(v, self.transfer_dir, f"{name}_{k}") for k, v in kwargs.items()},
        }
        reply = json.loads(self._shell.kernel.raw_input(CALL_MARKER + json.dumps(request)))
        if "error" in reply:
            raise HostFunctionError(reply["error"])
        return _codec.decode(reply["ok"], self.transfer_dir)

    def _expose(self, name: str, value: Any) -> None:
        self._shell.user_ns[name] = value
        self._shell.user_ns_hidden[name] = value


def install(shell: Any, imports: list[str], isolation: Isolation, workdir: str) -> Bridge:
    bridge = Bridge(shell, workdir, isolation)
    shell.user_ns[HANDLE] = bridge
    shell.user_ns_hidden[HANDLE] = bridge
    bridge._expose("final_answer", bridge.final_answer)
    if "*" not in imports:
        _install_import_policy(DEFAULT_IMPORTS | set(imports))
    return bridge


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
