"""The restricted sandbox kernel: real CPython in an isolated process, driven through jupyter_client.

    with Sandbox(imports=["scipy"], timeout=30, memory="2GB") as sb:
        sb.push(df=df)
        ex = sb.execute("summary = df.describe()\nsummary")
        summary = sb.pull(["summary"])["summary"]

Names load lazily: the codec and the records are imported inside the kernel and by the agents'
records without pulling in jupyter_client.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Sandbox": "._client",
    "AsyncSandbox": "._client",
    "SandboxError": "._client",
    "SandboxOptions": "._client",
    "SandboxPool": "._pool",
    "Execution": "._records",
    "ExecutionError": "._records",
    "Isolation": "._records",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
