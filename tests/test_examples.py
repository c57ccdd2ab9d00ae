"""CI runs every notebook in examples/ with nbclient in a real ipykernel, against the scripted server.

The server runs as its own process (`tests/scripted_server.py --script FILE.json`), one conversation
per task, keyed by words of the task. The notebooks choose their model from the environment
(AGENT_KERNEL_MODEL / AGENT_KERNEL_API_BASE), so they hold no test plumbing. Checks that need the
kernel's state run in cells appended to the in-memory copy; the stored notebooks are unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

EXAMPLES = Path(__file__).parent.parent / "examples"
SERVER = Path(__file__).parent / "scripted_server.py"


def _code(source: str) -> str:
    return f"```python\n{source}\n```"


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


# What the scripted model answers, per conversation (the key is a phrase of the run's first task).
SCRIPTS: dict[str, list[Any]] = {
    "which region brought in the most revenue": [
        "Thought: add the revenue column, total it per region, print and plot the totals.\n" + _code(
            'sales["revenue"] = sales["units"] * sales["unit_price"]\n'
            'by_region = sales.groupby("region")["revenue"].sum().sort_values(ascending=False)\n'
            "print(by_region)\n"
            'by_region.plot(kind="bar", title="Revenue per region", ylabel="revenue")'
        ),
        _code('final_answer({"region": by_region.index[0], "revenue": round(float(by_region.iloc[0]), 2)})'),
        # the --continue follow-up
        _code('by_month = sales.groupby(sales["date"].dt.strftime("%Y-%m"))["revenue"].sum()\nprint(by_month)'),
        _code("final_answer(by_month.idxmax())"),
    ],
    "maria@example.com": [
        _call("check_order_status", order_id="A-1002"),
        _call("final_answer", answer="Hi Maria, order A-1002 is in transit with UPS, due 2024-07-03."),
    ],
    "tom@example.com": [
        # "payment" is not one of the categories: the schema rejects it and the model corrects itself.
        _call("create_ticket", customer="tom@example.com", category="payment", summary="Charged twice for A-1001."),
        _call("create_ticket", customer="tom@example.com", category="billing", summary="Charged twice for A-1001."),
        _call("escalate_to_human", ticket_id="T-0001", reason="Double charge, third contact, asks for a person."),
        _call("final_answer", answer="Sorry, Tom: ticket T-0001 is with our support lead, who will contact you."),
    ],
    "A regional manager asks": [
        _call("analyst", task="Using `sales`, find the product with the most units sold in the South region "
                              "between 2024-04-01 and 2024-06-30. Return {'product': ..., 'units': ...}."),
        _call("notify_team", team="sales", message="Q2 2024, South: Gadget sold the most units (203)."),
        _call("final_answer", answer="Gadget sold the most units in the South in Q2 2024 (203); the sales team knows."),
    ],
    "most units sold in the South region": [
        _code('q2 = sales[(sales["region"] == "South") & sales["date"].between("2024-04-01", "2024-06-30")]\n'
              'units = q2.groupby("product")["units"].sum().sort_values(ascending=False)\nprint(units)\n'
              'final_answer({"product": units.index[0], "units": int(units.iloc[0])})'),
    ],
    "Print the contents of the file at": [
        _code("print(open(secret_file).read())"),
        _code('final_answer("The sandbox may not open that file.")'),
        _code('import os\nprint(os.environ["PAYMENTS_API_KEY"])'),
        _code('final_answer("PAYMENTS_API_KEY is not set in the sandbox.")'),
        _code('import urllib.request\nprint(urllib.request.urlopen("https://example.com", timeout=5).read()[:200])'),
        _code('final_answer("No network in the sandbox.")'),
        _code('import subprocess\nprint(subprocess.run(["cat", secret_file], capture_output=True, text=True).stdout)'),
        _code('final_answer("Starting programs is not allowed.")'),
    ],
    # code_vs_tools.ipynb asks each task twice, CodeAgent first: one conversation serves both runs, in order.
    "week-over-week change": [
        "Thought: fetch both weeks of each metric with the tool, in a loop, and compare.\n" + _code(
            "changes = {}\n"
            'for name in ["signups", "revenue", "churn_rate"]:\n'
            "    before, after = get_metric(name=name, week=22), get_metric(name=name, week=23)\n"
            "    pct = (after - before) / before * 100\n"
            '    changes[name] = {"change_pct": round(pct, 1), "flag": abs(pct) > 10}\n'
            "print(changes)\nfinal_answer(changes)"
        ),
        {"tool_calls": [{"name": "get_metric", "arguments": {"name": name, "week": week}}
                        for name in ("signups", "revenue", "churn_rate") for week in (22, 23)]},
        _call("final_answer", answer={"signups": {"change_pct": 12.2, "flag": True},
                                      "revenue": {"change_pct": 3.0, "flag": False},
                                      "churn_rate": {"change_pct": -13.3, "flag": True}}),
    ],
    "118th Fibonacci number": [
        _code("a, b = 0, 1\nfor _ in range(118):\n    a, b = b, a + b\nfinal_answer(a)"),
        _call("python_interpreter", code="a, b = 0, 1\nfor _ in range(118):\n    a, b = b, a + b\nprint(a)"),
        _call("final_answer", answer=2046711111473984623691759),
    ],
}

RUNS = """\
import json as _json
from agent_kernel.magics import AgentMagics as _AM
_runs = [r.run for r in next(m for m in get_ipython().configurables if isinstance(m, _AM)).runs]
"""


@contextlib.contextmanager
def scripted_server_process(conversations: dict[str, Any], folder: Path) -> Iterator[str]:
    """The scripted server as its own process (kernels started by nbclient reach it); yields its URL."""
    script = folder / "script.json"
    script.write_text(json.dumps({"conversations": conversations}), encoding="utf-8")
    process = subprocess.Popen([sys.executable, str(SERVER), "--script", str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scripted_server_process(SCRIPTS, tmp_path_factory.mktemp("script")) as url:
        yield url


@pytest.fixture
def workdir(server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of examples/ to run in; the kernels started from here use the scripted model."""
    monkeypatch.setenv("AGENT_KERNEL_MODEL", "openai/scripted")
    monkeypatch.setenv("AGENT_KERNEL_API_BASE", server_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-scripted")
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    return tmp_path / "examples"


def _execute(workdir: Path, name: str, checks: Sequence[str] = ()) -> nbformat.NotebookNode:
    """Run workdir/NAME top to bottom, then the `checks` cells in the same kernel; fail on any error."""
    nb = nbformat.read(workdir / name, as_version=4)
    nb.cells.extend(new_code_cell(source) for source in checks)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _printed_json(cell: nbformat.NotebookNode) -> Any:
    return json.loads(_stdout(cell))


def _cells(nb: nbformat.NotebookNode, start: str) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start)]


def _agent_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return _cells(nb, "%%agent")


def _sales() -> pd.DataFrame:
    return pd.read_csv(EXAMPLES / "data" / "sales.csv", parse_dates=["date"])


def test_every_example_is_stored_clean_and_tested() -> None:
    tested = {"quickstart.ipynb", "support_router.ipynb", "agents_together.ipynb", "sandbox_limits.ipynb",
              "code_vs_tools.ipynb", "web_tools.ipynb"}
    assert {p.name for p in EXAMPLES.glob("*.ipynb")} == tested
    for path in EXAMPLES.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        sources = "\n".join(c.source for c in code)
        assert "scripted" not in sources and "api_base" not in sources and "environ['AGENT" not in sources
        assert code[0].source.startswith("%load_ext agent_kernel")


def test_quickstart(workdir: Path) -> None:
    sales = _sales()
    revenue = sales["units"] * sales["unit_price"]
    expected = revenue.groupby(sales["region"]).sum().sort_values(ascending=False)
    best_month = revenue.groupby(sales["date"].dt.strftime("%Y-%m")).sum().idxmax()
    nb = _execute(workdir, "quickstart.ipynb", [
        "print(by_region.to_json())",
        "import json\nprint(json.dumps([answer, best_month]))",
    ])
    by_region = pd.read_json(io.StringIO(_stdout(nb.cells[-2])), typ="series")
    pd.testing.assert_series_equal(by_region, expected, check_names=False, check_index_type=False)
    answer, month = _printed_json(nb.cells[-1])
    assert answer == {"region": expected.index[0], "revenue": round(float(expected.iloc[0]), 2)}
    assert month == best_month
    # The live display showed the steps, the code and the chart the sandbox drew.
    shown = "".join(o.data.get("text/html", "") for o in _agent_cells(nb)[0].outputs if o.output_type == "display_data")
    assert "Step 2" in shown and "groupby" in shown and '<img src="data:image/png;base64,' in shown
    # The exported run re-runs in a plain kernel to the same answer.
    exported = _execute(workdir, "quickstart_run.ipynb")
    assert exported.cells[-1].outputs[0].data["text/plain"] == repr(answer)


def test_support_router(workdir: Path) -> None:
    nb = _execute(workdir, "support_router.ipynb", [
        RUNS + "print(_json.dumps({'tickets': tickets, 'escalations': escalations, 'outputs': [r.output for r in _runs],"
               " 'calls': [[(c.name, c.arguments, c.result, c.error) for s in r.action_steps for c in s.tool_calls]"
               " for r in _runs]}))",
    ])
    state = _printed_json(nb.cells[-1])
    assert state["tickets"] == [{"id": "T-0001", "customer": "tom@example.com", "category": "billing",
                                 "summary": "Charged twice for A-1001."}]  # the rejected call never ran
    assert state["escalations"] == [{"ticket_id": "T-0001",
                                     "reason": "Double charge, third contact, asks for a person."}]
    first, second = state["calls"]
    assert first[0] == ["check_order_status", {"order_id": "A-1002"},
                        {"order_id": "A-1002", "status": "in transit", "carrier": "UPS", "eta": "2024-07-03"}, None]
    assert second[0][0] == "create_ticket" and "category" in second[0][3] and "billing" in second[0][3]
    assert second[1][2] == "T-0001" and second[2][2] == "T-0001 is now with the on-call support lead"
    assert state["outputs"][1].startswith("Sorry, Tom") and _stdout(_cells(nb, "print(reply)")[1]).startswith("Sorry")


def test_agents_together(workdir: Path) -> None:
    sales = _sales()
    q2 = sales[(sales["region"] == "South") & sales["date"].between("2024-04-01", "2024-06-30")]
    units = q2.groupby("product")["units"].sum()
    nb = _execute(workdir, "agents_together.ipynb", [
        RUNS + "print(_json.dumps([(c.name, c.result) for s in _runs[-1].action_steps for c in s.tool_calls]))",
    ])
    analyst_call, notify_call, _ = _printed_json(nb.cells[-1])
    assert analyst_call == ["analyst", {"product": units.idxmax(), "units": int(units.max())}]
    assert notify_call == ["notify_team", "posted"] and "Gadget" in _stdout(_cells(nb, "print(summary)")[0])
    memory = _stdout(_cells(nb, "from agent_kernel.memory import ActionStep")[0])  # the analyst's own record
    assert f"final_answer: {{'product': '{units.idxmax()}', 'units': {int(units.max())}}}" in memory


def test_sandbox_limits(workdir: Path) -> None:
    nb = _execute(workdir, "sandbox_limits.ipynb", [
        RUNS + "print(_json.dumps([(r.action_steps[0].code, r.action_steps[0].execution.error.name,"
               " r.action_steps[0].execution.error.value) for r in _runs]))",
    ])
    read, env, network, spawn = _printed_json(nb.cells[-1])
    assert read[1] == "PermissionError" and "open(secret_file)" in read[0]
    assert env[1] == "KeyError" and "PAYMENTS_API_KEY" in env[2]
    assert network[1] == "URLError"
    assert spawn[1] == "PermissionError" and "subprocess.run" in spawn[0]
    agent_outputs = json.dumps([c.outputs for c in _agent_cells(nb)])
    assert "correct-horse" not in agent_outputs and "sk-live-demo" not in agent_outputs
    layers = _stdout(_cells(nb, "%agent sandbox")[0])
    for layer in ("landlock", "seccomp", "network", "environment"):
        assert f"on   {layer}" in layers, layers


def _fibonacci(n: int) -> int:
    """F(n) by fast doubling: a different method from the scripted model's loop."""
    def pair(k: int) -> tuple[int, int]:  # (F(k), F(k+1))
        if k == 0:
            return 0, 1
        a, b = pair(k // 2)
        c, d = a * (2 * b - a), a * a + b * b
        return (d, c + d) if k % 2 else (c, d)
    return pair(n)[0]


def test_code_vs_tools(workdir: Path) -> None:
    nb = _execute(workdir, "code_vs_tools.ipynb", [
        RUNS + "print(_json.dumps({'answers': [metrics_code, metrics_tools, fib_code, fib_tools],"
               " 'metrics': {k: {str(w): v for w, v in d.items()} for k, d in METRICS.items()},"
               " 'runs': [(r.agent, r.state, len(r.action_steps),"
               " [(c.name, c.arguments, c.result) for s in r.action_steps for c in s.tool_calls]) for r in _runs],"
               " 'comparison': comparison.reset_index().to_dict('records')}))",
    ])
    state = _printed_json(nb.cells[-1])
    metrics_code, metrics_tools, fib_code, fib_tools = state["answers"]
    changes = {name: (weeks["23"] - weeks["22"]) / weeks["22"] * 100 for name, weeks in state["metrics"].items()}
    expected = {name: {"change_pct": round(pct, 1), "flag": abs(pct) > 10} for name, pct in changes.items()}
    assert metrics_code == metrics_tools == expected
    assert fib_code == fib_tools == _fibonacci(118) and isinstance(fib_code, int)
    runs = state["runs"]
    assert [(agent, run_state) for agent, run_state, _, _ in runs] == [("code", "success"), ("tools", "success")] * 2
    # Both metrics runs really fetched the six values through get_metric: from sandbox code, or as JSON calls.
    for _, _, _, calls in runs[:2]:
        fetched = {(c[1]["name"], c[1]["week"]): c[2] for c in calls if c[0] == "get_metric"}
        assert fetched == {(n, int(w)): v for n, weeks in state["metrics"].items() for w, v in weeks.items()}
    assert str(_fibonacci(118)) in runs[3][3][0][2]  # the tools agent's python_interpreter computed it
    # The closing table lists each task's two agents with the steps their runs took.
    table = [(r["task"], r["agent"], r["state"], r["steps"]) for r in state["comparison"]]
    tasks = ["metrics", "metrics", "fibonacci", "fibonacci"]
    assert table == [(task, agent, "success", steps) for task, (agent, _, steps, _) in zip(tasks, runs)]
    assert [steps for _, _, steps, _ in runs] == [1, 2, 1, 2]
    shown = _cells(nb, "comparison = ")[0].outputs[0].data["text/plain"]
    assert "code" in shown and "tools" in shown and "steps" in shown
