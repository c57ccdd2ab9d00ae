"""`%load_ext agent_kernel` starts litellm's import and a warm sandbox in the background (issue #16 item 5).

Each check runs in a fresh Python process: in this one litellm is imported already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from scripted_server import ScriptedServer, text

_PRELUDE = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
from agent_kernel import _aio, _litellm

shell = InteractiveShell.instance()
assert "litellm" not in sys.modules
shell.run_line_magic("load_ext", "agent_kernel")
magics = next(c for c in shell.configurables if type(c).__name__ == "AgentMagics")
deadline = time.monotonic() + 120
while not _litellm.loaded() and time.monotonic() < deadline:  # nothing in this thread asks for litellm
    time.sleep(0.05)
pool = magics._warm
_aio.run_sync(pool.astart())  # waits for the kernel the load started (size 1: no other starts)
warm = pool._ready[0].result()
workdir = warm.workdir

def closed(sandbox):
    return not workdir.exists()  # closing a sandbox removes its folders
"""


def _run(script: str, server: ScriptedServer, tmp_path: Path) -> dict[str, object]:
    env = {**os.environ, "AGENT_KERNEL_MODEL": "openai/scripted", "AGENT_KERNEL_API_BASE": server.url,
           "OPENAI_API_KEY": "sk-scripted"}
    done = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_load_imports_litellm_and_the_first_code_cell_runs_in_the_warm_sandbox(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.script([text("```python\nfinal_answer(6 * 7)\n```"), text("```python\nfinal_answer(len('x'))\n```")])
        result = _run("""
            loaded = _litellm.loaded()
            shell.run_cell_magic("agent", "code --out first", "What is six times seven?")
            used = magics._agents["code"].sandbox is warm and magics._warm is None
            shell.run_cell_magic("agent", "code --out second", "And one?")  # a new agent: the warm one is done
            print(json.dumps({"loaded": loaded, "used": used, "first": shell.user_ns["first"],
                              "second": shell.user_ns["second"], "closed": closed(warm)}))
            """, server, tmp_path)
    assert result == {"loaded": True, "used": True, "first": 42, "second": 1, "closed": True}


def test_an_unused_warm_sandbox_ends_with_the_extension(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        result = _run("""
            running = not closed(warm)
            shell.run_line_magic("unload_ext", "agent_kernel")
            print(json.dumps({"running": running, "closed": closed(warm)}))
            """, server, tmp_path)
    assert result == {"running": True, "closed": True}


def test_a_cell_with_other_sandbox_settings_does_not_take_the_warm_sandbox(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.script([text("```python\nfinal_answer(len('abc'))\n```")])
        result = _run("""
            shell.run_cell_magic("agent", "code --network --out n", "Three?")
            other = magics._agents["code"].sandbox is not warm
            magics._retiring.result(30)
            print(json.dumps({"other": other, "n": shell.user_ns["n"], "closed": closed(warm)}))
            """, server, tmp_path)
    assert result == {"other": True, "n": 3, "closed": True}
