"""The sandbox's host side against a real restricted kernel: outputs, errors, answers, recovery, values."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from agent_kernel.sandbox import AsyncSandbox, Sandbox, SandboxPool


@pytest.fixture(scope="module")
def sb():
    with Sandbox(timeout=10) as sandbox:
        yield sandbox


def test_outputs_come_back_in_order_as_nbformat(sb):
    ex = sb.execute("print('a')\nimport sys\nprint('b', file=sys.stderr)\nprint('c')\n6 * 7", timeout=10)
    assert ex.ok
    assert ex.stdout == "a\nc\n"
    assert ex.stderr == "b\n"
    assert ex.result == {"text/plain": "42"}
    kinds = [o["output_type"] for o in ex.outputs]
    assert kinds[-1] == "execute_result" and set(kinds[:-1]) == {"stream"}  # stdout/stderr are buffered apart
    assert ex.duration > 0


def test_state_persists_between_executions(sb):
    sb.execute("counter = 1")
    sb.execute("counter += 1")
    assert sb.execute("counter").result["text/plain"] == "2"


def test_error_has_name_value_and_a_clean_traceback(sb):
    ex = sb.execute("def f():\n    return 1 / 0\nf()")
    assert ex.error.name == "ZeroDivisionError"
    assert ex.error.value == "division by zero"
    assert "\x1b[" not in ex.error.traceback
    assert "return 1 / 0" in ex.error.traceback
    assert "agent_kernel" not in ex.error.traceback  # the sandbox's own frames are trimmed


def test_import_outside_the_allowlist_says_how_to_widen_it(sb):
    ex = sb.execute("import socket")
    assert ex.error.name == "ImportError"
    assert "imports=['socket']" in ex.error.value
    assert sb.execute("import math, pandas; print(math.floor(2.5))").stdout == "2\n"


def test_wider_imports_are_allowed_when_asked():
    with Sandbox(imports=["textwrap", "os"]) as wide:
        assert wide.execute("import os; print(os.getcwd() == str(os.path.realpath('.')))").stdout == "True\n"


def test_final_answer_is_decoded_into_the_execution(sb):
    ex = sb.execute("final_answer({'rows': [1, 2], 'mean': 1.5})\nprint('after')")
    assert ex.has_final_answer and ex.final_answer == {"rows": [1, 2], "mean": 1.5}
    assert ex.stdout == "after\n"
    assert not sb.execute("1").has_final_answer  # an answer is reported once


def test_tuples_cross_the_boundary_as_tuples():
    with Sandbox(imports=["*"]) as wide:
        ex = wide.execute("pair = ('A', 3)\nfinal_answer({'best': pair, 'rows': [(1, 'x')]})")
        assert ex.error is None and ex.final_answer == {"best": ("A", 3), "rows": [(1, "x")]}
        assert type(ex.final_answer["best"]) is tuple and type(ex.final_answer["rows"][0]) is tuple
        assert type(wide.pull(["pair"])["pair"]) is tuple
        wide.push(back=(1, (2,)))
        assert wide.execute("print(type(back).__name__, type(back[1]).__name__)").stdout.strip() == "tuple tuple"


def test_final_answer_then_error_still_counts(sb):
    ex = sb.execute("final_answer(3)\nraise ValueError('late')")
    assert ex.error.name == "ValueError"
    assert ex.has_final_answer and ex.final_answer == 3


def test_display_data_is_kept_and_javascript_dropped(sb):
    ex = sb.execute(
        "from IPython.display import display\n"
        "display({'text/html': '<b>x</b>', 'application/javascript': 'alert(1)', 'text/plain': 'x'}, raw=True)"
    )
    assert ex.displays == [{"text/html": "<b>x</b>", "text/plain": "x"}]


def test_matplotlib_figure_arrives_as_png(sb):
    ex = sb.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    assert ex.ok, ex.error
    assert any("image/png" in d for d in ex.displays)


def assert_timeout_interrupts_and_keeps_state(sb) -> None:
    """A loop past its timeout is interrupted within 2 s and the kernel's variables survive (both backends)."""
    sb.execute("kept = 'yes'")
    started = time.monotonic()
    ex = sb.execute("while True:\n    pass", timeout=1)
    assert time.monotonic() - started < 1 + 2
    assert ex.error.name == "TimeoutError" and not ex.restarted
    assert sb.execute("print(kept)").stdout == "yes\n"


def test_timeout_interrupts_a_loop_and_keeps_state(sb):
    assert_timeout_interrupts_and_keeps_state(sb)


def test_output_flood_is_cut_keeping_head_and_tail():
    with Sandbox(max_output=1000) as small:
        ex = small.execute("for i in range(20000):\n    print(f'line {i}')")
        assert ex.truncated
        assert ex.stdout.startswith("line 0\n")
        assert ex.stdout.rstrip().endswith("line 19999")
        assert "characters of output cut" in ex.stdout
        assert len(ex.stdout) < 1200


def test_a_dead_kernel_is_reported_and_replaced():
    with Sandbox(imports=["os", "signal"]) as fragile:
        fragile.execute("lost = 1")
        ex = fragile.execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        assert ex.restarted and ex.error.name == "SandboxDied"
        assert "variables were lost" in ex.error.value
        assert fragile.execute("print(1 + 1)").stdout == "2\n"
        assert fragile.execute("lost").error.name == "NameError"


_PLOT = """\
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.plot([1, 2, 3]); ax.plot([3, 2, 1])
ax.set_title("Sales"); ax.set_xlabel("month")
plt.show()
"""


def test_a_figure_says_what_it_shows_in_its_text_also_after_a_restart():
    with Sandbox(imports=["os", "signal"]) as sandbox:
        for _ in range(2):
            [display] = [o for o in sandbox.execute(_PLOT).outputs if o["output_type"] == "display_data"]
            assert display["data"]["text/plain"] == "Figure (axes 1: title 'Sales', x 'month', 2 series)"
            assert "image/png" in display["data"]
            assert sandbox.execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)").restarted


def test_host_functions_run_in_the_host_with_values_crossing(sb):
    calls = []

    def lookup(key: str, scale: float = 1.0) -> dict:
        """Look a key up in the host."""
        calls.append((key, scale, os.getpid()))
        return {"key": key, "value": 10 * scale}

    sb.register_function("lookup", lookup)
    ex = sb.execute("r = lookup('a', scale=2.5)\nprint(r['value'])\nprint(lookup.__doc__)")
    assert ex.ok, ex.error
    assert ex.stdout == "25.0\nLook a key up in the host.\n"
    assert calls == [("a", 2.5, os.getpid())]


def test_host_function_errors_surface_in_the_sandbox(sb):
    def broken() -> None:
        raise LookupError("no such thing")

    sb.register_function("broken", broken)
    ex = sb.execute("broken()")
    assert ex.error.name == "HostFunctionError"
    assert "LookupError: no such thing" in ex.error.value


def test_plain_input_gets_an_empty_answer(sb):
    assert sb.execute("print(repr(input('name? ')))").stdout == "''\n"


def test_push_pull_and_variables(sb):
    sb.push(table={"a": [1, 2]}, label="north", n=3)
    sb.execute("n2 = n * 2")
    assert sb.pull(["table", "label", "n2"]) == {"table": {"a": [1, 2]}, "label": "north", "n2": 6}
    with pytest.raises(KeyError, match="not_there"):
        sb.pull(["not_there"])
    listing = sb.variables()
    assert "n2" in listing and "6" in listing["n2"]
    assert "final_answer" not in listing and "lookup" not in listing


def test_isolation_report_names_layers(sb):
    iso = sb.isolation
    assert iso.active or iso.missing
    assert set(iso.active) | set(iso.missing) >= {"environment", "network", "landlock", "seccomp", "rlimits"}


def test_bad_memory_option_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="512MB"):
        Sandbox(memory="lots")


def test_pool_hands_out_fresh_kernels_and_refills():
    with SandboxPool(size=1) as pool:
        first = pool.acquire()
        first.execute("secret = 'left behind'")
        first.execute("open('note.txt', 'w').write('left behind')")
        first.close()
        second = pool.acquire()
        try:
            assert second.execute("secret").error.name == "NameError"
            assert second.execute("open('note.txt')").error.name == "FileNotFoundError"
            assert second.workdir != first.workdir
            assert not (second.workdir / "note.txt").exists()
        finally:
            second.close()


def test_async_sandbox_runs_executions_concurrently_with_other_work():
    async def scenario():
        async with AsyncSandbox() as sb:
            slow = asyncio.create_task(sb.execute("import time\ntime.sleep(0.5)\nprint('done')"))
            ticks = 0
            while not slow.done():
                ticks += 1
                await asyncio.sleep(0.01)
            return (await slow).stdout, ticks

    stdout, ticks = asyncio.run(scenario())
    assert stdout == "done\n"
    assert ticks > 10


def test_cancelling_an_execution_stops_the_code_in_the_kernel():
    async def scenario():
        async with AsyncSandbox(timeout=60) as sb:
            slow = asyncio.create_task(sb.execute("import time\ntime.sleep(30)"))
            await asyncio.sleep(0.5)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            started = time.monotonic()
            ex = await sb.execute("print('next')")
            return ex.stdout, time.monotonic() - started

    stdout, waited = asyncio.run(scenario())
    assert stdout == "next\n"
    assert waited < 5  # not the 30 s the cancelled code would have slept


def test_async_sandbox_closes_with_aclose_and_close_is_a_deprecated_alias():
    import asyncio
    import warnings

    from agent_kernel.sandbox import AsyncSandbox, SandboxLike

    async def both() -> None:
        sandbox = await AsyncSandbox().start()
        assert isinstance(sandbox, SandboxLike)  # what agents, tools and pools are typed against
        work = sandbox.workdir
        await sandbox.aclose()
        assert not work.exists()
        old = await AsyncSandbox().start()
        work = old.workdir
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await old.close()
        assert [w.category for w in caught] == [DeprecationWarning] and "aclose" in str(caught[0].message)
        assert not work.exists()

    asyncio.run(both())


def test_tools_and_final_answer_replaced_indirectly_are_restored_and_the_code_is_told():
    with Sandbox(imports=["*"]) as wide:
        wide.register_function("double", lambda x: 2 * x)
        ex = wide.execute("globals()['double'] = lambda x: None\nglobals()['final_answer'] = print")
        assert "`double` is a tool: call it" in ex.stderr and "`final_answer` is a tool" in ex.stderr
        ex = wide.execute("final_answer(double(4))")
        assert ex.error is None and ex.final_answer == 8


def test_pandas_slips_get_a_one_line_hint():
    from agent_kernel.observation import FrameFacts, render_observation

    with Sandbox(imports=["*"]) as wide:
        setup = "import pandas as pd\ndf = pd.DataFrame({'day': ['2024-01-02'], 'amount': [3]})\n"
        missing = render_observation(wide.execute(setup + "df['Amount']"))
        assert "KeyError" in missing and "Hint: that column or label is not there; print(df.columns)" in missing
        dates = render_observation(wide.execute(setup + "df['day'].dt.month"))
        assert "Hint: df['day'] holds dates as text: convert it first" in dates
        dates = render_observation(wide.execute(setup + "df.day.dt.month"))  # no column named in brackets
        assert "Hint: the dates may be stored as strings" in dates and "pd.to_datetime" in dates
        tupled = render_observation(wide.execute(setup + "def total():\n    return df.groupby('day')['amount', 'day'].sum()\n"
                                                  "total()"))
        assert "Hint: select several columns with a list" in tupled and "df.groupby(key)[['amount', 'day']]" in tupled
        assert "Cell In[" in tupled and "in total()" in tupled  # the frames of the code that ran stay
        assert "frame in library code cut" in tupled and "site-packages" not in tupled and "def __getitem__" not in tupled
        assert tupled.splitlines()[-2].startswith("ValueError: Cannot subset columns with a tuple")
        reduced = render_observation(wide.execute(setup + "df['amount'].sum().sort_values()"))
        assert "Hint: that value is a single number (numpy.int64), not a Series" in reduced and ".sort_values" in reduced
        month = render_observation(wide.execute("best = '2024-05'\nbest.strftime('%Y-%m')"))
        assert "Hint: that value is already text (a str), which has no .strftime: print it" in month
        unimported = render_observation(wide.execute("np.mean([1, 2])"))
        assert "Hint: import numpy as np first" in unimported
        assert "Hint" not in render_observation(wide.execute("undefined_name"))
        plain = render_observation(wide.execute("{}['x']"))
        assert "KeyError" in plain and "Hint" not in plain
        grouped = render_observation(wide.execute(setup + "(df['amount'] * 2).groupby('day').sum()"))
        assert "Hint: groupby found no such column: on a Series" in grouped and "s.groupby(df['region'])" in grouped
        wide.execute(setup + "revenue = df['amount'] * 2")
        named = render_observation(wide.execute("revenue.groupby('day').mean()"),
                                   {"df": FrameFacts(("day", "amount"))})
        assert ("Hint: revenue is a Series, not the DataFrame: it has no column 'day'. Group it by df's column: "
                "revenue.groupby(df['day']).mean()") in named
        unread = render_observation(wide.execute("import pandas as pd\npd.read_csv('sales.csv')"))
        assert "Hint: no such file here: data you were given is already loaded as a variable" in unread
        assert "Hint" not in render_observation(wide.execute("open('notes.txt')"))


def test_a_column_of_another_given_frame_gets_a_merge_hint_and_a_refused_import_a_way_round():
    import pandas as pd

    from agent_kernel.observation import frame_facts, render_observation

    metrics = pd.DataFrame({"month": ["2025-01", "2025-01", "2025-02", "2025-02"],
                            "metric": ["signups", "churn", "signups", "churn"], "value": [5.0, 1.0, 7.0, 2.0]})
    frames = frame_facts({"orders": pd.DataFrame(columns=["order_id", "customer_id", "price"]),
                          "customers": pd.DataFrame({"customer_id": [7], "country": ["FR"]}), "metrics": metrics,
                          "count": 3})
    with Sandbox(imports=["pandas"]) as box:
        box.execute("import pandas as pd\norders = pd.DataFrame({'order_id': [1], 'customer_id': [7], 'price': [2.0]})")
        grouped = render_observation(box.execute("orders.groupby('country').price.sum()"), frames)
        assert ("Hint: 'country' is a column of customers, not of orders: merge them first, e.g. "
                "merged = orders.merge(customers, on='customer_id'), then use merged") in grouped
        assert "merge" not in render_observation(box.execute("orders.groupby('country').price.sum()"))  # no frames given
        assert "merge" not in render_observation(box.execute("orders['nowhere']"), frames)
        typo = render_observation(box.execute("orders['prices']"), frames)
        assert ("Hint: no column 'prices' in the DataFrames given (columns: orders: order_id, customer_id, price; "
                "customers: customer_id, country; metrics: month, metric, value); did you mean 'price'?") in typo
        box.push(metrics=metrics)  # a long table: what a wide one has as columns are values of its 'metric'
        long = render_observation(box.execute("metrics['signups'].sum()"), frames)
        assert ("Hint: 'signups' is not a column of metrics but a value of its column 'metric' (a long table): take "
                "its rows, metrics.loc[metrics['metric'] == 'signups', 'value'], or make one column per metric with "
                "metrics.pivot(columns='metric', ...)") in long
        box.execute("orders['country'] = ['FR']")
        product = render_observation(box.execute("orders.groupby('country').price * 2"))
        assert "Hint: arithmetic on a groupby does not combine columns: make the product a column first" in product
        product = render_observation(box.execute("orders.groupby('country')['price'] * orders['order_id']"))
        assert ("make it a column first, orders['value'] = orders['price'] * orders['order_id'], then "
                "orders.groupby('country')['value'].sum()") in product
        box.execute("orders['day'] = ['2025-01-02']")
        dated = render_observation(box.execute("orders[orders['day'].dt.month == 1]"))
        assert ("Hint: orders['day'] holds dates as text: convert it first, orders['day'] = "
                "pd.to_datetime(orders['day']), then use .dt") in dated
        located = render_observation(box.execute("orders.loc[orders['day'].max(), 'price']"))
        assert ("Hint: orders['day'].max() is a value, not a row label: orders['day'].idxmax() is the label of "
                "its row, e.g. orders.loc[orders['day'].idxmax(), ...]") in located
        averaged = render_observation(box.execute("orders.groupby(orders['day']).mean()['price']"))
        assert "Hint: the table has text columns: pick the column first, orders.groupby(orders['day'])['price'].mean()" in averaged
        several = render_observation(box.execute("orders.set_index('country')['price', 'order_id'].sum(axis=1)"))
        assert ("Hint: orders.set_index('country')['price', 'order_id'] asks for one column named ('price', "
                "'order_id'): select several with a list inside the brackets, "
                "orders.set_index('country')[['price', 'order_id']]") in several
        filled = render_observation(box.execute("orders['price'].fillna(method='ffill')"))
        assert "Hint: fillna(method=...) is gone from pandas: .ffill() fills gaps from the row before" in filled
        summed = render_observation(box.execute("orders.sum(axis=1)"))
        assert "Hint: the table has text columns: pick the numeric columns first" in summed
        assert "df.sum(axis=1, numeric_only=True)" in summed
        refused = render_observation(box.execute("from scipy.stats import pearsonr"))
        assert "Hint: your code cannot allow a module: do it with the modules listed as allowed: " in refused
        assert "df['a'].corr(df['b']) is Pearson's correlation" in refused
