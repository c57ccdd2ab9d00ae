"""The restricted sandbox kernel: real CPython in an isolated process, driven through jupyter_client.

    with Sandbox(imports=["scipy"], timeout=30, memory="2GB") as sb:
        sb.push(df=df)
        ex = sb.execute("summary = df.describe()\nsummary")
        summary = sb.pull(["summary"])["summary"]

Names load lazily: the codec and the records are imported inside the kernel and by the agents'
records without pulling in jupyter_client. This is the only way into the sandbox from the rest of
the package: no module outside sandbox/ imports one of its private modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for type checkers (they do not run __getattr__)
    from ._base import SandboxError, SandboxLike, SandboxOptions
    from ._client import AsyncSandbox, Sandbox
    from ._codec import describe
    from ._kernel_side import DEFAULT_IMPORTS
    from ._pool import SandboxPool
    from ._records import Execution, ExecutionError, Isolation, MimeBundle
    from ._spec import KERNEL_NAME, gateway_url, install_kernelspec, kernel_spec

_PUBLIC = {
    "Sandbox": "._client",
    "AsyncSandbox": "._client",
    "SandboxError": "._base",
    "SandboxOptions": "._base",
    "SandboxLike": "._base",
    "SandboxPool": "._pool",
    "Execution": "._records",
    "ExecutionError": "._records",
    "Isolation": "._records",
    "MimeBundle": "._records",  # a display's data: mime type -> content
    "describe": "._codec",  # a value's short preview (type, shape, columns), as the model sees it
    "DEFAULT_IMPORTS": "._kernel_side",  # what sandbox code may import without imports=[...]
    "KERNEL_NAME": "._spec",
    "kernel_spec": "._spec",  # the agent-sandbox kernelspec (python -m agent_kernel install-kernelspec)
    "install_kernelspec": "._spec",  # python -m agent_kernel install-kernelspec; an export installs it too
    "gateway_url": "._spec",  # where sandboxes run: the given gateway, else $JUPYTER_GATEWAY_URL
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
