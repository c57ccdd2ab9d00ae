"""While agents run, the objects that existed before are out of the garbage collector's full
collections, and given back afterwards; nothing is kept alive by it (agent_kernel/_gc.py)."""

from __future__ import annotations

import gc
import weakref

from scripted_server import text, tool_calls

from agent_kernel.agents import ToolCallingAgent
from agent_kernel.agents._many import run_many


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def _freeze_count_tool(seen: list[int]):
    def freeze_count() -> int:
        """How many objects the collector has set aside now."""
        seen.append(gc.get_freeze_count())
        return seen[-1]

    return freeze_count


def test_objects_from_before_a_run_are_set_aside_during_it_and_given_back(scripted_server):
    scripted_server.script([tool_calls([("freeze_count", {})]), tool_calls([("final_answer", {"answer": "ok"})])])
    seen: list[int] = []
    agent = ToolCallingAgent(scripted_server.model(), tools=[_freeze_count_tool(seen)])
    before = _Node()
    gone = weakref.ref(before)
    assert gc.get_freeze_count() == 0

    run = agent.run("count")

    assert run.state == "success", run.error
    assert seen and seen[0] > 1000, seen  # the process's objects, litellm's among them
    assert gc.get_freeze_count() == 0
    del before
    gc.collect()
    assert gone() is None  # a cycle that was set aside is collected once the runs are over


def test_a_batch_holds_the_freeze_across_its_tasks(scripted_server):
    def reply(request):
        first = len(request["messages"]) <= 2
        return tool_calls([("freeze_count", {})] if first else [("final_answer", {"answer": 1})])

    scripted_server.script(reply)
    seen: list[int] = []
    runs = run_many(ToolCallingAgent(scripted_server.model(), tools=[_freeze_count_tool(seen)]),
                    [f"task {i}" for i in range(6)], concurrency=2, progress=False)
    assert [r.state for r in runs] == ["success"] * 6
    assert len(seen) == 6 and min(seen) > 1000
    assert gc.get_freeze_count() == 0


def test_a_process_that_froze_objects_itself_is_left_alone(scripted_server):
    scripted_server.script([text("done")])
    agent = ToolCallingAgent(scripted_server.model(), tools=[])
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        agent.run("answer")
        # still set aside (an unfreeze would make it 0); a few were freed meanwhile
        assert gc.get_freeze_count() > frozen * 0.9
    finally:
        gc.unfreeze()
