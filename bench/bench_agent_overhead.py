"""Per-step overhead of the agent loop: our CodeAgent vs smolagents' CodeAgent, model time excluded.

Both agents run the same 40-step scripted task in this process against a fake model that returns
canned replies instantly, so what is measured is everything else: prompt building, parsing, running
the action and rendering the observation. Ours runs each action in a real sandbox kernel (a
separate process, over ZMQ); smolagents runs it in its in-process LocalPythonExecutor.

smolagents is measured twice: as constructed by default (its step log rendered by rich, here into
a captured stdout: the configuration behind the issue's "2.3 ms/step here", which the target
compares against) and with its log off (verbosity_level=OFF), its least per-step work. Ours logs
nothing unless asked (a notebook shows progress through the magics), so it runs as constructed.

    .venv/bin/python bench/bench_agent_overhead.py [--steps 40] [--repeat 3]

Needs `pip install smolagents==1.26.0` (the `bench` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def canned_replies(steps: int) -> list[str]:
    """A task that keeps state across steps and ends with a final answer, as real runs do."""
    replies = ["Thought: start the sum.\n```python\nacc = 0\nprint(acc)\n```"]
    replies += [f"Thought: add {i}.\n```python\nacc += {i}\nprint(acc)\n```" for i in range(1, steps - 1)]
    replies.append("Thought: done.\n```python\nfinal_answer(acc)\n```")
    return replies


def expected_answer(steps: int) -> int:
    return sum(range(1, steps - 1))


class _OurCannedModel:
    """Duck-types agent_kernel.models.Model: replies in order, no network, no tokens counted."""

    model_id = "canned"
    supports_stop = True
    supports_tools = False

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.calls = 0

    async def agenerate(self, messages: list[dict[str, Any]], *, tools: Any = None, stop: Any = None,
                        on_delta: Any = None) -> Any:
        from agent_kernel.memory import Usage
        from agent_kernel.models import ModelReply

        reply = self.replies[self.calls]
        self.calls += 1
        return ModelReply(content=reply, usage=Usage(), finish_reason="stop")


def _smol_model(replies: list[str]) -> Any:
    from smolagents.models import ChatMessage, MessageRole, Model
    from smolagents.monitoring import TokenUsage

    class SmolCannedModel(Model):
        def __init__(self) -> None:
            super().__init__(model_id="canned")
            self.calls = 0

        def generate(self, messages: Any, stop_sequences: Any = None, response_format: Any = None,
                     tools_to_call_from: Any = None, **kwargs: Any) -> ChatMessage:
            reply = replies[self.calls]
            self.calls += 1
            return ChatMessage(role=MessageRole.ASSISTANT, content=reply,
                               token_usage=TokenUsage(input_tokens=0, output_tokens=0))

    return SmolCannedModel()


def bench_ours(steps: int) -> tuple[float, float]:
    """(seconds for the run, seconds of it spent executing in the kernel)."""
    from agent_kernel import _aio
    from agent_kernel.agents import CodeAgent
    from agent_kernel.sandbox import AsyncSandbox

    sandbox = _aio.run_sync(AsyncSandbox().start())  # kernel start-up is not per-step overhead
    try:
        agent = CodeAgent(_OurCannedModel(canned_replies(steps)), sandbox=sandbox, max_steps=steps + 5)
        started = time.perf_counter()
        run = agent.run("Sum the numbers, one step at a time.")
        elapsed = time.perf_counter() - started
    finally:
        _aio.run_sync(sandbox.close())
    assert run.state == "success" and run.output == expected_answer(steps), (run.state, run.output, run.error)
    assert len(run.action_steps) == steps
    return elapsed, sum(s.execution.duration for s in run.action_steps if s.execution)


def bench_smolagents(steps: int, logging: bool) -> float:
    from smolagents import CodeAgent as SmolCodeAgent
    from smolagents.monitoring import LogLevel

    quiet = {} if logging else {"verbosity_level": LogLevel.OFF}
    agent = SmolCodeAgent(tools=[], model=_smol_model(canned_replies(steps)), max_steps=steps + 5,
                          executor_type="local", **quiet)
    with contextlib.redirect_stdout(io.StringIO()):  # rich renders the log; the terminal is not timed
        started = time.perf_counter()
        output = agent.run("Sum the numbers, one step at a time.")
        elapsed = time.perf_counter() - started
    assert output == expected_answer(steps), output
    assert agent.model.calls == steps
    return elapsed


def prompt_tokens() -> tuple[int, int]:
    """System prompt tokens (cl100k) of both CodeAgents, without tools."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    bundled = Path(spec.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers"  # no download
    os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
    import tiktoken
    from smolagents import CodeAgent as SmolCodeAgent

    from agent_kernel.agents import CodeAgent

    encoding = tiktoken.get_encoding("cl100k_base")
    ours = CodeAgent(_OurCannedModel([])).system_prompt()
    theirs = SmolCodeAgent(tools=[], model=_smol_model([]), verbosity_level=0).initialize_system_prompt()
    return len(encoding.encode(ours)), len(encoding.encode(theirs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median is reported")
    args = parser.parse_args()

    bench_smolagents(5, logging=True)  # warm imports and caches of both before timing
    bench_ours(5)
    ours, kernel, theirs, theirs_quiet = [], [], [], []
    for _ in range(args.repeat):  # interleaved, so a busy moment of the machine slows all alike
        elapsed, in_kernel = bench_ours(args.steps)
        ours.append(elapsed)
        kernel.append(in_kernel)
        theirs.append(bench_smolagents(args.steps, logging=True))
        theirs_quiet.append(bench_smolagents(args.steps, logging=False))
    per_step = {name: statistics.median(v) / args.steps * 1000 for name, v in
                (("ours", ours), ("kernel", kernel), ("smolagents", theirs), ("quiet", theirs_quiet))}
    print(f"{args.steps}-step scripted CodeAgent task, instant fake model, median of {args.repeat} runs; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  agent_kernel CodeAgent          : {per_step['ours']:6.2f} ms/step "
          f"(of which {per_step['kernel']:.2f} ms executing in the sandbox kernel, "
          f"{per_step['ours'] - per_step['kernel']:.2f} ms loop)")
    print(f"  smolagents CodeAgent, default   : {per_step['smolagents']:6.2f} ms/step "
          "(LocalPythonExecutor in-process, its step log on)")
    print(f"  smolagents CodeAgent, log off   : {per_step['quiet']:6.2f} ms/step")
    ratio = per_step["ours"] / per_step["smolagents"]
    print(f"  ours / smolagents default       : {ratio:6.2f}  (target <= 1: {'met' if ratio <= 1 else 'NOT MET'})")
    print(f"  ours / smolagents log off       : {per_step['ours'] / per_step['quiet']:6.2f}  "
          "(the process boundary's price: a kernel round trip per step)")
    ours_tokens, their_tokens = prompt_tokens()
    print(f"system prompt tokens (cl100k, no tools): agent_kernel {ours_tokens}, smolagents {their_tokens}")


if __name__ == "__main__":
    main()
