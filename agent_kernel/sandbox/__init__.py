"""The restricted sandbox kernel: real CPython in an isolated process, driven through jupyter_client.

    with Sandbox(imports=["scipy"], timeout=30, memory="2GB") as sb:
        sb.push(df=df)
        ex = sb.execute("summary = df.describe()\\nsummary")
        summary = sb.pull(["summary"])["summary"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import _aio
from ._client import AsyncSandbox, SandboxError, SandboxOptions
from ._pool import SandboxPool
from ._records import Execution, ExecutionError, Isolation

__all__ = ["Sandbox", "AsyncSandbox", "SandboxPool", "SandboxError", "Execution", "ExecutionError", "Isolation"]


class Sandbox:
    """Synchronous face of AsyncSandbox, for scripts and notebook cells. Starts on construction."""

    def __init__(self, **options: Any) -> None:
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
        _aio.run_sync(self._async.close())

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
