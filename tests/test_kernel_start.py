"""What a kernel start shares with the kernels before it, and what it must not.

The zygote builds the kernel application, fills caches and freezes its objects before it forks;
the kernel reads its configuration without traitlets' command-line parser; the local client
rides the shared zmq context. Real kernels through jupyter_client, real zygote.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from agent_kernel.sandbox import Sandbox, _zygote
from agent_kernel.sandbox._launcher import _connection_file_alone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the zygote forks on Linux only")

_STATE = """\
import json as _json
_ip = get_ipython()
_app = _ip.parent.parent
_json.dumps({
    "names": sorted(n for n in _ip.user_ns if not n.startswith("_") and n not in _ip.user_ns_hidden),
    "executions": _ip.execution_count,
    "history": _ip.history_manager.enabled,
    "colors": _ip.colors,
    "sleep": _ip.kernel._execute_sleep,
    "packer": _ip.kernel.session.packer,
    "stdout": type(__import__("sys").stdout).__name__,
    "connection_file": _app.connection_file,
    "parent_handle": _app.parent_handle,
    "ppid": __import__("os").getppid(),
    "frozen": __import__("gc").get_freeze_count(),
})"""


def _state(sb: Sandbox) -> dict:
    ex = sb.execute(_STATE)
    assert ex.ok, ex.error
    return json.loads(ast.literal_eval(ex.result["text/plain"]))  # the repr of a str of JSON


def test_each_forked_kernel_starts_fresh_and_configured() -> None:
    with Sandbox(imports=["json", "os", "gc"]) as first:
        first.execute("leftover = 41\nimport numpy as leftover_module")
        one = _state(first)
        with Sandbox(imports=["json", "os", "gc"]) as second:
            two = _state(second)
    assert "leftover" in one["names"]
    # Nothing of the first kernel's run reaches the second, forked from the same zygote.
    assert two["names"] == [] and two["executions"] == 1
    assert two["ppid"] == two["parent_handle"] == one["parent_handle"] != os.getpid()  # the zygote
    assert two["connection_file"] != one["connection_file"]
    assert os.path.basename(two["connection_file"]) == "kernel.json"
    # The trims that used to come as command-line flags still apply.
    assert two["history"] is False and two["colors"] == "nocolor" and two["sleep"] == 0
    assert two["stdout"] == "SandboxOutStream"
    assert two["packer"] in ("agent_kernel.sandbox._launcher._pack", "json")
    # The zygote's objects are frozen: a kernel's garbage collections leave them (and their pages) alone.
    assert two["frozen"] > 10_000


def test_a_kernel_started_by_exec_reads_the_same_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_zygote.SWITCH_ENV, "0")
    with Sandbox(imports=["json", "os", "gc"]) as sb:
        state = _state(sb)
    assert state["ppid"] == os.getpid() == state["parent_handle"]  # jupyter_client's JPY_PARENT_PID
    assert state["history"] is False and state["colors"] == "nocolor" and state["sleep"] == 0
    assert state["stdout"] == "SandboxOutStream" and state["names"] == []


def test_the_short_command_line_path_takes_the_connection_file_alone() -> None:
    assert _connection_file_alone(["-f", "/run/k.json"]) == "/run/k.json"
    assert _connection_file_alone(["--f=/run/k.json"]) == "/run/k.json"
    for other in (None, [], ["-f"], ["-f", ""], ["-f", "/run/k.json", "--debug"], ["--IPKernelApp.quiet=False"]):
        assert _connection_file_alone(other) is None


def test_any_other_command_line_is_parsed_in_full(tmp_path) -> None:
    """Flags besides -f still reach the kernel application (through traitlets' parser)."""
    script = (
        "import sys, json\n"
        "from agent_kernel.sandbox._launcher import _kernel_app_class, _kernel_config\n"
        "app = _kernel_app_class().instance(config=_kernel_config())\n"
        "app.parse_command_line(sys.argv[1:])\n"
        "print(json.dumps([app.connection_file, app.quiet, app.config.HistoryManager.enabled]))\n"
    )
    connection = str(tmp_path / "k.json")
    full = subprocess.run([sys.executable, "-c", script, "-f", connection, "--IPKernelApp.quiet=False"],
                          capture_output=True, text=True, check=True)
    assert json.loads(full.stdout) == [connection, False, False]
    short = subprocess.run([sys.executable, "-c", script, "-f", connection], capture_output=True, text=True,
                           check=True)
    assert json.loads(short.stdout) == [connection, True, False]


def test_the_local_client_shares_the_hosts_zmq_context() -> None:
    """One zmq I/O thread for every local sandbox, retrying connections every 10 ms, not a context per client."""
    with Sandbox() as a, Sandbox() as b:
        backends = [a._async._backend, b._async._backend]
        shared = backends[0].km.context
        assert all(backend._kc.context is shared and not backend._kc._created_context for backend in backends)
    assert not shared.closed  # closing the sandboxes leaves the shared context to the next ones
