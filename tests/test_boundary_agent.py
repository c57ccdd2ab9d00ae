"""Issue 15, the agent-side doors: tool calls from sandbox code validated like JSON tool calls,
`%agent fix` verified where the model never ran code and without credentials, terminal control
sequences out of every text the analyst's terminal or an export shows, and the SSRF guard on every
IPv6 form that carries an IPv4 address."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Literal

import pytest

from agent_kernel.base_tools import URLNotAllowed, VisitWebpageTool, _non_public

# -- the SSRF guard: IPv6 addresses that carry an IPv4 one ---------------------------------------------

REFUSED = [
    "2002:7f00:1::",                          # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",                      # 6to4 of 169.254.169.254 (cloud metadata)
    "2002:a00:1::",                           # 6to4 of 10.0.0.1
    "::ffff:127.0.0.1",                       # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:0:127.0.0.1",                     # IPv4-translated
    "::127.0.0.1",                            # IPv4-compatible (deprecated)
    "::169.254.169.254",
    "64:ff9b::7f00:1",                        # NAT64 well-known prefix, 127.0.0.1
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::a9fe:a9fe",                   # local-use NAT64
    "2001:0:4136:e378:8000:63bf:80ff:fffe",   # Teredo, client 127.0.0.1 (XORed)
    "2001:0:4136:e378:8000:63bf:5601:5601",   # Teredo, client 169.254.169.254
    "2606:4700::5efe:7f00:1",                 # ISATAP interface id of 127.0.0.1 under a public prefix
    "2606:4700::200:5efe:a9fe:a9fe",          # ISATAP, the universal bit set
    "fc00::1", "fd12:3456::1",                # unique local
    "fe80::1", "fe80::1%eth0",                # link-local
    "fec0::1",                                # site-local (deprecated)
    "ff02::1", "ff0e::1",                     # multicast
    "::", "::1",                              # unspecified, loopback
    "127.0.0.1", "169.254.169.254", "10.1.2.3", "100.64.0.1", "0.0.0.0",
]


@pytest.mark.parametrize("address", REFUSED)
def test_ssrf_guard_refuses_every_non_public_address_also_inside_ipv6(address: str) -> None:
    assert _non_public(address) is not None


def test_ssrf_guard_names_the_ipv4_address_an_ipv6_one_carries() -> None:
    assert _non_public("2002:7f00:1::") == "a loopback address (127.0.0.1, carried inside the IPv6 address)"
    assert "169.254.169.254" in str(_non_public("2001:0:4136:e378:8000:63bf:5601:5601"))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2606:4700:4700::1111",
                                     "2606:4700::5efe:808:808"])
def test_ssrf_guard_allows_public_addresses(address: str) -> None:
    assert _non_public(address) is None


def test_visit_webpage_refuses_a_host_resolving_to_6to4_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the tool: the name resolves (a stand-in resolver) to 6to4 of 127.0.0.1; no connection is made."""
    asked: list[str] = []

    async def resolve(self: Any, host: str, port: int, **_: Any) -> list[Any]:
        asked.append(host)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:7f00:1::", port, 0, 0))]

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", resolve)
    with pytest.raises(URLNotAllowed, match=r"sneaky\.example \(2002:7f00:1::\) is a loopback address"):
        VisitWebpageTool()(url="http://sneaky.example/")
    assert asked == ["sneaky.example"]


# -- tool calls from sandbox code are validated like JSON tool calls -----------------------------------

_BAD_CALLS = [
    "pick('green', 1)",                      # not one of the Literal's values
    "pick('red', 'two')",                    # not an integer
    "pick(count=1)",                         # a required argument missing
    "pick('red', 1, extra=3)",               # an argument the tool does not take
    "pick('red', 1, None, [4], 5)",         # too many positional arguments
    "pick('red', 1, color='blue')",          # one argument twice
    "__ak__.call('pick', ('green',), {'count': 1})",  # the stub bypassed: the host still checks
]
_PROBE = "\n".join([
    "def attempt(source):",
    "    try:",
    "        eval(source)",
    "        print('RAN', source)",
    "    except Exception as exc:",
    "        print(type(exc).__name__, '|', str(exc).splitlines()[1])",
    *[f"attempt({call!r})" for call in _BAD_CALLS],
    "print(pick('red', 2), pick(color='blue', count=np.int64(3), sizes=(1, 2)))",
])


def _pick_tool(seen: list[Any]) -> Any:
    from agent_kernel.tools import tool

    @tool
    def pick(color: Literal["red", "blue"], count: int, note: str | None = None,
             sizes: list[int] | None = None) -> str:
        """Pick some balls.

        Args:
            color: the colour.
            count: how many.
            note: a note.
            sizes: their sizes.
        """
        seen.append((color, count, sizes))
        return f"{count} {color}"

    return pick


def _bad_call_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if not line.startswith(("2 red", "3 blue"))]


def test_code_agent_tool_calls_are_validated_against_the_schema(scripted_server: Any) -> None:
    from scripted_server import text

    from agent_kernel.agents import CodeAgent
    from agent_kernel.sandbox import Sandbox

    seen: list[Any] = []
    scripted_server.script([text(f"```python\nimport numpy as np\n{_PROBE}\n```"),
                            text("```python\nfinal_answer('done')\n```")])
    with Sandbox(imports=["*"]) as sandbox:
        with CodeAgent(scripted_server.model(), tools=[_pick_tool(seen)], sandbox=sandbox) as agent:
            run = agent.run("pick balls")
            stdout = run.action_steps[0].execution.stdout
            # outside any run, straight on the sandbox: the registered host function still checks
            direct = sandbox.execute("pick('green', 1)")
        assert run.state == "success", run.error
        lines = _bad_call_lines(stdout)
        assert len(lines) == len(_BAD_CALLS) and not any(line.startswith("RAN") for line in lines), stdout
        assert all(line.startswith("HostFunctionError | - ") for line in lines), stdout
        assert "'green' is not one of ['red', 'blue']" in lines[0]
        assert "'two' is not of type 'integer'" in lines[1]
        assert "'color' is a required property" in lines[2]
        assert "('extra' was unexpected)" in lines[3]
        assert "takes 4 positional argument(s) (color, count, note, sizes), got 5" in lines[4]
        assert "multiple values for argument 'color'" in lines[5]
        assert "'green' is not one of" in lines[6]
        assert "2 red 3 blue" in stdout  # good calls run, numpy integers and tuples count as their JSON kinds
        assert seen == [("red", 2, None), ("blue", 3, (1, 2))] or seen == [("red", 2, None), ("blue", 3, [1, 2])]
        calls = run.action_steps[0].tool_calls
        assert [c.error is None for c in calls] == [False] * len(_BAD_CALLS) + [True, True]
        assert calls[-2].arguments == {"color": "red", "count": 2}
        assert direct.error is not None and direct.error.name == "HostFunctionError"
        assert "Invalid arguments for tool 'pick'" in direct.error.value
        assert '"enum":["red","blue"]' in direct.error.value  # what fits
    # the model read why each call was refused
    told = scripted_server.requests[1]["messages"][-1]["content"]
    assert "color: 'green' is not one of ['red', 'blue']" in told and "'extra' was unexpected" in told


def test_bind_takes_positional_arguments_in_the_order_the_prompt_shows() -> None:
    """A hand-written schema listing an optional parameter first: the signature (and bind) put the required first."""
    from agent_kernel.tools import Tool, ToolArgumentError

    class Search(Tool):
        name = "search"
        description = "Search."
        parameters = {"type": "object", "additionalProperties": False, "required": ["query"],
                      "properties": {"limit": {"type": "integer"}, "query": {"type": "string"}}}

        def forward(self, **kwargs: Any) -> Any:
            return kwargs

    search = Search()
    assert search.python_signature().startswith("def search(query: str, limit: int = None)")
    assert search.bind(("cats", 3), {}) == {"query": "cats", "limit": 3}
    with pytest.raises(ToolArgumentError) as caught:
        search.bind((list(range(100_000)),), {})  # a huge wrong value: the message quotes it, cut short
    assert "query: [0, 1, 2" in str(caught.value) and len(str(caught.value)) < 1_000


# -- terminal control sequences ----------------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agent_kernel._safe import clean_text  # noqa: E402


def _controls(text: str) -> list[str]:
    """Characters a terminal acts on rather than shows: ESC, C0 but newline and tab, DEL, C1."""
    return [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]


_PRINTABLE = st.text(st.characters(blacklist_categories=["Cc", "Cs"]) | st.sampled_from("\n\t"))
_SEQUENCES = st.sampled_from([
    "\x1b[31m", "\x1b[2J", "\x1b[?1049h", "\x1b[6n", "\x9b0m",                  # CSI, 7- and 8-bit
    "\x1b]8;;https://evil.example/\x1b\\", "\x1b]8;;\x07",                    # OSC 8 hyperlinks
    "\x1b]52;c;cm0gLXJmIH4=\x07", "\x1b]52;p;?\x1b\\", "\x9d0;title\x9c",     # OSC 52 clipboard, titles
    "\x1bP+q544e\x1b\\", "\x90q#0;2;0;0;0\x9c",                               # DCS (termcap query, sixel)
    "\x1b_Gf=100;AAAA\x1b\\", "\x1b^pm\x1b\\", "\x1bXsos\x1b\\",              # APC, PM, SOS
    "\x1bc", "\x1b7", "\x1b8", "\x1b=", "\x1bM", "\x1b(B", "\x1b#8", "\x1b%G",  # single-character and nF
    "\x00", "\x07", "\x08", "\x7f", "\x85", "\x9c",                           # bare controls
])


@given(st.text())
def test_clean_text_leaves_no_terminal_control_whatever_comes_in(text: str) -> None:
    cleaned = clean_text(text)
    assert _controls(cleaned) == []
    assert clean_text(cleaned) == cleaned


@given(_PRINTABLE)
def test_clean_text_keeps_printable_text_as_it_is(text: str) -> None:
    assert clean_text(text) == text


@given(st.lists(st.tuples(_PRINTABLE, _SEQUENCES)), _PRINTABLE)
def test_clean_text_removes_whole_sequences_and_nothing_around_them(pieces: list[tuple[str, str]], tail: str) -> None:
    """Between the sequences the text survives exactly: no parameter or payload text is left behind."""
    text = "".join(p + s for p, s in pieces) + tail
    assert clean_text(text) == "".join(p for p, _ in pieces) + tail


def test_clean_text_line_endings_and_unterminated_strings() -> None:
    assert clean_text("a\r\nb\rc") == "a\nb\nc"  # a carriage return cannot overwrite what is shown
    # an unterminated OSC swallows at most the rest of its line, never the lines after it
    assert clean_text("shown\x1b]8;;http://evil.example/ hidden\nstill shown") == "shown\nstill shown"


_HOSTILE_CODE = r"""H = ('\x1b]8;;https://evil.example/\x1b\\link\x1b]8;;\x1b\\ \x1b]52;c;cm0gLXJmIH4=\x07 '
     '\x1bP+q544e\x1b\\ \x1b_Gf=100\x1b\\ \x1b^pm\x1b\\ \x1bXsos\x1b\\ \x1bc \x9b2J \x9d0;t\x9c \r\x08 end')
class Evil:
    def __repr__(self):
        return H
evil = Evil()
print(H)
raise ValueError(H)"""


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def test_no_control_sequence_reaches_the_terminal_the_listing_or_an_export(tmp_path: Any) -> None:
    """OSC 8/52, DCS, APC/PM/SOS, resets, C1: printed, raised, in a repr and in the final answer."""
    import json

    from scripted_server import ScriptedServer, text
    from test_magics import _execute, _setup, _stdout

    with ScriptedServer() as server:
        server.script([text(f"```python\n{_HOSTILE_CODE}\n```"), text("```python\nfinal_answer(H)\n```")],
                      key="Show the hostile text")
        nb = _execute([_setup(server.url), "%%agent code\nShow the hostile text", "%agent sandbox",
                       "%agent export run.ipynb",
                       "error = _agent_run.action_steps[0].execution.error\n"
                       "print(error.traceback, error.value, _agent_run.action_steps[0].error)"], tmp_path)
    shown = [o for o in nb.cells[1].outputs if o.output_type in ("display_data", "execute_result", "stream")]
    texts = [o.get("text") or o.data.get("text/plain", "") for o in shown]
    assert texts and "link" in "".join(texts) and " end" in "".join(texts)
    assert all(_controls(t) == [] for t in texts)  # the run's text render
    listing = _stdout(nb.cells[2])
    assert "evil: " in listing and "link" in listing and _controls(listing) == []  # %agent sandbox
    traceback = _stdout(nb.cells[4])
    assert "ValueError" in traceback and "link" in traceback and _controls(traceback) == []
    exported = json.loads((tmp_path / "run.ipynb").read_text())
    strings = _strings(exported)
    assert any("link" in s and " end" in s for s in strings)  # the outputs are there, cleaned
    assert [s for s in strings if _controls(s)] == []


# -- %agent fix: verified only where the model never ran code; credentials left out ---------------------

_TRANSFORMER = r"""ip = get_ipython()
def hide(lines):
    text = ''.join(lines)
    return ['pass\n'] if 'df["amount"]' in text and 'final_answer' not in text else lines
ip.input_transformers_cleanup.append(hide)
print('installed')"""
_PATCHED_BUILTIN = "import sys\nsys.modules['builtins'].double = lambda x: 2 * x\nprint(double(21))"


def _failure(source: str, namespace: dict[str, Any]) -> BaseException:
    try:
        exec(compile(source, "<cell>", "exec"), namespace)  # noqa: S102 - the test's own cell
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("the cell was meant to fail")


@pytest.mark.parametrize(("source", "attack"), [
    ('total = df["amount"].sum()\nprint(total)', _TRANSFORMER),  # an input transformer empties the cell
    ("print(double(n))", _PATCHED_BUILTIN),                      # a builtin the model added
])
def test_fix_is_not_verified_by_what_the_model_changed_in_its_sandbox(scripted_server: Any, source: str,
                                                                      attack: str) -> None:
    import pandas as pd
    from scripted_server import text

    from agent_kernel import fix

    namespace = {"df": pd.DataFrame({"Amount": [10, 20]}), "n": 4}
    cell = fix.failed_cell(source, _failure(source, dict(namespace)), namespace)
    answer = text(f"```python\nfinal_answer({source!r})\n```")
    scripted_server.script([text(f"```python\n{attack}\n```"), answer, answer])
    found = fix.fix(cell, scripted_server.model(), max_steps=2)
    observations = [m["content"] for r in scripted_server.requests for m in r["messages"] if m["role"] == "user"]
    assert "installed" in observations[2] or "42" in observations[2]  # the attack ran in the agent's sandbox
    assert any("still fails on fresh copies of the variables" in o for o in observations)
    assert not found.verified and found.fixed is None and found.diff == ""


_KEY = "sk-proj-Q7x2Lm9Rt4Vw8Zk3Nb6Hc1Jd5Fg0TsYp"


def test_fix_keeps_credentials_out_of_the_prompt_and_the_sandbox(tmp_path: Any) -> None:
    """A key by name and by shape, in a variable, a dict and the cell's own source: none is sent;
    the analyst is told what was left out, and the fix put back keeps the analyst's key."""
    import json

    from scripted_server import ScriptedServer, text
    from test_magics import _execute, _setup, _stdout

    dump = ("print(sorted(k for k in globals() if not k.startswith('_')))\n"
            "print({k: repr(v) for k, v in globals().items() if not k.startswith('_') and k not in ('In', 'Out')})")
    fixed = 'client = {"key": "WITHHELD_CREDENTIAL_1"}\ntotal = sales["amount"].sum() + len(client)\nprint(total)'
    with ScriptedServer() as server:
        server.script([text(f"```python\n{dump}\n```"), text(f"```python\nfinal_answer({fixed!r})\n```")],
                      key="Reproduce the error")
        nb = _execute([
            _setup(server.url) + "\n%agent config review_ui=input\n"
            "openai_api_key = 'short-but-named'\nheaders = {'Authorization': 'Bearer abc.def'}\n"
            f"blob = ['fine', {{'note': {_KEY!r}}}]",
            f'client = {{"key": {_KEY!r}}}\nprint(openai_api_key, headers, blob, sales)\n'
            'total = sales["Amount"].sum() + len(client)',
            "%agent fix",
            "print(_agent_fix.verified, _agent_fix.cell.withheld)\nprint(repr(_agent_fix.fixed))",
        ], tmp_path)
        sent = json.dumps(server.requests)
        seen_in_sandbox = server.requests[1]["messages"][-1]["content"]  # what the dump printed there
    assert "'sales'" in seen_in_sandbox and "headers" not in seen_in_sandbox and "blob" not in seen_in_sandbox
    assert [o.ename for o in nb.cells[1].outputs if o.output_type == "error"] == ["KeyError"]
    told = _stdout(nb.cells[2])
    assert "left out because they look like credentials: variable(s) openai_api_key, headers, blob, client" in told, told
    assert "the model saw as WITHHELD_CREDENTIAL_1" in told
    assert "verified in a new sandbox" in told
    assert _KEY not in sent and "short-but-named" not in sent and "Bearer abc.def" not in sent
    assert "sales" in sent and "WITHHELD_CREDENTIAL_1" in sent  # the cell itself still went, with a placeholder
    assert "openai_api_key, headers, blob, client" in sent  # the model knows what is missing
    assert _KEY not in "".join(_stdout(c) for c in nb.cells[2:3])  # nor in the diff shown
    result = _stdout(nb.cells[3]).splitlines()
    assert result[0] == "True ['openai_api_key', 'headers', 'blob', 'client']"
    assert _KEY in result[1]  # the fix the analyst gets back has their own key in it
