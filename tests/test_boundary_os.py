"""What a sandbox kernel can reach of the host's operating system, tried with every import allowed.

Each test looks from the host side (a listener that accepted nothing, a terminal that shows no
byte the sandbox wrote, a folder that stayed small, processes and descriptors that went away),
not at what the sandbox code reports about itself.
"""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_kernel.sandbox import Sandbox

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the isolation layers are Linux features")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with Sandbox(imports=["*"], timeout=30) as sandbox:
        yield sandbox


# --- unix sockets --------------------------------------------------------------------------------

_UNIX_ATTEMPTS = r"""
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
outcomes = {}

def attempt(name, fn):
    try:
        fn()
        outcomes[name] = "done"
    except OSError as exc:
        outcomes[name] = f"refused: {exc}"

def stream(addr):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(addr)
    s.sendall(b"leak")

def seqpacket(addr):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(addr)

def datagram(addr):
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"leak", addr)

def pair_datagram(addr):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.sendto(b"leak", addr)

def raw_syscalls(addr):
    fd = libc.syscall(41, 1, 1, 0)  # socket(AF_UNIX, SOCK_STREAM, 0) on x86-64
    if fd < 0:
        raise OSError(ctypes.get_errno(), "socket() by syscall")
    raw = addr.encode() if isinstance(addr, str) else addr
    sockaddr = (ctypes.c_ushort(1).value).to_bytes(2, "little") + raw + b"\0" * (108 - len(raw))
    buf = ctypes.create_string_buffer(sockaddr, len(sockaddr))
    if libc.syscall(42, fd, buf, len(sockaddr)) < 0:  # connect
        raise OSError(ctypes.get_errno(), "connect() by syscall")

for label, addr in TARGETS.items():
    for fn in (stream, seqpacket, datagram, pair_datagram, raw_syscalls):
        attempt(f"{fn.__name__} {label}", lambda: fn(addr))
print(json.dumps(outcomes))
"""


def test_no_unix_socket_of_the_host_can_be_reached(sb: Sandbox, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    listeners: list[socket.socket] = []

    def listen(kind: int, addr: str | bytes) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, kind)
        s.bind(addr)
        if kind != socket.SOCK_DGRAM:
            s.listen()
        s.setblocking(False)
        listeners.append(s)
        return s

    stream_path, dgram_path = str(tmp_path / "agent.sock"), str(tmp_path / "log.sock")
    abstract = f"\0agent-kernel-test-{os.getpid()}".encode()
    listen(socket.SOCK_STREAM, stream_path)
    listen(socket.SOCK_DGRAM, dgram_path)
    listen(socket.SOCK_STREAM, abstract)
    listen(socket.SOCK_SEQPACKET, str(tmp_path / "seq.sock"))
    targets = {"path": stream_path, "datagram path": dgram_path, "abstract": abstract,
               "seqpacket path": str(tmp_path / "seq.sock")}
    ex = sb.execute(f"import json\nTARGETS = {targets!r}\n{_UNIX_ATTEMPTS}")
    assert ex.error is None, ex.error
    outcomes = json.loads(ex.stdout)
    assert len(outcomes) == 20 and all(v.startswith("refused") for v in outcomes.values()), outcomes
    for s in listeners:  # from the host's side: nothing arrived
        with pytest.raises(BlockingIOError):
            if s.type == socket.SOCK_DGRAM:
                s.recv(16)
            else:
                s.accept()
        s.close()
    assert "unix_sockets" in sb.isolation.active, sb.isolation.missing


def test_what_the_kernel_needs_of_unix_sockets_still_works(sb: Sandbox) -> None:
    """Stream socketpairs (asyncio's self-pipe), zmq's signalling, a thread's output: all after the seal."""
    ex = sb.execute(
        "import asyncio, socket, threading\n"
        "a, b = socket.socketpair(); a.sendall(b'ok'); print(b.recv(2).decode())\n"
        "t = threading.Thread(target=lambda: print(asyncio.run(asyncio.sleep(0, 'loop')), 'thread'))\n"
        "t.start(); t.join()"
    )
    assert ex.error is None, ex.error
    assert ex.stdout.split() == ["ok", "loop", "thread"]
    assert sb.execute("print(6 * 7)").stdout == "42\n"


# --- the host's stdio ----------------------------------------------------------------------------

MARK = "LEAKED-BY-THE-SANDBOX-7f3e"
TYPED = "typed-by-the-analyst-91c2"

# Sandbox code: every descriptor it holds that is a terminal, file or pipe is read, written,
# truncated, its terminal modes changed and characters pushed into it; the same through
# /proc/self/fd and /dev/tty; then a thread goes on writing while the host exits.
_STDIO_ATTEMPTS = r"""
import fcntl, os, select, stat, termios, threading, time
MARK = (%r + "\n").encode()
seen = {}
for fd in range(256):
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        continue
    if not (stat.S_ISCHR(mode) or stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        continue
    got = []
    try:
        if select.select([fd], [], [], 0.05)[0]:
            got.append(os.read(fd, 1000).decode(errors="replace"))
    except OSError:
        pass
    for act in (lambda: os.write(fd, MARK * 3),
                lambda: os.ftruncate(fd, 0),
                lambda: termios.tcsetattr(fd, termios.TCSANOW, [0, 0, 0, 0, 0, 0, termios.tcgetattr(fd)[6]]),
                lambda: fcntl.ioctl(fd, termios.TIOCSTI, b"x")):
        try:
            act()
        except (OSError, termios.error):
            pass
    seen[fd] = got
for path in ["/dev/tty", *(f"/proc/self/fd/{n}" for n in range(3))]:
    try:
        with open(path, "w") as f:
            f.write(MARK.decode())
    except OSError:
        pass

def later():
    for _ in range(30):
        for fd in seen:
            try:
                os.write(fd, MARK)
            except OSError:
                pass
        time.sleep(0.1)

threading.Thread(target=later, daemon=True).start()
print(repr(seen))
""" % MARK

# The host: a script whose stdio the test controls. argv: the result file.
_HOST = r"""
import json, os, select, sys, termios, time
print("host stdout begins", flush=True)
print("host stderr begins", file=sys.stderr, flush=True)
modes = termios.tcgetattr(0) if os.isatty(0) else None
from agent_kernel.sandbox import Sandbox
sb = Sandbox(imports=["*"])
ex = sb.execute(CODE)
time.sleep(1.0)  # the sandbox's thread writes meanwhile
typed = sys.stdin.readline() if select.select([0], [], [], 10)[0] else None
result = {"stdout": ex.stdout, "error": repr(ex.error), "typed": typed,
          "modes_kept": modes is None or termios.tcgetattr(0) == modes}
with open(sys.argv[1], "w") as f:
    json.dump(result, f)
sb.close()
print("host stdout ends", flush=True)
"""


def _run_host(tmp_path: Path, stdio: str, code: str, zygote: str) -> tuple[dict[str, Any], str]:
    """Run the host script with its stdio on a pty ("pty") or a log file ("file"), its kernels forked
    from the zygote or not (`zygote`: AGENT_KERNEL_ZYGOTE): its result and every byte it (and
    anything holding its descriptors) wrote there."""
    script = tmp_path / "host.py"
    script.write_text(f"CODE = {code!r}\n" + _HOST)
    result = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "AGENT_KERNEL_ZYGOTE": zygote}
    if stdio == "file":
        log = tmp_path / "host.log"
        with open(log, "wb") as out:
            subprocess.run([sys.executable, str(script), str(result)], stdin=subprocess.DEVNULL,
                           stdout=out, stderr=out, env=env, timeout=120, check=True)
        return json.loads(result.read_text()), log.read_text(errors="replace")
    master, slave = pty.openpty()
    os.write(master, f"{TYPED}\n".encode())  # typed before the host starts: waiting for whoever reads
    host = subprocess.Popen([sys.executable, str(script), str(result)], stdin=slave, stdout=slave,
                            stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every holder of the terminal closed it
                return
            if not data:
                return
            seen.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert host.wait(timeout=120) == 0
    reader.join(timeout=10)  # a kernel still holding the terminal would keep it open
    assert not reader.is_alive(), "something still holds the host's terminal after it exited"
    os.close(master)
    return json.loads(result.read_text()), seen.decode(errors="replace")


@pytest.mark.parametrize("stdio", ["pty", "file"])
@pytest.mark.parametrize("zygote", ["1", "0"])
def test_the_kernel_gets_nothing_of_the_hosts_stdio(tmp_path: Path, stdio: str, zygote: str) -> None:
    result, seen = _run_host(tmp_path, stdio, _STDIO_ATTEMPTS, zygote)
    assert result["error"] == "None", result
    assert "host stdout begins" in seen and "host stderr begins" in seen and "host stdout ends" in seen  # nothing truncated
    assert MARK not in seen
    if stdio == "pty":
        assert result["typed"] == f"{TYPED}\n"  # the host read what was typed: the sandbox did not
        assert TYPED not in result["stdout"]
        assert result["modes_kept"]


# --- what a long session leaks -------------------------------------------------------------------

_DESCENDANTS = r"""
import os
def descendants():
    parents = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                parents[int(p)] = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return sorted(found)
"""

_RUNS = _DESCENDANTS + r"""
import json, sys, threading
sys.path.insert(0, sys.argv[1])
from scripted_server import ScriptedServer, text
from agent_kernel import CodeAgent
import time
def count():
    return {"processes": len(descendants()), "fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count()}
counts = []
with ScriptedServer() as server:
    server.script(lambda body: text("```python\nfinal_answer(1 + 1)\n```\n"))
    model = server.model()
    for i in range(60):
        run = CodeAgent(model).run("what is 1+1?")  # dropped without close(), as README's example does
        assert run.output == 2, run.state
        if i == 4:
            counts.append(count())
    # The last agents' kernels are on their way out (their finalizers run in the background): a few
    # seconds to settle, then what is left is what leaked.
    settle = time.monotonic() + 10
    while time.monotonic() < settle and any(v > counts[0][k] for k, v in count().items()):
        time.sleep(0.2)
    counts.append(count())
print(json.dumps(counts))
"""


def test_agents_dropped_without_close_release_their_kernels() -> None:
    done = subprocess.run([sys.executable, "-c", _RUNS, str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    early, late = json.loads(done.stdout)
    # One kernel may still be on its way out; a descriptor or two may belong to a model call's connection.
    assert late["processes"] <= early["processes"] + 1, (early, late)
    assert late["fds"] <= early["fds"] + 3, (early, late)
    assert late["threads"] <= early["threads"] + 1, (early, late)


_EXIT = _DESCENDANTS + r"""
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from IPython.core.interactiveshell import InteractiveShell
from scripted_server import ScriptedServer, text
from agent_kernel import CodeAgent
from agent_kernel.sandbox import AsyncSandbox, Sandbox, SandboxPool
server = ScriptedServer().__enter__()
server.script(lambda body: text("```python\nfinal_answer(2)\n```\n"))
agent = CodeAgent(server.model())
agent.run("one")
sandbox = Sandbox(imports=["*"])
sandbox.execute("import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()")
pool = SandboxPool(2)
pool.start()
taken = pool.acquire()
async def started():
    return await AsyncSandbox().start()
kept = asyncio.run(started())  # its loop is gone: the kernel must go all the same
shell = InteractiveShell.instance()
shell.run_cell("%load_ext agent_kernel")
shell.run_cell(f"%config AgentMagics.model = 'openai/scripted'\n%config AgentMagics.api_base = {server.url!r}")
shell.run_cell("%%agent code --out n\nwhat is 1+1?")
assert shell.user_ns["n"] == 2
print(" ".join(map(str, descendants())))
"""


def test_exit_is_silent_and_leaves_no_kernel() -> None:
    done = subprocess.run([sys.executable, "-c", _EXIT, str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-scripted"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    pids = [int(p) for p in done.stdout.splitlines()[-1].split()]
    assert len(pids) >= 5  # the zygote and the kernels
    deadline = time.monotonic() + 10
    while (alive := [p for p in pids if Path(f"/proc/{p}").exists()]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"still running after the host exited: {alive}"


# --- the disk cap between executions -------------------------------------------------------------

MiB = 2**20


def test_the_disk_cap_holds_while_no_code_runs() -> None:
    from agent_kernel.sandbox._disk import _usage

    cap = 16 * MiB
    with Sandbox(imports=["*"], disk=cap, timeout=20) as sandbox:
        sandbox.execute("kept = 1")
        ex = sandbox.execute(
            "import threading, time\n"
            "def fill():\n"  # 400 MiB over 20 s if nothing stops it, each file within the file size cap
            "    for i in range(400):\n"
            "        open(f'f{i}.bin', 'wb').write(b'x' * 2**20)\n"
            "        time.sleep(0.05)\n"
            "threading.Thread(target=fill, daemon=True).start()"
        )
        assert ex.error is None  # it returned at once; its thread writes on
        root = sandbox.workdir.parent
        sizes = [_usage(root)[0]]
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:  # until nothing more is written (the writer stopped, or done)
            time.sleep(1.0)
            sizes.append(_usage(root)[0])
            if sizes[-1] == sizes[-2] > cap:
                break
        # Stopped within about two measures of going over: at 20 MiB/s, 6 x the cap is ~4 s of writing.
        assert cap < sizes[-1] < 6 * cap, [s // MiB for s in sizes]
        ex = sandbox.execute("print(kept)")
        assert ex.error is not None and ex.error.name == "DiskLimitError", ex.error
        assert "while no code ran" in ex.error.value and "variables were lost" in ex.error.value
        assert "not run" in ex.error.value and ex.restarted and ex.stdout == ""
        cleaned = sandbox.execute("import glob, os\nfor f in glob.glob('*.bin'): os.remove(f)\nprint('clean')")
        assert cleaned.error is None and cleaned.stdout == "clean\n"
        assert "while the kernel lives" in sandbox.isolation.active["disk"]


def test_a_kernel_that_fails_to_start_says_why(tmp_path: Path) -> None:
    """Its output no longer goes to the host's stderr: the end of it is in the error instead."""
    from agent_kernel.sandbox import SandboxError

    with pytest.raises(SandboxError, match="does not exist: pass only existing folders"):
        Sandbox(read_paths=[tmp_path / "missing"])
