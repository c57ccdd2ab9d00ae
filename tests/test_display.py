"""display.py: runs rendered as sanitised HTML and plain text, and the live view in a real kernel."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import pytest

from agent_kernel.display import LiveRun, mime_bundle, render_html, render_runs, render_text
from agent_kernel.memory import (
    ActionStep,
    FinalAnswerStep,
    PlanningStep,
    Run,
    RunCompleted,
    StepCompleted,
    StepStarted,
    TaskStep,
    TextDelta,
    ToolCall,
    Usage,
)
from agent_kernel.sandbox._records import Execution, ExecutionError

HOSTILE = '<script>alert("x")</script><img src=x onerror="alert(1)"><a href="javascript:alert(2)">go</a>'
JS_PAYLOAD = "window.__agent_kernel_pwned = 1"
OSC_CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4=\x07"  # a terminal escape that writes the clipboard


@pytest.fixture(scope="module")
def png_b64() -> str:
    """A real PNG as the sandbox's matplotlib would send it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([1, 3, 2])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _outputs(png: str) -> list[dict]:
    table = (
        '<style>td {background: url(http://evil/x)}</style><table class="dataframe" onmouseover="steal()">'
        "<thead><tr><th>city</th><th>sales</th></tr></thead>"
        f"<tbody><tr><td>Lyon</td><td>42</td></tr><tr><td>{HOSTILE}</td><td>7</td></tr></tbody></table>"
        '<iframe src="http://evil"></iframe><form action="http://evil"><input name=q></form>'
    )
    return [
        {"output_type": "stream", "name": "stdout", "text": f"loaded 2 rows {HOSTILE}{OSC_CLIPBOARD}\n"},
        {
            "output_type": "display_data",
            "data": {"image/png": png, "text/plain": "<Figure size 200x100>"},
            "metadata": {"image/png": {"width": 200, "height": 100}},
        },
        # An image that is not a PNG at all, and one whose "base64" tries to break out of the attribute.
        {"output_type": "display_data", "data": {"image/png": base64.b64encode(b"<svg onload=alert(1)>").decode()}},
        {"output_type": "display_data", "data": {"image/png": 'AAAA" onerror="alert(3)'}},
        {"output_type": "display_data", "data": {"application/javascript": JS_PAYLOAD, "text/plain": "<JS>"}},
        {"output_type": "display_data", "data": {"text/html": f"<script>{JS_PAYLOAD}</script>"}},
        {"output_type": "execute_result", "execution_count": 1, "data": {"text/html": table, "text/plain": "df"}},
        {"output_type": "stream", "name": "stdout", "text": "".join(f"row {i}\n" for i in range(200))},
    ]


def _run(png: str) -> Run:
    task = TaskStep(f"Summarise sales {HOSTILE}", variables={"sales": "DataFrame (2, 2)"})
    plan = PlanningStep("1. load\n2. [plot](javascript:alert(4))", usage=Usage(5, 5, 0.0001))
    code_step = ActionStep(
        index=1,
        thought=f"I'll load the data. {HOSTILE}",
        code=f"print('loaded 2 rows')  # {HOSTILE}\nsales.plot()\nsales",
        execution=Execution(code="...", outputs=_outputs(png), duration=0.8),
        usage=Usage(1200, 80, 0.0123),
        duration=2.5,
    )
    failing = ActionStep(
        index=2,
        thought="Now the totals.",
        code="sales['missing']",
        execution=Execution(
            code="sales['missing']",
            outputs=[{"output_type": "error", "ename": "KeyError", "evalue": "'missing'", "traceback": ["\x1b[31mKeyError\x1b[0m: 'missing'"]}],
            error=ExecutionError("KeyError", "'missing'"),
        ),
        usage=Usage(1300, 40, 0.0125),
        duration=1.0,
    )
    tools_step = ActionStep(
        index=3,
        thought="Ask the lookup tool.",
        tool_calls=[
            ToolCall("lookup", {"city": "Lyon", "note": HOSTILE}, id="c1", result={"region": "Rhône", "html": HOSTILE}),
            ToolCall("lookup", {"city": "Paris"}, id="c2", error=f"no such city {HOSTILE}"),
        ],
        usage=Usage(900, 30, 0.0),
        duration=0.5,
    )
    usage = Usage(3405, 155, 0.0249)
    return Run(
        task=task.task,
        agent="code",
        model="openai/scripted",
        steps=[task, plan, code_step, failing, tools_step, FinalAnswerStep(f"Lyon leads {HOSTILE}")],
        output=f"Lyon leads {HOSTILE}",
        state="success",
        usage=usage,
        duration=6.25,
    )


class _Tree(HTMLParser):
    """Every start tag with its attributes, and all visible text, as a browser would parse them."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_shows_steps_code_outputs_and_footer(png_b64: str) -> None:
    doc = render_html(_run(png_b64))
    tree = _Tree(doc)
    text = "".join(tree.text)

    # The real PNG is shown as the sandbox produced it, with its size.
    images = [attrs for tag, attrs in tree.tags if tag == "img"]
    assert images == [{"src": f"data:image/png;base64,{png_b64}", "alt": "image/png", "width": "200", "height": "100"}]
    # The DataFrame table keeps its structure and cells.
    assert [t for t, _ in tree.tags].count("td") == 4 and "Lyon" in text and "42" in text
    # Code is highlighted by pygments with inline styles (several coloured spans).
    assert len([a for t, a in tree.tags if t == "span" and "color" in (a.get("style") or "")]) >= 3
    # Thought, plan, tool call as code, tool result and error, traceback, answer, footer.
    for expected in [
        "Step 1 (2.5 s, 1,280 tokens)",
        "I'll load the data.",
        "1. load",
        "lookup(city='Lyon', note=",
        "'region': 'Rhône'",
        "no such city",
        "KeyError: 'missing'",
        "Final answer",
        "3 steps · 6.2 s · 3,560 tokens (3,405 in / 155 out) · $0.0249 · success",
    ]:
        assert expected in text, expected
    # The 200-line output is collapsed, the short ones are not.
    details = doc.split("<details>")
    assert len(details) == 2 and "row 199" in details[1] and "loaded 2 rows" not in details[1]


def test_html_never_passes_scripts_handlers_or_unsafe_urls(png_b64: str) -> None:
    doc = render_html(_run(png_b64))
    tree = _Tree(doc)
    tags = {t for t, _ in tree.tags}
    assert not tags & {"script", "style", "iframe", "form", "input", "object", "embed", "svg"}
    for tag, attrs in tree.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name != "class" or value == "dataframe"
            if name in ("href", "src"):
                assert not (value or "").lower().startswith("javascript"), (tag, name, value)
                assert tag == "img" or not (value or "").lower().startswith("data:")
            if name == "style":
                assert "url(" not in (value or "")
    assert JS_PAYLOAD not in doc
    assert "\x1b" not in doc
    # The hostile text is still visible to the reader, as text.
    text = "".join(tree.text)
    assert '<script>alert("x")</script>' in text and 'onerror="alert(1)"' in text
    # The fake images are not shown; the JS-only output is replaced by its text/plain.
    assert doc.count("<img") == 1 and "&lt;JS&gt;" in doc


def test_html_of_single_steps(png_b64: str) -> None:
    run = _run(png_b64)
    step_html = render_html(run.steps[2])
    assert "Step 1" in step_html and f"base64,{png_b64}" in step_html and "Step 2" not in step_html
    assert "<script" not in render_html(run.steps[0]) and "&lt;script&gt;" in render_html(run.steps[0])
    bundle = mime_bundle(run)
    assert set(bundle) == {"text/plain", "text/html"}


def test_text_summarises_and_strips_terminal_escapes(png_b64: str) -> None:
    run = _run(png_b64)
    text = render_text(run)
    assert "\x1b" not in text and "\x07" not in text
    assert text.startswith("Task: Summarise sales <script>")
    for expected in [
        "── Step 1 (2.5 s, 1,280 tokens)",
        "  print('loaded 2 rows')",
        "[image/png 200x100]",
        "→ lookup(city='Lyon'",
        "error: no such city",
        "KeyError: 'missing'",
        "── Final answer\nLyon leads",
        "── 3 steps · 6.2 s · 3,560 tokens (3,405 in / 155 out) · $0.0249 · success",
    ]:
        assert expected in text, expected
    # 200 lines of output are summarised: head, a count, tail.
    assert "row 11\n" in text and "row 12\n" not in text and "… [176 lines]" in text and "row 199" in text
    assert png_b64[:40] not in text


def test_interrupted_run_renders_its_state_and_error() -> None:
    run = Run(task="count", agent="tools", model="m", state="interrupted", error="KeyboardInterrupt: stopped by the user")
    run.steps = [TaskStep("count"), ActionStep(1, thought="thinking")]
    assert "interrupted" in render_text(run) and "stopped by the user" in render_text(run)
    assert "0 steps" not in render_text(run) and "1 step · " in render_text(run)
    assert "stopped by the user" in render_html(run)


def test_live_run_prints_text_outside_a_notebook(png_b64: str) -> None:
    out = io.StringIO()
    run = _run(png_b64)
    live = LiveRun(run.task, model=run.model, stream=out)
    assert live.rich is False  # no IPython shell under pytest
    live.update(StepStarted(1))
    for token in ["I'll load ", "the data.", OSC_CLIPBOARD, "\n```py\nsales.plot()\n```"]:
        live.update(TextDelta(1, token))
    live.update(StepCompleted(run.steps[2]))
    live.update(StepStarted(2))
    live.update(StepCompleted(run.steps[3]))
    live.update(StepCompleted(run.steps[5]))
    live.update(RunCompleted(run))
    printed = out.getvalue()
    assert "\x1b" not in printed and "\x07" not in printed
    assert printed.index("── Step 1") < printed.index("I'll load the data.") < printed.index("loaded 2 rows")
    assert printed.count("sales.plot()") == 1  # streamed once, not repeated by the step summary
    assert "KeyError: 'missing'" in printed and printed.count("Final answer") == 1 and "$0.0249 · success" in printed
    with pytest.raises(TypeError, match="agent events"):
        live.update("not an event")  # type: ignore[arg-type]


_KERNEL_CODE = """
import json, time
from agent_kernel.display import LiveRun
from agent_kernel.memory import ActionStep, FinalAnswerStep, Run, RunCompleted, StepCompleted, StepStarted, TaskStep, TextDelta, Usage
from agent_kernel.sandbox._records import Execution

png = {png!r}
live = LiveRun("Plot the sales", model="openai/scripted")
t0 = time.monotonic()
live.update(StepCompleted(TaskStep("Plot the sales")))
live.update(StepStarted(1))
for i in range(300):
    live.update(TextDelta(1, f"tok{{i}} "))
    time.sleep(0.005)
outputs = [{{"output_type": "display_data", "data": {{"image/png": png, "text/plain": "<Figure>"}}, "metadata": {{}}}}]
step = ActionStep(1, thought="Plotting now", code="sales.plot()", execution=Execution("sales.plot()", outputs), usage=Usage(100, 20, 0.002), duration=1.5)
live.update(StepCompleted(step))
answer = FinalAnswerStep("plotted")
live.update(StepCompleted(answer))
run = Run("Plot the sales", "code", "openai/scripted", steps=[TaskStep("Plot the sales"), step, answer], output="plotted", state="success", usage=Usage(100, 20, 0.002), duration=2.0)
live.update(RunCompleted(run))
live.close()
elapsed = time.monotonic() - t0

# Interrupted while the model writes: the stopped step never completed as an event.
stopped = LiveRun("Count", model="openai/scripted")
stopped.update(StepStarted(1))
stopped.update(TextDelta(1, "Counting the"))
cut = ActionStep(1, thought="Counting the", error="interrupted")
stopped.finish(Run("Count", "code", "openai/scripted", steps=[TaskStep("Count"), cut], state="interrupted", error="interrupted (Kernel > Interrupt)"))
print(json.dumps({{"elapsed": elapsed, "updates": live.updates}}))
"""


def test_live_run_updates_displays_in_place_in_a_real_kernel(png_b64: str) -> None:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    messages: list[dict] = []
    try:
        reply = kc.execute_interactive(_KERNEL_CODE.format(png=png_b64), output_hook=messages.append, timeout=60)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", reply["content"]
    report = json.loads("".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream"))
    shown = [m["content"] for m in messages if m["msg_type"] == "display_data"]
    updates = [m["content"] for m in messages if m["msg_type"] == "update_display_data"]
    assert all(set(c["data"]) == {"text/plain", "text/html"} for c in shown + updates)

    # The first run: its task, one display per step, the answer, the footer, in order.
    task, step, answer, footer, stopped_task, stopped_step, stopped_footer = shown
    assert "Plot the sales" in task["data"]["text/html"] and "Final answer" in answer["data"]["text/html"]
    step_id = step["transient"]["display_id"]
    step_updates = [u for u in updates if u["transient"]["display_id"] == step_id]
    assert report["updates"] == len(step_updates)

    # Tokens stream while the model writes, throttled to <= 10 updates/s (+1: the finished step).
    streaming = [u for u in step_updates if "writing…" in u["data"]["text/html"]]
    assert len(streaming) >= 5 and "tok0 tok1" in streaming[-1]["data"]["text/html"]
    assert len(step_updates) <= report["elapsed"] * 10 + 2, (len(step_updates), report["elapsed"])
    finished = step_updates[-1]["data"]
    assert f'src="data:image/png;base64,{png_b64}"' in finished["text/html"]
    assert "Plotting now" in finished["text/html"] and "writing…" not in finished["text/html"]
    assert re.search(r"1 step · 2\.0 s · 120 tokens .* · success", footer["data"]["text/plain"])

    # The interrupted run: the step that was being written is replaced by what was recorded of it.
    stopped_updates = [u for u in updates if u["transient"]["display_id"] == stopped_step["transient"]["display_id"]]
    assert "interrupted" in stopped_updates[-1]["data"]["text/plain"] and "writing…" not in stopped_updates[-1]["data"]["text/html"]
    assert "interrupted (Kernel &gt; Interrupt)" in stopped_footer["data"]["text/html"]
    assert "Count" in stopped_task["data"]["text/plain"]


def test_backstop_pass_keeps_our_markup_and_drops_the_rest() -> None:
    """The last nh3 pass over assembled HTML (defence in depth behind escaping and the sandbox pass)."""
    from agent_kernel._safe import sanitize_document as _backstop

    doc = _backstop(
        '<div style="color: red; background: url(http://evil/x); position: fixed" onclick="x()">'
        '<img src="data:image/png;base64,AAAA"><img src="data:text/html;base64,PHNjcmlwdD4=">'
        '<a href="data:text/html,<script>alert(1)</script>">a</a><a href="https://ok.example/">b</a>'
        "<details><summary>more</summary><pre>x</pre></details><script>alert(1)</script></div>"
    )
    assert doc == (
        '<div style="color:red"><img src="data:image/png;base64,AAAA"><img>'
        '<a rel="noopener noreferrer nofollow">a</a><a href="https://ok.example/" rel="noopener noreferrer nofollow">b</a>'
        "<details><summary>more</summary><pre>x</pre></details></div>"
    )


def test_a_tool_calling_agents_answer_is_shown_once() -> None:
    answer = "Lyon is in Auvergne-Rhone-Alpes"
    step = ActionStep(index=1, tool_calls=[ToolCall("final_answer", {"answer": answer}, result=answer)], is_final=True)
    run = Run(task="where", agent="tools", model="m", steps=[step, FinalAnswerStep(answer)], output=answer, state="success")
    assert render_text(run).count(answer) == 1
    assert render_html(run).count(answer) == 1


def test_a_stop_on_purpose_is_not_shown_as_an_error() -> None:
    run = Run(task="t", agent="code", model="m", state="stopped", error="stopped by the reviewer: I have what I need")
    assert "Stopped: stopped by the reviewer" in render_text(run) and "Error" not in render_text(run)
    assert "#cf222e" not in render_html(run)  # not in the error colour


_STREAMING_CODE = """
import time
from agent_kernel.display import LiveRun
from agent_kernel.memory import StepStarted, TextDelta

live = LiveRun("Plot the trend", model="openai/scripted", max_rate=1000)
live.update(StepStarted(1))
for piece in ["Thought: I will plot", " the trend.\\n```py", "thon\\nax = sales.plot()\\n`"]:
    time.sleep(0.002)
    live.update(TextDelta(1, piece))
live.close()
"""


def test_a_step_streams_as_thought_and_highlighted_code_with_a_footer_that_counts_it() -> None:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    messages: list[dict] = []
    try:
        reply = kc.execute_interactive(_STREAMING_CODE, output_hook=messages.append, timeout=60)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", reply["content"]
    last = [m["content"]["data"] for m in messages if m["msg_type"] == "update_display_data"][-1]
    assert "```" not in last["text/html"] and "Thought:" not in last["text/html"]
    assert "I will plot the trend." in last["text/html"]
    assert "color:var(--jp-mirror-editor-operator-color" in last["text/html"]  # highlighted code: `=`
    assert "ax = sales.plot()\n`" not in last["text/plain"]  # nor the backtick of the closing fence
    footer = last["text/plain"].rsplit("── ", 1)[-1]
    assert footer.startswith("1 step · ") and "tokens" not in footer and footer.endswith("running")


def test_the_runs_table_cuts_long_tasks_with_an_ellipsis_and_never_wraps() -> None:
    long_task = "Summarise the weekly sales by region and plot the trend of revenue against last year " * 2
    bundle = render_runs([(Run(task=long_task, agent="code", model="m", state="success"), long_task)])
    row = bundle["text/plain"].splitlines()[1]
    assert row.endswith("…") and "Summarise the weekly sales" in row
    assert "white-space:nowrap" in bundle["text/html"] and "text-overflow:ellipsis" in bundle["text/html"]
