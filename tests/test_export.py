"""export.py: runs as nbformat v4 notebooks that validate, stay safe, and re-run to the same answer."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt
from nbclient import NotebookClient

from agent_kernel.export import run_to_notebook, safe_markdown
from agent_kernel.memory import ActionStep, FinalAnswerStep, PlanningStep, Run, TaskStep, ToolCall, Usage
from agent_kernel.sandbox._records import Execution, ExecutionError

HOSTILE_MD = (
    "Plan: <script>alert(1)</script> <img src=x onerror=alert(2)> [docs](javascript:alert(3)) "
    "![pixel](http://tracker.example/p.png) <javascript:alert(4)>\n\n[ref]: javascript:alert(5)\n"
    "See [the ref][ref] and `a < b` in code."
)
JS_PAYLOAD = "window.__agent_kernel_pwned = 1"


def _execute(nb: nbformat.NotebookNode, cwd: Path, allow_errors: bool = False) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in a fresh kernel of the one it names, as Run All would."""
    fresh = nbformat.reads(nbformat.writes(nb), as_version=4)
    NotebookClient(fresh, timeout=60, allow_errors=allow_errors, resources={"metadata": {"path": str(cwd)}}).execute()
    return fresh


def _code_run() -> tuple[Run, dict]:
    inputs = {
        "sales": pd.DataFrame({"city": ["Lyon", "Paris", "Nice"], "amount": [42, 30, 7]}),
        "weights": np.array([1.0, 2.0, 3.0]),
        "cfg": {"bonus": 5, "label": "total"},
    }
    load = ActionStep(
        index=1,
        thought=HOSTILE_MD,
        code='total = int(sales["amount"].sum())\nprint("total", total)\nregion = lookup(city="Lyon")',
        execution=Execution(code="", outputs=[{"output_type": "stream", "name": "stdout", "text": "total 79\n"}]),
        tool_calls=[ToolCall("lookup", {"city": "Lyon"}, result={"region": "Auvergne-Rhône-Alpes"})],
        usage=Usage(1000, 50, 0.01),
        duration=2.0,
    )
    failing = ActionStep(
        index=2,
        thought="Check the margin column.",
        code='sales["margin"]',
        execution=Execution(
            code="",
            outputs=[{"output_type": "error", "ename": "KeyError", "evalue": "'margin'", "traceback": ["KeyError: 'margin'"]}],
            error=ExecutionError("KeyError", "'margin'"),
        ),
        usage=Usage(1100, 20, 0.011),
        duration=1.0,
    )
    hung = ActionStep(
        index=3,
        thought="Wait for it.",
        code="while True:\n    pass",
        execution=Execution(code="", error=ExecutionError("TimeoutError", "30 s"), restarted=True),
        usage=Usage(1150, 10, 0.0115),
    )
    table = "<table><tr><td onclick='x()'>Lyon</td></tr></table><script>" + JS_PAYLOAD + "</script>"
    weigh = ActionStep(
        index=4,
        thought="Weigh and show.",
        code="weighted = float((weights * 2).sum())\nsales.head(1)",
        execution=Execution(
            code="",
            outputs=[
                {"output_type": "display_data", "data": {"application/javascript": JS_PAYLOAD}, "metadata": {}},
                {"output_type": "execute_result", "execution_count": 9, "data": {"text/html": table, "text/plain": "df"}, "metadata": {}},
            ],
        ),
        usage=Usage(1200, 30, 0.012),
        duration=1.5,
    )
    answer = {"total": 84, "weighted": 12.0, "region": "Auvergne-Rhône-Alpes"}
    final = ActionStep(
        index=5,
        thought="Done.",
        code='final_answer({"total": total + cfg["bonus"], "weighted": weighted, "region": region["region"]})',
        execution=Execution(code="", has_final_answer=True, final_answer=answer),
        usage=Usage(1300, 40, 0.013),
        is_final=True,
    )
    run = Run(
        task="Total the <b>sales</b> {sales}",
        agent="code",
        model="openai/scripted",
        steps=[TaskStep("Total the <b>sales</b> {sales}"), PlanningStep("load, total, answer"), load, failing, hung, weigh, final, FinalAnswerStep(answer)],
        output=answer,
        state="success",
        usage=Usage(5750, 150, 0.0575),
        duration=9.5,
    )
    return run, inputs


def test_code_run_exports_a_valid_notebook_that_reruns_to_the_same_answer(tmp_path: Path) -> None:
    run, inputs = _code_run()
    path = tmp_path / "analysis.ipynb"
    returned = run.to_notebook(str(path), inputs=inputs)

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb == returned
    saved = sorted(p.name for p in (tmp_path / "analysis_inputs").iterdir())
    assert saved == ["cfg.json", "sales.parquet", "weights.npy"]

    meta = nb.metadata["agent_kernel"]
    assert meta["model"] == "openai/scripted" and meta["state"] == "success" and meta["duration"] == 9.5
    assert meta["usage"] == {"input_tokens": 5750, "output_tokens": 150, "cost": 0.0575}
    assert [s["index"] for s in meta["steps"]] == [1, 2, 3, 4, 5] and meta["steps"][0]["usage"]["cost"] == 0.01

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "Total the" in nb.cells[0].source and "<b>" not in nb.cells[0].source
    assert "pd.read_parquet" in code[0].source and "def final_answer" in code[0].source and "def lookup" in code[0].source
    assert code[1].source.startswith("total = int(") and code[1].outputs[0].text == "total 79\n"
    assert code[2].metadata.tags == ["raises-exception"] and code[2].outputs[0].ename == "KeyError"
    assert not any("while True" in c.source for c in code), "code that hung the sandbox must not be runnable"
    assert any("while True" in c.source for c in nb.cells if c.cell_type == "markdown")
    # Rich outputs: no JavaScript, sanitised HTML table, execution counts in order.
    shown = code[3].outputs
    assert [o.output_type for o in shown] == ["display_data", "execute_result"]
    assert shown[0].data == {"text/plain": "[output not shown: application/javascript]"}
    assert "<td>Lyon</td>" in shown[1].data["text/html"] and "script" not in shown[1].data["text/html"]
    assert JS_PAYLOAD not in nbformat.writes(nb)
    assert shown[1].execution_count == code[3].execution_count == 3
    assert code[-1].source == "answer" and code[-1].outputs[0].data["text/plain"] == repr(run.output)

    rerun = _execute(nb, tmp_path)
    rerun_code = [c for c in rerun.cells if c.cell_type == "code"]
    assert rerun_code[1].outputs[0].text == "total 79\n"
    assert rerun_code[2].outputs[0].ename == "KeyError"
    assert rerun_code[-1].outputs[0].data["text/plain"] == repr(run.output)


def test_thoughts_become_markdown_without_html_or_links() -> None:
    run, _ = _code_run()
    nb = run_to_notebook(run)
    md = MarkdownIt("commonmark", {"html": True})  # raw HTML on, as notebook frontends render it
    rendered = "".join(md.render(c.source) for c in nb.cells if c.cell_type == "markdown")
    assert "<script" not in rendered and "<img" not in rendered and "<a " not in rendered
    assert "javascript:alert" in rendered  # still readable as text
    assert "<code>a &lt; b</code>" in md.render(safe_markdown("`a < b`"))  # as written, nothing inserted
    assert md.render(safe_markdown("if a < b: see [x](y)")) == "<p>if a &lt; b: see [x](y)</p>\n"
    assert not any("\u200b" in c.source for c in nb.cells)  # reads and copies cleanly
    tables = MarkdownIt("commonmark", {"html": True}).enable("table")
    for attack in ("```<img src=x onerror=alert(1)>``", "\\`<img src=x onerror=alert(1)>`",
                   "| a | b |\n|---|---|\n| `a | <img src=x onerror=alert(1)>` |", "`a\n\n<img src=x onerror=alert(1)>`",
                   "# `a\n<img src=x onerror=alert(1)>`", "`x` [y](javascript:alert(1)) `z`"):
        rendered = tables.render(safe_markdown(attack))
        assert "<img" not in rendered and "<a " not in rendered, (attack, rendered)
    assert md.render(safe_markdown("**bold** and a [plain] bracket")) == "<p><strong>bold</strong> and a [plain] bracket</p>\n"


class _Opaque:
    """A tool result that is not a Python literal, with a repr that tries to inject code."""

    def __repr__(self) -> str:
        return "Opaque()\nopen('pwned', 'w').close()"


def test_tools_run_records_tool_results_as_literals_and_reruns(tmp_path: Path) -> None:
    injected_query = "x'); open('pwned', 'w').close(); ('"
    step = ActionStep(
        index=1,
        thought="Search first.",
        tool_calls=[
            ToolCall("search", {"query": injected_query, "limit": 2}, id="a", result=["Lyon", "Paris"]),
            ToolCall("x(); open('pwned','w').close()#", {"a\nb": _Opaque()}, id="b", result=_Opaque()),
            ToolCall("search", {"query": "z"}, id="c", error="rate limited\nopen('pwned','w').close()"),
        ],
        usage=Usage(300, 30, 0.0),
    )
    final = ActionStep(index=2, tool_calls=[ToolCall("final_answer", {"answer": "Lyon"}, id="d", result="Lyon")], is_final=True)
    run = Run(task="Where?", agent="tools", model="openai/scripted", steps=[TaskStep("Where?"), step, final], output="Lyon", state="success", usage=Usage(300, 30, 0.0))

    nb = run_to_notebook(run, tmp_path / "router.ipynb")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source.splitlines()[0].startswith("# search(query=") and "result = ['Lyon', 'Paris']" in code[0].source
    assert code[0].outputs[0].data["text/plain"] == "['Lyon', 'Paris']"
    assert "not a Python literal" in code[1].source
    assert code[2].outputs[0].name == "stderr" and "rate limited" in code[2].outputs[0].text
    assert not any("final_answer" in c.source for c in code)
    assert code[-1].source == "answer = 'Lyon'\nanswer"

    rerun = _execute(nb, tmp_path)
    assert not (tmp_path / "pwned").exists()
    rerun_code = [c for c in rerun.cells if c.cell_type == "code"]
    assert rerun_code[0].outputs[0].data["text/plain"] == "['Lyon', 'Paris']"
    assert rerun_code[1].outputs[0].data["text/plain"] == repr(repr(_Opaque()))
    assert rerun_code[-1].outputs[0].data["text/plain"] == "'Lyon'"


def test_interrupted_run_exports_what_happened() -> None:
    step = ActionStep(1, thought="Loading.", code="df = load()", execution=None, error="interrupted")
    run = Run(task="t", agent="code", model="m", steps=[TaskStep("t"), step], state="interrupted", error="KeyboardInterrupt")
    nb = run_to_notebook(run)
    nbformat.validate(nb)
    assert nb.metadata["agent_kernel"]["state"] == "interrupted"
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "markdown", "markdown", "markdown", "markdown"]
    assert "df = load()" in nb.cells[3].source and "not run" in nb.cells[3].source
    assert "interrupted" in nb.cells[-1].source and "KeyboardInterrupt" in nb.cells[-1].source


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"f": lambda: 1}, "cannot be saved safely"),
        ({"point": (1, 2)}, "cannot be saved safely"),
        ({"df": pd.DataFrame({0: [1]})}, "string column names"),
        ({"objs": np.array([{"a": 1}], dtype=object)}, "object arrays need pickle"),
        ({"not a name": 1}, "not a Python identifier"),
    ],
)
def test_inputs_that_cannot_be_saved_safely_are_refused(tmp_path: Path, inputs: dict, message: str) -> None:
    run, _ = _code_run()
    with pytest.raises(ValueError, match=message):
        run_to_notebook(run, tmp_path / "x.ipynb", inputs=inputs)
    assert not list(tmp_path.rglob("*.pkl")) and not (tmp_path / "x.ipynb").exists()


def test_inputs_need_a_path() -> None:
    run, inputs = _code_run()
    with pytest.raises(ValueError, match="pass path="):
        run_to_notebook(run, inputs=inputs)


def test_the_first_cell_says_which_kernel_the_export_runs_in() -> None:
    run, _ = _code_run()
    nb = run_to_notebook(run)
    assert nb.metadata.kernelspec.name == "agent-sandbox"
    # JupyterLab falls back to the one kernel of a notebook's language when it does not know its kernelspec
    assert "language" not in nb.metadata.kernelspec and "language_info" not in nb.metadata
    assert "set to run in the `agent-sandbox` kernel (the sandbox: it reads the files in this notebook's folder" in nb.cells[0].source
    own = run_to_notebook(run, kernel="python3")
    assert own.metadata.kernelspec.name == "python3"
    assert "set to run in the `python3` kernel, without the sandbox" in own.cells[0].source
    with pytest.raises(ValueError, match="kernelspec name"):
        run_to_notebook(run, kernel="python3; rm")


def test_an_export_re_runs_in_the_sandbox_kernel_which_reads_only_its_folder(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Run All of an export starts the agent-sandbox kernelspec (installed by the export) the way
    JupyterLab does: it reads the saved inputs beside the notebook and reproduces the answer, may
    import anything, but cannot read a file elsewhere (a secret in $HOME) nor write the notebook's folder."""
    from jupyter_client.kernelspec import KernelSpecManager

    home, folder = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    (home / "secret.txt").write_text("api key")
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))  # where --user kernelspecs go
    assert "agent-sandbox" not in KernelSpecManager().find_kernel_specs()
    run, inputs = _code_run()
    nb = run_to_notebook(run, folder / "analysis.ipynb", inputs=inputs)
    assert "agent-sandbox" in KernelSpecManager().find_kernel_specs()  # installed, in this run's data folder
    probes = [
        "import os, socket, subprocess\nprint(os.getcwd())",  # none of them in the default allowlist
        f"open({str(home / 'secret.txt')!r}).read()",
        "open('written.txt', 'w').write('x')",
    ]
    nb.cells.extend(nbformat.v4.new_code_cell(code) for code in probes)
    rerun = _execute(nb, folder, allow_errors=True)
    code = [c for c in rerun.cells if c.cell_type == "code"]
    answer, imported, secret, written = code[-4:]
    assert answer.outputs[0].data["text/plain"] == repr(run.output)
    assert code[1].outputs[0].text == "total 79\n"  # from the inputs saved beside it
    assert imported.outputs[0].text == f"{folder}\n"
    assert secret.outputs[0].ename == "PermissionError"
    assert written.outputs[0].ename == "PermissionError" and not (folder / "written.txt").exists()
