"""A pre-imported parent process that forks sandbox kernels: a kernel start without the imports.

A sandbox kernel start used to cost ~0.37 s of CPU, three quarters of it importing ipykernel,
IPython, jupyter_client and zmq; a batch of runs, each with a fresh kernel, spent its cores on
that. The zygote imports those modules once and forks a child per kernel; the child then does what
`python -m agent_kernel.sandbox._launcher` does after its imports (every isolation layer, then the
trimmed ipykernel), so a kernel start costs its isolation and ipykernel's set-up alone (~0.05 s of
CPU), and the imported modules' pages are shared by all the kernels (bench/bench_many.py: USS).

Security:
- The control channel is one end of a socketpair inherited only by the zygote: no path, no
  abstract name. A child closes every descriptor but stdin/stdout/stderr before any of its own
  code runs, so sandbox code cannot reach the zygote (nor, through it, start a kernel). Its
  stdin is /dev/null and its stdout/stderr the pipe the host sent with the request (see
  _provisioner.py): nothing of the host's or the zygote's own stdio.
- The zygote is started with the isolation's environment allowlist and is sent no other variable:
  it holds no secret a child could find in its memory. It never reads a connection file; each
  child reads only its own.
- A child is a new session (its own process group), exactly as jupyter_client starts kernels.
  The zygote too, and it ignores SIGINT: Ctrl-C in a terminal, or a notebook's "interrupt kernel"
  (sent to the notebook kernel's process group), must not end every sandbox at once.
- The zygote stays single-threaded with no zmq context: fork copies one thread only.
- Children of one zygote share its str hash seed and its memory layout (address randomisation
  happens once per exec): a kernel learns no more about another than about itself, and neither
  the host nor the zygote is reachable from it. `random` reseeds itself in each child.

The host side (`spawn`) keeps one zygote per Python executable, reads its replies on a thread
(so any event loop may await a start) and reports each child's exit status as the zygote's
waitpid gives it. If the zygote dies, its kernels are killed (exit status -9), starts in flight
raise `ZygoteUnavailable` (the provisioner then starts those kernels the usual way) and the next
start gets a new zygote.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import AgentKernelError

SWITCH_ENV = "AGENT_KERNEL_ZYGOTE"  # "0": start every kernel by exec (an operator's way out)
LAUNCHER_MODULE = "agent_kernel.sandbox._launcher"
ZYGOTE_MODULE = "agent_kernel.sandbox._zygote"
# What the kernel imports: the launcher's modules and those its isolation and ipykernel's set-up
# import lazily.
_PRELOAD = (
    "agent_kernel.sandbox._launcher", "agent_kernel.sandbox._isolation", "agent_kernel.sandbox._kernel_side",
    "pyseccomp",
    "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.iostream",
    "IPython.core.completerlib", "IPython.core.debugger", "IPython.core.logger", "IPython.core.oinspect",
    "IPython.extensions.storemagic", "IPython.utils.wildcard", "ipykernel.debugger", "pdb", "pydoc",
    "faulthandler", "unicodedata",
    "tornado.gen", "tornado.locks", "tornado.platform.asyncio", "tornado.queues",
)  # fmt: skip
_MAX_MESSAGE = 1 << 20
_SPAWN_TIMEOUT = 60.0  # seconds for the zygote to fork a kernel (its own imports included, on a busy machine)


class ZygoteUnavailable(AgentKernelError, RuntimeError):
    """The zygote cannot start this kernel; the message says why (the caller starts it by exec)."""


# --- host side -----------------------------------------------------------------------------------


def usable(argv: list[str]) -> str | None:
    """Why a kernel command cannot be forked from a zygote (None: it can)."""
    if os.environ.get(SWITCH_ENV) == "0":
        return f"turned off ({SWITCH_ENV}=0)"
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return f"no fork-based zygote on {sys.platform}"
    if not hasattr(socket, "send_fds"):
        return "this Python cannot pass file descriptors over a unix socket"
    if argv[1:3] != ["-m", LAUNCHER_MODULE]:
        return f"the kernelspec's command is not `python -m {LAUNCHER_MODULE} ...`"
    return None


async def spawn(argv: list[str], env: Mapping[str, str], cwd: str, stdout: int, stderr: int) -> ZygoteChild:
    """Fork a kernel running `argv` (python -m launcher ...) from the zygote of argv[0], its
    stdout/stderr on the given descriptors (copies travel to the zygote; the caller keeps its own)."""
    started = _zygote_for(argv[0]).request(argv, env, cwd, (stdout, stderr))
    try:  # given up (a timeout, a cancelled start): the kernel, if it comes, is killed on arrival
        return await asyncio.wait_for(asyncio.wrap_future(started), _SPAWN_TIMEOUT)
    except asyncio.TimeoutError:
        raise ZygoteUnavailable(f"the zygote did not fork a kernel within {_SPAWN_TIMEOUT:g} s") from None


def sendable_env(env: Mapping[str, str]) -> dict[str, str]:
    """What of `env` may reach the zygote: the isolation's allowlist and the sandbox's settings.

    The kernel scrubs its environment to the same allowlist before sandbox code runs; dropping the
    rest here keeps other variables (a gateway's auth token) out of the zygote's memory altogether.
    """
    from ._isolation import env_allowed
    from ._spec import CONFIG_ENV, GATEWAY_CONFIG_ENV, LAUNCH_ENV

    kept = (CONFIG_ENV, GATEWAY_CONFIG_ENV, LAUNCH_ENV, "JPY_SESSION_NAME")
    return {k: v for k, v in env.items() if k in kept or env_allowed(k)}


@dataclass(eq=False)
class ZygoteChild:
    """A kernel forked by the zygote, with the part of `subprocess.Popen` a provisioner uses."""

    pid: int
    returncode: int | None = None
    stdin: None = None
    stdout: None = None
    stderr: None = None
    _pidfd: int | None = field(default=None, repr=False)
    _exit: concurrent.futures.Future[int] = field(default_factory=concurrent.futures.Future, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # the pidfd: used here, closed there

    def __post_init__(self) -> None:
        # A pidfd names this process for good: a signal can never reach a later one with its pid.
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # old kernel, or it already exited (its status follows)
            self._pidfd = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self._exit.result(timeout)
        except concurrent.futures.TimeoutError:
            raise subprocess.TimeoutExpired(f"sandbox kernel {self.pid}", timeout or 0) from None

    async def exited(self) -> int:
        """Its exit status, as soon as the zygote reports it (no polling)."""
        # shielded: a waiter that gives up must not cancel the future the reader thread sets
        return await asyncio.shield(asyncio.wrap_future(self._exit))

    def send_signal(self, signum: int) -> None:
        with self._lock, contextlib.suppress(ProcessLookupError):  # exited: its status is on the way
            if self.returncode is not None:
                return  # reaped: its pid may belong to another process by now
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _ended(self, status: int) -> None:
        with self._lock:
            self.returncode = status
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        self._exit.set_result(status)


class _Zygote:
    """The host's handle on one zygote process: start requests out, pids and exit statuses back."""

    def __init__(self, python: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [python, "-P", "-m", ZYGOTE_MODULE, str(theirs.fileno())],
                env=sendable_env(os.environ), pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, cwd="/",
                start_new_session=True,
            )
        self._sock = ours
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, concurrent.futures.Future[ZygoteChild]] = {}
        self._children: dict[int, ZygoteChild] = {}
        self.dead: str | None = None
        threading.Thread(target=self._read, name=f"agent-sandbox-zygote-{self.process.pid}", daemon=True).start()

    def request(self, argv: list[str], env: Mapping[str, str], cwd: str,
                fds: tuple[int, int]) -> concurrent.futures.Future[ZygoteChild]:
        future: concurrent.futures.Future[ZygoteChild] = concurrent.futures.Future()
        with self._lock:
            if self.dead is not None:
                raise ZygoteUnavailable(self.dead)
            ident = next(self._ids)
            self._pending[ident] = future
            message = {"id": ident, "argv": argv, "env": sendable_env(env), "cwd": cwd}
            try:
                socket.send_fds(self._sock, [json.dumps(message).encode()], list(fds))
            except OSError as exc:
                del self._pending[ident]
                raise ZygoteUnavailable(f"the zygote does not take requests ({exc})") from None
        return future

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(_MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                break
            try:
                self._handle(json.loads(data))
            except (ValueError, KeyError, TypeError):  # not our zygote's protocol: stop trusting it
                self.process.kill()
                break
        self._died()

    def _handle(self, message: dict[str, Any]) -> None:
        if "exited" in message:
            child = self._children.pop(message["exited"], None)
            if child is not None:
                child._ended(int(message["status"]))
            return
        with self._lock:
            future = self._pending.pop(message["id"])
        if "pid" in message:
            child = ZygoteChild(int(message["pid"]))
            self._children[child.pid] = child
            if future.set_running_or_notify_cancel():
                future.set_result(child)
            else:  # its start was given up: nobody would ever close it
                child.kill()
        elif future.set_running_or_notify_cancel():
            future.set_exception(ZygoteUnavailable(str(message["error"])))

    def _died(self) -> None:
        if self.process.poll() is None:  # its channel failed: a zygote nobody hears must not fork on
            self.process.kill()
        status = self.process.wait()
        with self._lock:
            self.dead = f"the zygote (pid {self.process.pid}) exited with status {status}"
            pending, self._pending = self._pending, {}
        self._sock.close()
        for future in pending.values():
            if future.set_running_or_notify_cancel():
                future.set_exception(ZygoteUnavailable(self.dead))
        # Nobody reports their exit any more: end them now, so none runs on unwatched.
        for child in self._children.values():
            child.kill()
            child._ended(-signal.SIGKILL)
        self._children.clear()


_zygotes: dict[tuple[int, str], _Zygote] = {}
_zygotes_lock = threading.Lock()


def _zygote_for(python: str) -> _Zygote:
    """This process's zygote for `python` (a forked host gets its own), restarted if it died."""
    key = (os.getpid(), python)
    with _zygotes_lock:
        zygote = _zygotes.get(key)
        if zygote is None or zygote.dead is not None:
            try:
                zygote = _zygotes[key] = _Zygote(python)
            except OSError as exc:
                raise ZygoteUnavailable(f"the zygote could not be started ({exc})") from None
    return zygote


# --- zygote side ---------------------------------------------------------------------------------


@dataclass
class _Order:
    """What a forked child was asked to run."""

    argv: list[str]
    env: dict[str, str]
    cwd: str


def main() -> None:
    """The zygote: preload, then fork one child per request until the host goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # see the module docstring; its kernels get it back
    sock = socket.socket(fileno=int(sys.argv[1]))
    sys.modules["debugpy"] = None  # type: ignore[assignment]  # as in the launcher: no debugger
    import importlib

    for name in _PRELOAD:
        with contextlib.suppress(ImportError, RuntimeError):  # optional ones: the kernel says what is missing
            importlib.import_module(name)
    from . import _launcher

    _launcher.prepare()
    # What exists now lives as long as the zygote: the kernels' garbage collections leave it (and
    # the pages it sits on) alone, rather than visit all of it and copy every page they touch.
    gc.freeze()
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise SystemExit(f"agent-sandbox zygote: {threads} threads after the imports; a fork would copy one")
    order = _serve(sock)
    if order is not None:  # in a forked child: become the kernel
        _become_kernel(order)


def _serve(sock: socket.socket) -> _Order | None:
    """Fork on each request; returns only in a child (its order) or when the host is gone (None)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up byte is the point
    while True:
        try:
            ready, _, _ = select.select([sock, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 4096)
            if not _reap(sock):
                return None
        if sock not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 2)
        except ConnectionResetError:  # the host exited with a request unread: as gone as an end of file
            return None
        if not data:
            return None
        request = json.loads(data)
        ident = request["id"]
        try:
            order = _Order(list(request["argv"]), dict(request["env"]), str(request["cwd"]))
            if len(fds) != 2:
                raise ValueError("a start request carries stdout and stderr")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
        except (ValueError, KeyError, TypeError, OSError) as exc:
            for fd in fds:
                os.close(fd)
            if not _send(sock, {"id": ident, "error": f"the zygote could not fork a kernel ({exc})"}):
                return None
            continue
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _keep_only_stdio(fds, sock)
            return order
        for fd in fds:
            os.close(fd)
        if not _send(sock, {"id": ident, "pid": pid}):
            return None


def _send(sock: socket.socket, message: dict[str, Any]) -> bool:
    """False when the host is gone."""
    try:
        sock.send(json.dumps(message).encode())
    except OSError:
        return False
    return True


def _reap(sock: socket.socket) -> bool:
    """Report every child that ended; False when the host is gone."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return True
        if not _send(sock, {"exited": pid, "status": os.waitstatus_to_exitcode(status)}):
            return False


def _keep_only_stdio(fds: list[int], sock: socket.socket) -> None:
    """In a child: stdin from /dev/null, stdout/stderr what the host sent, and no other descriptor at all."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    sock.detach()  # its number is closed below; the object must not close it again once reused
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def _become_kernel(order: _Order) -> None:
    from . import _launcher

    os.environ.clear()
    os.environ.update(order.env)
    os.environ["JPY_PARENT_PID"] = str(os.getppid())
    os.chdir(order.cwd)
    argv = order.argv[3:]
    sys.argv = [_launcher.__file__, *argv]
    # ipykernel exits when its parent, the zygote, goes (it read JPY_PARENT_PID at import, in the zygote).
    _launcher.main(argv, zygote=f"forked from a pre-imported zygote (pid {os.getppid()})", parent_handle=os.getppid())


if __name__ == "__main__":
    main()
