"""What sandbox code can make the host hold or raise, through a real kernel with every import allowed.

Sandbox code holds its kernel's session key: it can sign any message on iopub, shell and stdin, and
flood the host with outputs or hand it values that are small on disk and huge in memory. The host
must keep its memory bounded and raise only the documented errors (SandboxError, KeyError for a
name not defined), with what it cut said in the Execution.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from agent_kernel.sandbox import Execution, Sandbox, SandboxError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's kernel is started on Linux here")

MiB = 1024**2
MAX_ITEM = 16 * MiB  # host bytes one message may take parsed (_messages.MAX_ITEM)


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with Sandbox(timeout=30, memory="2GB", imports=["*"]) as sandbox:
        yield sandbox


def assert_still_answers(sb: Sandbox) -> None:
    ex = sb.execute("print(1+1)")
    assert ex.stdout == "2\n", (ex.stdout, ex.error)


def held_bytes(ex: Execution) -> int:
    """The bytes of text the host holds for an execution's outputs."""
    total = 0
    for out in ex.outputs:
        total += len(out.get("text", "")) + sum(len(str(v)) for v in out.get("data", {}).values())
    return total


def peak_rss_growth(run: Any) -> int:
    """Bytes the peak resident size of this process grew by while `run()` ran (Linux: the peak is reset first)."""
    def status(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = status("VmRSS:")
    run()
    return status("VmHWM:") - before


# -- item 3: outputs ---------------------------------------------------------------------------------


def test_a_flood_of_displays_is_cut_in_the_kernel_and_said(sb: Sandbox) -> None:
    """300 displays of 1 MiB: 64 MiB of them cross (max_output_bytes), the rest are dropped in the
    kernel, and the execution says so; the host's peak memory grows by far less than 300 MiB."""
    results: list[Execution] = []
    growth = peak_rss_growth(lambda: results.append(sb.execute(
        "from IPython.display import display\n"
        "for i in range(300):\n"
        "    display({'text/plain': str(i % 10) * 2**20}, raw=True)\n"
    )))
    ex = results[0]
    assert ex.error is None, ex.error
    assert held_bytes(ex) <= 64 * MiB and 50 <= len(ex.displays) <= 64
    assert ex.truncated and "dropped: over the 64.0 MiB of outputs" in ex.stderr
    assert growth < 200 * MiB, f"the host's peak memory grew by {growth / MiB:.0f} MiB"
    assert_still_answers(sb)


def test_a_forged_flood_of_displays_is_cut_on_the_host_and_said(sb: Sandbox) -> None:
    """The same flood sent past the kernel's cap, signed with its session key: the host keeps 64 MiB
    and drops the rest; the kernel answers afterwards."""
    results: list[Execution] = []
    growth = peak_rss_growth(lambda: results.append(sb.execute(FORGE + textwrap.dedent("""
        import time
        for i in range(300):
            forge("iopub", "display_data", {"data": {"text/plain": str(i % 10) * 2**20}, "metadata": {}})
            time.sleep(0.003)  # not faster than the host reads: queued in the kernel, they would fill its memory
    """))))
    ex = results[0]
    assert ex.error is None, ex.error
    assert held_bytes(ex) <= 64 * MiB and len(ex.displays) <= 64
    assert ex.truncated and "dropped: over the 64.0 MiB of outputs" in ex.stderr
    assert growth < 250 * MiB, f"the host's peak memory grew by {growth / MiB:.0f} MiB"
    assert_still_answers(sb)


# A display over zmq's MAXMSGSIZE (32 MiB) is dropped by the kernel; forged, it would be lost unsaid.
@pytest.mark.parametrize(("how", "size"), [("display", MAX_ITEM + MiB), ("display", 40 * MiB), ("forged", MAX_ITEM + MiB)])
def test_one_display_too_big_for_a_message_is_dropped_and_said(sb: Sandbox, how: str, size: int) -> None:
    """In the kernel (display) or on the host (a forged message): dropped and said."""
    send = (f"forge('iopub', 'display_data', {{'data': {{'text/plain': 'x' * {size}}}, 'metadata': {{}}}})"
            if how == "forged" else f"display({{'text/plain': 'x' * {size}}}, raw=True)")
    ex = sb.execute(FORGE + "from IPython.display import display\n" + send + "\nprint('after')")
    assert ex.error is None and ex.stdout == "after\n" and not ex.displays, (ex.stdout, ex.error)
    assert ex.truncated and "dropped" in ex.stderr
    assert_still_answers(sb)


def test_a_small_message_that_parses_into_a_huge_one_is_not_parsed(sb: Sandbox) -> None:
    """9 MB of `[[],[],...]` would be ~400 MB of lists on the host: it is weighed, not parsed."""
    results: list[Execution] = []
    growth = peak_rss_growth(lambda: results.append(sb.execute(FORGE + textwrap.dedent("""
        forge("iopub", "display_data", b'{"data": {"application/json": [' + b"[]," * 3_000_000 + b'[]]}}')
        print("sent")
    """))))
    ex = results[0]
    assert ex.stdout == "sent\n" and not ex.displays and "over what one message may take" in ex.stderr
    assert growth < 150 * MiB, f"the host's peak memory grew by {growth / MiB:.0f} MiB"


# -- item 8: forged messages -----------------------------------------------------------------------

FORGE = textwrap.dedent("""
    _k = get_ipython().kernel
    _P = _k.get_parent()
    def forge(channel, msg_type, content, parent=None):
        # content as bytes goes out as it is: JSON that is not a dict, or not JSON at all
        parent = _P if parent is None else parent
        if channel == "iopub":
            _k.session.send(_k.iopub_socket, msg_type, content, parent=parent)
        else:
            socket = _k.shell_stream.socket if channel == "shell" else _k.stdin_socket  # sent now, not after the cell
            _k.session.send(socket, msg_type, content, parent=parent, ident=_k._parent_ident["shell"])
""")

FORGED_OUTPUTS = [
    ("iopub", "stream", {"text": "no name"}),
    ("iopub", "stream", {"name": ["stdout"], "text": "unhashable name"}),
    ("iopub", "stream", {"name": "stdout", "text": 5}),
    ("iopub", "display_data", {"data": [1, 2]}),
    ("iopub", "display_data", {"data": {"text/plain": ["a"]}}),
    ("iopub", "display_data", {"data": {"text/html": "x"}, "metadata": 7}),
    ("iopub", "execute_result", {"data": "text", "execution_count": "x"}),
    ("iopub", "update_display_data", {}),
    ("iopub", "error", {"ename": 1, "evalue": "v"}),
    ("iopub", "error", {"ename": "E", "evalue": "v", "traceback": "not a list"}),
    ("iopub", "status", {}),
    ("iopub", "status", {"execution_state": ["idle"]}),
    ("iopub", "clear_output", b"[1]"),
    ("iopub", "display_data", b"not json"),
    ("stdin", "input_request", {}),
    ("stdin", "input_request", {"prompt": 5}),
    ("shell", "execute_reply", b"[1]"),
    ("shell", "execute_reply", {"status": 1}),
]


def test_forged_outputs_are_dropped_and_said_not_raised(sb: Sandbox) -> None:
    code = FORGE + "".join(f"forge({c!r}, {t!r}, {content!r})\n" for c, t, content in FORGED_OUTPUTS)
    ex = sb.execute(code + "import time; time.sleep(0.5)\nprint('done')")
    assert ex.error is None and ex.stdout == "done\n", (ex.stdout, ex.error)
    said = re.findall(r"\[\.\.\. (\d+) messages? from the sandbox dropped: a malformed", ex.stderr)
    assert ex.truncated and sum(map(int, said)) == len(FORGED_OUTPUTS), ex.stderr
    for out in ex.outputs:
        assert out["output_type"] != "display_data" or all(isinstance(v, str) for v in out["data"].values())
    assert_still_answers(sb)


FORGED_REPLIES = [  # each raised a raw AttributeError or TypeError out of pull, variables and push
    b"[1]",
    {"status": "ok", "user_expressions": [1]},
    {"status": "ok", "user_expressions": {"r": "not a dict"}},
]


def replace_bridge_call(method: str, reply: Any) -> str:
    """Sandbox code that makes `__ak__.<method>` answer the host with a forged reply and idle status."""
    return FORGE + textwrap.dedent(f"""
        def _forged(*args, reply={reply!r}):
            parent = _k.get_parent()
            forge("shell", "execute_reply", reply, parent)
            forge("iopub", "status", {{"execution_state": "idle"}}, parent)
            import time; time.sleep(0.3)
            return "null"
        __ak__.{method} = _forged
        x = 1
    """)


@pytest.mark.parametrize("reply", FORGED_REPLIES, ids=range(len(FORGED_REPLIES)))
@pytest.mark.parametrize("call", ["pull", "variables", "push"])
def test_forged_replies_to_host_calls_raise_sandbox_error(sb: Sandbox, call: str, reply: Any) -> None:
    method = {"pull": "dump", "variables": "variables", "push": "load"}[call]
    ex = sb.execute(replace_bridge_call(method, reply))
    assert ex.error is None, ex.error
    try:
        {"pull": lambda: sb.pull(["x"]), "variables": sb.variables, "push": lambda: sb.push(y=1)}[call]()
    except SandboxError:
        pass
    sb.execute(f"del __ak__.{method}")
    assert sb.pull(["x"]) == {"x": 1}
    assert_still_answers(sb)


@pytest.mark.parametrize("answer", ['{"values": {}, "missing": "x"}', '{"values": {}, "missing": [["x"]]}'])
def test_malformed_pull_answers_raise_sandbox_error(sb: Sandbox, answer: str) -> None:
    sb.execute(f"__ak__.dump = lambda names: {answer!r}\nx = 1")
    with pytest.raises(SandboxError):
        sb.pull(["x"])
    sb.execute("del __ak__.dump")
    assert sb.pull(["x"]) == {"x": 1}


@pytest.mark.parametrize("listing", ["[1]", '{"a": 1}', '{"a": ["x"]}'])
def test_malformed_variable_listings_raise_sandbox_error(sb: Sandbox, listing: str) -> None:
    sb.execute(f"__ak__.variables = lambda: {listing!r}")
    with pytest.raises(SandboxError):
        sb.variables()
    sb.execute("del __ak__.variables")
    assert isinstance(sb.variables(), dict)


def test_a_huge_variable_listing_is_cut(sb: Sandbox) -> None:
    sb.execute("import json\n__ak__.variables = lambda: json.dumps({f'v{i}': 'p' * 1200 for i in range(20_000)})")
    listing = sb.variables()
    assert len(listing) == 10_001 and "10000 more variables" in listing["…"]
    assert max(len(v) for v in listing.values()) <= 1000
    sb.execute("del __ak__.variables")


# -- item 4: values small in the sandbox, huge on the host -----------------------------------------


def test_sparse_files_are_charged_at_their_size_across_one_pull() -> None:
    """Five sparse files of 128 MiB (no disk blocks) behind one pull: each within max_transfer,
    together over it, refused at the third before it is read."""
    descriptors = [f"v{i}" for i in range(5)]
    with Sandbox(timeout=30, imports=["*"], max_transfer="300MB") as sandbox:
        code = textwrap.dedent("""
            import json, os
            T = str(__ak__.transfer_dir)
            descriptors = {}
            for i in range(5):
                name = f"sparse{i}.bin"
                with open(os.path.join(T, name), "wb") as f:
                    f.truncate(2**27)
                descriptors[f"v{i}"] = {"kind": "bytes", "file": name, "size": 2**27}
            __ak__.dump = lambda names: json.dumps({"values": {n: descriptors[n] for n in json.loads(names)}, "missing": []})
            v0 = v1 = v2 = v3 = v4 = 0
        """)
        assert sandbox.execute(code).error is None
        refused: list[Any] = []
        growth = peak_rss_growth(lambda: refused.append(pytest.raises(SandboxError, sandbox.pull, list(descriptors))))
        assert "max_transfer" in str(refused[0].value)
        assert growth < 400 * MiB, f"the host's peak memory grew by {growth / MiB:.0f} MiB"  # two read, not five
        assert sandbox.execute("print(len(os.listdir(T)))").stdout == "0\n"  # none left behind


def test_a_final_answer_over_the_budget_is_an_error_of_the_execution_not_a_raise() -> None:
    with Sandbox(timeout=30, imports=["*"], max_transfer="64MB") as sandbox:
        ex = sandbox.execute(textwrap.dedent("""
            import numpy as np
            print("computed")
            final_answer(np.zeros(10 * 2**20))  # 80 MB
        """))
        assert ex.stdout == "computed\n" and not ex.has_final_answer
        assert ex.error is not None and ex.error.name == "FinalAnswerRefused" and "max_transfer" in ex.error.value
        assert sandbox.execute("final_answer(np.zeros(3))").final_answer.tolist() == [0, 0, 0]


def test_values_that_expand_on_the_host_are_refused_before_they_are_built(sb: Sandbox) -> None:
    """A 1 KB Arrow file of 60M null values and a zero-size dtype .npy of 10**15 elements are refused
    with SandboxError; a dictionary column whose metadata claims object dtype stays categorical
    (made whole, each of its rows would be a new 10 KB string). The host's memory stays untouched."""
    code = textwrap.dedent("""
        import json, os, numpy as np, pyarrow as pa, pyarrow.ipc
        T = str(__ak__.transfer_dir)
        def arrow(name, table, meta=None):
            if meta is not None:
                table = table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})
            with pa.OSFile(os.path.join(T, name), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
                w.write_table(table)
            return {"kind": "arrow", "as": "DataFrame", "file": name, "size": os.path.getsize(os.path.join(T, name))}
        def forged():
            d = {}
            d["nulls"] = arrow("nulls.arrow", pa.table({f"c{i}": pa.nulls(20_000_000) for i in range(3)}))
            big = pa.DictionaryArray.from_arrays(pa.array(np.zeros(40_000, dtype="int8")), pa.array(["x" * 10_000]))
            d["cats"] = arrow("cats.arrow", pa.table({"s": big}), {"index_columns": [], "columns": [
                {"name": "s", "field_name": "s", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}]})
            with open(os.path.join(T, "zero.npy"), "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "|V0", "fortran_order": False, "shape": (10**15,)})
            d["zero"] = {"kind": "npy", "file": "zero.npy", "size": os.path.getsize(os.path.join(T, "zero.npy"))}
            return d
        __ak__.dump = lambda names: json.dumps({"values": {n: forged()[n] for n in json.loads(names)}, "missing": []})
        nulls = cats = zero = 0
    """)
    assert sb.execute(code).error is None
    for name in ("nulls", "zero"):
        growth = peak_rss_growth(lambda: pytest.raises(SandboxError, sb.pull, [name]))
        assert growth < 100 * MiB, f"{name}: the host's peak memory grew by {growth / MiB:.0f} MiB"
        with pytest.raises(SandboxError, match="max_transfer|zero-size"):
            sb.pull([name])
    pulled: list[Any] = []
    growth = peak_rss_growth(lambda: pulled.append(sb.pull(["cats"])["cats"]))
    assert growth < 100 * MiB, f"the host's peak memory grew by {growth / MiB:.0f} MiB"
    assert str(pulled[0]["s"].dtype) == "category" and len(pulled[0]) == 40_000
    sb.execute("del __ak__.dump")
    assert_still_answers(sb)
