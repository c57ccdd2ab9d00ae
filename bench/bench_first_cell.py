"""The first `%%agent code` cell's extra wait after `%load_ext agent_kernel`, up to its first model request.

Each measurement is a fresh Python process (litellm not imported yet, no sandbox started): an
IPython InteractiveShell loads the extension, waits `--pause` seconds (the analyst typing the first
cell), then runs two `%%agent code` cells against the scripted server (tests/scripted_server.py,
in the same process, which notes when each request arrives). Reported: the time from each cell's
start to its model request, and the first cell's extra over the second's; with the background
warm-up (the default) and without it (`AgentMagics.warm = False`, the old behaviour).

    .venv/bin/python bench/bench_first_cell.py [--repeat 3] [--pause 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def measure(pause: float, warm: bool) -> dict[str, float]:
    """In this (fresh) process: seconds from each cell's start to its first model request."""
    sys.path.insert(0, str(ROOT / "tests"))
    from IPython.core.interactiveshell import InteractiveShell
    from scripted_server import ScriptedServer, text

    assert "litellm" not in sys.modules, "not a fresh process: litellm is imported already"
    arrivals: list[float] = []

    def responder(body: dict[str, Any]) -> Any:
        arrivals.append(time.perf_counter())
        return text("```python\nfinal_answer(42)\n```")

    with ScriptedServer() as server:
        server.script(responder)
        os.environ.update(AGENT_KERNEL_MODEL="openai/scripted", AGENT_KERNEL_API_BASE=server.url,
                          OPENAI_API_KEY="sk-scripted")
        shell = InteractiveShell.instance()
        shell.config.AgentMagics.warm = warm
        shell.config.AgentMagics.quiet = True
        started = time.perf_counter()
        shell.run_line_magic("load_ext", "agent_kernel")
        loaded = time.perf_counter() - started
        time.sleep(pause)
        waits = []
        for _ in range(2):
            before, cell_started = len(arrivals), time.perf_counter()
            shell.run_cell_magic("agent", "code --out answer", "What is the answer?")
            assert shell.user_ns["answer"] == 42 and len(arrivals) == before + 1
            waits.append(arrivals[before] - cell_started)
        shell.run_line_magic("unload_ext", "agent_kernel")
    return {"load": loaded, "first": waits[0], "second": waits[1], "extra": waits[0] - waits[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per configuration")
    parser.add_argument("--pause", type=float, default=5.0, help="seconds between %%load_ext and the first cell")
    parser.add_argument("--child", choices=["warm", "cold"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.pause, args.child == "warm")))
        return
    results: dict[str, list[dict[str, float]]] = {"warm": [], "cold": []}
    for _ in range(args.repeat):  # interleaved, so a busy moment of the machine slows both alike
        for mode in results:
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--pause", str(args.pause)],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"first %%agent code cell after %load_ext, {args.pause:g} s pause, median of {args.repeat} fresh "
          f"processes; {cores} cores, load average {os.getloadavg()[0]:.2f}")
    for mode, label in (("warm", "warm-up at load (default)"), ("cold", "no warm-up (warm=False)")):
        runs = results[mode]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        extras = ", ".join(f"{r['extra']:.2f}" for r in runs)
        print(f"  {label:26}: load_ext {med['load']:.2f} s, to first request: first cell {med['first']:.2f} s, "
              f"second {med['second']:.2f} s, first cell's extra {med['extra']:.2f} s ({extras})")


if __name__ == "__main__":
    main()
