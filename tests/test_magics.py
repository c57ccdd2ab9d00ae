"""The magics in real notebooks: nbclient runs a real ipykernel; the model is the scripted server."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook
from scripted_server import ScriptedServer, text, tool_calls

PLOT = (
    "Thought: total by city, then plot.\n```python\nimport matplotlib.pyplot as plt\n"
    "totals = sales.groupby('city', as_index=False)['amount'].sum()\nprint(totals)\n"
    "fig, ax = plt.subplots(); ax.bar(totals['city'], totals['amount']); plt.show()\n"
    "final_answer(int(totals['amount'].sum()))\n```\n"
)


def _setup(url: str) -> str:
    return (
        "import os, pandas as pd\nos.environ['OPENAI_API_KEY'] = 'sk-scripted'\n"
        "os.environ['LITELLM_LOCAL_MODEL_COST_MAP'] = 'True'\n%load_ext agent_kernel\n"
        f"%config AgentMagics.model = 'openai/scripted'\n%config AgentMagics.api_base = {url!r}\n"
        "sales = pd.DataFrame({'city': ['Lyon', 'Nice', 'Lyon'], 'amount': [1, 2, 3]})"
    )


def _execute(cells: list[str], cwd: Path) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")


def test_code_and_tools_cells_bind_values_show_steps_and_export(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        # --continue keeps the conversation, so its reply follows in the same script.
        server.script([text(PLOT), text("```python\nfinal_answer(len(totals))\n```\n")], key="Total the")
        server.script([tool_calls([("lookup", {"city": "Lyon"})]), tool_calls([("final_answer", {"answer": "Rhone"})])], key="Which region")
        nb = _execute(
            [
                _setup(server.url),
                "%%agent code --in sales --out total --keep totals\nTotal the {sales} amounts; chart the city totals",
                "expected = sales.groupby('city', as_index=False)['amount'].sum()\n"
                "pd.testing.assert_frame_equal(totals, expected)\nprint(total)",
                "%agent alias fast=openai/scripted-fast\ndef lookup(city: str) -> str:\n    '''Region of a city.\n\n    Args:\n        city: the city.\n    '''\n    return 'Rhone'",
                "%%agent tools -m fast --tools lookup --out region\nWhich region is Lyon in?",
                "print(region, _agent_run.state, _agent_run.model)",
                "%%agent code --continue --out n\nHow many rows has totals?",
                "print(n)",
                "%agent export 1 analysis.ipynb --kernel python3",  # the analyst's own kernel, not the sandbox's
                "%agent sandbox",
                "%agent runs",
                "%agent config max_steps=3 network=no",
                "%agent show 2",
                "%agent reset\n%agent sandbox",
            ],
            tmp_path,
        )
    assert not [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    live = [o for o in nb.cells[1].outputs if o.output_type == "display_data"]
    task, step, answer, footer = live  # one display per step, updated in place while it streams
    assert "Total the `sales` amounts; chart the city totals" in task.data["text/plain"]
    assert "Step 1" in step.data["text/html"] and "<img src=\"data:image/png;base64," in step.data["text/html"]
    assert "Final answer" in answer.data["text/html"] and "success" in footer.data["text/plain"]
    assert _stdout(nb.cells[2]).strip() == "6"
    assert _stdout(nb.cells[5]).strip() == "Rhone success openai/scripted-fast"  # the alias resolved
    assert _stdout(nb.cells[7]).strip() == "2"  # --continue saw `totals` from the first run's sandbox
    assert "sandbox isolation" in _stdout(nb.cells[9]) and "totals: DataFrame" in _stdout(nb.cells[9])
    runs = nb.cells[10].outputs[0].data["text/plain"].splitlines()  # a table, as text and HTML
    assert len(runs) == 4 and "Total the `sales` amounts; chart the city totals" in runs[1] and runs[2].split()[1:3] == ["tools", "success"]
    assert "max_steps = 3" in _stdout(nb.cells[11]) and "network = False" in _stdout(nb.cells[11])
    replay = nb.cells[12].outputs[0].data
    assert "→ lookup(city='Lyon')\n  Rhone" in replay["text/plain"] and "Which region is Lyon in?" in replay["text/plain"]
    assert "Step 1" in replay["text/html"] and "Final answer" in replay["text/html"]
    assert _stdout(nb.cells[13]).splitlines() == ["agent and sandbox stopped; the next run starts fresh",
                                                  "no sandbox: run `%%agent code` first"]
    assert _stdout(nb.cells[8]).strip() == "saved analysis.ipynb (it re-runs in the python3 kernel)"
    exported = nbformat.read(tmp_path / "analysis.ipynb", as_version=4)
    nbformat.validate(exported)
    assert exported.metadata.kernelspec.name == "python3"
    NotebookClient(exported, timeout=60, resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert exported.cells[-1].outputs[0].data["text/plain"] == "6"


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("%%agent code --bogus\nx", "unrecognized arguments: --bogus"),
        ("%%agent code --in nope\nx", "not defined in the notebook: nope"),
        ("%%agent code\nuse {missing}", "not defined in the notebook: missing"),
        ("%%agent robot\nx", "invalid choice: 'robot'"),
        ("%%agent code --max-steps zero\nx", "expected a positive whole number"),
        ("%%agent tools --keep x\nx", "only apply to `%%agent code`"),
        ("%%agent code --continue\nx", "--continue needs an earlier"),
        ("%%agent tools --tools nope\nx", "--tools: 'nope' is not defined in the notebook"),
        ("%%agent tools --tools In\nx", "as a tool; pass a Tool"),
        ("%agent model a b", "usage: %agent model [NAME]"),
        ("%agent show 3", "no runs yet"),
        ("%agent frobnicate", "unknown command 'frobnicate'"),
        ("%%agent code --max-cost lots\nx", "expected a positive number of US dollars"),
        ("%agent fix", "no failing cell to work on"),
        ("%agent explain --apply", "%agent explain only takes -m MODEL"),
        ("%agent config session_max_cost=free", "expected a positive number of US dollars"),
    ],
)
def test_bad_input_gets_a_usage_message_not_a_traceback(tmp_path: Path, cell: str, message: str) -> None:
    nb = _execute(["%load_ext agent_kernel", cell], tmp_path)
    out = _stdout(nb.cells[1])
    assert message in out and "UsageError" in out
    assert not [o for o in nb.cells[1].outputs if o.output_type == "error"]


def test_interrupt_keeps_an_exportable_interrupted_run(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.script([text("```python\nimport time\ntime.sleep(60)\n```\n")], key="Sleep")
        km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
        try:
            kc.execute_interactive(_setup(server.url), timeout=60)
            msg_id = kc.execute("%%agent code --quiet\nSleep a long time")
            deadline = time.monotonic() + 60
            while not server.requests and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.5)  # the reply has arrived and the action is sleeping in the sandbox
            km.interrupt_kernel()
            reply = kc.get_shell_msg(timeout=60)
            assert reply["parent_header"]["msg_id"] == msg_id
            outputs: list[dict] = []
            kc.execute_interactive(
                "print(_agent_run.state, len(_agent_run.action_steps))\n%agent export interrupted.ipynb",
                output_hook=outputs.append,
                timeout=60,
            )
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    printed = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    assert printed.startswith("interrupted 1"), printed
    nbformat.validate(nbformat.read(tmp_path / "interrupted.ipynb", as_version=4))
