"""A run becomes notebook code: `%agent cell [N]` and `--to-cell` put it in the next cell, in a
notebook kernel (nbclient, the payload JupyterLab reads) and in terminal IPython (a pty)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import nbformat
import pexpect
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook
from scripted_server import ScriptedServer, text, tool_calls

FAILING = "Thought: by week.\n```python\nweekly = sales.groupby('wk')['amount'].sum()\n```\n"
WORKING = ("Thought: the column is week.\n```python\n# totals per week\nweekly = sales.groupby('week')['amount'].sum()\n"
           "final_answer(int(weekly.max()))\n```\n")
SETUP = ("import os, pandas as pd\nos.environ['OPENAI_API_KEY'] = 'sk-scripted'\n%load_ext agent_kernel\n"
         "%config AgentMagics.model = 'openai/scripted'\n%config AgentMagics.api_base = {url!r}\n"
         "sales = pd.DataFrame({{'week': [1, 1, 2], 'amount': [5, 7, 9]}})")


def _notebook(cells: list[str], cwd: Path) -> tuple[nbformat.NotebookNode, dict[int, dict[str, Any]]]:
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    replies: dict[int, dict[str, Any]] = {}
    NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True,
                   on_cell_executed=lambda cell, cell_index, execute_reply: replies.__setitem__(cell_index, execute_reply),
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb, replies


def _next_input(reply: dict[str, Any]) -> str:
    (payload,) = [p for p in reply["content"]["payload"] if p["source"] == "set_next_input"]
    return payload["text"]


def test_a_run_becomes_the_next_cell_without_its_failed_steps(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.script([text(FAILING), text(WORKING)], key="Peak week")
        nb, replies = _notebook([
            SETUP.format(url=server.url),
            "%%agent code --in sales --out peak --to-cell\nPeak week of {sales}",
            "%agent cell 1",
        ], tmp_path)
        assert not [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
        cell = _next_input(replies[1])
        assert _next_input(replies[2]) == cell
        assert "groupby('wk')" not in cell and "# totals per week" in cell and "peak = int(weekly.max())" in cell
        assert "1 step that failed" in cell
        # Run in a notebook kernel of its own, it redoes the work from the notebook's variable.
        rerun, _ = _notebook(["import pandas as pd\nsales = pd.DataFrame({'week': [1, 1, 2], 'amount': [5, 7, 9]})",
                              cell + "\nprint(peak)"], tmp_path)
        assert rerun.cells[1].outputs[0].text == "12\n"


def test_agent_cell_fills_the_next_prompt_in_terminal_ipython(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.script([text(WORKING)], key="Peak week")
        env = {**os.environ, "AGENT_KERNEL_MODEL": "openai/scripted", "AGENT_KERNEL_API_BASE": server.url,
               "OPENAI_API_KEY": "sk-scripted", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "TERM": "xterm",
               "IPYTHONDIR": str(tmp_path / "ipython")}
        shell = pexpect.spawn(str(Path(sys.executable).parent / "ipython"), ["--no-banner", "--colors=NoColor"],
                              env=env, cwd=str(tmp_path), encoding="utf-8", timeout=120, dimensions=(50, 200))
        try:
            shell.expect(r"In \[1\]")
            shell.sendline("%load_ext agent_kernel")
            shell.expect(r"In \[2\]")
            shell.sendline("import pandas as pd; sales = pd.DataFrame({'week': [1, 1, 2], 'amount': [5, 7, 9]})")
            shell.expect(r"In \[3\]")
            shell.sendline("get_ipython().run_cell_magic('agent', 'code --in sales --quiet', 'Peak week of {sales}')")
            shell.expect(r"In \[4\]")
            shell.sendline("%agent cell")
            shell.expect("code is in the next cell")
            shell.expect(r"In \[5\]")
            shell.expect("answer = int")  # the next prompt holds the run's code, ready to edit or run
            shell.send("\x1b\r")  # Esc, Enter: run the prefilled multi-line cell
            shell.expect(r"In \[6\]")
            shell.sendline("print('peak', answer)")
            shell.expect("peak 12")
        finally:
            shell.sendline("exit")
            shell.close(force=True)


def test_the_agent_sees_the_notebooks_last_cells_and_the_cells_a_task_names(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.script([tool_calls([("final_answer", {"answer": "fixed"})])], key="Fix the chart above")
        nb, _ = _notebook([
            SETUP.format(url=server.url),
            "weekly = sales.groupby('week')['amount'].sum()\nweekly",
            "weekly.plot(kind='barh', colour='red')",
            "%%agent tools --context 2\nFix the chart above; the totals were {Out[2]} from {In[2]}",
        ], tmp_path)
        asked = next(m["content"] for m in server.requests[0]["messages"] if m["role"] == "user")
    assert [o.ename for o in nb.cells[2].outputs if o.output_type == "error"] == ["AttributeError"]
    assert "In [3]:\n```python\nweekly.plot(kind='barh', colour='red')\n```\nIt raised AttributeError" in asked
    assert "In [2]:" in asked and "In [1]:" not in asked  # the last two cells only
    assert "the totals were \n```\nweek\n1    12\n2     9" in asked  # {Out[2]}: the output's repr
    assert "from \n```\nweekly = sales.groupby('week')['amount'].sum()\nweekly\n```" in asked  # {In[2]}: as typed


def test_ask_user_headless_gets_no_answer_and_states_its_assumption(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.script([tool_calls([("ask_user", {"question": "Which column is revenue?"})]),
                       tool_calls([("final_answer", {"answer": "assumed amount"})])], key="Total revenue")
        nb, _ = _notebook([SETUP.format(url=server.url) + "\n%agent config review_ui=input",
                           "%%agent tools --ask --out said\nTotal revenue of {sales}", "print(said)"], tmp_path)
        told = [m for m in server.requests[1]["messages"] if m["role"] == "tool"]
        offered = [t["function"]["name"] for t in server.requests[0]["tools"]]
    assert "ask_user" in offered
    assert told and told[0]["content"] == "no answer: state the assumption you make and go on"
    assert nb.cells[2].outputs[0].text == "assumed amount\n"
