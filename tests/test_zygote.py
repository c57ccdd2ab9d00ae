"""Sandbox kernels forked from the pre-imported zygote: same isolation, no way back to the zygote.

Real kernels through jupyter_client (the kernelspec's provisioner), a real zygote process; the
host-side checks read /proc of the zygote and the kernel (the tests run as their owner or root).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
from gateway_server import GatewayServer

from agent_kernel.sandbox import Sandbox, _zygote

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="reads /proc (Linux)")

SECRET = "sk-zygote-test-do-not-leak"


def _kernel_pid(sb: Sandbox) -> int:
    return int(sb.execute("import os\nos.getpid()").result["text/plain"])


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.05)


def _fd_targets(pid: int) -> set[str]:
    folder = f"/proc/{pid}/fd"
    targets = set()
    for fd in os.listdir(folder):
        try:
            targets.add(os.readlink(f"{folder}/{fd}"))
        except OSError:  # closed while listed
            continue
    return targets


@pytest.fixture
def fresh_zygote(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This test's own zygote, started with a secret in the host's environment; killed afterwards."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    zygotes: dict[tuple[int, str], _zygote._Zygote] = {}
    monkeypatch.setattr(_zygote, "_zygotes", zygotes)
    yield
    for zygote in zygotes.values():
        zygote.process.kill()
        zygote.process.wait()


def _zygote_of(pid: int) -> psutil.Process:
    parent = psutil.Process(pid).parent()
    assert parent is not None and _zygote.ZYGOTE_MODULE in parent.cmdline(), parent
    return parent


def test_a_forked_kernel_holds_no_secret_and_no_way_back_to_the_zygote(fresh_zygote: None) -> None:
    with Sandbox(imports=["os", "socket"]) as sb:
        assert sb.isolation.active["zygote"].startswith("forked from a pre-imported zygote")
        pid = _kernel_pid(sb)
        zygote = _zygote_of(pid)
        # The zygote was started after the secret was set, and never saw it.
        for process in (zygote.pid, pid):
            with open(f"/proc/{process}/environ", "rb") as f:
                assert SECRET.encode() not in f.read()
        assert "OPENAI_API_KEY" not in zygote.environ()
        # The control socketpair: the zygote's end and the host's end, neither open in the kernel.
        control = {t for t in _fd_targets(zygote.pid) if t.startswith("socket:")}
        host_end = {t for t in _fd_targets(os.getpid()) if t.startswith("socket:")}
        assert control, "the zygote holds its control socket"
        kernel_fds = _fd_targets(pid)
        assert not kernel_fds & (control | host_end)
        with open(f"/proc/{pid}/fd/0") as stdin:
            assert stdin.read() == ""  # /dev/null, not a pipe from anyone
        # From inside: no unix socket of the control channel's kind, no signal to the zygote.
        ex = sb.execute(
            "import os, socket\n"
            "kinds = set()\n"
            "for fd in range(256):\n"  # RLIMIT_NOFILE
            "    try:\n"
            "        s = socket.socket(fileno=fd)\n"
            "    except OSError:\n"
            "        continue\n"
            "    kinds.add(s.type)\n"
            "    s.detach()\n"
            "print(socket.SOCK_SEQPACKET in kinds, len(kinds) > 0)\n"
            f"try:\n    os.kill({zygote.pid}, 0)\n    print('signalled')\nexcept OSError as e:\n    print(e.errno)\n"
        )
        assert ex.error is None, ex.error
        lines = ex.stdout.split()
        assert lines[:2] == ["False", "True"]  # zmq's sockets are there, the zygote's is not
        assert lines[2] != "signalled"


def _layers(sb: Sandbox) -> dict[str, dict[str, str]]:
    """Its isolation without the launch note, its own folder's name replaced."""
    root = str(sb.workdir.parent)
    return {kind: {k: v.replace(root, "<root>") for k, v in getattr(sb.isolation, kind).items() if k != "zygote"}
            for kind in ("active", "missing")}


def test_every_isolation_layer_holds_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    with Sandbox() as forked:
        assert "zygote" in forked.isolation.active
        layers = _layers(forked)
    monkeypatch.setenv(_zygote.SWITCH_ENV, "0")
    with Sandbox(imports=["os"]) as started:
        assert started.isolation.missing["zygote"] == f"turned off ({_zygote.SWITCH_ENV}=0)"
        parent = psutil.Process(_kernel_pid(started)).parent()
        assert parent is not None and parent.pid == os.getpid()  # started by exec, the usual way
        assert _layers(started) == layers
        assert len(layers["active"]) >= 7


def test_exit_status_interrupt_and_restart_of_a_forked_kernel() -> None:
    with Sandbox(imports=["os"], timeout=1) as sb:
        first = _kernel_pid(sb)
        ex = sb.execute("x = 1\nwhile True:\n    pass")
        assert ex.error is not None and "interrupted; variables are kept" in ex.error.value
        assert sb.execute("x").result == {"text/plain": "1"}
        ex = sb.execute("os._exit(7)")
        assert ex.restarted and ex.error is not None and ex.error.name == "SandboxDied"
        assert "exit status 7" in ex.error.value
        _wait_gone(first)
        second = _kernel_pid(sb)
        assert second != first and sb.isolation.active["zygote"]
        assert "exit status -9" in sb.execute("os.kill(os.getpid(), 9)").error.value


def test_a_dead_zygote_takes_its_kernels_and_the_next_start_gets_a_new_one(fresh_zygote: None) -> None:
    with Sandbox(imports=["os"]) as sb:
        pid = _kernel_pid(sb)
        zygote = _zygote_of(pid)
        zygote.send_signal(signal.SIGKILL)
        _wait_gone(pid)
        ex = sb.execute("1")
        assert ex.error is not None and ex.error.name == "SandboxDied" and "exit status -9" in ex.error.value
        assert ex.restarted
        replacement = _zygote_of(_kernel_pid(sb))  # the restart forked from a new zygote
        assert replacement.pid != zygote.pid
        assert sb.execute("1 + 1").result == {"text/plain": "2"}


def test_interrupting_the_host_s_process_group_spares_the_zygote() -> None:
    with Sandbox(imports=["os"]) as sb:
        zygote = _zygote_of(_kernel_pid(sb))
        assert os.getpgid(zygote.pid) != os.getpgid(0)  # a notebook's interrupt goes to its group
        zygote.send_signal(signal.SIGINT)  # and even sent to it directly, it is ignored
        time.sleep(0.2)
        assert zygote.is_running() and zygote.status() != psutil.STATUS_ZOMBIE
        assert sb.execute("1 + 1").result == {"text/plain": "2"}
    with Sandbox(imports=["os"]) as sb:
        assert _zygote_of(_kernel_pid(sb)).pid == zygote.pid


def test_kernels_are_not_left_behind() -> None:
    with Sandbox(imports=["os"]) as sb:
        pid = _kernel_pid(sb)
    _wait_gone(pid)


def test_gateway_kernels_are_forked_and_its_token_stays_out() -> None:
    with GatewayServer() as gateway, Sandbox(gateway=gateway.url, token=gateway.token) as sb:
        assert sb.isolation.active["zygote"].startswith("forked from a pre-imported zygote")
        [zygote] = [p for p in psutil.Process(gateway.pid).children() if _zygote.ZYGOTE_MODULE in p.cmdline()]
        assert "KG_AUTH_TOKEN" not in zygote.environ()
        with open(f"/proc/{zygote.pid}/environ", "rb") as f:
            assert gateway.token.encode() not in f.read()
