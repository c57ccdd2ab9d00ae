"""The sandbox kernel's entry point: isolate this process, then run ipykernel inside it.

ipykernel runs in-process rather than through exec because exec is one of the things the
isolation forbids. The host passes the sandbox's settings in one environment variable, which is
removed (with everything else outside the allowlist) before any sandbox code runs. Usually `main`
runs in a child forked from the pre-imported zygote (_zygote.py) rather than in a fresh
`python -m agent_kernel.sandbox._launcher`; from here on the two are the same.

The kernel is ipykernel trimmed for a short execute round trip (an agent runs many small cells):
requests are handled on the main thread without ipykernel 7's shell-channel thread (no subshells),
output streams skip the wait on the IOPub thread when they hold nothing, there is no fixed sleep
before each reply, debug log records are not built, a cell is transformed once instead of twice,
the host's own calls (user expressions answering JSON text) skip the rich formatters, and
messages are packed with orjson when it is installed. It still speaks the Jupyter protocol to any
client (kernel_info no longer lists "kernel subshells"). Measured in bench/bench_sandbox.py.

Its start is trimmed too (a batch of runs starts a kernel per task; bench/bench_many.py): the
trims reach it as config rather than command-line flags, read without traitlets' argument parser,
and a zygote builds the application object and fills the caches of a first cell once for all the
kernels it forks (`prepare`). Each kernel still makes its own sockets, shell and namespace.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from jupyter_client.jsonutil import json_default
from jupyter_client.session import json_packer
from traitlets.config import Config

from ._spec import CONFIG_ENV, GATEWAY_CONFIG_ENV, LAUNCH_ENV

if TYPE_CHECKING:
    from ipykernel.kernelapp import IPKernelApp

try:
    import orjson

    _ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
except ImportError:  # optional: the stock packer is used
    orjson = None  # type: ignore[assignment]


def _kernel_config(parent_handle: int | None = None) -> Config:
    """The kernel's trims, as config rather than command-line flags (see SandboxKernelApp.parse_command_line).

    No history database, no banner: the sandbox keeps nothing between runs and starts quickly.
    No 0.5 ms sleep before each execute_reply: written output is flushed (and waited for) first.
    `parent_handle`: the zygote that forked this kernel (ipykernel exits when it goes).
    """
    app: dict[str, Any] = {"quiet": True, "outstream_class": "agent_kernel.sandbox._launcher._out_stream"}
    if parent_handle is not None:
        app["parent_handle"] = parent_handle
    return Config({
        "IPKernelApp": app,
        "HistoryManager": {"enabled": False},
        "InteractiveShell": {"colors": "nocolor"},
        "Kernel": {"_execute_sleep": 0.0},
        **({"Session": {"packer": "agent_kernel.sandbox._launcher._pack"}} if orjson else {}),
    })


def _file_cap(asked: Any) -> int | None:
    """RLIMIT_FSIZE: lowered to a local sandbox's disk cap when that is smaller, never raised."""
    from ._isolation import IsolationConfig

    default = IsolationConfig.max_file_bytes
    return min(asked, default) if type(asked) is int and asked > 0 and default is not None else default


def main(argv: list[str] | None = None, *, zygote: str | None = None, parent_handle: int | None = None) -> None:
    """Isolate this process and run the kernel; `zygote`: how the zygote forked it, if it did (and
    `parent_handle`, its pid)."""
    from ._isolation import IsolationConfig, apply_isolation, seal_unix_sockets

    # A gateway forwards only KERNEL_* variables from the host: the same settings under that name.
    sent = [os.environ.pop(name, "") for name in (CONFIG_ENV, GATEWAY_CONFIG_ENV)]
    not_forked = os.environ.pop(LAUNCH_ENV, "") or "started without the agent-sandbox kernel provisioner"
    settings = json.loads(sent[0] or sent[1] or "{}")
    connection_file = os.path.abspath(_connection_file(argv or sys.argv[1:]))
    runtime_dir = settings.get("runtime_dir") or os.path.dirname(connection_file)
    if not settings.get("workdir"):  # behind a gateway: the host cannot name folders on this machine
        _require_private(runtime_dir, connection_file)
    workdir = settings.get("workdir") or os.path.join(runtime_dir, "work")
    transfer_dir = settings.get("transfer_dir") or os.path.join(runtime_dir, "transfer")
    for folder in (workdir, transfer_dir):
        os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chdir(workdir)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures as PNG displays

    isolation = apply_isolation(
        IsolationConfig(
            workdir=workdir,
            runtime_dir=runtime_dir,
            read_paths=list(settings.get("read_paths", [])),
            write_paths=[transfer_dir],
            network=bool(settings.get("network", False)),
            memory_bytes=settings.get("memory_bytes"),
            max_file_bytes=_file_cap(settings.get("max_file_bytes")),
            cpu_seconds=settings.get("cpu_seconds"),
            strict=bool(settings.get("strict", False)),
        )
    )
    if settings.get("cwd"):  # a folder it may read, not write: an exported notebook's (see _provisioner.py)
        os.chdir(settings["cwd"])
    if zygote:  # not a protection layer: how the kernel was started, next to what protects it
        isolation.active["zygote"] = zygote
    else:
        isolation.missing["zygote"] = not_forked

    # No debugger in the sandbox: debugpy listens on TCP and can attach to processes.
    sys.modules["debugpy"] = None  # type: ignore[assignment]
    from . import _kernel_side

    app = _kernel_app_class().instance()  # in a forked kernel: the zygote's, never initialized (see prepare)
    app.update_config(_kernel_config(parent_handle))
    app.initialize(argv if argv is not None else sys.argv[1:])
    app.kernel.announce_busy = bool(settings.get("announce_busy", settings.get("inline", False)))  # a gateway or a frontend
    _kernel_side.install(
        app.shell,
        imports=settings.get("imports", []),
        isolation=isolation,
        transfer_dir=transfer_dir,
        max_output=settings.get("max_output", 100_000),
        max_output_bytes=settings.get("max_output_bytes", 64 * 1024**2),
        inline=bool(settings.get("inline", False)),
        agent=bool(settings.get("agent", True)),
    )
    _wait_for_heartbeat(app)
    seal_unix_sockets(isolation, strict=bool(settings.get("strict", False)))
    app.start()


def _wait_for_heartbeat(app: Any, timeout: float = 5.0) -> None:
    """ipykernel's heartbeat thread binds its ipc socket on its own: let it, before unix sockets
    are sealed (it is bound long before `initialize` returns, but nothing promises it)."""
    if app.transport != "ipc":
        return
    path = f"{app.ip}-{app.hb_port}"
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.001)


class _NoShellChannelThread:
    """Stands in for ipykernel 7's shell-channel thread where there is none.

    Falsy like no thread; `parent_thread` is what ipykernel's async-cell path asks it for (the
    thread requests run on, where SIGINT can cancel them).
    """

    parent_thread = threading.main_thread()

    def __bool__(self) -> bool:
        return False


def prepare() -> None:
    """What a zygote does once for all the kernels it forks: build the kernel's classes and its
    application object (~2 ms of traitlets set-up; it holds no connection, socket or thread until a
    kernel initializes it), and fill the caches every kernel would otherwise fill on its first cell
    (~3 ms: the compiled regular expressions of IPython's input transformers and of the tokenizer)."""
    from IPython.core.inputtransformer2 import TransformerManager

    from ._isolation import prepare_isolation

    prepare_isolation()
    _kernel_app_class().instance()
    _out_stream_class()
    TransformerManager().transform_cell("total = sum(i * i for i in range(3))\nprint(total)\n")


@functools.cache
def _kernel_app_class() -> type[IPKernelApp]:
    """ipykernel's IPKernelApp with the round-trip trims described in the module docstring."""
    from ipykernel import ipkernel, kernelapp
    from ipykernel.iostream import IOPubThread
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelbase import _accepts_parameters
    from ipykernel.zmqshell import ZMQInteractiveShell
    from traitlets import Type

    class _IOPubThread(IOPubThread):
        """Without the TCP pipe ipykernel opens for forked children's output: nothing can fork here."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "pipe": False})

    kernelapp.IOPubThread = _IOPubThread  # type: ignore[misc]

    # ipykernel inspects do_execute's and run_cell's signatures on every request (~40 us): the
    # answer for a function never changes.
    accepts = functools.cache(lambda function, names: _accepts_parameters(function, list(names)))
    ipkernel._accepts_parameters = (
        lambda meth, names: accepts(getattr(meth, "__func__", meth), tuple(names))
    )

    class SandboxShell(ZMQInteractiveShell):
        _pending_transform: tuple[str, str] | None = None

        def should_run_async(self, raw_cell: str, **kwargs: Any) -> bool:
            # IPython answers by compiling the cell once more; code without the words cannot await.
            return ("await" in raw_cell or "async" in raw_cell) and super().should_run_async(raw_cell, **kwargs)

        def init_events(self) -> None:
            super().init_events()
            self.events.register("post_execute", self._forget_transform)

        def _forget_transform(self) -> None:
            self._pending_transform = None

        def transform_cell(self, raw_cell: str) -> str:
            # ipykernel transforms a cell to see whether it awaits, then IPython's run_cell
            # transforms it again (~0.1 ms each): the second call, for the same cell and with no
            # code run in between, takes the first one's result. Nothing outlives the execution.
            pending, self._pending_transform = self._pending_transform, None
            if pending is not None and pending[0] == raw_cell:
                return pending[1]
            cell = super().transform_cell(raw_cell)
            self._pending_transform = (raw_cell, cell)
            return cell

        def _format_user_obj(self, obj: Any) -> dict[str, Any]:
            # A str's formats are its repr alone; skipping the ten rich formatters saves ~0.1 ms on
            # every host call (they answer JSON text).
            if type(obj) is str:
                return {"status": "ok", "data": {"text/plain": repr(obj)}, "metadata": {}}
            return super()._format_user_obj(obj)

    class SandboxKernel(IPythonKernel):
        shell_class = Type(SandboxShell)

        @property
        def _supports_kernel_subshells(self) -> bool:
            return False

        announce_busy = True  # False for a kernel whose one client reads the reply and the idle status only

        def _publish_status(self, status: str, channel: str, parent: Any = None) -> None:
            # "busy" costs an IOPub message and a wake of the IOPub thread per request; our host
            # waits for the reply and "idle". A gateway tracks activity by status: it still gets both.
            if status != "busy" or self.announce_busy:
                super()._publish_status(status, channel, parent)

        def _publish_execute_input(self, code: str, parent: Any, execution_count: int) -> None:
            # The broadcast of each cell's code to other frontends: a sandbox has one client, which
            # sent the code itself. One IOPub message fewer per execution.
            pass

    class SandboxKernelApp(kernelapp.IPKernelApp):
        kernel_class = Type(SandboxKernel, klass=IPythonKernel)

        def parse_command_line(self, argv: Any = None) -> None:
            # traitlets builds an argparse parser over every configurable class to read the command
            # line (~6 ms of each kernel start). The kernelspec's is `-f <connection file>` alone, the
            # rest comes as config (_kernel_config): read that directly; any other line the full way.
            connection_file = _connection_file_alone(argv)
            if connection_file is None:
                super().parse_command_line(argv)
            else:
                self.argv = list(argv)
                self.connection_file = connection_file

        def init_control(self, context: Any) -> None:
            # Without the shell-channel thread a request is read where it runs: two thread hops
            # fewer per request.
            super().init_control(context)
            self.shell_channel_thread.io_loop.close()
            self.shell_channel_thread = None

        def init_kernel(self) -> None:
            super().init_kernel()
            self.kernel.shell_channel_thread = _NoShellChannelThread()
            # traitlets leaves the logger at DEBUG and filters in the handler: every debug call on
            # the request path would still build a record.
            self.log.setLevel(self.log_level)

    return SandboxKernelApp


@functools.cache
def _out_stream_class() -> type:
    from ipykernel.iostream import OutStream

    class SandboxOutStream(OutStream):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # Held from taking the written text to queueing its message, by both threads that flush.
            self._flushing = threading.Lock()
            super().__init__(*args, **kwargs)

        def _flush(self) -> None:  # also run by the IOPub thread, on its timer during long output
            with self._flushing:
                super()._flush()

        def flush(self) -> None:
            # ipykernel hands every flush (four per request) to the IOPub thread and waits for it.
            # Taking the written text here and queueing its message is enough: the IOPub thread
            # sends in queue order, so the output still goes out before the idle status queued
            # after it, and nothing waits. With nothing written there is nothing to do. The lock
            # covers a timed flush the IOPub thread may be in: it has taken text but not yet
            # queued it, and the idle status must not be queued first.
            with self._flushing:
                with self._buffer_lock:
                    written = any(buffer.tell() for buffer in self._buffers.values())
                if written or self._flush_pending:
                    super()._flush()

    return SandboxOutStream


def _out_stream(*args: Any, **kwargs: Any) -> Any:
    """The kernel's stdout/stderr factory (named by dotted path in the kernel's config)."""
    return _out_stream_class()(*args, **kwargs)


def _pack(obj: Any) -> bytes:
    """The kernel's message packer when orjson is installed: ~10x faster than jupyter_client's.

    Same JSON (dates through jupyter_client's own hook); what orjson refuses (an int beyond 64
    bits, say) goes to jupyter_client's packer. NaN becomes null where that packer would send the
    text "nan" with a deprecation warning.
    """
    try:
        return orjson.dumps(obj, default=json_default, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return json_packer(obj)


def _require_private(runtime_dir: str, connection_file: str) -> None:
    """The runtime dir becomes read-write for sandbox code: it must not hold other kernels' secrets."""
    own = os.path.basename(connection_file)
    others = [name for name in os.listdir(runtime_dir) if name.endswith(".json") and name != own]
    if others:
        raise SystemExit(
            f"agent-sandbox: refusing to start, the connection file's folder {runtime_dir} is shared with other "
            f"kernels ({len(others)} other connection files) and sandbox code could read their keys. Run the "
            "gateway with --KernelGatewayApp.kernel_manager_class="
            "agent_kernel.sandbox._gateway_server.SandboxMappingKernelManager (see docs/gateway.md)."
        )


def _connection_file_alone(argv: list[str] | None) -> str | None:
    """The connection file when the command line names it and nothing else (None: it says more)."""
    if argv is not None and len(argv) == 2 and argv[0] == "-f":
        return argv[1] or None
    if argv is not None and len(argv) == 1 and argv[0].startswith("--f="):
        return argv[0][4:] or None
    return None


def _connection_file(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "-f" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--f="):
            return arg[4:]
    return os.path.join(os.getcwd(), "kernel.json")


if __name__ == "__main__":
    main()
