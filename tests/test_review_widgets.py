"""The widget prompts of `--review` and `%agent fix`, clicked the way a frontend clicks them.

A real ipykernel (jupyter_client) runs the magics; this test plays JupyterLab's widget manager: it
reads the widgets' comm_open messages on iopub and sends the comm_msg a browser sends for an edit
({"method": "update"}) or a click ({"method": "custom", "content": {"event": "click"}}) on the shell
channel, while the agent's cell is still running.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel
from scripted_server import Reply, ScriptedServer, text
from test_control import _user_texts
from test_magics import _setup

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _code(source: str) -> Reply:
    return text(f"Thought: next.\n```python\n{source}\n```\n")


class Frontend:
    """Just enough of a notebook frontend: cells, their outputs, and the widgets they show."""

    def __init__(self, km: KernelManager, kc: BlockingKernelClient) -> None:
        self.km, self.kc = km, kc
        self.models: dict[str, dict[str, Any]] = {}  # comm_id -> widget state, from comm_open
        self.shown: list[str] = []  # model ids of the widgets displayed, in order
        self.messages: list[dict[str, Any]] = []  # every iopub message read

    def prompt(self, timeout: float = 60) -> dict[str, str]:
        """Wait for the next widget prompt; its parts by role: button descriptions, 'code', 'reason'."""
        seen = len(self.shown)
        self._read_until(lambda: len(self.shown) > seen, timeout)
        parts: dict[str, str] = {}
        self._collect(self.shown[seen], parts)
        return parts

    def _collect(self, model_id: str, parts: dict[str, str]) -> None:
        state = self.models[model_id]
        if state["_model_name"] == "ButtonModel":
            parts[state["description"]] = model_id
        elif state["_model_name"] == "TextareaModel":
            parts["code"] = model_id
        elif state["_model_name"] == "TextModel":
            parts["reason"] = model_id
        elif state["_model_name"] == "LabelModel":
            parts["title"] = state["value"]
        for child in state.get("children", []):
            self._collect(child.removeprefix("IPY_MODEL_"), parts)

    def edit(self, model_id: str, value: str) -> None:
        self._comm(model_id, {"method": "update", "state": {"value": value}, "buffer_paths": []})

    def click(self, model_id: str) -> None:
        self._comm(model_id, {"method": "custom", "content": {"event": "click"}})

    def _comm(self, model_id: str, data: dict[str, Any]) -> None:
        self.kc.shell_channel.send(self.kc.session.msg("comm_msg", {"comm_id": model_id, "data": data}))

    def reply(self, msg_id: str, timeout: float = 60) -> dict[str, Any]:
        """The execute_reply of a cell (skipping replies to others), reading iopub meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read_until(lambda: False, 0.2)
            try:
                reply = self.kc.get_shell_msg(timeout=0.1)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply
        raise AssertionError(f"no execute_reply for {msg_id} in {timeout} s")

    def printed(self, msg_id: str) -> str:
        return "".join(m["content"].get("text", "") for m in self.messages
                       if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "stream")

    def shown_text(self, msg_id: str) -> list[str]:
        """The text/plain of every display (and its updates) the cell sent."""
        return [m["content"]["data"].get("text/plain", "") for m in self.messages
                if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] in ("display_data", "update_display_data")]

    def _read_until(self, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                if timeout >= 1:
                    raise AssertionError(f"nothing came in {timeout} s; last messages: {self.messages[-5:]}")
                return
            try:
                message = self.kc.get_iopub_msg(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            self.messages.append(message)
            content = message["content"]
            if message["msg_type"] == "comm_open" and content.get("target_name") == "jupyter.widget":
                self.models[content["comm_id"]] = content["data"]["state"]
            elif message["msg_type"] == "display_data" and WIDGET_VIEW in content["data"]:
                self.shown.append(content["data"][WIDGET_VIEW]["model_id"])


@pytest.fixture
def frontend(tmp_path: Path) -> Iterator[Frontend]:
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        yield Frontend(km, kc)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_review_prompt_edits_declines_and_runs(frontend: Frontend) -> None:
    with ScriptedServer() as server:
        server.script([_code("rows = 1 / 0"), _code("import os\nos.remove('data.csv')"), _code("final_answer(rows * 2)")],
                      key="Count the rows")
        frontend.kc.execute_interactive(_setup(server.url), timeout=60)
        cell = frontend.kc.execute("%%agent code --review --out n\nCount the rows of {sales}")  # live display too
        first = frontend.prompt()
        assert first["title"] == "Step 1: the agent wants to run this code"
        assert frontend.models[first["code"]]["value"] == "rows = 1 / 0"  # the proposal, editable
        queued = frontend.kc.execute("print('queued cell ran', n)")  # the analyst runs the next cell meanwhile
        frontend.edit(first["code"], "rows = 21\nprint('rows', rows)")
        frontend.click(first["Run my edit"])
        second = frontend.prompt()
        assert "os.remove" in frontend.models[second["code"]]["value"]
        frontend.edit(second["reason"], "never delete files")
        frontend.click(second["Skip"])
        third = frontend.prompt()
        frontend.click(third["Run"])
        assert frontend.reply(cell)["content"]["status"] == "ok"
        assert frontend.reply(queued)["content"]["status"] == "ok"  # held while the prompt waited, then run
        check = frontend.kc.execute(
            "print([(s.review.decision, s.code) for s in _agent_run.action_steps], _agent_run.action_steps[0].review.original)")
        frontend.reply(check)
        requests = server.requests
    assert frontend.printed(queued) == "queued cell ran 42\n"  # after the run: it saw the bound answer
    assert frontend.printed(check).strip() == (
        "[('edit', \"rows = 21\\nprint('rows', rows)\"), ('skip', \"import os\\nos.remove('data.csv')\"), "
        "('run', 'final_answer(rows * 2)')] rows = 1 / 0")
    assert "edited it before it ran" in _user_texts(requests[1]) and "rows = 21" in _user_texts(requests[1])
    assert "declined to run it" in _user_texts(requests[2]) and "never delete files" in _user_texts(requests[2])
    # each prompt was replaced by a line saying what was chosen; no widget stayed open
    said = frontend.shown_text(cell)
    assert [t.rsplit("(", 1)[1] for t in said if t.startswith("Step ") and "chosen" in t] == [
        "chosen: run my edit)", "chosen: skip)", "chosen: run)"]
    closed = {m["content"]["comm_id"] for m in frontend.messages if m["msg_type"] == "comm_close"}
    assert set(frontend.models) <= closed


def test_interrupt_while_the_prompt_waits_ends_the_run_as_interrupted(frontend: Frontend) -> None:
    with ScriptedServer() as server:
        server.script([_code("x = 1"), _code("print('never asked')")], key="Wait for me")
        frontend.kc.execute_interactive(_setup(server.url), timeout=60)
        cell = frontend.kc.execute("%%agent code --review --quiet\nWait for me")
        frontend.click(frontend.prompt()["Run"])
        frontend.prompt()
        frontend.km.interrupt_kernel()
        frontend.reply(cell)
        check = frontend.kc.execute("print(_agent_run.state, [s.review and s.review.decision for s in _agent_run.action_steps])")
        frontend.reply(check)
        assert len(server.requests) == 2
    assert frontend.printed(check).strip() == "interrupted ['run', None]"  # the waiting step kept, not run
    assert any("no choice: interrupted" in t for t in frontend.shown_text(cell))


def test_review_ui_input_asks_with_input_even_where_widgets_show(frontend: Frontend) -> None:
    with ScriptedServer() as server:
        server.script([_code("final_answer(3)")], key="Plain")
        out: list[dict[str, Any]] = []
        frontend.kc.execute_interactive(_setup(server.url) + "\n%agent config review_ui=buttons", timeout=60,
                                        output_hook=out.append)
        assert "review_ui is one of auto, widgets, input, not 'buttons'" in json.dumps([m["content"] for m in out])
        frontend.kc.execute_interactive("%agent config review_ui=input", timeout=60)
        prompts: list[str] = []

        def answer(message: dict[str, Any]) -> None:
            prompts.append(message["content"]["prompt"])
            frontend.kc.input("r")

        frontend.kc.execute_interactive("%%agent code --review --quiet\nPlain", allow_stdin=True, stdin_hook=answer,
                                        timeout=60)
    assert prompts == ["[r]un, [e]dit, [s]kip or s[t]op? "]


FIXED = 'total = df["Amount"].sum()\nprint(total)'


def test_fix_button_puts_the_fix_in_the_next_cell(frontend: Frontend) -> None:
    with ScriptedServer() as server:
        server.script([_code(f"final_answer({FIXED!r})"), _code(f"final_answer({FIXED!r})")],
                      key="Reproduce the error, find its cause")
        frontend.kc.execute_interactive(
            _setup(server.url) + "\ndf = pd.DataFrame({'Amount': [10, 20, 12]})", timeout=60)
        frontend.kc.execute_interactive('total = df["amount"].sum()\nprint(total)', timeout=60)
        fixing = frontend.kc.execute("%agent fix")
        offer = frontend.prompt(timeout=120)
        assert "keeps running until you choose" in offer["title"]
        frontend.click(offer["Put in next cell"])
        put = frontend.reply(fixing)
        dismissing = frontend.kc.execute("%agent fix")
        frontend.click(frontend.prompt(timeout=120)["Dismiss"])
        dismissed = frontend.reply(dismissing)
    assert [(p["source"], p["text"]) for p in put["content"]["payload"]] == [("set_next_input", FIXED)]
    assert "the fixed cell is in the next cell" in frontend.printed(fixing)
    assert dismissed["content"]["status"] == "ok" and dismissed["content"]["payload"] == []
    assert "`%agent fix --apply` puts it in the next cell" in frontend.printed(dismissing)
    assert any('+total = df["Amount"].sum()' in t for t in frontend.shown_text(fixing))

