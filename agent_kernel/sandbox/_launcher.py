"""The sandbox kernel's entry point: isolate this process, then run ipykernel inside it.

ipykernel runs in-process rather than through exec because exec is one of the things the
isolation forbids. The host passes the sandbox's settings in one environment variable, which is
removed (with everything else outside the allowlist) before any sandbox code runs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from ._spec import CONFIG_ENV


def _kernel_argv(argv: list[str]) -> list[str]:
    # No history database, no banner: the sandbox keeps nothing between runs and starts quickly.
    return [
        *argv,
        "--HistoryManager.enabled=False",
        "--IPKernelApp.quiet=True",
        "--InteractiveShell.colors=nocolor",
    ]


def main(argv: list[str] | None = None) -> None:
    from ._isolation import IsolationConfig, apply_isolation

    settings = json.loads(os.environ.pop(CONFIG_ENV, "{}") or "{}")
    workdir = settings.get("workdir") or os.getcwd()
    runtime_dir = settings.get("runtime_dir") or os.path.dirname(os.path.abspath(_connection_file(argv or sys.argv[1:])))
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)

    isolation = apply_isolation(
        IsolationConfig(
            workdir=workdir,
            runtime_dir=runtime_dir,
            read_paths=list(settings.get("read_paths", [])),
            write_paths=[settings["transfer_dir"]] if settings.get("transfer_dir") else [],
            network=bool(settings.get("network", False)),
            memory_bytes=settings.get("memory_bytes"),
            cpu_seconds=settings.get("cpu_seconds"),
            strict=bool(settings.get("strict", False)),
        )
    )

    # No debugger in the sandbox: debugpy listens on TCP and can attach to processes.
    sys.modules["debugpy"] = None  # type: ignore[assignment]
    from ipykernel import kernelapp
    from ipykernel.iostream import IOPubThread

    class _IOPubThread(IOPubThread):
        """Without the TCP pipe ipykernel opens for forked children's output: nothing can fork here."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "pipe": False})

    kernelapp.IOPubThread = _IOPubThread  # type: ignore[misc]

    from . import _kernel_side

    app = kernelapp.IPKernelApp.instance()
    app.initialize(_kernel_argv(argv if argv is not None else sys.argv[1:]))
    _kernel_side.install(
        app.shell,
        imports=settings.get("imports", []),
        isolation=isolation,
        transfer_dir=settings.get("transfer_dir") or os.path.join(workdir, ".transfer"),
        max_output=settings.get("max_output", 100_000),
    )
    app.start()


def _connection_file(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "-f" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--f="):
            return arg[4:]
    return os.path.join(os.getcwd(), "kernel.json")


if __name__ == "__main__":
    main()
