"""The trimmed sandbox kernel (_launcher.py) still behaves as a Jupyter kernel to a plain client.

A second, ordinary jupyter_client BlockingKernelClient connects to a sandbox kernel and checks what
the trims could break: output streamed while a cell runs, output from threads, top-level await
the abort of queued cells after an error, user_expressions, no subshells.
"""

from __future__ import annotations

import time

import pytest
from jupyter_client import BlockingKernelClient

from agent_kernel.sandbox import Sandbox


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(imports=["*"], timeout=20) as sb:
        yield sb


@pytest.fixture()
def kc(sandbox):
    client = BlockingKernelClient()
    client.load_connection_file(sandbox._async._backend.km.connection_file)
    client.start_channels()
    client.wait_for_ready(timeout=20)
    yield client
    client.stop_channels()


def _run(kc: BlockingKernelClient, code: str, **kwargs) -> tuple[dict, list[tuple[float, dict]]]:
    seen: list[tuple[float, dict]] = []
    reply = kc.execute_interactive(code, timeout=20, output_hook=lambda m: seen.append((time.perf_counter(), m)), **kwargs)
    return reply["content"], seen


def test_kernel_info_is_ipykernel_without_subshells(kc):
    info = kc.kernel_info(reply=True, timeout=10)["content"]
    assert info["status"] == "ok" and info["implementation"] == "ipython"
    assert "kernel subshells" not in info.get("supported_features", [])


def test_output_streams_while_a_cell_runs(kc):
    start = time.perf_counter()
    reply, seen = _run(kc, "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')")
    end = time.perf_counter()
    assert reply["status"] == "ok"
    texts = [(t, m["content"]["text"]) for t, m in seen if m["msg_type"] == "stream"]
    assert "".join(text for _, text in texts) == "first\nsecond\n"
    assert texts[0][0] - start < 1.0 < end - start  # the first line came out long before the cell ended


def test_output_of_a_thread_and_unflushed_prints_arrive(kc):
    reply, seen = _run(kc, "import threading\nt = threading.Thread(target=print, args=('from thread',))\nt.start(); t.join()\nprint('main', end='')")
    assert reply["status"] == "ok"
    assert "".join(m["content"]["text"] for _, m in seen if m["msg_type"] == "stream") == "from thread\nmain"
    assert seen[-1][1]["msg_type"] == "status" and seen[-1][1]["content"]["execution_state"] == "idle"


def test_top_level_await(kc):
    reply, seen = _run(kc, "import asyncio\nawait asyncio.sleep(0.01)\n6 * 7")
    assert reply["status"] == "ok"
    assert [m["content"]["data"]["text/plain"] for _, m in seen if m["msg_type"] == "execute_result"] == ["42"]


def test_queued_cells_are_aborted_after_an_error(kc):
    first = kc.execute("raise ValueError('x')")
    second = kc.execute("print('must not run')")
    replies = {}
    while len(replies) < 2:
        msg = kc.get_shell_msg(timeout=10)
        replies[msg["parent_header"]["msg_id"]] = msg["content"]["status"]
    assert replies == {first: "error", second: "aborted"}
    time.sleep(0.2)
    assert _run(kc, "2")[0]["status"] == "ok"  # aborting stops after the queue drained


def test_user_expressions_keep_rich_formats(kc):
    reply, _ = _run(kc, "", user_expressions={"s": "'a\\nb'", "n": "[1, 2]", "bad": "1/0"})
    expressions = reply["user_expressions"]
    assert expressions["s"] == {"status": "ok", "data": {"text/plain": "'a\\nb'"}, "metadata": {}}
    assert expressions["n"]["data"]["text/plain"] == "[1, 2]"
    assert expressions["bad"]["status"] == "error" and expressions["bad"]["ename"] == "ZeroDivisionError"


def test_a_subshell_request_leaves_the_kernel_working(kc):
    # ipykernel without subshells logs the request and does not answer it; clients check
    # supported_features first (see the kernel_info test)
    kc.control_channel.send(kc.session.msg("create_subshell_request", {}))
    assert _run(kc, "3")[0]["status"] == "ok"


def test_a_kernel_started_from_the_plain_kernelspec_gets_a_private_folder_it_keeps_over_a_restart(
        tmp_path, monkeypatch):
    """A stock KernelManager (as JupyterLab's, nbclient's) asks for TCP in the shared runtime folder:
    the provisioner gives the kernel a 0700 folder of its own over ipc, keeps it over a restart (the
    kernel still starts in the notebook's folder) and removes it with the kernel."""
    import os

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from agent_kernel.sandbox import install_kernelspec

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    install_kernelspec(user=True)
    assert "agent-sandbox" in KernelSpecManager().find_kernel_specs()
    folder = tmp_path / "project"
    folder.mkdir()
    km = KernelManager(kernel_name="agent-sandbox")
    km.start_kernel(cwd=str(folder))
    try:
        private = os.path.dirname(km.connection_file)
        assert km.transport == "ipc" and os.stat(private).st_mode & 0o777 == 0o700
        assert os.listdir(private).count("kernel.json") == 1
        for restart in (False, True):
            if restart:
                km.restart_kernel(now=True)
                assert os.path.dirname(km.connection_file) == private
            client = km.client()
            client.start_channels()
            try:
                client.wait_for_ready(timeout=30)
                printed = []
                client.execute_interactive("import os; print(os.getcwd())", timeout=30, output_hook=lambda m: (
                    printed.append(m["content"]["text"]) if m["msg_type"] == "stream" else None))
                assert "".join(printed) == f"{folder}\n"
            finally:
                client.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    assert not os.path.exists(private)
