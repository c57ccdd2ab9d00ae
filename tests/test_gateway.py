"""Sandboxes on a real Jupyter Kernel Gateway (127.0.0.1): the sandbox's core cases and a CodeAgent run.

The gateway is a subprocess configured as docs/gateway.md says (tests/gateway_server.py); the
host reaches the kernel only through REST and the channels websocket, and values cross inline.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time

import numpy as np
import pandas as pd
import pytest
from gateway_server import GatewayServer
from scripted_server import text
from test_sandbox import assert_timeout_interrupts_and_keeps_state

from agent_kernel.agents import CodeAgent
from agent_kernel.sandbox import Sandbox, SandboxError
from agent_kernel.sandbox._codec import INLINE_LIMIT, TransferError
from agent_kernel.sandbox._gateway import _frame_v1, _parse_v1
from agent_kernel.sandbox._messages import Malformed, check
from agent_kernel.sandbox._launcher import _require_private
from agent_kernel.sandbox._transfer import Transfer


@pytest.fixture(scope="session")
def gateway():
    with GatewayServer() as server:
        yield server


@pytest.fixture(scope="module")
def sb(gateway):
    with Sandbox(gateway=gateway.url, token=gateway.token, timeout=10, imports=["os"]) as sandbox:
        yield sandbox


def test_outputs_errors_and_final_answer(sb):
    ex = sb.execute("print('a')\nimport sys\nprint('b', file=sys.stderr)\n6 * 7")
    assert ex.ok and ex.stdout == "a\n" and ex.stderr == "b\n" and ex.result == {"text/plain": "42"}
    error = sb.execute("def f():\n    return 1 / 0\nf()").error
    assert error.name == "ZeroDivisionError" and "return 1 / 0" in error.traceback
    assert "agent_kernel" not in error.traceback
    answered = sb.execute("final_answer({'rows': [1, 2]})\nraise ValueError('late')")
    assert answered.error.name == "ValueError"
    assert answered.has_final_answer and answered.final_answer == {"rows": [1, 2]}


def test_the_kernel_is_isolated_on_the_gateway_host(sb, gateway):
    assert {"landlock", "seccomp", "network", "environment"} <= set(sb.isolation.active)
    # its folder is a private one inside the gateway's runtime folder, which it cannot list:
    # other kernels' connection files (their keys) are there
    ex = sb.execute("import os\nprint(os.getcwd())\nos.listdir(os.path.dirname(os.path.dirname(os.getcwd())))")
    runtime = os.path.realpath(gateway.folder / "runtime")
    assert ex.stdout.startswith(runtime + "/kernel-") and ex.stdout.rstrip().endswith("/work")
    assert ex.error.name == "PermissionError"
    with pytest.raises(SandboxError, match="working directory is on the gateway"):
        sb.workdir


def test_timeout_interrupts_through_the_rest_api_and_keeps_state(sb):
    assert_timeout_interrupts_and_keeps_state(sb)


def test_a_killed_kernel_is_replaced_and_its_workdir_kept(gateway):
    with Sandbox(gateway=gateway.url, token=gateway.token, imports=["os", "signal"]) as fragile:
        fragile.execute("lost = 1\nopen('note.txt', 'w').write('kept')")
        ex = fragile.execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        assert ex.restarted and ex.error.name == "SandboxDied"
        assert fragile.execute("lost").error.name == "NameError"
        assert fragile.execute("print(open('note.txt').read())").stdout == "kept\n"


def test_a_kernel_that_ignores_the_interrupt_is_restarted(gateway):
    with Sandbox(gateway=gateway.url, token=gateway.token, imports=["signal"]) as stuck:
        ex = stuck.execute("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
                           timeout=1)
        assert ex.restarted and ex.error.name == "TimeoutError" and "restarted" in ex.error.value
        assert stuck.execute("print(1 + 1)").stdout == "2\n"


def test_host_functions_with_big_values_both_ways(sb):
    seen = []

    def lookup(keys: list, scale: float = 1.0) -> dict:
        """Look keys up in the host."""
        seen.append((len(keys), os.getpid()))
        return {"values": [k * scale for k in keys]}

    sb.register_function("lookup", lookup)
    n = INLINE_LIMIT  # the arguments and the result are too big to travel as inline JSON text: payload files
    ex = sb.execute(f"r = lookup(list(range({n})), scale=2)\nprint(len(r['values']), r['values'][-1])")
    assert ex.ok, ex.error
    assert ex.stdout == f"{n} {2 * (n - 1)}\n"
    assert seen == [(n, os.getpid())]


def test_push_and_pull_a_dataframe(sb):
    df = pd.DataFrame({"a": np.arange(50_000), "b": np.linspace(0, 1, 50_000), "c": ["x", "y"] * 25_000})
    sb.push(df=df, label="north")
    assert sb.execute("df2 = df.assign(d=df.a * 2)\nprint(len(df2), label)").stdout == "50000 north\n"
    back = sb.pull(["df2", "label"])
    pd.testing.assert_frame_equal(back["df2"], df.assign(d=df.a * 2))
    assert back["label"] == "north"
    with pytest.raises(KeyError, match="nope"):
        sb.pull(["nope"])


def test_kernels_are_deleted_on_close(gateway):
    before = {k["id"] for k in gateway.kernels()}
    with Sandbox(gateway=gateway.url, token=gateway.token) as temporary:
        kernel_id = temporary.as_async()._backend.kernel_id
        assert kernel_id in {k["id"] for k in gateway.kernels()}
    assert {k["id"] for k in gateway.kernels()} == before


def test_the_gateway_tracks_each_kernels_activity(gateway):
    """Idle culling and `last_activity` rest on this (SandboxMappingKernelManager's lighter tracking)."""
    with Sandbox(gateway=gateway.url, token=gateway.token, imports=["time"]) as sandbox:
        path = f"/api/kernels/{sandbox.as_async()._backend.kernel_id}"
        assert gateway.get(path)["execution_state"] == "idle"
        before = gateway.get(path)["last_activity"]
        running = threading.Thread(target=sandbox.execute, args=("import time\ntime.sleep(1.5)",))
        running.start()
        deadline = time.monotonic() + 1.2
        while gateway.get(path)["execution_state"] != "busy" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gateway.get(path)["execution_state"] == "busy"
        running.join()
        after = gateway.get(path)
        assert after["execution_state"] == "idle" and after["last_activity"] > before


def test_a_wrong_token_says_what_to_set(gateway):
    with pytest.raises(SandboxError, match="JUPYTER_GATEWAY_AUTH_TOKEN"):
        Sandbox(gateway=gateway.url, token="wrong")


def test_the_gateway_url_can_come_from_the_environment(gateway, monkeypatch):
    monkeypatch.setenv("JUPYTER_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", gateway.token)
    with Sandbox() as remote:
        assert remote.options.gateway == gateway.url
        assert remote.as_async()._backend.kernel_id in {k["id"] for k in gateway.kernels()}


def test_code_agent_runs_on_the_gateway(gateway, scripted_server):
    calls = []

    def price(item: str) -> float:
        """Price of an item.

        Args:
            item: what to price.
        """
        calls.append(item)
        return {"apple": 0.5, "pear": 0.75}[item]

    scripted_server.script([
        text("```python\ntotal = sum(price(i) for i in ['apple', 'pear'])\nprint(total)\n```"),
        text("```python\nfinal_answer({'total': total, 'rows': len(orders)})\n```"),
    ])
    sandbox = Sandbox(gateway=gateway.url, token=gateway.token)
    try:
        agent = CodeAgent(scripted_server.model(), tools=[price], sandbox=sandbox)
        run = agent.run("price the fruit", variables={"orders": pd.DataFrame({"n": range(3)})})
    finally:
        sandbox.close()
    assert run.state == "success", run.error
    assert run.output == {"total": 1.25, "rows": 3}
    assert calls == ["apple", "pear"]
    assert "1.25" in run.action_steps[0].observation


# -- inline transfers without a kernel ---------------------------------------------------------


def test_inline_payloads_round_trip_and_refuse_tampering(tmp_path):
    sender, receiver = Transfer(tmp_path / "a", inline=True), Transfer(tmp_path / "b", inline=True)
    sender.directory.mkdir()
    receiver.directory.mkdir()
    big = list(range(INLINE_LIMIT))
    descriptor = sender.encode(big, "big")
    assert "file" not in descriptor and "payload" in descriptor and not list(sender.directory.iterdir())
    assert receiver.decode(descriptor) == big
    assert not list(receiver.directory.iterdir())  # the materialised file is gone after decoding
    with pytest.raises(TransferError, match="both"):
        receiver.decode({**descriptor, "file": "../../etc/passwd"})
    with pytest.raises(TransferError, match="max_bytes"):
        receiver.decode(descriptor, max_bytes=100)
    with pytest.raises(TransferError, match="base64"):
        receiver.decode({**descriptor, "payload": "not base64!"})
    forged = {"kind": "npy", "payload": base64.b64encode(b"\x93NUMPY junk").decode(), "size": 11}
    with pytest.raises(TransferError):
        receiver.decode(forged)
    local = Transfer(tmp_path / "b", inline=False)
    with pytest.raises(TransferError):  # without the flag, an inline payload is no descriptor at all
        local.decode(descriptor)


def test_the_launcher_refuses_a_runtime_folder_shared_with_other_kernels(tmp_path):
    own = tmp_path / "kernel-1.json"
    own.write_text("{}")
    _require_private(str(tmp_path), str(own))  # alone: fine
    (tmp_path / "kernel-2.json").write_text("{}")
    with pytest.raises(SystemExit, match="SandboxMappingKernelManager"):
        _require_private(str(tmp_path), str(own))


def test_the_gateway_operator_policy_refuses_what_it_does_not_allow(gateway):
    with pytest.raises(SandboxError, match="allow_network"):
        Sandbox(gateway=gateway.url, token=gateway.token, network=True)
    with pytest.raises(SandboxError, match="max_memory"):
        Sandbox(gateway=gateway.url, token=gateway.token, memory="64GB")
    with Sandbox(gateway=gateway.url, token=gateway.token, memory=None) as capped:  # None: the gateway's cap
        assert "as=2.0GiB" in capped.isolation.active["rlimits"]


def test_v1_frames_are_the_ones_jupyter_server_reads_and_writes():
    """jupyter_server's own v1 codec is the reference for the frames this backend sends and reads."""
    from jupyter_server.services.kernels.connection.base import (
        deserialize_msg_from_ws_v1,
        serialize_msg_to_ws_v1,
    )

    header = {"msg_id": "a1", "msg_type": "execute_reply", "session": "s", "username": "u", "date": "", "version": "5.3"}
    parts = [json.dumps(header).encode(), b'{"msg_id": "p1"}', b"{}", b'{"status": "ok"}']
    assert deserialize_msg_from_ws_v1(_frame_v1("shell", parts)) == ("shell", parts)
    msg, parent = _parse_v1(serialize_msg_to_ws_v1([*parts, b"\x00buffer"], "iopub"), 1 << 20)
    assert (msg.channel, msg.msg_type, msg.content, parent) == ("iopub", "execute_reply", {"status": "ok"}, "p1")
    frame = serialize_msg_to_ws_v1(parts, "iopub")
    malformed = [b"", frame[:20], frame[:-3] + b"!!!", (1 << 62).to_bytes(8, "little") + frame[8:],
                 serialize_msg_to_ws_v1(parts[:3], "iopub"),
                 serialize_msg_to_ws_v1([b"{}", *parts[1:]], "iopub"), b"\x06" + b"\x00" * 7 + b"\xff" * 48]
    assert [_parse_v1(raw, 1 << 20) for raw in malformed] == [None] * len(malformed)
    # A content that is not a dict is read, and refused where every message's content is checked.
    listed, _ = _parse_v1(serialize_msg_to_ws_v1([*parts[:3], b"[1]"], "iopub"), 1 << 20)
    with pytest.raises(Malformed):
        check(listed)


def test_the_sandbox_speaks_v1_to_a_gateway_that_offers_it(sb):
    assert sb._async._backend._v1
    ex = sb.execute("print('x' * 3)\n{'a': [1, 2]}")
    assert ex.stdout == "xxx\n" and ex.result == {"text/plain": "{'a': [1, 2]}"}


def test_a_gateway_without_v1_gets_json_messages():
    with (GatewayServer("--ZMQChannelsWebsocketConnection.kernel_ws_protocol=") as legacy,
          Sandbox(gateway=legacy.url, token=legacy.token, timeout=10) as sandbox):
        assert not sandbox._async._backend._v1
        ex = sandbox.execute("print('a')\nfinal_answer({'n': 1})\n6 * 7")
        assert ex.stdout == "a\n" and ex.result == {"text/plain": "42"} and ex.final_answer == {"n": 1}
        sandbox.push(values=list(range(5)))
        assert sandbox.pull(["values"]) == {"values": [0, 1, 2, 3, 4]}
