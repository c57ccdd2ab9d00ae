"""Attacks through the real Sandbox: model code trying to read, write, reach, spawn, signal or
smuggle code out. Every test checks from the host that the effect did not happen, then that the
sandbox still answers.

The import policy is lifted (imports=["*"]) so these tests exercise the OS layers, which must hold
even if model code gets past the policy.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_isolation import SECRET, Listeners

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the sandbox's isolation layers are Linux features"
)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Things outside the sandbox: a secret file, a secret env var, listeners, a victim process."""
    base = tmp_path_factory.mktemp("host")
    secret_file = base / "secret.csv"
    secret_file.write_text(f"key\n{SECRET}\n")
    (base / "credentials.json").write_text(json.dumps({"token": SECRET}))
    signals: list[int] = []
    previous = signal.signal(
        signal.SIGUSR1, lambda signum, frame: signals.append(signum)
    )
    old_key = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = SECRET
    listeners = Listeners()
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        yield {
            "base": base,
            "secret_file": secret_file,
            "signals": signals,
            "listeners": listeners,
            "victim": victim,
            "tcp_port": listeners.tcp.getsockname()[1],
            "udp_port": listeners.udp.getsockname()[1],
        }
    finally:
        victim.kill()
        victim.wait()
        listeners.close()
        signal.signal(signal.SIGUSR1, previous)
        if old_key is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = old_key


@pytest.fixture(scope="module")
def sb(host: dict[str, Any]) -> Iterator[Any]:
    from agent_kernel.sandbox import Sandbox

    with Sandbox(timeout=10, memory="1GB", imports=["*"]) as sandbox:
        yield sandbox


def run(sb: Any, code: str, **names: Any) -> str:
    """Execute attack code with `names` bound; return everything it produced, as text."""
    prelude = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    ex = sb.execute(prelude + textwrap.dedent(code))
    return "\n".join(
        [
            ex.stdout,
            ex.stderr,
            str(ex.error or ""),
            json.dumps(ex.result or {}),
            repr(ex.final_answer),
        ]
    )


def assert_still_answers(sb: Any) -> None:
    ex = sb.execute("print(1+1)")
    assert ex.stdout == "2\n", (ex.stdout, ex.error)


def test_all_required_layers_are_active(sb: Any) -> None:
    active = sb.isolation.active
    for layer in (
        "environment",
        "network",
        "rlimits",
        "capabilities",
        "no_new_privs",
        "landlock",
        "seccomp",
        "signals",
    ):
        assert layer in active, (layer, sb.isolation.missing)


READ_SECRET = {
    "open": "print(open(SECRET_FILE).read())",
    "pathlib": "import pathlib; print(pathlib.Path(SECRET_FILE).read_text())",
    "os_open": "import os; print(os.read(os.open(SECRET_FILE, os.O_RDONLY), 1000))",
    "symlink": "import os; os.symlink(SECRET_FILE, 'link.csv'); print(open('link.csv').read())",
    "hardlink": "import os; os.link(SECRET_FILE, 'hard.csv'); print(open('hard.csv').read())",
    "proc_root": "print(open(f'/proc/{HOST_PID}/root' + SECRET_FILE).read())",
    "proc_cwd": "import os; print(os.listdir(f'/proc/{HOST_PID}/cwd'))",
    "pandas": "import pandas as pd; print(pd.read_csv(SECRET_FILE).to_string())",
    "numpy": "import numpy as np; print(np.loadtxt(SECRET_FILE, dtype=str))",
    "open_by_fd_walk": "import os\nfor fd in range(3, 64):\n    try: print(os.pread(fd, 1000, 0))\n    except OSError: pass",
}


@pytest.mark.parametrize("how", READ_SECRET)
def test_cannot_read_a_host_file(sb: Any, host: dict[str, Any], how: str) -> None:
    out = run(
        sb, READ_SECRET[how], SECRET_FILE=str(host["secret_file"]), HOST_PID=os.getpid()
    )
    assert SECRET not in out
    assert_still_answers(sb)


READ_ENV = {
    "os_environ": "import os; print(dict(os.environ))",
    "proc_self": "print(open('/proc/self/environ', 'rb').read())",
    "proc_parent": "import os; print(open(f'/proc/{os.getppid()}/environ', 'rb').read())",
    "proc_host": "print(open(f'/proc/{HOST_PID}/environ', 'rb').read())",
    "libc_getenv": "import ctypes; print(ctypes.CDLL(None).getenv, ctypes.c_char_p(ctypes.CDLL(None).getenv(b'OPENAI_API_KEY')).value)",
}


@pytest.mark.parametrize("how", READ_ENV)
def test_cannot_read_the_notebook_environment(sb: Any, how: str) -> None:
    out = run(sb, READ_ENV[how], HOST_PID=os.getpid())
    assert SECRET not in out
    assert_still_answers(sb)


def test_cannot_write_outside_the_workdir(sb: Any, host: dict[str, Any]) -> None:
    target = host["base"] / "pwned.txt"
    run(
        sb,
        """
        import os, shutil
        for attempt in (lambda: open(TARGET, "w").write("x"),
                        lambda: open(SECRET_FILE, "a").write("x"),
                        lambda: os.rename(SECRET_FILE, TARGET),
                        lambda: shutil.copy("/etc/hostname", TARGET),
                        lambda: open("/tmp/ak-pwned.txt", "w").write("x")):
            try: attempt()
            except OSError as e: print(type(e).__name__, e)
        """,
        TARGET=str(target),
        SECRET_FILE=str(host["secret_file"]),
    )
    assert not target.exists() and not Path("/tmp/ak-pwned.txt").exists()
    assert host["secret_file"].read_text() == f"key\n{SECRET}\n"
    assert_still_answers(sb)


NETWORK = {
    "tcp": "import socket; s = socket.create_connection(('127.0.0.1', TCP_PORT), timeout=2); s.sendall(b'leak')",
    "udp": "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'leak', ('127.0.0.1', UDP_PORT))",
    "tcp6": "import socket; socket.create_connection(('::1', TCP_PORT), timeout=2).sendall(b'leak')",
    "raw_packet": "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)",
    "urllib": "import urllib.request; urllib.request.urlopen('http://127.0.0.1:' + str(TCP_PORT) + '/leak', timeout=2)",
}


@pytest.mark.parametrize("how", NETWORK)
def test_cannot_reach_a_loopback_listener(
    sb: Any, host: dict[str, Any], how: str
) -> None:
    out = run(sb, NETWORK[how], TCP_PORT=host["tcp_port"], UDP_PORT=host["udp_port"])
    assert "Error" in out  # the attempt failed inside the sandbox ...
    assert not host["listeners"].received  # ... and nothing arrived
    assert_still_answers(sb)


SPAWN = {
    "subprocess": "import subprocess; subprocess.run(['sh', '-c', 'touch ' + MARKER])",
    "os_system": "import os; print(os.system('touch ' + MARKER))",
    "posix_spawn": "import os; os.posix_spawn('/bin/sh', ['sh', '-c', 'touch ' + MARKER], {})",
    "os_fork": "import os\nif os.fork() == 0:\n    open(MARKER, 'w').close(); os._exit(0)",
    "libc_system": "import ctypes; print(ctypes.CDLL(None).system(('touch ' + MARKER).encode()))",
    "libc_fork": "import ctypes, os\nif ctypes.CDLL(None).fork() == 0:\n    open(MARKER, 'w').close(); os._exit(0)",
    "pty_spawn": "import pty; pty.spawn(['sh', '-c', 'touch ' + MARKER])",
    "multiprocessing": "import multiprocessing as mp\np = mp.get_context('fork').Process(target=lambda: open(MARKER, 'w').close()); p.start(); p.join()",
    "multiprocessing_spawn": "import multiprocessing as mp\np = mp.get_context('spawn').Process(target=print); p.start(); p.join(); open(MARKER + str(p.exitcode), 'w')",
}


@pytest.mark.parametrize("how", SPAWN)
def test_cannot_spawn_a_process(sb: Any, how: str) -> None:
    marker = sb.workdir / f"spawned_{how}"
    run(sb, SPAWN[how], MARKER=str(marker))
    assert not list(sb.workdir.glob(f"spawned_{how}*")), f"{how} spawned a process"
    assert_still_answers(sb)


def test_cannot_signal_the_notebook_or_other_processes(
    sb: Any, host: dict[str, Any]
) -> None:
    out = run(
        sb,
        """
        import os, signal
        for pid, sig in ((HOST_PID, signal.SIGUSR1), (VICTIM, signal.SIGKILL), (os.getppid(), signal.SIGUSR1)):
            try: os.kill(pid, sig); print("SENT", pid)
            except OSError as e: print(type(e).__name__, pid)
        """,
        HOST_PID=os.getpid(),
        VICTIM=host["victim"].pid,
    )
    assert "SENT" not in out
    assert not host["signals"]
    assert host["victim"].poll() is None
    assert_still_answers(sb)


def test_cannot_ptrace_the_notebook(sb: Any, host: dict[str, Any]) -> None:
    out = run(
        sb,
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for pid in (HOST_PID, VICTIM):
            if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
                print("ATTACHED", pid); libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
            else:
                print("denied", ctypes.get_errno())
        """,
        HOST_PID=os.getpid(),
        VICTIM=host["victim"].pid,
    )
    assert "ATTACHED" not in out and out.count("denied") == 2
    for pid in (os.getpid(), host["victim"].pid):
        assert "TracerPid:\t0\n" in Path(f"/proc/{pid}/status").read_text()
    assert_still_answers(sb)


EVIL_CLASS = """
class Evil:
    def __reduce__(self):
        return (exec, (f"open({MARKER!r}, 'w').write('unpickled')",))
"""


def test_final_answer_and_pulled_values_are_never_unpickled(
    sb: Any, host: dict[str, Any]
) -> None:
    marker = host["base"] / "unpickled.txt"
    ex = sb.execute(
        f"MARKER = {str(marker)!r}\n" + EVIL_CLASS + "evil = Evil()\nfinal_answer(evil)"
    )
    assert ex.has_final_answer and "Evil" in repr(ex.final_answer)
    pulled = sb.pull(["evil"])["evil"]
    assert "Evil" in repr(pulled) and not marker.exists()
    assert_still_answers(sb)


def test_forged_descriptor_cannot_make_the_host_read_its_files(
    sb: Any, host: dict[str, Any]
) -> None:
    """Sandbox code rewrites the bridge to hand the host descriptors aimed at host files."""
    from agent_kernel.sandbox._codec import TransferError

    size = (host["base"] / "credentials.json").stat().st_size
    forged = [
        # a symlink planted in the transfer folder
        "os.symlink(HOST_DIR + '/credentials.json', T + '/cred.json'); d = {'kind': 'json', 'file': 'cred.json', 'size': SIZE}",
        # the transfer folder itself replaced by a symlink to a host folder
        "shutil.rmtree(T); os.symlink(HOST_DIR, T); d = {'kind': 'json', 'file': 'credentials.json', 'size': SIZE}",
        # a pickle smuggled as an unknown kind, and a path traversal
        "d = {'kind': 'pickle', 'data': 'gASVAAAAAAAAAAA='}",
        "d = {'kind': 'json', 'file': '../../credentials.json', 'size': SIZE}",
    ]
    for attack in forged:
        code = f"""
        import json, os, shutil
        T = str(__ak__.transfer_dir)
        if os.path.islink(T): os.unlink(T)
        os.makedirs(T, exist_ok=True)
        {attack}
        __ak__.dump = lambda names, d=d: json.dumps({{"values": {{n: d for n in json.loads(names)}}, "missing": []}})
        x = 1
        """
        run(sb, code, HOST_DIR=str(host["base"]), SIZE=size)
        try:
            value = sb.pull(["x"])["x"]
        except (TransferError, RuntimeError) as exc:  # SandboxError is a RuntimeError
            value = str(exc)
        assert SECRET not in repr(value), (
            f"the host read its own file for the sandbox: {attack}"
        )
    run(
        sb,
        "del __ak__.dump\nimport os\nT = str(__ak__.transfer_dir)\nif os.path.islink(T): os.unlink(T)\nos.makedirs(T, exist_ok=True)",
    )
    assert sb.pull(["x"]) == {"x": 1}
    assert_still_answers(sb)


def test_sandbox_cannot_escape_through_its_transfer_folder_on_push(
    sb: Any, host: dict[str, Any]
) -> None:
    """With .transfer swapped for a symlink, a push must not write into a host folder."""
    import numpy as np

    run(
        sb,
        "import os, shutil\nT = str(__ak__.transfer_dir)\nshutil.rmtree(T, ignore_errors=True)\nos.symlink(HOST_DIR, T)",
        HOST_DIR=str(host["base"]),
    )
    before = set(os.listdir(host["base"]))
    from agent_kernel.sandbox import SandboxError
    from agent_kernel.sandbox._codec import TransferError

    with contextlib.suppress(SandboxError, TransferError, OSError):
        sb.push(
            arr=np.arange(100_000)
        )  # refusing the push is fine; writing into the host folder is not
    assert set(os.listdir(host["base"])) == before, (
        "the host wrote a file into a folder the sandbox chose"
    )
    run(sb, "import os\nT = str(__ak__.transfer_dir)\nos.unlink(T); os.makedirs(T)")
    assert_still_answers(sb)
