"""A long session in one process: hundreds of runs, kernels dying and model calls failing on the way.

    .venv/bin/python bench/bench_soak.py [--runs 240]

Half the runs go through the Python API (`CodeAgent(model).run(task)`, the agent dropped without
`close()`, as README's example does), half through the magics (IPython's InteractiveShell with
`%load_ext agent_kernel` and `%%agent code` cells). The model is the scripted OpenAI-compatible
server (tests/scripted_server.py) through litellm's real HTTP client. Along the way:
- every 7th run's first action kills its own kernel (`os.kill(os.getpid(), 9)`): the sandbox
  reports SandboxDied, restarts, and the run goes on to its answer;
- every 5th model call is answered with HTTP 500 (the model client retries it);
- every 9th API run also drops a `Sandbox` it started, unclosed.

This process's file descriptors, threads, descendant processes (the zygote and the kernels) and
RSS are printed after a warm-up, in the middle and at the end of each half; the exit status is 1
when the end is over the warm-up by more than the slack below (descriptors and processes in
flight: one run's kernel may still be on its way out; RSS: allocator and import caches settle).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_API_KEY", "sk-scripted")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scripted_server import Reply, ScriptedServer, error, text  # noqa: E402

from agent_kernel.agents import CodeAgent  # noqa: E402
from agent_kernel.sandbox import Sandbox  # noqa: E402

SLACK = {"fds": 8, "threads": 3, "processes": 2, "rss_mib": 40.0}
WARM_UP = 10  # runs before the first sample: imports, caches and pools fill in these
KILL = "```python\nimport os\nos.kill(os.getpid(), 9)\n```\n"
ANSWER = "```python\nfinal_answer(6 * 7)\n```\n"


def descendants() -> int:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return len(found)


def sample() -> dict[str, float]:
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(),
            "processes": descendants(), "rss_mib": rss / 1024}


class Model:
    """The scripted model's answers: a kernel-killing first action for tasks that ask for it, a 500
    on every 5th call."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.calls += 1
            calls = self.calls
        if calls % 5 == 0:
            return error(500, "scripted outage")
        first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        steps = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return text(KILL if "die first" in str(first_user) and steps == 0 else ANSWER)


def task(i: int) -> str:
    return f"run {i}: what is six times seven?" + (" (die first)" if i % 7 == 3 else "")


OUTCOMES: collections.Counter[str] = collections.Counter()


def tally(run: Any) -> None:
    """A run's state, and whether one of its kernels died and came back."""
    OUTCOMES[run.state] += 1
    executions = [getattr(step, "execution", None) for step in run.steps]
    OUTCOMES["kernel died, restarted"] += sum(1 for e in executions if e is not None and e.restarted)


def api_runs(model: Any, runs: int) -> list[dict[str, float]]:
    samples = []
    for i in range(runs):
        tally(CodeAgent(model, imports=["os"]).run(task(i)))  # dropped unclosed
        if i % 9 == 4:
            Sandbox().execute("x = 1")  # dropped unclosed too
        if i + 1 in (WARM_UP, WARM_UP + (runs - WARM_UP) // 2, runs):
            samples.append(sample())
    return samples


def magic_runs(url: str, runs: int) -> list[dict[str, float]]:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        shell.run_cell("%load_ext agent_kernel")
        shell.run_cell(f"%config AgentMagics.model = 'openai/scripted'\n%config AgentMagics.api_base = {url!r}\n"
                       "%config AgentMagics.imports = ['os']")
    samples = []
    for i in range(runs):
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            shell.run_cell(f"%%agent code --out n\n{task(i)}")
        tally(shell.user_ns["_agent_run"])
        quiet.seek(0)
        quiet.truncate()
        if i + 1 in (WARM_UP, WARM_UP + (runs - WARM_UP) // 2, runs):
            samples.append(sample())
    return samples


def report(name: str, samples: list[dict[str, float]]) -> list[str]:
    print(f"\n{name}: {'':10}" + "".join(f"{key:>12}" for key in SLACK))
    for label, values in zip(("warm", "middle", "end"), samples):
        print(f"  {label:18}" + "".join(f"{values[key]:>12.1f}" for key in SLACK))
    first, last = samples[0], samples[-1]
    return [f"{name}: {key} grew {last[key] - first[key]:+.1f} (slack {SLACK[key]})"
            for key in SLACK if last[key] - first[key] > SLACK[key]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=240, help="runs in all, half through each path (default 240)")
    args = parser.parse_args()
    half = max(args.runs // 2, 2 * WARM_UP)
    started = time.perf_counter()
    with ScriptedServer() as server:
        responder = Model()
        server.script(responder)
        print(f"{half} runs through the Python API, {half} through the magics; start: {sample()}")
        over = report("Python API", api_runs(server.model(), half))
        over += report("magics", magic_runs(server.url, half))
    print(f"\n{2 * half} runs, {responder.calls} model calls ({responder.calls // 5} answered 500), "
          f"{time.perf_counter() - started:.0f} s; {dict(OUTCOMES)}")
    for line in over:
        print("OVER:", line)
    print("verdict:", "flat" if not over else "GREW")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
