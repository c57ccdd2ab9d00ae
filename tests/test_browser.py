"""The notebook as an analyst sees it: JupyterLab in chromium, cells typed and run, light and dark."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from browser_lab import DARK, Lab, Notebook, chromium, contrast_problems, luminance, mid_word_breaks
from playwright.sync_api import Browser, expect
from scripted_server import ScriptedServer, text

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s


@pytest.fixture(scope="module")
def lab(server: ScriptedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab") / "root"
    root.mkdir()
    lab = Lab(root, {"AGENT_KERNEL_MODEL": "openai/scripted", "AGENT_KERNEL_API_BASE": server.url,
                     "OPENAI_API_KEY": "sk-scripted", "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def notebook(lab: Lab, browser: Browser, request: pytest.FixtureRequest) -> Iterator[Notebook]:
    nb = Notebook(lab, browser, request.node.name.replace("[", "-").replace("]", ""))
    yield nb
    nb.close()


SETUP = "%load_ext agent_kernel\nimport pandas as pd\nsales = pd.DataFrame({'week': [1, 2, 3], 'amount': [5, 7, 9]})"


def test_a_finished_run_reads_well_in_light_and_dark(notebook: Notebook, server: ScriptedServer) -> None:
    server.script([text(
        "Thought: I will total the amounts per week and plot the trend so that the analyst can read it.\n"
        "```python\ntotals = sales.set_index('week')['amount']\ntotals.plot(marker='o', title='Amount by week')\n"
        "print(totals)\nfinal_answer(totals.to_dict())\n```\n"  # a total per week, as the task asks
    )], key="plot the trend")
    notebook.run(SETUP)
    cell = notebook.run("%%agent code --in sales\nTotal {sales} by week, plot the trend of the amount over the weeks,\n"
                        "and set_index on week before anything else so the chart reads in order")
    output = cell.locator(".jp-OutputArea")
    expect(output).to_contain_text("Final answer")
    expect(output).to_contain_text("success")
    notebook.screenshot("run-light", cell)
    assert mid_word_breaks(output) == []  # JupyterLab's break-all on outputs cut "rea|ds"
    assert contrast_problems(output) == []
    runs = notebook.run("%agent runs").locator(".jp-OutputArea")
    expect(runs.locator("td", has_text="success")).to_have_count(1)
    assert mid_word_breaks(runs) == []
    notebook.theme(DARK)
    notebook.screenshot("run-dark", cell)
    code = output.locator("pre", has_text="set_index").first
    assert luminance(code) < 0.1  # the code block follows the theme: no bright box on black
    assert contrast_problems(output) == []  # and its highlighting stays readable on it
    assert notebook.dialogs == []


REVIEWED = ("Thought: Weekly totals first; the analyst should see this reasoning before deciding.\n"
            "```python\nweekly = sales.groupby('week')['amount'].sum()\nprint(weekly)\n```\n")


def test_review_shows_the_whole_step_and_stop_reads_as_a_stop(notebook: Notebook, server: ScriptedServer) -> None:
    server.script([text(REVIEWED, chunk_delay=0.01)], key="weekly review")
    notebook.run(SETUP)
    cell = notebook.run("%%agent code --in sales --review\nweekly review of {sales}", wait=False)
    output = cell.locator(".jp-OutputArea")
    stop = output.get_by_role("button", name="Stop")
    expect(stop).to_be_visible(timeout=120_000)
    step = output.locator(".jp-OutputArea-child", has_text="Step 1").first
    expect(step).to_contain_text("the analyst should see this reasoning before deciding.")
    expect(step).to_contain_text("print(weekly)")
    expect(step).to_contain_text("waiting for your review")
    box = output.locator("textarea").bounding_box()
    area = output.bounding_box()
    assert box is not None and area is not None and box["x"] + box["width"] <= area["x"] + area["width"]
    output.get_by_placeholder("why (skip or stop)").fill("I have what I need")
    stop.click()
    notebook.wait_done(cell)
    expect(output).to_contain_text("Stopped")
    assert output.inner_text().count("I have what I need") == 2  # the step's header, the run's end
    assert "Error" not in output.inner_text()
    notebook.screenshot("review-stopped", cell)
    assert notebook.dialogs == []


ASKING = "Thought: which column?\n```python\ncolumn = ask_user('Which column is the revenue?')\nprint(column)\n```\n"
ANSWERING = ("Thought: use it.\n```python\nweekly = sales.groupby('week')[column.strip()].sum()\n"
             "final_answer(int(weekly.max()))\n```\n")


def test_the_agent_sees_the_notebook_asks_and_leaves_its_code_as_the_next_cell(
        notebook: Notebook, server: ScriptedServer) -> None:
    server.script([text(ASKING), text(ANSWERING)], key="Fix the peak above")
    notebook.run(SETUP)
    notebook.run("peak = sales.groupby('wk')['amount'].sum().max()")  # fails: the column is week
    cell = notebook.run("%%agent code --in sales --context 2 --ask --to-cell\nFix the peak above", wait=False)
    output = cell.locator(".jp-OutputArea")
    expect(output).to_contain_text("The agent asks: Which column is the revenue?", timeout=120_000)
    output.get_by_placeholder("your answer").fill("amount")
    output.get_by_role("button", name="Answer").click()
    notebook.wait_done(cell)
    expect(output).to_contain_text("success")
    asked = next(m["content"] for r in server.requests for m in r["messages"]
                 if m["role"] == "user" and "Fix the peak above" in str(m["content"]))
    assert "peak = sales.groupby('wk')" in asked and "KeyError" in asked  # --context: the failed cell, its error
    follow = notebook.cells.nth(3)  # --to-cell: JupyterLab put the code right below the agent's cell
    expect(follow.locator(".cm-content")).to_contain_text("answer = int(weekly.max())")
    expect(follow.locator(".cm-content")).to_contain_text("column = 'amount'")  # the answer, not ask_user
    expect(follow.locator(".jp-InputArea-prompt")).to_have_text("[ ]:")  # not run until the analyst runs it
    notebook.screenshot("ask-and-cell", cell)
    assert notebook.dialogs == []


HOSTILE = ("Thought: <script>alert('thought')</script><img src=x onerror=\"alert('img')\">\n```python\n"
           "from IPython.display import HTML, Javascript, display\n"
           "display(Javascript(\"alert('js')\"))\n"
           "display(HTML(\"<img src=x onerror=alert('html')><script>alert('script')</script><b>bold</b>\"))\n"
           "print('<script>alert(1)</script>')\nfinal_answer('<img src=x onerror=alert(document.domain)>')\n```\n")


def test_hostile_model_and_sandbox_output_fires_nothing_now_or_after_a_reload(
        notebook: Notebook, server: ScriptedServer, lab: Lab) -> None:
    server.script([text(HOSTILE)], key="Be hostile")
    notebook.run(SETUP)
    cell = notebook.run("%%agent code\nBe hostile", wait=True)
    output = cell.locator(".jp-OutputArea")
    expect(output).to_contain_text("success")
    expect(output.locator("b", has_text="bold")).to_have_count(1)  # the sandbox's harmless HTML shows
    assert output.locator("script").count() == 0 and output.locator("img[onerror]").count() == 0
    notebook.page.keyboard.press("ControlOrMeta+s")  # saved, so trusted: what would run on a reload
    expect(notebook.page.locator(".jp-mod-dirty")).to_have_count(0)
    notebook.page.reload()
    expect(notebook.cells.first).to_be_visible(timeout=60_000)
    expect(notebook.cells.nth(1).locator(".jp-OutputArea")).to_contain_text("success")
    assert notebook.dialogs == []


def test_an_exported_run_re_runs_with_run_all(notebook: Notebook, server: ScriptedServer, lab: Lab,
                                              browser: Browser) -> None:
    server.script([text(
        "Thought: peak week.\n```python\nweekly = sales.groupby('week')['amount'].sum()\nprint(weekly.max())\n"
        "final_answer(int(weekly.idxmax()))\n```\n")], key="Peak week for export")
    notebook.run(SETUP)
    notebook.run("%%agent code --in sales\nPeak week for export of {sales}")
    expect(notebook.run("%agent export exported.ipynb").locator(".jp-OutputArea")).to_contain_text("saved")
    assert nbformat.read(lab.root / "exported.ipynb", as_version=4).metadata.kernelspec.name == "agent-sandbox"
    exported = Notebook(lab, browser, "exported", existing=True)
    try:
        expect(exported.cells.first).to_contain_text("is set to run in the `agent-sandbox` kernel (the sandbox")
        expect(exported.page.locator(".jp-Toolbar-kernelName")).to_have_text("agent_kernel sandbox")
        exported.run_all()
        code = exported.cells.locator(".jp-InputArea-editor", has_text="print(weekly.max())")
        expect(code).to_have_count(1)
        last = exported.cells.nth(exported.cells.count() - 1)
        expect(last.locator(".jp-OutputArea-output")).to_have_text("3")  # the answer, reproduced
        expect(exported.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                     has_text="Error")).to_have_count(0)
        assert exported.dialogs == []
    finally:
        exported.close()
