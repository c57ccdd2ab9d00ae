"""Many runs at once: input order, real concurrency within the limit, failures kept per task, progress,
one fresh sandbox per task from a pool that starts no more kernels than there are tasks."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from gateway_server import GatewayServer
from scripted_server import error, text, tool_calls

from agent_kernel.agents import CodeAgent, ToolCallingAgent
from agent_kernel.agents._many import arun_many, run_many
from agent_kernel.sandbox import AsyncSandbox, Sandbox


class _Overlap:
    """A host tool that sleeps, noting how many calls were in flight at once."""

    def __init__(self) -> None:
        self.active = self.peak = 0
        self._lock = threading.Lock()

    def tool(self):
        def slow(n: int) -> int:
            """Wait a moment, then answer n squared.

            Args:
                n: the number.
            """
            with self._lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            time.sleep(0.4)
            with self._lock:
                self.active -= 1
            return n * n

        return slow


def _script_code_tasks(server, count: int, failing: int | None = None) -> list[str]:
    """Task i computes slow(i) in the sandbox, then answers it with its own index and variable."""
    tasks = []
    for i in range(count):
        key = f"TASK-{i}-"
        tasks.append(f"{key} square {i}")
        if i == failing:
            server.script([error(400, "scripted refusal")], key=key)
            continue
        server.script([
            # earlier tasks answer later: completion order is not input order
            text(f"```python\nsquare = slow({i})\nprint(square)\n```", delay=0.05 * (count - i)),
            text(f"```python\nfinal_answer({{'task': {i}, 'square': square, 'unit': unit}})\n```"),
        ], key=key)
    return tasks


def test_runs_come_back_in_input_order_concurrently_and_failures_stay_put(scripted_server, monkeypatch, capsys):
    started = []
    real_start = AsyncSandbox.start

    async def counted_start(self):  # the real start, counted
        if self._starting is None:
            started.append(self)
        return await real_start(self)

    monkeypatch.setattr(AsyncSandbox, "start", counted_start)
    slow = _Overlap()
    tasks = _script_code_tasks(scripted_server, 6, failing=3)
    agent = CodeAgent(scripted_server.model(num_retries=0), tools=[slow.tool()], name="batch")
    tasks[5] = (tasks[5], {"unit": "per-task"})

    runs = run_many(agent, tasks, concurrency=3, variables={"unit": "m"})

    assert [r.task for r in runs] == [t if isinstance(t, str) else t[0] for t in tasks]
    assert [r.state for r in runs] == ["success"] * 3 + ["error"] + ["success"] * 2
    assert "scripted refusal" in runs[3].error
    assert [r.output for i, r in enumerate(runs) if i != 3] == [
        {"task": i, "square": i * i, "unit": "per-task" if i == 5 else "m"} for i in (0, 1, 2, 4, 5)
    ]
    assert slow.peak == 3  # three runs' code was in the tool at the same moment, never more
    assert len(started) == 6 and all(s._starting is None for s in started)  # one kernel per task, all closed
    assert agent.memory == [] and agent.sandbox is None  # the agent itself did not run
    assert "6/6 runs, 1 failed" in capsys.readouterr().err


def test_tool_calling_agents_run_many_without_sandboxes(scripted_server):
    for i in range(4):
        scripted_server.script([tool_calls([("final_answer", {"answer": f"done {i}"})], delay=0.3)], key=f"JOB{i} ")
    agent = ToolCallingAgent(scripted_server.model())
    runs = asyncio.run(arun_many(agent, [f"JOB{i} go" for i in range(4)], concurrency=4, progress=False))
    assert [r.output for r in runs] == [f"done {i}" for i in range(4)]
    # The model calls overlapped: counted by the server, not timed (a loaded machine stretches any timing).
    assert scripted_server.peak_concurrency >= 2


def test_bad_arguments_say_what_to_pass(scripted_server):
    agent = ToolCallingAgent(scripted_server.model())
    with pytest.raises(ValueError, match="concurrency"):
        run_many(agent, ["a"], concurrency=0)
    with pytest.raises(TypeError, match=r"\(task, variables\) pair"):
        run_many(agent, [("a", "not a dict")])
    assert run_many(agent, [], progress=False) == []
    [empty] = run_many(agent, ["  "], progress=False)
    assert empty.state == "error" and "non-empty" in empty.error


def test_run_many_on_a_gateway(scripted_server):
    tasks = _script_code_tasks(scripted_server, 3)
    with GatewayServer() as gateway:
        sandbox = Sandbox(gateway=gateway.url, token=gateway.token)
        try:
            agent = CodeAgent(scripted_server.model(), tools=[_Overlap().tool()], sandbox=sandbox)
            runs = run_many(agent, tasks, concurrency=3, variables={"unit": "g"}, progress=False)
            assert [r.output for r in runs] == [{"task": i, "square": i * i, "unit": "g"} for i in range(3)]
        finally:
            sandbox.close()
        assert gateway.kernels() == []  # every task's kernel was deleted


def test_run_many_is_a_method_of_every_agent(scripted_server):
    for i in range(2):
        scripted_server.script([tool_calls([("final_answer", {"answer": f"done {i}"})])], key=f"JOB{i} ")
    agent = ToolCallingAgent(scripted_server.model())
    runs = agent.run_many([f"JOB{i} go" for i in range(2)], concurrency=2, progress=False)
    assert [r.output for r in runs] == ["done 0", "done 1"]


def test_a_pool_starts_no_more_kernels_than_its_total(monkeypatch):
    from agent_kernel.sandbox import SandboxPool
    from agent_kernel.sandbox._client import SandboxError

    started = []
    real_start = AsyncSandbox.start

    async def counting_start(self):
        if self not in started:
            started.append(self)
        return await real_start(self)

    monkeypatch.setattr(AsyncSandbox, "start", counting_start)
    with pytest.raises(ValueError, match="total=-1"):
        SandboxPool(2, total=-1)
    with SandboxPool(2, total=3) as pool:
        assert len(started) == 2  # the pool's size, ready
        taken = [pool.acquire() for _ in range(3)]
        try:
            assert len(started) == 3  # never a fourth, though the pool keeps size 2 ready
            assert taken[2].execute("1 + 1").result == {"text/plain": "2"}
            with pytest.raises(SandboxError, match="all 3 sandboxes"):
                pool.acquire()
        finally:
            for sandbox in taken:
                sandbox.close()
    assert all(s._starting is None for s in started)


def test_a_pool_starts_replacements_once_the_acquired_kernels_are_up(monkeypatch):
    """Runs acquiring at once (a batch's first wave) get their kernels started alone: the
    replacements, which would compete with them for the CPU, start when those are up."""
    from agent_kernel.sandbox import SandboxPool

    events: list[str] = []
    real_start = AsyncSandbox.start

    async def recording_start(self):
        events.append("start")
        try:
            return await real_start(self)
        finally:
            events.append("ready")

    monkeypatch.setattr(AsyncSandbox, "start", recording_start)

    async def first_wave() -> None:
        pool = SandboxPool(3, starts_at_once=3)
        taken = await asyncio.gather(*(pool.aacquire() for _ in range(3)))
        try:
            await asyncio.gather(*pool._ready)  # the replacements
        finally:
            await pool.aclose()
            for sandbox in taken:
                await sandbox.aclose()

    asyncio.run(first_wave())
    assert events.count("start") == 6
    assert events[:3] == ["start"] * 3  # the wave's own three kernels, started together
    assert events.index("ready") < [i for i, e in enumerate(events) if e == "start"][3]  # replacements after


def test_local_kernels_start_as_many_at_once_as_the_machine_has_cores(monkeypatch):
    """A start is mostly CPU: more at once than cores only makes each of them later."""
    from agent_kernel.sandbox import SandboxPool

    starting = most = 0
    real_start = AsyncSandbox.start

    async def counting_start(self):
        nonlocal starting, most
        starting += 1
        most = max(most, starting)
        try:
            return await real_start(self)
        finally:
            starting -= 1

    monkeypatch.setattr(AsyncSandbox, "start", counting_start)
    monkeypatch.delenv("JUPYTER_GATEWAY_URL", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    pool = SandboxPool(4, total=4)
    assert pool.starts_at_once == 2
    with pool:
        taken = [pool.acquire() for _ in range(4)]
        for sandbox in taken:
            sandbox.close()
    assert most == 2
    assert SandboxPool(4, gateway="https://gw.example.org").starts_at_once == 4  # round trips, not this CPU
    assert SandboxPool(4, starts_at_once=1).starts_at_once == 1
    with pytest.raises(ValueError, match="starts_at_once=0"):
        SandboxPool(4, starts_at_once=0)


def test_a_batch_uses_the_agents_public_seams_new_run_model_name_and_sandbox_pool() -> None:
    from agent_kernel.memory import TaskStep

    agent = ToolCallingAgent("openai/gpt-4o-mini", max_steps=3)
    agent.memory.append(TaskStep("earlier"))
    twin = agent.new_run()
    assert twin is not agent and twin.memory == [] and agent.memory and twin.tools == agent.tools
    assert twin.options is agent.options and agent.model_name == twin.model_name == "openai/gpt-4o-mini"
    assert agent.sandbox_pool(2, 4) is None  # it runs no code
    given = AsyncSandbox(timeout=7)
    coder = CodeAgent("openai/gpt-4o-mini", sandbox=given)
    assert coder.new_run(sandbox=given).sandbox is given
