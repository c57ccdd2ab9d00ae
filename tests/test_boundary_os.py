"""What a sandbox kernel can reach of the host's operating system, tried with every import allowed.

Each test looks from the host side (a listener that accepted nothing, a terminal that shows no
byte the sandbox wrote, a folder that stayed small, processes and descriptors that went away),
not at what the sandbox code reports about itself.
"""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import textwrap
import threading
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
