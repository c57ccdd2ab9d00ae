"""Many runs at once: 32 CodeAgent tasks at concurrency 8 against the ideal of 32 / 8 x one task alone.

    .venv/bin/python bench/bench_many.py [--tasks 32] [--concurrency 8] [--delay 0.2] [--backend local gateway]
                                         [--repeat 3] [--exec]

The model is the scripted OpenAI-compatible server (tests/scripted_server.py) reached through
litellm's real HTTP client; every reply comes after `--delay` seconds. A task is two steps: code
that computes and prints, then code that calls final_answer; so one task is two model calls, two
executions and one fresh sandbox (every task gets its own kernel from the pool, as in real use;
local kernels start as many at once as this machine has cores, a gateway's all at once).

A third row runs the same batch with a ToolCallingAgent (a tool call, then final_answer: two model
calls, no sandbox), which measures the scheduling of concurrent runs and model calls alone.

"One task alone" is `run_many` over a single task (its kernel start included, as each task in the
batch also has one), the median of three. The ideal for the batch is tasks / concurrency x that.
The gateway backend runs against a real jupyter-kernel-gateway on 127.0.0.1 (tests/gateway_server.py).
While the batch runs, the sandbox kernels' memory is sampled: RSS, USS (memory no other process
shares, what one more kernel really costs) and PSS (shared pages divided among their sharers).
Kernels are forked from a pre-imported zygote (sandbox/_zygote.py), sharing its pages, so USS is
far below RSS; the zygote itself (counted once, not per kernel) is reported apart. `--exec` starts
every kernel the way it was before the zygote (python -m ..._launcher), for comparison.

The batch's CPU is printed per task (the kernels, with their starts; this process: agents, model
client, sandbox host; the gateway) with the least time it needs on this machine's cores. On a
2-core machine shared with other work, a batch that needs most of both cores measures the other
work as much as ours: read the ratio next to the load average.

Each batch runs `--repeat` times (3): the verdict is on the median, and each batch's ratio is
printed next to it, because one batch on a shared 2-core machine can land 0.2x either way.

Target (issue acceptance): batch <= 1.3x ideal, local and gateway.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gateway_server import GatewayServer  # noqa: E402
from scripted_server import ScriptedServer, text, tool_calls  # noqa: E402

from agent_kernel.agents import CodeAgent, ToolCallingAgent  # noqa: E402
from agent_kernel.agents._many import run_many  # noqa: E402
from agent_kernel.sandbox import Sandbox  # noqa: E402
from agent_kernel.sandbox._zygote import SWITCH_ENV  # noqa: E402

_LAUNCHER = "agent_kernel.sandbox._launcher"
_ZYGOTE = "agent_kernel.sandbox._zygote"
_ANSWER = sum(i * i for i in range(10_000))


def square(n: int) -> int:
    """n squared.

    Args:
        n: the number.
    """
    return n * n


def _responder(delay: float) -> Callable[[dict[str, Any]], Any]:
    """Step 1 computes, step 2 answers; which step it is shows in the number of messages."""

    def reply(request: dict[str, Any]) -> Any:
        first = len(request["messages"]) <= 2
        if "tools" in request:  # the ToolCallingAgent
            call = ("square", {"n": 100}) if first else ("final_answer", {"answer": _ANSWER})
            return tool_calls([call], delay=delay)
        if first:
            return text("```python\ntotal = sum(i * i for i in range(10_000))\nprint(total)\n```", delay=delay)
        return text("```python\nfinal_answer(total)\n```", delay=delay)

    return reply


class _KernelMemory:
    """Samples the memory of the sandbox kernels under `parent` (a process id) in a thread."""

    def __init__(self, parent: int, every: float = 0.5) -> None:
        self._parent = psutil.Process(parent)
        self._every = every
        self._stop = threading.Event()
        self.rss: list[int] = []
        self.uss: list[int] = []
        self.pss: list[int] = []
        self.zygote_uss: list[int] = []
        self.most = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self._every):
            processes = self._parent.children(recursive=True)
            kernels = [p for p in processes if _is_kernel(p)]
            self.most = max(self.most, len(kernels))
            for kernel in kernels:
                try:
                    info = kernel.memory_full_info()
                except psutil.Error:  # it ended between the listing and the reading
                    continue
                self.rss.append(info.rss)
                self.uss.append(info.uss)
                self.pss.append(info.pss)
            for zygote in (p for p in processes if _is_zygote(p) and not _is_zygote(p.parent())):
                with suppress(psutil.Error):
                    self.zygote_uss.append(zygote.memory_full_info().uss)

    @contextmanager
    def running(self) -> Iterator[_KernelMemory]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    def summary(self) -> str:
        if not self.rss:
            return "no kernel sampled"
        mib = 2**20
        zygote = (f"; the zygote {statistics.median(self.zygote_uss) / mib:.0f} MiB USS, once"
                  if self.zygote_uss else "; no zygote (kernels started by exec)")
        return (f"{statistics.median(self.rss) / mib:.0f} MiB RSS, {statistics.median(self.uss) / mib:.0f} MiB USS, "
                f"{statistics.median(self.pss) / mib:.0f} MiB PSS per kernel (median of {len(self.rss)} samples); "
                f"up to {self.most} kernels alive at once{zygote}")


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _is_zygote(process: psutil.Process | None) -> bool:
    """The zygote's command line, which its forked kernels inherit."""
    return process is not None and _cmdline(process)[1:4] == ["-P", "-m", _ZYGOTE]


def _is_kernel(process: psutil.Process) -> bool:
    """A kernel started by exec runs the launcher; a forked one is a child of the zygote."""
    if _LAUNCHER in _cmdline(process):
        return True
    with suppress(psutil.Error):
        return _is_zygote(process) and _is_zygote(process.parent())
    return False


def _kernels_cpu(pid: int) -> float:
    """CPU of the ended kernels under `pid`: reaped by it (exec) or by its zygote (forked, the forks included)."""
    process = psutil.Process(pid)
    total = _cpu(process, children=True)
    for zygote in (p for p in process.children(recursive=True) if _is_zygote(p) and not _is_zygote(p.parent())):
        total += _cpu(zygote, children=True) + _cpu(zygote)
    return total


def _cpu(process: psutil.Process, children: bool = False) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.children_user + times.children_system if children else times.user + times.system


def _measure(make_agent: Callable[[], Any], memory_of: int, tasks: int, concurrency: int,
             repeat: int) -> dict[str, Any]:
    single = []
    for _ in range(3):
        started = time.perf_counter()
        [run] = run_many(make_agent(), ["one task"], concurrency=1, progress=False)
        assert run.state == "success", run.error
        single.append(time.perf_counter() - started)
    one = statistics.median(single)
    memory = _KernelMemory(memory_of)
    here, server = psutil.Process(), psutil.Process(memory_of)

    def cpu() -> list[float]:  # kernels, this process (agents, model client), the gateway
        return [_kernels_cpu(memory_of), _cpu(here), _cpu(server) if server.pid != here.pid else 0.0]

    batches = []
    with memory.running():
        before = cpu()
        for _ in range(repeat):
            started = time.perf_counter()
            runs = run_many(make_agent(), [f"task {i}" for i in range(tasks)], concurrency=concurrency,
                            progress=False)
            batches.append(time.perf_counter() - started)
            failed = [r.error for r in runs if r.state != "success"]
            assert not failed, failed[:3]
            assert [r.output for r in runs] == [_ANSWER] * tasks
        kernels, host, gateway = ((b - a) / repeat for a, b in zip(before, cpu(), strict=True))
    ideal = tasks / concurrency * one
    used = kernels + host + gateway
    return {"one": one, "batches": batches, "ideal": ideal, "memory": memory.summary() if memory.rss else "",
            "cpu": f"CPU per task: kernels {kernels / tasks:.3f} s, this process {host / tasks:.3f} s"
                   + (f", gateway {gateway / tasks:.3f} s" if gateway else "")
                   + f"; on {os.cpu_count()} cores a batch needs >= {used / (os.cpu_count() or 1):.2f} s of CPU time"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds before each model reply")
    parser.add_argument("--backend", nargs="+", default=["local", "gateway", "tools"],
                        choices=["local", "gateway", "tools"])
    parser.add_argument("--exec", action="store_true", help="start kernels by exec, without the zygote")
    parser.add_argument("--repeat", type=int, default=3, help="batches per backend; the verdict is on their median")
    args = parser.parse_args()
    if args.exec:
        os.environ[SWITCH_ENV] = "0"  # read at each kernel start, here and by the gateway it starts
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores; load average {load}; {args.tasks} tasks, concurrency "
          f"{args.concurrency}, model replies after {args.delay * 1000:.0f} ms, 2 steps per task; kernels "
          + ("started by exec (--exec)" if args.exec else "forked from the zygote"))
    results = {}
    with ScriptedServer() as server:
        server.script(_responder(args.delay))
        model = server.model()
        if "tools" in args.backend:
            results["tools"] = _measure(lambda: ToolCallingAgent(model, tools=[square]), os.getpid(), args.tasks,
                                        args.concurrency, args.repeat)
        if "local" in args.backend:
            results["local"] = _measure(lambda: CodeAgent(model), os.getpid(), args.tasks, args.concurrency,
                                        args.repeat)
        if "gateway" in args.backend:
            with GatewayServer() as gateway:
                template = Sandbox(gateway=gateway.url, token=gateway.token)  # run_many starts more like it
                try:
                    results["gateway"] = _measure(lambda: CodeAgent(model, sandbox=template),
                                                  gateway.pid, args.tasks, args.concurrency, args.repeat)
                finally:
                    template.close()
    for backend, r in results.items():
        batch = statistics.median(r["batches"])
        verdict = "ok" if batch <= 1.3 * r["ideal"] else "OVER TARGET"
        each = ", ".join(f"{b / r['ideal']:.2f}x" for b in r["batches"])
        print(f"{backend:8} one task alone {r['one']:.2f} s; {args.tasks} tasks {batch:.2f} s (median of "
              f"{len(r['batches'])}) vs ideal {r['ideal']:.2f} s = {batch / r['ideal']:.2f}x (target <= 1.3x: "
              f"{verdict}; each batch {each})")
        if r["memory"]:
            print(f"{'':8} pool: {r['memory']}")
        print(f"{'':8} {r['cpu']}")
    print(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
