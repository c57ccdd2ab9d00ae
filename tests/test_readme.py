"""Every Python example in README.md runs as written, against a scripted model on 127.0.0.1.

The code comes from README.md itself at test time, never from a copy. Plain Python blocks run in a
fresh interpreter each; notebook blocks (`%load_ext`, `%%agent`, `%config`) run in order as cells of
one real IPython kernel through nbclient. litellm reaches the scripted server through
OPENAI_BASE_URL, exactly as the README's `"openai/gpt-4o-mini"` would reach OpenAI. What a block
leaves behind (variables, printed output, files) is then checked against answers computed here.
A block the test does not know fails the test: list it in BLOCKS, or in NOT_EXECUTABLE with a reason.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from scripted_server import Reply, ScriptedServer, tool_calls
from test_examples import (
    EXAMPLES,
    RUNS,
    _code,
    _execute,
    _printed_json,
    _sales,
    _stdout,
)

README = EXAMPLES.parent / "README.md"
MCP_EXAMPLE = EXAMPLES / "mcp_metrics.py"


@dataclass(frozen=True)
class Block:
    line: int  # README line of the block's first code line
    source: str

    @property
    def label(self) -> str:
        return f"README.md:{self.line} ({self.source.splitlines()[0][:60]!r})"


def readme_blocks(text: str) -> list[Block]:
    """The ```python blocks, and notebook cells shown in a plain ``` fence (those starting with %%agent)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)\s*", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        source = "\n".join(lines[i + 1 : end])
        if fence.group(1) == "python" or (not fence.group(1) and source.startswith("%%agent")):
            blocks.append(Block(i + 2, source))
        i = end + 1
    return blocks


# Each README block, named by its whole text or by a phrase only it contains. Notebook blocks run in this order in one
# kernel (the approver is defined before the --review cell that uses it).
NOTEBOOK = ["%load_ext agent_kernel", "sales = pd.read_csv", "--in sales --out top", "--out answer --keep monthly",
            "--continue --out best_month", "def approve(step)", "--review --in sales"]
SCRIPTS_RUN = ["with Sandbox(", "def exchange_rate", "mcp_tools("]
NOT_EXECUTABLE: dict[str, str] = {}  # phrase -> why it cannot run in a test


def _find(blocks: list[Block], phrase: str) -> Block:
    """The block that is exactly `phrase`, else the one block containing it."""
    found = [b for b in blocks if b.source == phrase] or [b for b in blocks if phrase in b.source]
    assert len(found) == 1, f"{len(found)} README blocks contain {phrase!r}: {[b.label for b in found]}"
    return found[0]


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
    return readme_blocks(README.read_text(encoding="utf-8"))


def test_every_python_block_is_run_or_excused(blocks: list[Block]) -> None:
    named = [_find(blocks, phrase) for phrase in [*NOTEBOOK, *SCRIPTS_RUN, *NOT_EXECUTABLE]]
    missing = [b.label for b in blocks if b not in named]
    assert not missing, f"README blocks no test runs: {missing}; add them to NOTEBOOK or SCRIPTS_RUN in {__file__}"
    assert len(set(named)) == len(named)


# -- what the scripted model answers ------------------------------------------------------------


def _tool_results(body: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(name, arguments, result text) of every tool call the agent made so far in this request."""
    results = {m["tool_call_id"]: m["content"] for m in body["messages"] if m.get("role") == "tool"}
    return [(c["function"]["name"], json.loads(c["function"]["arguments"]), results[c["id"]])
            for m in body["messages"] if m.get("role") == "assistant" for c in m.get("tool_calls") or []]


def _router(body: dict[str, Any]) -> Reply:
    """Asks both rates at once, then answers from the rates the tool really returned (again when the
    answer is sent back: its arithmetic is the model's own, which no tool result shows)."""
    done = {args["currency"]: float(result) for name, args, result in _tool_results(body) if name == "exchange_rate"}
    if not done:
        return tool_calls([("exchange_rate", {"currency": "GBP"}), ("exchange_rate", {"currency": "USD"})])
    return tool_calls([("final_answer", {"answer": round(120 / done["GBP"] * done["USD"], 2)})])


WEEKS = (22, 23)
METRIC_CODE = _code(
    "changes = {}\n"
    'for name in ["signups", "revenue", "churn_rate"]:\n'
    f"    before, after = get_metric(name=name, week={WEEKS[0]}), get_metric(name=name, week={WEEKS[1]})\n"
    "    pct = (after - before) / before * 100\n"
    '    changes[name] = {"change_pct": round(pct, 1), "flag": abs(pct) > 10}\n'
    "final_answer(changes)")


def _metrics(body: dict[str, Any]) -> Reply:
    """The MCP task: code for the CodeAgent; six calls, then the changes they give, for the ToolCallingAgent."""
    if not body.get("tools"):
        return Reply(text=METRIC_CODE)
    fetched: dict[str, dict[int, float]] = {}
    for _, args, result in _tool_results(body):
        fetched.setdefault(args["name"], {})[args["week"]] = float(result)
    if not fetched:
        return tool_calls([("get_metric", {"name": n, "week": w})
                           for n in ("signups", "revenue", "churn_rate") for w in WEEKS])
    answer = {}
    for name, weeks in fetched.items():
        pct = (weeks[WEEKS[1]] - weeks[WEEKS[0]]) / weeks[WEEKS[0]] * 100
        answer[name] = {"change_pct": round(pct, 1), "flag": abs(pct) > 10}
    return tool_calls([("final_answer", {"answer": answer})])


USD = 'orders["amount"] / orders["currency"].map(exchange_rate) * exchange_rate("USD")'
BY_REGION = 'by_region = (sales["units"] * sales["unit_price"]).groupby(sales["region"]).sum()\n'
MONTHLY = ('revenue = (sales["units"] * sales["unit_price"]).groupby(sales["date"].dt.strftime("%Y-%m")).sum()\n')

CONVERSATIONS: dict[str, Any] = {
    "brought in the most revenue": [
        "Thought: total the revenue per region, chart it, answer with the top region and its total.\n" + _code(
            "import matplotlib.pyplot as plt\n" + BY_REGION
            + 'by_region.plot(kind="bar", title="Revenue per region")\nplt.show()\n'
            "final_answer((by_region.idxmax(), round(float(by_region.max()), 2)))"),
    ],
    "compute monthly revenue": [
        "Thought: revenue is units times price; total it per month and region, plot it, compare.\n" + _code(
            "import pandas as pd\nimport matplotlib.pyplot as plt\n"
            'sales["revenue"] = sales["units"] * sales["unit_price"]\n'
            'month = sales["date"].dt.strftime("%Y-%m").rename("month")\n'
            'monthly = sales.pivot_table(index=month, columns="region", values="revenue", aggfunc="sum")\n'
            'monthly.plot(marker="o", title="Monthly revenue by region", ylabel="revenue")\nplt.show()\n'
            "growth = (monthly.iloc[-1] / monthly.iloc[0] - 1).sort_values(ascending=False)\nprint(growth.round(3))"
        ),
        _code('final_answer(f"{growth.index[0]} grew the most: {growth.iloc[0]:+.0%} from '
              '{monthly.index[0]} to {monthly.index[-1]}")'),
        _code("final_answer(monthly.sum(axis=1).idxmax())"),  # the --continue follow-up
    ],
    "Find the month with the highest revenue": [
        _code(MONTHLY + 'revenue.to_csv("revenue.csv")'),  # the approver skips this one
        _code(MONTHLY + "final_answer(revenue.idxmax())"),
    ],
    "Convert each order to USD": [
        "Thought: each amount over its currency's rate gives euros; times the USD rate gives dollars.\n"
        + _code(f"usd = {USD}\nprint(usd.round(2).tolist())\nfinal_answer(round(float(usd.sum()), 2))"),
    ],
    "Which order is the largest in USD?": [_code(f'usd = {USD}\nfinal_answer(orders.loc[usd.idxmax(), "order"])')],
    "What is 120 GBP in USD?": _router,
    "Pull signups, revenue and churn_rate": _metrics,
}


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        for key, script in CONVERSATIONS.items():
            s.script(script, key=key)
        yield s


@pytest.fixture
def workdir(server: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The repository's layout (examples/, data/) to run in; litellm's OpenAI client goes to the scripted server."""
    for name in ("AGENT_KERNEL_MODEL", "AGENT_KERNEL_API_BASE", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)  # the README's own defaults, not a test's configuration
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-scripted")
    # `python` in a README command is the project's interpreter, as in an activated virtualenv.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    (tmp_path / "data").mkdir()
    return tmp_path


# -- plain Python blocks: a fresh interpreter each ----------------------------------------------

_RUNNER = """\
import json, sys
path, line, prelude, checks = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
namespace = {"__name__": "__main__"}
exec(compile(prelude, "<test prelude>", "exec"), namespace)
with open(path, encoding="utf-8") as f:  # padded so that tracebacks give README.md's own line numbers
    exec(compile("\\n" * (line - 1) + f.read(), "README.md", "exec"), namespace)
print("\\n@checks " + json.dumps({check: eval(check, namespace) for check in checks}, default=repr))
"""


def _run_script(workdir: Path, block: Block, checks: list[str], prelude: str = "",
                env: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """Run the block as written in a new interpreter in `workdir`; its printed output and the checks' values."""
    source = workdir / f"readme_{block.line}.py"
    source.write_text(block.source, encoding="utf-8")
    command = [sys.executable, "-c", _RUNNER, str(source), str(block.line), prelude, json.dumps(checks)]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"{block.label} failed:\n{done.stderr[-4000:]}"
    printed, _, values = done.stdout.rpartition("\n@checks ")
    return printed, json.loads(values)


def test_sandbox_block(workdir: Path, blocks: list[Block]) -> None:
    prelude = ("import pandas as pd\n"
               "df = pd.DataFrame({'store': ['a', 'b', 'c', 'd'], 'sales': [120, 340, 90, 210]})\n"
               "def lookup(key: str) -> str:\n    return key.upper()\n")
    printed, values = _run_script(workdir, _find(blocks, "with Sandbox("), [
        "top.to_dict()", "df.nlargest(3, 'sales').to_dict()", "ex.error", "ex.result['text/plain']"], prelude)
    assert values["top.to_dict()"] == values["df.nlargest(3, 'sales').to_dict()"]
    assert values["ex.error"] is None and values["ex.result['text/plain']"].split()[2:5] == ["1", "b", "340"]
    assert "landlock" in printed.lower() and "seccomp" in printed.lower()  # print(sb.isolation)


def test_agents_from_python_block(workdir: Path, blocks: list[Block], server: ScriptedServer) -> None:
    # Expected values, computed in the README's own interpreter from its own rates and orders.
    expected_total = "round(sum(orders.amount / orders.currency.map(exchange_rate) * exchange_rate('USD')), 2)"
    largest = "orders.loc[(orders.amount / orders.currency.map(exchange_rate)).idxmax(), 'order']"
    in_usd = "round(120 / exchange_rate('GBP') * exchange_rate('USD'), 2)"
    calls = "[c.name for s in run.action_steps for c in s.tool_calls]"
    printed, values = _run_script(workdir, _find(blocks, "def exchange_rate"), [
        "run.output", "run.state", expected_total, calls, "type(event).__name__", "event.run.output", largest, in_usd])
    assert values["run.state"] == "success" and values["run.output"] == values[expected_total]
    assert values[calls].count("exchange_rate") >= 2
    lines = printed.splitlines()
    assert lines[0].startswith(f"{values['run.output']} success Usage(")  # print(run.output, run.state, ...)
    # run.replay(): the code, the tool calls it made from the sandbox with their results, the answer
    assert "→ exchange_rate(currency='GBP')" in printed and f"── Final answer\n{values['run.output']}" in printed
    exported = nbformat.read(workdir / "orders.ipynb", as_version=4)
    assert any("map(exchange_rate)" in c.source for c in exported.cells if c.cell_type == "code")
    # The stream: events printed as they came, ending with the finished run and its answer.
    assert {"RunStarted", "StepStarted", "TextDelta", "StepCompleted"} <= {line.split("(")[0] for line in lines}
    assert values["type(event).__name__"] == "RunCompleted"
    assert values["event.run.output"] == values[largest]
    # The router called the tool twice in one step and answered from the rates it got back.
    assert lines[-1] == str(values[in_usd])
    router_calls = [r for r in server.requests if "What is 120 GBP" in json.dumps(r["messages"][:2])]
    assert {t["function"]["name"] for t in router_calls[0]["tools"]} >= {"exchange_rate", "code_agent"}


def _mcp_example_metrics() -> dict[str, dict[int, float]]:
    spec = importlib.util.spec_from_file_location("mcp_metrics", MCP_EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.METRICS


def test_mcp_block(workdir: Path, blocks: list[Block]) -> None:
    http = subprocess.Popen([sys.executable, str(MCP_EXAMPLE), "--http", "--token", "demo", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "METRICS_API_KEY": "demo"})
    try:
        assert http.stdout is not None
        url = http.stdout.readline().strip()
        printed, _ = _run_script(workdir, _find(blocks, "mcp_tools("), [], env={"METRICS_MCP_URL": url})
    finally:
        http.terminate()
        http.wait(10)
    changes = {name: (w[23] - w[22]) / w[22] * 100 for name, w in _mcp_example_metrics().items()}
    expected = {name: {"change_pct": round(pct, 1), "flag": abs(pct) > 10} for name, pct in changes.items()}
    code_answer, tools_answer = (ast.literal_eval(line) for line in printed.strip().splitlines()[-2:])
    assert code_answer == tools_answer == expected
    assert [name for name, change in expected.items() if change["flag"]] == ["signups", "churn_rate"]


# -- notebook blocks: one real kernel, in order ------------------------------------------------


def test_notebook_blocks(workdir: Path, blocks: list[Block]) -> None:
    cells = [_find(blocks, phrase).source for phrase in NOTEBOOK]
    # The approver block builds an agent from `model`, which the README leaves to the reader.
    cells.insert(NOTEBOOK.index("def approve(step)"), "from agent_kernel import CodeAgent\nmodel = %agent model")
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells]), workdir / "examples" / "readme.ipynb")
    nb = _execute(workdir / "examples", "readme.ipynb", [
        RUNS + "print(_json.dumps({'top': top, 'answer': answer, 'best_month': best_month,"
               " 'monthly': monthly.round(6).to_dict(), 'approve_is_set': agent.approve is approve,"
               " 'runs': [(r.state, r.output, [(s.review.decision, s.review.reason) if s.review else None"
               " for s in r.action_steps]) for r in _runs]}))",
    ])
    state = _printed_json(nb.cells[-1])
    sales = _sales()
    revenue = sales["units"] * sales["unit_price"]
    by_region = revenue.groupby(sales["region"]).sum()
    assert state["top"] == [by_region.idxmax(), round(float(by_region.max()), 2)]  # a tuple, as JSON here
    monthly = revenue.groupby([sales["date"].dt.strftime("%Y-%m"), sales["region"]]).sum().unstack()
    assert state["monthly"] == monthly.round(6).to_dict()
    assert state["best_month"] == monthly.sum(axis=1).idxmax()
    first_to_last = monthly.iloc[-1] / monthly.iloc[0] - 1
    assert state["answer"].startswith(f"{first_to_last.idxmax()} grew the most: {first_to_last.max():+.0%}")
    assert state["approve_is_set"]
    reviewed = state["runs"][-1]  # --review asked the notebook's approve(): the file write was skipped
    assert reviewed[0] == "success" and reviewed[1] == monthly.sum(axis=1).idxmax()
    assert reviewed[2] == [["skip", "don't write files"], ["run", ""]]
    shown = json.dumps([c.outputs for c in nb.cells])
    assert "Traceback" not in shown and "UsageError" not in shown, shown[:2000]
    assert _stdout(nb.cells[0]) == ""
