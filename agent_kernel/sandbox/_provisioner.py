"""How jupyter_client starts a sandbox kernel: the kernelspec's provisioner, and a faster ready check.

`SandboxProvisioner` is named in the kernelspec's metadata, so every KernelManager that starts the
kernelspec uses it: this package's local backend and a Jupyter Kernel Gateway alike. Everything but
the launch itself (connection file, ports, signals, kill, restart, polling) is jupyter_client's
LocalProvisioner, over the `ZygoteChild` that stands in for a Popen. Where the zygote cannot be
used, the kernel is started the usual way and the reason is logged and reported in the kernel's
`Isolation`.

A kernel gets nothing of this process's stdio, whatever the caller asks for: stdin is /dev/null,
stdout and stderr are one pipe that this process reads as it comes, keeping the last `_TAIL`
bytes (for the message of a kernel that fails to start) and dropping the rest. Inherited, the
host's descriptors let sandbox code read what the analyst types into a terminal, change its modes,
truncate a log file or write past every output cap; ipykernel keeps copies of them, so
redirecting inside the kernel would not do.

A kernel started without settings by a kernel manager that asks for TCP (a Jupyter server's,
nbclient's: anything that starts the plain kernelspec, as JupyterLab's Run All of an exported run
does) gets what this package's own backends set up themselves: a private 0700 folder for the
connection file and ipc sockets (the jupyter runtime folder it would share holds other kernels'
keys, and a kernel without network cannot be reached over TCP), removed with the kernel. It reads
its start folder (the notebook's: an export's saved inputs are there) but writes only its private
folder, may import anything, and is otherwise isolated as every sandbox kernel is. A start folder
that holds the home folder is not made readable (the kernel starts in its private folder instead
and says why in the log). The local backend and the gateway's SandboxKernelManager keep setting up
their own folders (ipc already): one mechanism for all three is not done yet.

`ReadyClient` is the local backend's kernel client: ready as soon as the kernel has answered,
without a heartbeat thread, on its kernel manager's zmq context.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
from queue import Empty
from typing import Any

import traitlets
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

from .._safe import clean_text
from . import _zygote
from ._spec import CONFIG_ENV, GATEWAY_CONFIG_ENV, LAUNCH_ENV

_KILL_GRACE = 5.0  # seconds a killed kernel gets to be reported gone (jupyter_client's own wait)
_ASK_AGAIN = 1.0  # seconds between kernel_info requests to a kernel that has not answered yet
_ASK_AGAIN_ANSWERED = 0.02  # ... and to one that has, while its status has not come on IOPub
_TAIL = 4096  # bytes of a kernel's output kept


class SandboxProvisioner(LocalProvisioner):
    """LocalProvisioner whose kernels are forked from a pre-imported zygote when possible."""

    _output: KernelOutput | None = None
    _private: pathlib.Path | None = None  # the folder made for a kernel of a TCP kernel manager
    _settings: str | None = None  # the settings it is given (it was started without any)
    process: Any  # a ZygoteChild stands in for the Popen when the kernel is forked
    pid: Any
    pgid: Any
    cwd: Any

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km: Any = self.parent
        given = kwargs.get("env")
        env = dict(os.environ if given is None else given)
        # Settings sent through a stock gateway (no policy checks them) get no folder: the launcher
        # refuses the shared runtime folder, as it always did.
        unset = CONFIG_ENV not in env and GATEWAY_CONFIG_ENV not in env
        if self._private is None and km is not None and km.transport == "tcp" and unset:
            self._private = pathlib.Path(tempfile.mkdtemp(prefix="agent-sandbox-"))  # 0700
            km.transport, km.ip = "ipc", str(self._private / "k")
            km.connection_file = str(self._private / "kernel.json")
            self._settings = json.dumps(self._standalone_settings(str(kwargs.get("cwd") or os.getcwd())))
        if self._settings is not None:  # again on a restart, whose kwargs are the first start's
            kwargs["env"] = {**_zygote.sendable_env(env), CONFIG_ENV: self._settings}
        return await super().pre_launch(**kwargs)

    def _standalone_settings(self, start: str) -> dict[str, Any]:
        """A kernel started from the plain kernelspec: reads its start folder, imports anything."""
        assert self._private is not None
        start = os.path.realpath(start)
        home = os.path.realpath(os.path.expanduser("~"))
        readable = os.path.isdir(start) and os.path.commonpath([start, home]) != start
        if not readable:
            self.log.warning("agent-sandbox: not letting the kernel read %s (not a folder, or it holds the "
                             "home folder): move the notebook into a folder of its own", start)
        folders = {name: str(self._private / name) for name in ("work", "transfer")}
        return {
            "runtime_dir": str(self._private), "workdir": folders["work"], "transfer_dir": folders["transfer"],
            "cwd": start if readable else folders["work"], "read_paths": [start] if readable else [],
            "imports": ["*"], "announce_busy": True,  # a Jupyter frontend shows the kernel's busy status
            "agent": False,  # no agent on the other side: the notebook's own final_answer (an export's) stays
        }

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        env = dict(kwargs.get("env") or os.environ)
        cwd = str(kwargs.get("cwd") or os.getcwd())
        self.close_output()  # a restart's new kernel: the old one's pipe is done with
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        self._output = KernelOutput(read_end)
        try:
            reason = _zygote.usable(cmd)
            if reason is None:
                try:
                    child = await _zygote.spawn(cmd, env, cwd, write_end, write_end)
                except _zygote.ZygoteUnavailable as exc:
                    reason = str(exc)
                else:
                    self.process, self.pid, self.pgid = child, child.pid, None  # signals go to its pidfd
                    self.cwd = pathlib.Path(cwd)
                    return self.connection_info
            self.log.warning("agent-sandbox: starting the kernel without the zygote: %s", reason)
            return await super().launch_kernel(cmd, **{
                **kwargs, "env": {**env, LAUNCH_ENV: reason},
                "stdin": subprocess.DEVNULL, "stdout": write_end, "stderr": write_end,
            })
        finally:
            os.close(write_end)  # the kernel holds the only other end: end of file when it exits

    def output(self) -> str:
        """The end of what the kernel wrote to its stdout/stderr, without control characters."""
        return self._output.text() if self._output is not None else ""

    def close_output(self) -> None:
        """Stop reading the kernel's output (safe to call from the kernel's loop only)."""
        if self._output is not None:
            self._output.close()
            self._output = None

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart)
        if not restart:
            self.close_output()
            if self._private is not None:  # off the event loop: other kernels' messages wait on it
                private, self._private = self._private, None
                await asyncio.to_thread(shutil.rmtree, private, ignore_errors=True)

    async def kill(self, restart: bool = False) -> None:
        # jupyter_client polls every 0.1 s after a kill until the kernel is gone: a SIGKILLed child
        # is gone within milliseconds, and the zygote says so.
        await super().kill(restart)
        child = self.process
        if isinstance(child, _zygote.ZygoteChild):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(child.exited(), _KILL_GRACE)

    async def wait(self) -> int | None:
        # LocalProvisioner polls every 0.1 s; the zygote reports the exit: a closing sandbox returns
        # as soon as its kernel is gone.
        child = self.process
        if isinstance(child, _zygote.ZygoteChild):
            status = await child.exited()
            self.process = None
            return status
        return await super().wait()


class KernelOutput:
    """The read end of a kernel's stdout/stderr pipe, read on this loop as it comes: the last `_TAIL`
    bytes kept, the rest dropped (a kernel that writes without end costs reads, not memory)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd
        self._tail = bytearray()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._read)

    def _read(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the kernel exited
            self.close()
            return
        self._tail += data[-_TAIL:]
        del self._tail[:-_TAIL]

    def text(self) -> str:
        if self._fd is not None:
            self._read()  # what it wrote just before it died
        return clean_text(self._tail.decode("utf-8", "replace")).strip()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if not self._loop.is_closed():
                self._loop.remove_reader(fd)
            os.close(fd)


class ReadyClient(AsyncKernelClient):
    """An AsyncKernelClient whose wait_for_ready returns once the kernel has answered on both channels.

    jupyter_client's checks the same (a kernel_info reply on shell, then a message on IOPub: a
    subscriber misses what is published before it is connected, and a just-started client often
    is not yet), but asks again only every 1 s and then waits for 0.2 s of IOPub silence, on every
    kernel start. Here a kernel that has answered is asked again every 20 ms until the idle status
    of one of the requests arrives on IOPub, which proves it connected. Messages left over answer
    other requests and are ignored by the sandbox's reader.
    """

    @traitlets.default("context")
    def _context_default(self) -> zmq.asyncio.Context:
        # The kernel manager's context: one zmq I/O thread for all of this process's sandboxes, which
        # retries connecting every 10 ms. A context of the client's own (jupyter_client's default)
        # costs two threads per sandbox and retries every 100 ms: a kernel that binds its sockets
        # just after the client connects was found ~0.1 s late.
        context = getattr(self.parent, "context", None)
        return context if isinstance(context, zmq.asyncio.Context) else super()._context_default()

    def start_channels(self, shell: bool = True, iopub: bool = True, stdin: bool = True, hb: bool = False,
                       control: bool = True) -> None:
        # No heartbeat (a thread and a socket per sandbox, pinging every 3 s): whether the kernel
        # lives is asked of its KernelManager, whose provisioner knows its exit.
        super().start_channels(shell=shell, iopub=iopub, stdin=stdin, hb=hb, control=control)

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        poller = zmq.asyncio.Poller()
        for channel in (self.shell_channel, self.iopub_channel):
            poller.register(channel.socket, zmq.POLLIN)
        asked: set[str] = {self.kernel_info()}
        replied: set[str] = set()
        idle: set[str] = set()
        next_ask = time.monotonic() + _ASK_AGAIN
        while not replied & idle:
            now = time.monotonic()
            if now >= deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")
            if now >= next_ask:
                if not await self._async_is_alive():
                    raise RuntimeError("Kernel died before replying to kernel_info")
                asked.add(self.kernel_info())
                next_ask = now + (_ASK_AGAIN_ANSWERED if replied else _ASK_AGAIN)
            await poller.poll(1000 * max(0.0, min(next_ask, deadline) - now))
            for msg in await _waiting(self.shell_channel):
                if msg["parent_header"].get("msg_id") in asked:
                    replied.add(msg["parent_header"]["msg_id"])
                    next_ask = min(next_ask, time.monotonic() + _ASK_AGAIN_ANSWERED)
            for msg in await _waiting(self.iopub_channel):
                if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                    idle.add(msg["parent_header"].get("msg_id"))


async def _waiting(channel: Any) -> list[dict[str, Any]]:
    """The messages already waiting on a channel."""
    messages = []
    while True:
        try:
            messages.append(await channel.get_msg(timeout=0))
        except Empty:
            return messages
