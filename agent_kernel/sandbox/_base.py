"""The backend interface, as jupyter_client's provisioner base: what a sandbox needs of the place its
kernel runs (`Backend`), the options a sandbox is made with, and the error it raises.

Each backend imports only this module: `_local` (a kernel process on this machine) and `_gateway`
(a kernel on a Jupyter Kernel Gateway); the facade (`_client`) chooses one and holds the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import AgentKernelError
from . import _messages
from ._messages import Message
from ._records import Execution, Isolation


class SandboxError(AgentKernelError, RuntimeError):
    """The sandbox could not do what was asked (it failed to start, or an internal call failed)."""


@dataclass(frozen=True)
class SandboxOptions:
    """How a sandbox is made: AsyncSandbox's arguments, checked and normalised.

    Args:
        imports, timeout, memory, disk, network, read_paths, strict, max_output, max_output_bytes,
            max_transfer, keep_workdir, gateway, token: as AsyncSandbox's (see its Args).
        startup_timeout: seconds a kernel may take to start and answer.
    """

    imports: tuple[str, ...] = ()
    timeout: float = 30.0
    memory: int | str | None = "2GB"
    disk: int | str | None = "4GB"  # the sandbox's folders in total (local sandboxes: see _disk.py)
    network: bool = False
    read_paths: tuple[str, ...] = ()
    strict: bool = False
    max_output: int = 100_000  # characters of printed output kept per execution (head and tail)
    max_output_bytes: int | str = _messages.MAX_OUTPUT_BYTES  # host bytes of displays, results, errors per execution
    max_transfer: int | str = "2GB"  # host bytes the values of one pull, final answer or host call may take
    keep_workdir: bool = False
    startup_timeout: float = 60.0
    gateway: str | None = None  # a Jupyter Kernel/Enterprise Gateway's URL; None: a local kernel
    token: str | None = field(default=None, repr=False)

    def launcher_settings(self, root: Path | None) -> dict[str, Any]:
        """The kernel's settings; without `root` (a remote kernel) it picks its own folders."""
        memory, disk = parse_size(self.memory), parse_size(self.disk, "disk")
        folders = {} if root is None else {
            "workdir": str(root / "work"), "runtime_dir": str(root / "run"), "transfer_dir": str(root / "transfer"),
            **({"max_file_bytes": disk} if disk is not None else {}),  # no file bigger than the folders' cap
        }
        return {
            **folders,
            "inline": root is None,
            "max_output": self.max_output,
            "max_output_bytes": parse_size(self.max_output_bytes, "max_output_bytes"),
            "read_paths": [str(Path(p).expanduser().resolve()) for p in self.read_paths],
            "network": self.network,
            "memory_bytes": memory,
            "strict": self.strict,
            "imports": list(self.imports),
        }


def parse_size(size: int | str | None, option: str = "memory") -> int | None:
    if size is None or isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", size.lower())
    if not match:
        raise ValueError(f"{option}={size!r} is not a size; use bytes or a string like '512MB' or '2GB'")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit or " "))


class Backend(Protocol):
    """Where the kernel runs and how its messages travel. AsyncSandbox holds all the rest."""

    inline: bool  # True: no folder is shared with the kernel, payloads travel inside the messages
    workdir: Path | None  # the kernel's working directory, when it is on this machine
    max_reply: int  # host bytes a reply may take parsed (its inline payloads included)

    async def start(self, root: Path, options: SandboxOptions) -> None:
        """Create the kernel (`root`: this sandbox's private folder here)."""

    async def connect(self, timeout: float) -> None:
        """Open the channels and wait until the kernel answers."""

    async def execute(self, code: str, silent: bool, user_expressions: dict[str, str]) -> str:
        """Send an execute_request; its msg_id."""

    async def input(self, text: str) -> None:
        """Answer the kernel's input_request."""

    def drain(self, msg_id: str) -> list[Message]:
        """The messages waiting now: replies and outputs for `msg_id`, every stdin request."""

    async def wait(self, timeout: float) -> bool:
        """Until a message is waiting (True) or `timeout` seconds pass (False)."""

    async def is_alive(self) -> bool: ...

    async def exit_status(self) -> int | None:
        """How a dead kernel ended, when that is known here."""

    async def interrupt(self) -> None: ...

    async def restart(self) -> None:
        """Replace the kernel (dead or hung); `connect` follows."""

    async def aclose(self) -> None: ...


@runtime_checkable
class SandboxLike(Protocol):
    """What the rest of agent_kernel needs of a sandbox: CodeAgent runs its actions in one,
    PythonInterpreterTool its calls, a SandboxPool hands them out. AsyncSandbox is one (a sync
    Sandbox gives its own with `as_async()`); anything else with these methods can stand in."""

    options: SandboxOptions  # how it was made (a pool makes more like it)

    @property
    def isolation(self) -> Isolation: ...

    async def start(self) -> SandboxLike: ...

    async def execute(self, code: str, timeout: float | None = None) -> Execution: ...

    async def push(self, **values: Any) -> None: ...

    async def pull(self, names: Iterable[str]) -> dict[str, Any]: ...

    async def variables(self) -> dict[str, str]: ...

    async def register_function(self, name: str, fn: Callable[..., Any], doc: str | None = None) -> None: ...

    async def aclose(self) -> None: ...
