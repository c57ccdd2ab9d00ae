"""The host side of a sandbox: start the restricted kernel, run code in it, move values in and out.

One AsyncSandbox owns one kernel. Where that kernel runs is its backend's business: locally
(`_local.LocalBackend`: a process started by jupyter_client over ipc transport in a private 0700
directory, its channels read straight off the zmq sockets) or on a Jupyter Kernel/Enterprise
Gateway (`_gateway.GatewayBackend`: REST and the channels websocket). Everything else (Execution
records, timeouts, restarts, host functions, value transfers) is here, shared. Every reply from the
kernel is untrusted: it is parsed as JSON or decoded by the codec, never unpickled.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import itertools
import json
import math
import os
import shutil
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import _aio
from .._safe import clean_text
from . import _codec, _disk, _messages
from ._base import Backend, SandboxError, SandboxOptions, parse_size
from ._disk import DiskWatch
from ._kernel_side import CALL_MARKER, CUT_MARK, DROP_MARK, FINAL_ANSWER_PAYLOAD, HANDLE, HeadTail
from ._local import LocalBackend
from ._records import Execution, ExecutionError, Isolation
from ._spec import gateway_url
from ._transfer import Transfer

_UNSAFE_MIME = ("application/javascript", "text/javascript", "application/x-javascript")
_OWN_FRAMES = ("File " + str(Path(__file__).parent),)  # the sandbox's own frames, noise in a traceback
_FREE_SPACE = "Delete files from the working directory, or give the sandbox a larger disk= cap"
_MAX_VARIABLES = 10_000  # variables one listing shows
_MAX_PREVIEW = 1000  # characters of a variable's name, and of its preview, in a listing
_INTERRUPT_GRACE = 1.5  # seconds a timed-out execution gets to stop after SIGINT before a restart


class _Outputs:
    """Collects one execution's outputs in nbformat form within bounds: printed text to its head and
    tail, other outputs to `max_bytes` and MAX_OUTPUT_ITEMS held at once. What is cut or dropped
    is said in a note at the end."""

    def __init__(self, max_chars: int, max_bytes: int) -> None:
        self.items: list[dict[str, Any]] = []
        self.error: ExecutionError | None = None
        self._text = HeadTail(max_chars)
        self._max_bytes = max_bytes
        self._held = 0  # estimated host bytes of the items held (streams are bounded by _text)
        self._dropped: dict[str, int] = {}  # why -> how many messages

    def add(self, msg_type: str, content: dict[str, Any], size: int) -> None:
        """Take one checked iopub message (`_messages.check`) of `size` estimated host bytes."""
        if msg_type == "stream":
            head = self._text.add(content["name"], content["text"])
            if head:
                self._append_stream(content["name"], head)
            return
        if msg_type == "clear_output":
            self.items.clear()
            self._held = 0
            return
        if len(self.items) >= _messages.MAX_OUTPUT_ITEMS:
            return self.drop(f"over the {_messages.MAX_OUTPUT_ITEMS} outputs an execution may hold")
        if self._held + size > self._max_bytes:
            return self.drop(f"over the {_disk.mib(self._max_bytes)} of outputs an execution may hold (max_output_bytes)")
        self._held += size
        if msg_type in ("display_data", "update_display_data", "execute_result"):
            data = {k: v for k, v in content["data"].items() if k not in _UNSAFE_MIME}
            out = {"output_type": "display_data" if msg_type != "execute_result" else msg_type, "data": data,
                   "metadata": content["metadata"]}
            if msg_type == "execute_result":
                out["execution_count"] = content["execution_count"]
            self.items.append(out)
        elif msg_type == "error":
            tb = [clean_text(line) for line in content["traceback"]]
            tb = [line for line in tb if not line.lstrip().startswith(_OWN_FRAMES)]
            name, value = clean_text(content["ename"]), clean_text(content["evalue"])
            self.items.append({"output_type": "error", "ename": name, "evalue": value, "traceback": tb})
            self.error = ExecutionError(name, value, "\n".join(tb))

    def drop(self, why: str) -> None:
        """Count a message not kept, to be said at the end."""
        self._dropped[why] = self._dropped.get(why, 0) + 1

    def _append_stream(self, name: str, text: str) -> None:
        last = self.items[-1] if self.items else None
        if last and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self.items.append({"output_type": "stream", "name": name, "text": text})

    def finish(self) -> bool:
        """Append the kept tail and the notes; True when something was cut or dropped (here, or
        already in the kernel)."""
        note, tail = self._text.finish()
        if note:
            self._append_stream(tail[0][0] if tail else "stdout", note)
        for name, text in tail:
            self._append_stream(name, text)
        for why, count in self._dropped.items():
            self._append_stream("stderr", f"\n[... {count} message{'s' * (count > 1)} {DROP_MARK} {why}]\n")
        return note is not None or any(
            o["output_type"] == "stream" and (CUT_MARK in o["text"] or DROP_MARK in o["text"]) for o in self.items
        )


def _release(backend: Backend, root: Path, keep_workdir: bool) -> None:
    """The finalizer of a sandbox dropped without `aclose()`: what is safe from any thread, at any
    time (a garbage collection, the interpreter's exit). A gateway's kernel is left to the
    gateway, which culls idle kernels."""
    if isinstance(backend, LocalBackend):
        backend.abandon()
    if not keep_workdir:
        shutil.rmtree(root, ignore_errors=True)


def _make_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="agent-sandbox-"))
    root.chmod(0o711)  # traversable, not listable: lets the kernel drop to an unprivileged uid
    # Outside the workdir: sandbox code may write files in it but cannot swap it for a symlink.
    (root / "transfer").mkdir()
    return root


class AsyncSandbox:
    """A restricted Python kernel for untrusted code. Use `async with AsyncSandbox(...) as sb`.

    `gateway="http://host:8888"` (or $JUPYTER_GATEWAY_URL) runs the kernel on a Jupyter
    Kernel/Enterprise Gateway instead of this machine, with `token` (or $JUPYTER_GATEWAY_AUTH_TOKEN).
    """

    def __init__(
        self,
        *,
        imports: Iterable[str] = (),
        timeout: float = 30.0,
        memory: int | str | None = "2GB",
        disk: int | str | None = "4GB",
        network: bool = False,
        read_paths: Iterable[str | os.PathLike[str]] = (),
        strict: bool = False,
        max_output: int = 100_000,
        max_output_bytes: int | str = _messages.MAX_OUTPUT_BYTES,
        max_transfer: int | str = "2GB",
        keep_workdir: bool = False,
        gateway: str | None = None,
        token: str | None = None,
    ) -> None:
        """Args:
            imports: modules sandbox code may import beyond the defaults ("*": any installed one).
            timeout: seconds one execution may run before it is interrupted (restarted if it does not stop).
            memory: the kernel's memory cap (bytes or "2GB"); None: no cap.
            disk: the cap on what the sandbox's folders hold together (bytes or "4GB"); None: no cap.
            network: let sandbox code use the network.
            read_paths: host files and folders sandbox code may read (read-only).
            strict: refuse to start when an isolation layer cannot be applied (else it is reported missing).
            max_output: characters of printed output kept per execution (head and tail).
            max_output_bytes: host bytes of displays, results and errors kept per execution (bytes or "64MB").
            max_transfer: host bytes the values of one pull, final answer or host call may take (bytes or "2GB").
            keep_workdir: leave the working folder behind on close (to look at what the code wrote).
            gateway: a Jupyter Kernel/Enterprise Gateway's URL to run the kernel on; None: $JUPYTER_GATEWAY_URL,
                else this machine.
            token: the gateway's token; None: $JUPYTER_GATEWAY_AUTH_TOKEN.
        """
        self.options = SandboxOptions(
            imports=tuple(imports), timeout=timeout, memory=memory, disk=disk, network=network,
            read_paths=tuple(str(p) for p in read_paths), strict=strict, max_output=max_output,
            max_output_bytes=max_output_bytes, max_transfer=max_transfer, keep_workdir=keep_workdir,
            gateway=gateway_url(gateway), token=token,
        )
        parse_size(memory)  # fail now on a bad size, not in the kernel
        self._max_output_bytes = parse_size(max_output_bytes, "max_output_bytes") or 0
        self._max_transfer = parse_size(max_transfer, "max_transfer") or 0
        self._disk_cap = parse_size(disk, "disk")
        self.isolation = Isolation()
        self._backend = _backend_for(self.options)
        self._root: Path | None = None
        self._transfer: Transfer | None = None
        self._disk: DiskWatch | None = None
        self._finalizer: weakref.finalize | None = None  # kills the kernel of a sandbox dropped unclosed
        self._starting: asyncio.Task[None] | None = None
        self._functions: dict[str, Callable[..., Any]] = {}
        self._lock = asyncio.Lock()
        self._stopped: str | None = None  # why the disk watch restarted the kernel, for the next execute

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._root is None:
            raise SandboxError("the sandbox is not started")
        if self._backend.workdir is None:
            raise SandboxError("this sandbox's working directory is on the gateway's machine, not this one")
        return self._backend.workdir

    async def start(self) -> AsyncSandbox:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._boot())
        await self._starting
        return self

    @property
    def _transfers(self) -> Transfer:
        """The transfer path (made when the sandbox starts; every caller starts it first)."""
        if self._transfer is None:
            raise SandboxError("the sandbox is not started")
        return self._transfer

    async def _boot(self) -> None:
        # Folder work off the event loop: on a slow disk a few ms each, and many sandboxes share the loop.
        self._root = await asyncio.to_thread(_make_root)
        self._finalizer = weakref.finalize(self, _release, self._backend, self._root, self.options.keep_workdir)
        transfer_dir = self._root / "transfer"
        self._transfer = Transfer(transfer_dir, inline=self._backend.inline)
        if self._disk_cap is not None and not self._backend.inline:  # a gateway's kernel keeps its files there
            self._disk = DiskWatch(self._root, self._disk_cap, self._lock)
        try:
            await self._backend.start(self._root, self.options)
            await self._connect()
        except Exception as exc:
            await self.aclose()
            raise SandboxError(f"the sandbox kernel failed to start: {exc}") from exc
        if self._disk is not None:
            self._disk.watch(self._stop_writes)

    async def _connect(self) -> None:
        try:
            await self._backend.connect(self.options.startup_timeout)
        except SandboxError as exc:
            raise SandboxError(f"{exc}; strict={self.options.strict}") from exc
        iso = await self._evaluate(f"{HANDLE}.isolation()", locked=True)
        self.isolation = Isolation(active=iso["active"], missing=iso["missing"])
        if self._disk is not None:
            self.isolation.active["disk"] = (
                f"the folders' total capped at {_disk.mib(self._disk.cap)}, measured by the host every "
                f"{_disk.EVERY:g} s while the kernel lives (a file never exceeds the cap; the total can, briefly)"
            )
        else:
            self.isolation.missing["disk"] = (
                "the kernel's folders are on the gateway's machine: capping them is its job"
                if self._backend.inline else "disk=None: the folders' total is not capped"
            )
        if self._functions:
            await self._register_stubs(self._functions, locked=True)

    async def aclose(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._disk is not None:
            self._disk.stop()
        if self._starting is not None:
            self._starting = None
            await self._backend.aclose()
        if self._root is not None and not self.options.keep_workdir:
            await _aio.to_thread(shutil.rmtree, self._root, ignore_errors=True)

    async def __aenter__(self) -> AsyncSandbox:
        return await self.start()

    async def close(self) -> None:
        """Deprecated: `await sb.aclose()` (coroutines are aclose(), as everywhere in agent_kernel)."""
        warnings.warn("AsyncSandbox.close() is deprecated: use `await sandbox.aclose()`", DeprecationWarning,
                      stacklevel=2)
        await self.aclose()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _restart(self) -> None:
        """Replace a dead or hung kernel; the working directory survives, variables do not."""
        await self._backend.restart()
        await self._connect()

    async def _stop_writes(self, over: str) -> None:
        """The folders grew over the disk cap while no code ran (see _disk.py): restart the kernel
        now; the next execute says so."""
        if self._lock.locked():
            return  # an execution began meanwhile: its own measures see the cap
        async with self._lock:
            why = f"{over} while no code ran (something the code started went on writing)"
            try:
                await self._restart()
            except (SandboxError, RuntimeError, OSError) as exc:
                why += f"; the sandbox could not be restarted ({exc})"
            self._stopped = f"{why}: the sandbox was restarted, its variables were lost and this code was not run"

    # -- running code ---------------------------------------------------------------------------
    async def execute(self, code: str, timeout: float | None = None) -> Execution:
        """Run `code`; outputs, errors and a final answer come back in the Execution."""
        execution, reply = await self._run(code, {}, timeout=timeout)
        budget = _codec.Budget(self._max_transfer)
        for payload in reply.get("payload", ()):
            if payload.get("source") == FINAL_ANSWER_PAYLOAD:
                try:
                    execution.final_answer = self._decode(payload.get("final"), budget)
                except SandboxError as exc:  # the code learns why, and can answer with less
                    execution.error = execution.error or ExecutionError("FinalAnswerRefused", str(exc))
                else:
                    execution.has_final_answer = True
        return execution

    async def _run(
        self, code: str, user_expressions: dict[str, str], timeout: float | None, silent: bool = False
    ) -> tuple[Execution, dict[str, Any]]:
        await self.start()
        async with self._lock:
            if self._stopped is not None and not silent:
                stopped, self._stopped = self._stopped, None
                error = ExecutionError("DiskLimitError", f"{stopped}. {_FREE_SPACE}")
                return Execution(code=code, error=error, restarted=True), {}
            try:
                return await self._exchange(code, user_expressions, timeout, silent)
            except asyncio.CancelledError:  # the caller gave up (an interrupted agent): stop the code too
                await asyncio.shield(self._backend.interrupt())
                raise

    async def _exchange(
        self, code: str, user_expressions: dict[str, str], timeout: float | None, silent: bool
    ) -> tuple[Execution, dict[str, Any]]:
        """One execute_request, answered; the caller holds the lock (or is starting the kernel)."""
        started = time.perf_counter()
        limit = self.options.timeout if timeout is None else timeout
        outputs = _Outputs(self.options.max_output, self._max_output_bytes)
        execution = Execution(code=code)
        if self._disk is not None:
            self._disk.began()
        msg_id = await self._backend.execute(code, silent, user_expressions)
        outcome, reply = await self._collect(msg_id, outputs, started + limit, started)
        if outcome == "done" and self._disk is not None and (over := self._disk.over_since(started)):
            outputs.error = _with_notice(outputs.error, f"{over}. {_FREE_SPACE}")
        elif outcome not in ("done", "dead"):
            name, why, advice = (
                ("TimeoutError", f"the code ran longer than {limit:g} s and", "")
                if outcome == "timeout" else ("DiskLimitError", f"{outcome}, and the code", f". {_FREE_SPACE}")
            )
            await self._backend.interrupt()
            outcome, reply = await self._collect(msg_id, outputs, time.perf_counter() + _INTERRUPT_GRACE)
            if outcome == "done" and outputs.error is not None and outputs.error.name != "KeyboardInterrupt":
                # it ended on an error of its own before the interrupt landed: that error, with the notice
                outputs.error = _with_notice(outputs.error, f"{why} was stopped; variables are kept{advice}")
            elif outcome == "done":
                outputs.error = ExecutionError(name, f"{why} was interrupted; variables are kept{advice}")
            else:
                outputs.error = ExecutionError(
                    name,
                    f"{why} did not stop when interrupted; the sandbox was restarted and its variables were lost{advice}",
                )
                execution.restarted = True
        if outcome == "dead":
            status = await self._backend.exit_status()
            outputs.error = ExecutionError(
                "SandboxDied",
                f"the sandbox kernel died (exit status {status}; out of memory or a crash); "
                "it was restarted and its variables were lost",
            )
            execution.restarted = True
        if execution.restarted:
            await self._restart()
        execution.truncated = outputs.finish()
        execution.outputs = outputs.items
        execution.error = outputs.error
        if execution.error is None and reply.get("status") == "error":
            execution.error = ExecutionError(reply.get("ename", "Error"), reply.get("evalue", ""))
        execution.duration = time.perf_counter() - started
        return execution, reply

    async def _collect(
        self, msg_id: str, outputs: _Outputs, deadline: float, watched_since: float = math.inf
    ) -> tuple[str, dict[str, Any]]:
        """Read the kernel's messages for `msg_id` until its reply and idle status.

        The outcome: "done", "timeout", "dead", or what a measure of the disk watch begun at or after
        `watched_since` found over the cap.
        """
        backend = self._backend
        reply: dict[str, Any] | None = None
        idle = False
        while True:
            for msg in backend.drain(msg_id):
                try:
                    content = _messages.check(msg)
                except _messages.Malformed as exc:
                    outputs.drop(f"a malformed {msg.msg_type[:40]!r} on {msg.channel} ({exc})")
                    continue
                if content is _messages.IGNORED:
                    continue
                if msg.channel == "iopub":
                    if msg.msg_type == "status":
                        idle = content["execution_state"] == "idle"
                    else:
                        outputs.add(msg.msg_type, content, msg.size)
                elif msg.channel == "shell":
                    reply = content
                else:
                    await backend.input(await self._answer_input(content["prompt"], deadline - time.perf_counter()))
            if reply is not None and idle:
                return "done", reply
            if self._disk is not None and (over := self._disk.over_since(watched_since)):
                return over, reply or {}
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return "timeout", reply or {}
            if not await backend.wait(min(remaining, _disk.EVERY)) and not await backend.is_alive():
                return "dead", {}

    # -- host functions -------------------------------------------------------------------------
    async def register_function(self, name: str, fn: Callable[..., Any], doc: str | None = None) -> None:
        """Make `name(...)` in sandbox code call `fn` in this process (arguments cross by the codec)."""
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a Python identifier")
        self._functions[name] = fn
        if self._starting is not None:
            await self._register_stubs({name: fn}, doc)

    async def _register_stubs(
        self, functions: dict[str, Callable[..., Any]], doc: str | None = None, locked: bool = False
    ) -> None:
        docs = {name: doc or (fn.__doc__ or "") for name, fn in functions.items()}
        await self._evaluate(f"{HANDLE}.register({json.dumps(json.dumps(docs))})", locked=locked)

    async def _answer_input(self, prompt: str, time_left: float) -> str:
        if not prompt.startswith(CALL_MARKER):
            return ""  # plain input(): there is no one to type an answer
        try:
            request = json.loads(prompt[len(CALL_MARKER) :])
            fn = self._functions[request["name"]]
            budget = _codec.Budget(self._max_transfer)  # all the arguments of this call together
            args = [self._decode(d, budget) for d in request["args"]]
            kwargs = {k: self._decode(d, budget) for k, d in request["kwargs"].items()}
            if asyncio.iscoroutinefunction(fn):
                call = fn(*args, **kwargs)
            else:
                call = asyncio.to_thread(fn, *args, **kwargs)
            result = await asyncio.wait_for(call, max(time_left, 0.001))
            return json.dumps({"ok": self._transfers.encode(result, f"{request['name']}_result")})
        except asyncio.TimeoutError:
            return json.dumps({"error": "the host function did not return before the execution timeout"})
        except Exception as exc:  # reported to the sandbox code as HostFunctionError
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})

    # -- values ---------------------------------------------------------------------------------
    async def push(self, **values: Any) -> None:
        """Bind `values` as variables in the sandbox."""
        await self.start()
        descriptors = {name: self._transfers.encode(v, name) for name, v in values.items()}
        try:
            await self._evaluate(f"{HANDLE}.load({json.dumps(json.dumps(descriptors))})")
        finally:  # whatever the kernel did not consume must not linger in the transfer folder
            for descriptor in descriptors.values():
                self._transfers.cleanup(descriptor)

    async def pull(self, names: Iterable[str]) -> dict[str, Any]:
        """Copy sandbox variables out. Raises KeyError naming any that do not exist."""
        names = list(names)
        answer = await self._evaluate(f"{HANDLE}.dump({json.dumps(json.dumps(names))})")
        if not isinstance(answer, dict) or not isinstance(answer.get("values"), dict) or not isinstance(
            answer.get("missing", []), list
        ):
            raise SandboxError("the sandbox answered a pull with something malformed")
        budget = _codec.Budget(self._max_transfer)  # all the names of this pull together
        try:
            said_missing = {name for name in answer.get("missing", []) if isinstance(name, str)}
            missing = [name for name in names if name in said_missing]
            if missing:
                raise KeyError(f"not defined in the sandbox: {', '.join(missing)}")
            return {name: self._decode(answer["values"].get(name), budget) for name in names}
        finally:  # what was not decoded must not linger in the transfer folder
            for descriptor in answer["values"].values():
                with contextlib.suppress(_codec.TransferError):  # a bad name names no file of ours
                    self._transfers.cleanup(descriptor)

    async def variables(self) -> dict[str, str]:
        """The sandbox's variables, each with a short preview (type, shape, columns): at most
        _MAX_VARIABLES of them, names and previews cut to _MAX_PREVIEW characters."""
        listing = await self._evaluate(f"{HANDLE}.variables()")
        if not isinstance(listing, dict) or not all(isinstance(v, str) for v in listing.values()):
            raise SandboxError("the sandbox answered a variable listing with something malformed")
        shown = dict(itertools.islice(listing.items(), _MAX_VARIABLES))
        if len(listing) > _MAX_VARIABLES:
            shown["…"] = f"{len(listing) - _MAX_VARIABLES} more variables not listed"
        return {name[:_MAX_PREVIEW]: preview[:_MAX_PREVIEW] for name, preview in shown.items()}

    def _decode(self, descriptor: Any, budget: _codec.Budget) -> Any:
        try:
            return self._transfers.decode(descriptor, budget=budget)
        except _codec.TransferError as exc:
            raise SandboxError(f"a value from the sandbox was refused: {exc}") from None

    async def _evaluate(self, expression: str, *, locked: bool = False) -> Any:
        """Evaluate one of the kernel side's own calls; it answers JSON text, parsed here.

        `locked`: the caller already holds the lock (a restart inside an execution, or the start).
        """
        run = self._exchange if locked else self._run
        execution, reply = await run("", {"r": expression}, self.options.startup_timeout, True)
        try:
            return _expression_value(reply, "r", self._backend.max_reply)
        except SandboxError as exc:
            raise SandboxError(f"sandbox call {expression.split('(')[0]} failed: {execution.error or exc}") from None


def _with_notice(error: ExecutionError | None, notice: str) -> ExecutionError:
    """The code's own error with `notice` added, or a DiskLimitError saying it."""
    if error is None:
        return ExecutionError("DiskLimitError", notice)
    return ExecutionError(error.name, f"{error.value}\n{notice}", f"{error.traceback}\n{notice}" if error.traceback else "")


def _backend_for(options: SandboxOptions) -> Backend:
    if options.gateway is None:
        return LocalBackend()
    from ._gateway import GatewayBackend

    return GatewayBackend(options.gateway, options.token)


def _expression_value(reply: dict[str, Any], key: str, limit: int) -> Any:
    """The JSON value of a user expression in an execute_reply: a literal str, never evaluated, and
    parsed only if it takes at most `limit` bytes parsed."""
    result = reply.get("user_expressions", {}).get(key, {})  # shaped by _messages.check
    if result.get("status") != "ok":
        raise SandboxError(f"{str(result.get('ename'))[:200]}: {str(result.get('evalue'))[:2000]}")
    try:
        text = ast.literal_eval(result["data"]["text/plain"])
        if not isinstance(text, str):
            raise ValueError("not text")
        if (cost := _codec.json_cost(text)) > limit:
            raise ValueError(_messages.too_big(cost))
        return json.loads(text)
    except (KeyError, TypeError, ValueError, SyntaxError, RecursionError) as exc:
        raise SandboxError(f"the sandbox answered an internal call with something malformed ({exc})") from None


class Sandbox:
    """Synchronous face of AsyncSandbox, for scripts and notebook cells. Starts on construction."""

    def __init__(self, **options: Any) -> None:
        """Args:
            **options: AsyncSandbox's (imports, timeout, memory, disk, network, read_paths, ...).
        """
        self._async = AsyncSandbox(**options)
        _aio.run_sync(self._async.start())

    @classmethod
    def _wrap(cls, started: AsyncSandbox) -> Sandbox:
        sandbox = cls.__new__(cls)
        sandbox._async = started
        return sandbox

    def as_async(self) -> AsyncSandbox:
        """The AsyncSandbox behind this one (the same kernel), for async code such as the agents."""
        return self._async

    @property
    def options(self) -> SandboxOptions:
        return self._async.options

    @property
    def isolation(self) -> Isolation:
        return self._async.isolation

    @property
    def workdir(self) -> Path:
        return self._async.workdir

    def execute(self, code: str, timeout: float | None = None) -> Execution:
        return _aio.run_sync(self._async.execute(code, timeout))

    def push(self, **values: Any) -> None:
        _aio.run_sync(self._async.push(**values))

    def pull(self, names: Iterable[str]) -> dict[str, Any]:
        return _aio.run_sync(self._async.pull(names))

    def variables(self) -> dict[str, str]:
        return _aio.run_sync(self._async.variables())

    def register_function(self, name: str, fn: Callable[..., Any], doc: str | None = None) -> None:
        _aio.run_sync(self._async.register_function(name, fn, doc))

    def close(self) -> None:
        _aio.run_sync(self._async.aclose())

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
